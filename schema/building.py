"""Build the strawberry.Schema from the root types the composition root hands in.

Every operation passes :class:`schema.limits.DocumentGate` first (size, tokens, Unicode, then
fields / aliases / directives / cost as a validation rule), which also keeps the parsed and
validated documents in a cache bounded by bytes; see ``schema/limits.py``.

Unexpected exceptions are masked (``MaskErrors``): the client sees "Unexpected error." and the
request id, the log gets the traceback. Expected failures are either union members (see the
result types) or :class:`ExpectedError` subclasses such as authentication failures, whose
messages are written for the caller and pass through unmasked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NamedTuple

import strawberry
from graphql.pyutils import AwaitableOrValue, Path, Undefined
from strawberry.extensions import MaskErrors, SchemaExtension
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext
from strawberry.types.execution import PreExecutionError

from graphql import GraphQLError, GraphQLObjectType
from schema.limits import DocumentGate, GraphQLLimits, field_weights, operation_limits_rule
from schema.scalars import SCALAR_MAP
from schema.sharing import SharingExecutor


class ExpectedError(Exception):
    """An error whose message is meant for the caller (never masked); ``code`` goes into the
    GraphQL error's ``extensions`` so clients can switch on it."""

    code = "BAD_REQUEST"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.field = field

    @property
    def extensions(self) -> dict[str, str]:
        """What clients see under ``errors[].extensions``."""
        extra = {"code": self.code}
        if self.field:
            extra["field"] = self.field
        return extra


class NotAuthenticated(ExpectedError):
    """No valid bearer token came with the request."""

    code = "UNAUTHENTICATED"


def _should_mask(error: GraphQLError) -> bool:
    original = error.original_error
    if original is None or error.path is None:
        # Syntax, validation and variable errors (an unknown enum value, say) are about the
        # request itself and carry no path; only errors raised while resolving a field can
        # hide a server fault.
        return False
    return not isinstance(original, ExpectedError)


class _MaskErrors(MaskErrors):
    """strawberry's MaskErrors with a plain attribute check: its ``isinstance`` against a
    runtime-checkable Protocol cost about 14 % of the server's CPU when fanning out events."""

    def _process_result(self, result: object) -> None:
        errors = getattr(result, "errors", None)
        if errors:
            result.errors = self._process_errors(errors)  # type: ignore[attr-defined]  # checked above


class _Schema(strawberry.Schema):
    """Admits each operation through the :class:`DocumentGate` before strawberry parses it;
    logs only unexpected errors (with traceback), expected ones are the caller's business."""

    def __init__(self, *args: Any, limits: GraphQLLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = DocumentGate(limits)
        self._limits_rule = operation_limits_rule(limits, field_weights(self._schema))

    def _admit(self, context: ExecutionContext) -> GraphQLError | Callable[[], None]:
        """Refuse the operation, or hand strawberry the (cached) document with the limits rule
        and return the callback that keeps its validation result."""
        if context.query is None or context.graphql_document is not None:
            return lambda: None
        admitted = self.gate.admit(context.query, context.variables)
        if isinstance(admitted, GraphQLError):
            return admitted
        context.graphql_document = admitted.document
        context.validation_rules = (*context.validation_rules, self._limits_rule)
        if admitted.errors is not None:
            context.pre_execution_errors = admitted.errors  # strawberry then skips validation
            return lambda: None

        def keep() -> None:
            if context.pre_execution_errors is not None:
                admitted.errors = list(context.pre_execution_errors)

        return keep

    async def _prepare_operation_async(
        self, context: ExecutionContext, extensions_runner: Any
    ) -> Any:
        admitted = self._admit(context)
        if isinstance(admitted, GraphQLError):
            context.pre_execution_errors = [admitted]
            return PreExecutionError(data=None, errors=[admitted])
        refused = await super()._prepare_operation_async(context, extensions_runner)
        admitted()
        return refused

    def _prepare_operation_sync(self, context: ExecutionContext, extensions_runner: Any) -> Any:
        admitted = self._admit(context)
        if isinstance(admitted, GraphQLError):
            context.pre_execution_errors = [admitted]
            return PreExecutionError(data=None, errors=[admitted])
        refused = super()._prepare_operation_sync(context, extensions_runner)
        admitted()
        return refused

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        unexpected = [error for error in errors if _should_mask(error)]
        if unexpected:
            super().process_errors(unexpected, execution_context)


class _Executor(SharingExecutor):
    """graphql-core's executor with mutation fields run one after the other in a loop.

    graphql-core chains each serial field onto the previous one's coroutine
    (``async_reduce``): awaiting the last awaits the whole chain recursively, and a mutation
    of about 330 fields exceeded Python's recursion limit ("maximum recursion depth
    exceeded"). The default limits refuse such a document first (its tokens and aliases);
    this removes the recursion for any limits.
    """

    def execute_fields_serially(
        self,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Path | None,
        grouped_field_set: Any,
        position_context: Any,
    ) -> AwaitableOrValue[dict[str, Any]]:
        where = _Where(parent_type, source_value, path, position_context)
        results: dict[str, Any] = {}
        items = iter(grouped_field_set.items())
        for name, details in items:
            value = self._serial_field(where, name, details)
            if self.is_awaitable(value):
                return self._serially_awaiting(where, (name, value), items, results)
            if value is not Undefined:
                results[name] = value
        return results

    def _serial_field(self, where: _Where, name: str, details: Any) -> Any:
        if self.abort_signal is not None and self.abort_signal.aborted:
            raise self.abort_error()
        return self.execute_field(
            where.parent_type,
            where.source_value,
            details,
            Path(where.path, name, where.parent_type.name),
            where.position_context,
        )

    async def _serially_awaiting(
        self,
        where: _Where,
        pending: tuple[str, Awaitable[Any]],
        rest: Iterable[tuple[str, Any]],
        results: dict[str, Any],
    ) -> dict[str, Any]:
        name, awaiting = pending
        value = await awaiting
        if value is not Undefined:
            results[name] = value
        for name, details in rest:
            value = self._serial_field(where, name, details)
            if self.is_awaitable(value):
                value = await value
            if value is not Undefined:
                results[name] = value
        return results


class _Where(NamedTuple):
    """Where serial fields execute: their parent and its value."""

    parent_type: GraphQLObjectType
    source_value: Any
    path: Path | None
    position_context: Any


def build_schema(
    *,
    query: type[Any],
    mutation: type[Any] | None = None,
    subscription: type[Any] | None = None,
    types: Sequence[type[Any]] = (),
    extensions: Sequence[type[SchemaExtension] | Callable[[], SchemaExtension]] = (),
    limits: GraphQLLimits | None = None,
) -> strawberry.Schema:
    """The executable schema; the same call exports the committed SDL. ``limits``: what one
    operation may ask for (defaults: :class:`GraphQLLimits`)."""
    return _Schema(
        query=query,
        mutation=mutation,
        subscription=subscription,
        types=list(types),
        config=StrawberryConfig(scalar_map=SCALAR_MAP),
        extensions=[*extensions, lambda: _MaskErrors(should_mask_error=_should_mask)],
        execution_context_class=_Executor,
        limits=limits or GraphQLLimits(),
    )
