"""Fan-out of the event log to live subscribers: one tail per process, N bounded queues.

The seam of live delivery: everything above (controllers, services, GraphQL, the transport)
takes events from here, through :meth:`Broker.listen` (in-process listeners, every event),
:meth:`Broker.on_trimmed` (told when the tail lost events to the cap) and
:meth:`Broker.subscribe` (a :class:`Subscription`: an async iterator of events and markers for
one filter, with an optional :class:`Sink` for the fast lane). Nothing here imports them.

A :class:`Broker` runs ONE task tailing the :class:`~live.log.EventLog` and offers every
event to each :class:`Subscription`. Offering never awaits: the filter is applied first (the
organisation is mandatory, so another tenant's event is never queued), then the event goes into
the subscription's bounded queue, so a slow subscriber never delays the tail or the others.

Queue pressure: a PROGRESS event replaces the PROGRESS of the same resource still waiting in the
queue (the older one is removed and the new one appended, so the queue stays in cursor order and
the resume cursor stays meaningful). If the queue is still full, the subscription is detached
and, after the events already queued, yields an ``OVERFLOW`` :class:`Marker` carrying its last
delivered cursor, then ends; the client reconnects with ``after``.

Resuming (``after`` given): the subscription registers for live events at once, then replays
the log page by page, driven by the consumer (so replay is bounded too). Live events queued in
the meantime overlap the replay; everything is delivered in cursor order and anything at or
below the last delivered cursor is dropped, so there is neither gap nor duplicate. If live
events overflow the queue during the replay they are dropped and the replay simply reads on:
the log has them. Why this has no gap: the tail only offers events already visible in the log,
so any event dropped from the queue was visible before the next replay read started; the replay
ends only after a read that returned nothing and during which nothing was dropped.

Direct delivery: a subscriber whose transport can write an event synchronously (see
``schema/sharing.py``) hands the subscription a :class:`Sink`. While the consumer is parked waiting,
live and with nothing queued, an offered event goes straight to the sink instead of the queue:
no task wakes for it. Whenever that is not so (replaying, events queued, the consumer busy, or
the sink refusing because the connection is backlogged) the event takes the queue as above, and
the queue drains before the sink is used again, so the order never changes.

"Older than held": after each replay page, ``oldest`` (the oldest cursor still held) is read;
if ``oldest > last + 1`` the events between were trimmed by the capped collection, and the
subscriber gets a ``RESYNC_REQUIRED`` marker (cursor = ``oldest - 1``: the stream goes on after
it, so it is also the ``after`` to resubscribe with) and continues from there. Cursors are
dense (max + 1 allocation), so that test is exact. An empty log holds nothing; a cursor above
the newest (or any cursor on an empty log) belongs to a log that was reset, which also gets
``RESYNC_REQUIRED`` (cursor 0 when empty) and then everything held.

Trimmed before the tail read them: if this process's tail itself falls so far behind that the
capped collection drops events before it reads them (a burst of thousands of events a second on
a small log), it cannot know what the lost ones were or whom they concerned. Every live
subscriber then gets ``RESYNC_REQUIRED`` (cursor = the last lost one) in its place in the stream,
after the events before the hole and before those after it, and :meth:`Broker.on_trimmed`
callbacks run (the inference controller resyncs); nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Protocol, Self

from pymongo.errors import PyMongoError

from live.events import SERVER_WIDE, Event, EventType, ResourceKind, format_cursor
from live.log import EventLog
from storage.cancellation import raise_if_cancelled

logger = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 256
DEFAULT_REPLAY_PAGE = 200
_RETRY_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a subscriber wants; the organisation is mandatory."""

    organization_id: str
    resource_kind: ResourceKind | frozenset[ResourceKind] | None = None
    """One kind, several, or any."""
    resource_id: str | None = None
    model_id: str | None = None
    kinds: frozenset[ResourceKind] | None = field(init=False, default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.organization_id:
            raise ValueError("an event filter needs an organisation")
        kind = self.resource_kind
        kinds = None if kind is None else kind if isinstance(kind, frozenset) else frozenset({kind})
        object.__setattr__(self, "kinds", kinds)

    def matches(self, event: Event) -> bool:
        """True when the event belongs to the organisation (or to the whole server) and every
        set field agrees."""
        return (
            event.organization_id in (self.organization_id, SERVER_WIDE)
            and (self.kinds is None or event.resource_kind in self.kinds)
            and (self.resource_id is None or event.resource_id == self.resource_id)
            and (
                self.model_id is None
                or self.model_id in event.model_ids
                or (
                    event.resource_kind == ResourceKind.MODEL and event.resource_id == self.model_id
                )
            )
        )


def _call_each(callbacks: Sequence[Callable[..., None]], *args: object) -> None:
    """Call every listener; one that fails is logged and the others still run."""
    for callback in callbacks:
        try:
            callback(*args)
        except Exception:
            logger.exception("event log listener %r failed", callback)


class MarkerKind(StrEnum):
    """Out-of-band news for a subscriber."""

    RESYNC_REQUIRED = "RESYNC_REQUIRED"
    """Events after the requested cursor were trimmed: re-read state; what is held follows."""
    OVERFLOW = "OVERFLOW"
    """The subscriber fell behind; reconnect with ``after=cursor``. Nothing follows."""


@dataclass(frozen=True, slots=True)
class Marker:
    """A marker in a subscription's stream (never stored in the log)."""

    kind: MarkerKind
    cursor: int

    @property
    def token(self) -> str:
        """The cursor as the opaque string handed to clients."""
        return format_cursor(self.cursor)


Item = Event | Marker

Listener = Callable[[Event], None]
"""In-process code fed every event the tail reads (:meth:`Broker.listen`): the controllers,
the API-key cache, the sockets' revocation. Cheap, and must not raise."""


class Sink(Protocol):
    """A subscriber's fast lane (:meth:`Subscription.deliver_directly`): the GraphQL layer
    implements it (``schema.sharing.DirectSink``), the broker only calls it, so live delivery
    never imports what sits above it."""

    def __call__(self, events: Sequence[Event]) -> int:
        """Deliver ``events`` (in cursor order, already matching the filter) now, without a
        task; how many of the first ones were delivered (the rest queue)."""
        ...


class Subscription:
    """An async iterator of :class:`Event` and :class:`Marker` for one subscriber.

    Use it as ``async with broker.subscribe(...) as subscription: async for item in ...``.
    """

    def __init__(
        self,
        broker: Broker,
        event_filter: EventFilter,
        *,
        last: int,
        replay: bool,
        capacity: int,
        replay_page: int,
    ) -> None:
        self._broker = broker
        self.filter = event_filter
        self._last = last
        self._replaying = replay
        self._capacity = capacity
        self._replay_page = replay_page
        self._replay_position = last
        self._checked_future = False
        self._replay_buffer: list[Item] = []
        self._dropped_during_replay = False
        self._queue: OrderedDict[int, Item] = OrderedDict()  # by cursor (a marker's is unused)
        self._progress: dict[tuple[ResourceKind, str], int] = {}
        self._overflowed = False
        self._closed = False
        self._wake = asyncio.Event()
        self._sink: Sink | None = None
        self._parked = False

    @property
    def last_delivered(self) -> int:
        """The cursor of the last event handed to the subscriber (where to resume)."""
        return self._last

    @property
    def waiting(self) -> bool:
        """True while the consumer waits for live events with nothing queued (the state in which
        a sink given to :meth:`deliver_directly` takes them)."""
        return self._parked and not self._queue and not self._replaying

    @property
    def queued(self) -> int:
        """Events waiting in the live queue (for tests and metrics)."""
        return len(self._queue)

    def deliver_directly(self, sink: Sink) -> None:
        """Hand live events to ``sink`` while the consumer is idle (see the module docstring).
        ``sink`` takes events in cursor order and returns how many of the first ones it
        delivered; the rest (it could not take them now) queue."""
        self._sink = sink

    def offer_matching(self, events: Sequence[Event]) -> None:
        """Take live events already known to match the filter, in cursor order; never awaits
        (called by the broker's tail)."""
        if self._closed or self._overflowed:
            return
        sink = self._sink
        if sink is not None and self.waiting:
            taken = sink(events)
            if taken:
                self._last = events[taken - 1].cursor
                self._broker.direct_deliveries += taken
                events = events[taken:]
        for event in events:
            self._enqueue(event)
            if self._overflowed:
                return

    def offer_resync(self, resume_after: int) -> None:
        """The tail found the cursors up to ``resume_after`` trimmed before this process read
        them: tell the subscriber in their place (see the module docstring). A replaying
        subscription reads the log itself and finds the trim there."""
        if self._closed or self._overflowed or self._replaying:
            return
        self._enqueue(Marker(MarkerKind.RESYNC_REQUIRED, resume_after))

    def _enqueue(self, item: Item) -> None:
        self._broker.queued_deliveries += 1
        key = (  # only PROGRESS coalesces, per resource
            (item.resource_kind, item.resource_id)
            if isinstance(item, Event) and item.type == EventType.PROGRESS
            else None
        )
        if key is not None:
            waiting = self._progress.pop(key, None)
            if waiting is not None:
                self._queue.pop(waiting, None)
        if len(self._queue) >= self._capacity:
            if self._replaying:
                # The replay reads these from the log anyway; see the module docstring.
                self._queue.clear()
                self._progress.clear()
                self._dropped_during_replay = True
            else:
                self._overflowed = True
                self._broker.detach(self)
                self._wake.set()
                return
        self._queue[item.cursor] = item
        if key is not None:
            self._progress[key] = item.cursor
        self._wake.set()

    def end(self) -> None:
        """End the stream at once and stop receiving events."""
        self._closed = True
        self._broker.detach(self)
        self._wake.set()

    async def aclose(self) -> None:
        """Stop receiving; the iterator ends."""
        self._queue.clear()
        self._replay_buffer.clear()
        self.end()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Item:
        while not self._closed:
            if self._replaying:
                item = await self._next_replayed()
                if item is not None:
                    return item
                continue
            while self._queue:
                cursor, queued = self._queue.popitem(last=False)
                if isinstance(queued, Event):
                    key = (queued.resource_kind, queued.resource_id)
                    if self._progress.get(key) == cursor:
                        del self._progress[key]
                if cursor > self._last:  # (a marker's cursor, a lost one, always is)
                    self._last = cursor
                    return queued
            if self._overflowed:
                self.end()
                return Marker(MarkerKind.OVERFLOW, self._last)
            self._wake.clear()
            self._parked = True
            try:
                await self._wake.wait()
            finally:
                self._parked = False
        raise StopAsyncIteration

    async def _next_replayed(self) -> Item | None:
        """The next replayed item, or None after reading a page (or finishing the replay)."""
        while self._replay_buffer:
            item = self._replay_buffer.pop(0)
            if isinstance(item, Marker):
                return item
            if item.cursor > self._last:
                self._last = item.cursor
                return item
        self._dropped_during_replay = False
        log = self._broker.log
        position = self._replay_position
        page = await log.after(
            position, limit=self._replay_page, organization_id=self.filter.organization_id
        )
        oldest = await log.oldest_cursor()  # read after the page: proves the page complete
        resync_at: int | None = None
        if oldest is None:
            if position > 0:
                resync_at = 0  # nothing held, yet a cursor: the log was dropped and restarted
        elif oldest > position + 1:
            resync_at = oldest  # events after the cursor were trimmed
        elif not self._checked_future and position > (await log.latest_cursor() or 0):
            resync_at = oldest  # a cursor beyond the newest event: from a log since reset
        self._checked_future = True
        if resync_at is not None:
            resume_after = max(resync_at - 1, 0)
            self._replay_buffer = [Marker(MarkerKind.RESYNC_REQUIRED, resume_after)]
            self._replay_position = self._last = resume_after
            return None
        if page:
            self._replay_buffer = [event for event in page if self.filter.matches(event)]
            self._replay_position = page[-1].cursor
        elif not self._dropped_during_replay:
            self._replaying = False  # caught up; the live queue continues from here
        return None


class Broker:
    """One per process: tails the event log once and feeds every subscription."""

    def __init__(
        self,
        log: EventLog,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        replay_page: int = DEFAULT_REPLAY_PAGE,
    ) -> None:
        if queue_size < 1 or replay_page < 1:
            raise ValueError("queue_size and replay_page must be positive")
        self.log = log
        self._queue_size = queue_size
        self._replay_page = replay_page
        self._subscriptions: set[Subscription] = set()
        self._position = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._listeners: list[Listener] = []
        self._trim_listeners: list[Callable[[], None]] = []
        self.direct_deliveries = 0
        """Events written to a subscriber's connection by the tail itself (the fast lane)."""
        self.queued_deliveries = 0
        """Events put in a subscriber's queue, for its own task to deliver."""
        self.coalesced = 0
        """PROGRESS events offered to no subscriber: a later one of the same batch replaced it."""

    def listen(self, listener: Listener) -> None:
        """Call ``listener`` with every event of every organisation as the tail reads it
        (controllers are fed this way, docs/architecture.md decision 4). It must be cheap and must
        not raise; a failure is logged and the event still reaches the subscribers."""
        self._listeners.append(listener)

    def on_trimmed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the tail finds events trimmed from the log before it read
        them, so a listener that missed some can look again (a controller resyncs). Same rules
        as :meth:`listen`: cheap, and a failure is only logged."""
        self._trim_listeners.append(callback)

    @property
    def position(self) -> int:
        """The cursor of the newest event the tail has seen."""
        return self._position

    async def start(self) -> None:
        """Start tailing from the newest event now."""
        if self._task is not None or self._closed:
            raise RuntimeError("broker already started or closed")
        self._position = await self.log.latest_cursor() or 0
        self._task = asyncio.create_task(self._run(), name="event-log-tail")

    async def close(self) -> None:
        """Stop the tail task and end every subscription."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})  # our own cancellation still propagates from here
        for subscription in list(self._subscriptions):
            subscription.end()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def subscribe(self, event_filter: EventFilter, *, after: int | None = None) -> Subscription:
        """A subscription to events matching ``event_filter``, live from now or after ``after``.

        Raises ``RuntimeError`` unless the broker is running.
        """
        if not self.running:
            raise RuntimeError("broker is not running")
        subscription = Subscription(
            self,
            event_filter,
            last=self._position if after is None else after,
            replay=after is not None,
            capacity=self._queue_size,
            replay_page=self._replay_page,
        )
        self._subscriptions.add(subscription)
        return subscription

    def detach(self, subscription: Subscription) -> None:
        """Stop offering events to ``subscription`` (it ended or overflowed)."""
        self._subscriptions.discard(subscription)

    @property
    def running(self) -> bool:
        """True while the tail runs and new subscriptions are accepted."""
        return self._task is not None and not self._task.done() and not self._closed

    @property
    def subscribers(self) -> int:
        """How many subscriptions receive live events."""
        return len(self._subscriptions)

    async def _run(self) -> None:
        try:
            await self._follow()
        except Exception:
            logger.exception("event log tail stopped; ending every subscription")
            raise
        finally:
            for subscription in list(self._subscriptions):
                subscription.end()

    def _dispatch(self, batch: list[Event]) -> None:
        """Hand a batch read from the log to the listeners (every event) and the subscribers
        (every event, except a PROGRESS that a later PROGRESS of the same resource in this
        batch supersedes: a queue would coalesce them anyway, and a burst of progress costs
        one delivery per subscriber instead of one per event)."""
        newest_progress: dict[tuple[ResourceKind, str], int] = {}
        offered: list[Event] = []
        for event in batch:
            if event.type == EventType.PROGRESS:
                newest_progress[(event.resource_kind, event.resource_id)] = event.cursor
        for event in batch:
            if event.cursor <= self._position:
                logger.warning("event log: the tail repeated cursor %d", event.cursor)
                continue
            if event.cursor > self._position + 1:
                if offered:  # what came before the hole goes first
                    self._fan_out(offered)
                    offered = []
                self._trimmed(self._position + 1, event.cursor - 1)
            self._position = event.cursor
            _call_each(self._listeners, event)
            if (
                event.type == EventType.PROGRESS
                and newest_progress[(event.resource_kind, event.resource_id)] != event.cursor
            ):
                self.coalesced += 1
                continue
            offered.append(event)
        if offered:
            self._fan_out(offered)

    def _trimmed(self, first: int, last: int) -> None:
        """Cursors ``first..last`` were trimmed before the tail read them: tell every live
        subscriber in their place, and the trim listeners (see the module docstring)."""
        logger.warning(
            "event log: cursors %d..%d were trimmed before the tail read them; "
            "every live subscriber is told RESYNC_REQUIRED",
            first,
            last,
        )
        for subscription in list(self._subscriptions):
            subscription.offer_resync(last)
        _call_each(self._trim_listeners)

    def _fan_out(self, offered: list[Event]) -> None:
        # Subscribers with equal filters (a thousand dashboards) share one matching pass.
        matching: dict[EventFilter, list[Event]] = {}
        for subscription in list(self._subscriptions):
            wanted = matching.get(subscription.filter)
            if wanted is None:
                wanted = [event for event in offered if subscription.filter.matches(event)]
                matching[subscription.filter] = wanted
            if wanted:
                subscription.offer_matching(wanted)

    async def _follow(self) -> None:
        failures = 0
        while True:
            try:
                async with contextlib.aclosing(self.log.tail_batches(self._position)) as batches:
                    async for batch in batches:
                        failures = 0
                        self._dispatch(batch)
            except PyMongoError as exc:
                raise_if_cancelled()  # a close PyMongo turned into an error or swallowed
                delay = _RETRY_DELAYS[min(failures, len(_RETRY_DELAYS) - 1)]
                failures += 1
                logger.warning(
                    "event log tail failed (%s); retrying in %.1f s", type(exc).__name__, delay
                )
                await asyncio.sleep(delay)
