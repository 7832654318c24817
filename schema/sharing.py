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
for :func:`direct_sink` and, when both a channel and this subscription's executor are there,
gets a :class:`DirectSink` to hand its broker subscription (``live.broker.Sink``): it writes
shared payloads straight to the subscriber's connection as ``next`` messages (the JSON is
encoded once per event and selection, :class:`SharedBatch`; the transport batches a
connection's frames into one write). The calls run broker -> sink -> channel, each through an
interface the lower layer declares (``Sink`` in ``live/broker.py``, :class:`DirectChannel`
here): nothing below imports what it calls. Anything it cannot render the same way (an error, an
awaitable) is left to the ordinary path, which stays the reference behaviour.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, Protocol

from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from graphql import ExecutionResult, OperationType, execute_subscription_event, print_ast
from live.events import Event as StoredEvent


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


class SharedBatch:
    """The API views of one batch the broker offered, and their ``next`` payloads per selection.

    The broker hands one batch (one list of stored events) to every subscriber whose filter it
    matched, one after the other; the views are made once per batch
    (``schema.events.EventViews.batch``) and each selection's encodings once per batch too, so
    from the second subscriber on a delivery is one dictionary look-up. (Payloads also keep
    their own encodings, :class:`SharedPayload`: a batch of another filter holding the same
    event reuses them.)
    """

    __slots__ = ("payloads", "texts")

    def __init__(self, payloads: Sequence[SharedPayload]) -> None:
        self.payloads = payloads
        self.texts: dict[str, list[bytes]] = {}
        """By selection (:attr:`SharingExecutor.share_key`): the JSON of the first payloads
        that can be shared, in order (all of them, or up to the first that cannot)."""


class DirectSink:
    """A subscription's fast lane (``live.broker.Sink``): writes the events the broker offers
    straight to the subscriber's connection as ``next`` messages, rendered by this
    subscription's executor, through the channel the transport offered."""

    __slots__ = ("_batches", "_executor", "_key", "_write")

    def __init__(
        self,
        batches: Callable[[Sequence[StoredEvent]], SharedBatch],
        executor: SharingExecutor,
        channel: DirectChannel,
    ) -> None:
        self._batches = batches
        self._executor = executor
        self._key = executor.share_key
        self._write = channel.write_next

    def __call__(self, events: Sequence[StoredEvent]) -> int:
        """Write ``events`` (in cursor order); how many of the first ones were written (the
        rest take the ordinary path: one that cannot be shared, or a backlogged connection)."""
        batch = self._batches(events)
        texts = batch.texts.get(self._key)
        if texts is None:
            texts = batch.texts[self._key] = self._encode(batch.payloads)
        return len(texts) if texts and self._write(texts) else 0

    def _encode(self, payloads: Sequence[SharedPayload]) -> list[bytes]:
        key = self._key
        texts: list[bytes] = []
        for payload in payloads:
            found = payload.__dict__.get(TEXTS_ATTRIBUTE)  # the common case, inlined
            text = found.get(key) if found is not None else None
            if text is None:
                text = self._executor.encoded(payload)
                if text is None:
                    break  # this one takes the ordinary path, and so does what follows
            texts.append(text)
        return texts


def direct_sink(batches: Callable[[Sequence[StoredEvent]], SharedBatch]) -> DirectSink | None:
    """For a subscription resolver: the fast lane of this operation, mapping the broker's
    batches to shared views with ``batches``; None when the transport offers no channel (or
    the operation is not executed by a :class:`SharingExecutor`)."""
    channel = _channel.get()
    executor = _executor.get()
    if channel is None or executor is None:
        return None
    return DirectSink(batches, executor, channel)


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
