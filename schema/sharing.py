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

Direct delivery (the fan-out fast lane). Even with one execution per event, handing each event
to each subscriber through its own task, strawberry's result pipeline and one socket write per
message cost tens of microseconds per subscriber, so one process could not feed 1,000
subscribers 100 events a second. The transport (``modelplane/direct.py``) therefore offers a
:class:`DirectChannel` per operation; a resolver that can render its events synchronously asks
for :func:`direct_delivery` and, when both a channel and this subscription's executor are
there, gets a function that writes a shared payload straight to the subscriber's connection as
a ``next`` message (the JSON is encoded once per event and selection; the transport batches a
connection's frames into one write). Anything it cannot render the same way (an error, an
awaitable) is left to the ordinary path, which stays the reference behaviour.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, Protocol

from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from graphql import ExecutionResult, OperationType, execute_subscription_event, print_ast


class DirectChannel(Protocol):
    """Where a subscription operation's ``next`` messages can be written without its task."""

    def write_next(self, payloads: Sequence[bytes]) -> bool:
        """Send ``{"id": <this operation>, "type": "next", "payload": <payload>}`` for each
        payload (UTF-8 JSON), all or none; False (none sent) when the connection cannot take
        them now (closing, or its buffer is backlogged)."""
        ...


RESULTS_ATTRIBUTE = "_shared_results"
TEXTS_ATTRIBUTE = "_shared_texts"

_channel: ContextVar[DirectChannel | None] = ContextVar("direct_channel", default=None)
_executor: ContextVar[SharingExecutor | None] = ContextVar("subscription_executor", default=None)


def offer_direct_channel(channel: DirectChannel) -> None:
    """Called by the transport in an operation's task before the operation executes."""
    _channel.set(channel)


def direct_delivery() -> Callable[[Sequence[SharedPayload]], int] | None:
    """For a subscription resolver: a function writing shared payloads straight to this
    operation's subscriber, returning how many of the first ones it wrote; None when the
    transport offers no channel."""
    channel = _channel.get()
    executor = _executor.get()
    if channel is None or executor is None:
        return None
    key = executor.share_key
    write = channel.write_next

    def deliver(payloads: Sequence[SharedPayload]) -> int:
        memo = _last_batch
        if memo.payloads is payloads and memo.key == key:  # the subscriber before had it
            texts = memo.texts
        else:
            texts = []
            for payload in payloads:
                found = payload.__dict__.get(TEXTS_ATTRIBUTE)  # the common case, inlined
                text = found.get(key) if found is not None else None
                if text is None:
                    text = executor.encoded(payload)
                    if text is None:
                        break  # this one takes the ordinary path, and so does what follows
                texts.append(text)
            memo.payloads, memo.key, memo.texts = payloads, key, texts
        return len(texts) if texts and write(texts) else 0

    return deliver


class _BatchTexts:
    """The encodings of the last batch of payloads a subscriber was handed, for one selection.

    The broker hands one batch (one list, see ``EventViews.views``) to every subscriber whose
    filter it matched, one after the other, and subscribers of one dashboard share a
    selection: the second subscriber on reuses the first one's list instead of looking each
    payload up again. The batch is held, so its identity cannot be reused while remembered.
    """

    __slots__ = ("key", "payloads", "texts")

    def __init__(self) -> None:
        self.payloads: Sequence[SharedPayload] = ()
        self.key = ""
        self.texts: list[bytes] = []


_last_batch = _BatchTexts()


class SharedPayload:
    """Mixin for subscription payloads delivered as the same object to every subscriber."""

    @property
    def shared_results(self) -> dict[str, ExecutionResult]:
        """Results of executing a selection over this payload, by document and variables."""
        return self._shared(RESULTS_ATTRIBUTE)

    @property
    def shared_texts(self) -> dict[str, bytes]:
        """The JSON of ``{"data": ...}`` for each selection (UTF-8), by document and variables."""
        return self._shared(TEXTS_ATTRIBUTE)

    def _shared(self, attribute: str) -> dict[str, Any]:
        found: dict[str, Any] | None = self.__dict__.get(attribute)
        if found is None:
            found = self.__dict__[attribute] = {}
        return found


class SharingExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor, reusing per-event results for :class:`SharedPayload` events."""

    _share_key: str | None = None

    @classmethod
    def build(cls, *args: Any, **kwargs: Any) -> Any:
        """Build as graphql-core does; a subscription's executor is also remembered in the
        operation's context, where :func:`direct_delivery` finds it."""
        built = super().build(*args, **kwargs)
        if isinstance(built, SharingExecutor) and (
            built.operation.operation is OperationType.SUBSCRIPTION
        ):
            _executor.set(built)
        return built

    @property
    def share_key(self) -> str:
        """This selection's key in the shared caches: printed document and variables."""
        if self._share_key is None:
            fragments = "".join(print_ast(f.definition) for _, f in sorted(self.fragments.items()))
            variables = json.dumps(self.variable_values, sort_keys=True, default=str)
            self._share_key = f"{print_ast(self.operation)}{fragments}\0{variables}"
        return self._share_key

    def encoded(self, payload: SharedPayload) -> bytes | None:
        """The JSON of ``{"data": ...}`` for this selection over ``payload`` (UTF-8), encoded
        once per payload and selection; None when it cannot be shared (errors, not sync)."""
        key = self.share_key
        texts = payload.shared_texts
        text = texts.get(key)
        if text is None:
            outcome = execute_subscription_event(self.build_per_event_executor(payload))
            if not isinstance(outcome, ExecutionResult) or outcome.errors or outcome.extensions:
                return None  # the ordinary path executes and masks it (our fields never await)
            text = texts[key] = json.dumps({"data": outcome.data}, separators=(",", ":")).encode()
        return text

    def build_per_event_executor(self, payload: Any) -> Any:
        """Compute the sharing key once per subscription, before the per-event copies; when
        another subscriber already executed this selection over this payload, skip the copy."""
        key = self.share_key
        if isinstance(payload, SharedPayload):
            cached = payload.shared_results.get(key)
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
