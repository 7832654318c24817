"""One execution per subscription event and selection, however many subscribers share it.

graphql-core executes a subscription's selection set once per event *per subscriber*. When a
thousand dashboards watch the same models, that is a thousand identical executions of the same
document over the same object; a profile of ``bench/fanout.py`` put about 40 % of the server's
CPU there. Payloads that are the same object for every subscriber of an event (the event
resolvers hand out one :class:`SharedPayload` view per stored event) carry a small cache of
results keyed by the subscription's printed document and variables: the first subscriber's
executor fills it, the others reuse the result.

Only results without errors are shared (error masking may rewrite errors per request), and only
for payloads that opt in; everything else executes as before.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any

from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from graphql import ExecutionResult, print_ast


class SharedPayload:
    """Mixin for subscription payloads delivered as the same object to every subscriber."""

    @property
    def shared_results(self) -> dict[str, ExecutionResult]:
        """Results of executing a selection over this payload, by document and variables."""
        found: dict[str, ExecutionResult] | None = self.__dict__.get("_shared_results")
        if found is None:
            found = {}
            self.__dict__["_shared_results"] = found
        return found


class SharingExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor, reusing per-event results for :class:`SharedPayload` events."""

    _share_key: str | None = None

    def build_per_event_executor(self, payload: Any) -> Any:
        """Compute the sharing key once per subscription, before the per-event copies; when
        another subscriber already executed this selection over this payload, skip the copy."""
        if self._share_key is None:
            fragments = "".join(print_ast(f.definition) for _, f in sorted(self.fragments.items()))
            variables = json.dumps(self.variable_values, sort_keys=True, default=str)
            self._share_key = f"{print_ast(self.operation)}{fragments}\0{variables}"
        if isinstance(payload, SharedPayload):
            cached = payload.shared_results.get(self._share_key)
            if cached is not None:
                return _Executed(cached)
        return super().build_per_event_executor(payload)

    def execute_operation(self, serially: bool | None = None) -> Any:
        """Execute, or hand back the result another subscriber's execution produced."""
        payload = self.root_value
        key = self._share_key
        if not isinstance(payload, SharedPayload) or key is None:
            return super().execute_operation(serially)
        results = payload.shared_results
        cached = results.get(key)
        if cached is not None:
            return cached
        outcome = super().execute_operation(serially)
        if self.is_awaitable(outcome):
            return _store_later(outcome, results, key)
        if isinstance(outcome, ExecutionResult) and not outcome.errors:
            results[key] = outcome
        return outcome


class _Executed:
    """Stands in for a per-event executor whose result another subscriber already produced
    (``execute_subscription_event`` only calls ``execute_operation`` on it)."""

    def __init__(self, result: ExecutionResult) -> None:
        self._result = result

    def execute_operation(self, serially: bool | None = None) -> ExecutionResult:
        del serially
        return self._result


async def _store_later(
    outcome: Awaitable[Any], results: dict[str, ExecutionResult], key: str
) -> Any:
    value = await outcome
    if isinstance(value, ExecutionResult) and not value.errors:
        results[key] = value
    return value
