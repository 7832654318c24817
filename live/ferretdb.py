"""Everything the event log does because FerretDB 1.24 cannot tail: the head document, the
ring, and the polling tail (and :func:`clash_on_key`, for a duplicate-key error that does not
name its index). The ONLY module with these work-arounds (``live/log.py`` uses them through
:class:`HeadAndRing`, :class:`LocalAppends`, :func:`poll` and :func:`clash_on_key`).

Why they exist. On MongoDB a tailable awaitData cursor blocks in ``getMore`` until data
arrives. FerretDB 1.24 closes a tailable cursor whenever its first batch is not full
(``msg_find.go``), so the cursor is dead right after the first (empty or short) batch; it has
no change streams either. :func:`ferretdb_version` asks the server (``buildInfo``) so the log
polls on FerretDB from the start. (Before that check, a FerretDB cursor that stayed open handed
a burst of 5,000 PROGRESS events/s over one at a time, and subscribers had not reached the final
value when ``bench/fanout.py`` stopped; another handed back a range of several hundred old
events, again and again.)

The head document (``event_head``, one tiny document holding the newest cursor, raised with
``$max`` after each insert) rather than ``max(_id)``: FerretDB reads the whole log for any query
on it, 15 ms per append at 100 events, 90 ms at 1,000 (``max(_id)``), against about 1 ms for the
head. If a process dies between its insert and the head update, the head trails by one until
the next append probes past it; ``EventLog.ensure`` repairs it at start-up.

Polling is made cheap. Events this process appended are handed to its tails from memory at once
(:class:`LocalAppends`). Events of other processes are read from a 128-slot ring collection
(``event_ring``, written before the head is raised), one ``find_one`` per new event by its
slot's *string* ``_id`` (``"017"`` for cursor 145): FerretDB 1.24 pushes an ``_id`` equality
down to SQLite for a string but not for a number, so these cost about 1 ms of FerretDB CPU
each, against 4 to 6 ms for an integer-keyed slot and 190 ms for ``find_one`` by cursor in a
5,000-event log (measured here, ``bench/fanout.py`` and ad-hoc timings). The log itself is read
only when a tail is too far behind for the ring, when a slot the head promised stays empty for
:data:`GAP_PATIENCE`, and as a backstop after ten quiet seconds (see :class:`_PollingTail`).

Known FerretDB 1.24 limits (SQLite backend), measured on 30,000 events: it pushes down neither
``_id`` ranges nor sorts, so each query reads the whole log (about 2 s at that size). Capped
size is enforced by a background sweep (or on ``compact``), not on insert: once a minute by
default, every 5 s on the embedded server (``modelplane/embedded.py``), because a burst of 5,000
events/s grew the log to 100,000 events between minute sweeps and each catch-up read then took
7 s. Production deployments with busy logs want MongoDB; the embedded default keeps the log
small.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bson.int64 import Int64
from pymongo import ReplaceOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from live.events import Event
from storage.cancellation import raise_if_cancelled
from storage.client import Database

HEAD_COLLECTION = "event_head"
HEAD_ID = "head"
RING_COLLECTION = "event_ring"
LEGACY_RING_COLLECTION = "event_recent"  # integer slots: dropped by ensure()
RING_SLOTS = 128
RING_MARGIN = 16
LOCAL_BUFFER = 4096
BACKSTOP_SECONDS = 10.0
GAP_PATIENCE = 1.0
CATCH_UP_LIMIT = 20_000
READ_AHEAD = 8
DUPLICATE_KEY = 11000
BULK_LIMIT = 32
"""Writes per bulk command: FerretDB 1.24 answered a 64-statement ``update`` in about 40 ms
and never answered one of 100 (``bench/bulk_writes.py``)."""


async def ferretdb_version(database: Database) -> str | None:
    """The FerretDB version the server reports (``buildInfo``), None for another server."""
    build = await database.command("buildInfo")
    version = build.get("ferretdbVersion")
    return None if version is None else str(version)


async def clash_on_key(
    events: AsyncCollection[dict[str, Any]],
    key: str,
    details: Mapping[str, Any] | None,
    candidate: int,
    head: int,
) -> bool:
    """Whether a duplicate key (its error's ``details``) on inserting event ``candidate`` was
    the event's ``key`` (the log holds it already) rather than its cursor. MongoDB names the
    index; FerretDB 1.24 does not: a head at or past the candidate means the cursor was taken
    (a clash on the key too shows at the next number); otherwise the key is looked up, a
    whole-log read on FerretDB but only on this rare path (a recovery racing a writer)."""
    pattern = (details or {}).get("keyPattern")
    if isinstance(pattern, Mapping) and pattern:
        return "key" in pattern
    if head >= candidate:
        return False
    return await events.find_one({"key": key}, {"_id": 1}) is not None


async def bulk_write(
    collection: AsyncCollection[dict[str, Any]], writes: Sequence[ReplaceOne[Any] | UpdateOne]
) -> None:
    """One ordered bulk write of at most :data:`BULK_LIMIT` idempotent writes, written again
    once when two first upserts of a document raced (it exists now)."""
    for attempt in range(2):
        try:
            await collection.bulk_write(list(writes), ordered=True)
        except BulkWriteError as exc:
            if attempt or not _only_duplicates(exc):
                raise
            continue
        return


def _only_duplicates(exc: BulkWriteError) -> bool:
    """Whether every error of a bulk write was a duplicate key (a racing first upsert)."""
    errors = exc.details.get("writeErrors") or []
    return bool(errors) and all(error.get("code") == DUPLICATE_KEY for error in errors)


def _slot(cursor: int) -> str:
    """The ring slot of a cursor, as a string ``_id`` (see the module docstring)."""
    return f"{cursor % RING_SLOTS:03d}"


class HeadAndRing:
    """The head document and the ring of one database: what other processes poll instead of
    reading the log (see the module docstring)."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._head = database[HEAD_COLLECTION]
        self._ring = database[RING_COLLECTION]

    async def ensure(self) -> None:
        """Drop the ring of older versions (integer slots; a cache only)."""
        names = await self._database.list_collection_names(filter={"name": LEGACY_RING_COLLECTION})
        if LEGACY_RING_COLLECTION in names:
            await self._database.drop_collection(LEGACY_RING_COLLECTION)

    async def head(self) -> int:
        """The newest cursor as the head document records it (one tiny-collection read; it may
        trail the log briefly after a crash, which appends and the tail's backstop tolerate)."""
        raw = await self._head.find_one({"_id": HEAD_ID})
        return 0 if raw is None else int(raw["cursor"])

    async def raise_head(self, cursor: int) -> None:
        """Raise the head to ``cursor`` (never lowers it)."""
        for _ in range(2):
            try:
                await self._head.update_one(
                    {"_id": HEAD_ID}, {"$max": {"cursor": Int64(cursor)}}, upsert=True
                )
            except DuplicateKeyError:
                continue  # two first upserts raced; the document exists now: update it
            return

    async def publish(self, events: Sequence[Event]) -> None:
        """Let other processes see ``events`` (in cursor order): their ring slots first, in one
        write, then the head once (so a head value promises its ring entries, barring a
        crash)."""
        if not events:
            return
        slots: dict[str, ReplaceOne[dict[str, Any]]] = {}
        for event in events:  # a later event in the same slot replaces an earlier one
            document = {**event.to_mongo(), "_id": _slot(event.cursor)}
            document["cursor"] = Int64(event.cursor)
            slots[document["_id"]] = ReplaceOne({"_id": document["_id"]}, document, upsert=True)
        writes = list(slots.values())
        for start in range(0, len(writes), BULK_LIMIT):
            await bulk_write(self._ring, writes[start : start + BULK_LIMIT])
        await self.raise_head(max(event.cursor for event in events))

    async def ring_after(self, last: int, head: int) -> tuple[list[Event], bool] | None:
        """Events ``last+1 ..`` from the ring, and whether they reach ``head``: it stops at a
        slot not written yet (another process's append between its insert and its ring write,
        or a writer that died there). None when the tail is too far behind for the ring (a
        slot already holds a newer event): then the log itself must be read."""
        if head - last > RING_SLOTS - RING_MARGIN:
            return None
        wanted = range(last + 1, head + 1)
        found = await asyncio.gather(
            *(self._ring.find_one({"_id": _slot(cursor)}) for cursor in wanted)
        )
        events: list[Event] = []
        for cursor, raw in zip(wanted, found, strict=True):
            if raw is None or int(raw["cursor"]) < cursor:
                return events, False  # not written yet
            if int(raw["cursor"]) > cursor:
                return None  # overwritten: too far behind
            events.append(Event.from_mongo({**raw, "_id": cursor}))
        return events, True


class LocalAppends:
    """This process's recent appends, handed to its polling tails from memory at once."""

    def __init__(self, size: int = LOCAL_BUFFER) -> None:
        self._events: deque[Event] = deque(maxlen=size)
        self._wakers: set[asyncio.Event] = set()

    def add(self, event: Event) -> None:
        """Remember an event this process inserted and wake its tails."""
        self._events.append(event)
        for waker in self._wakers:
            waker.set()

    @contextlib.contextmanager
    def waker(self) -> Iterator[asyncio.Event]:
        """An event set by every :meth:`add` while the block runs."""
        waker = asyncio.Event()
        self._wakers.add(waker)
        try:
            yield waker
        finally:
            self._wakers.discard(waker)

    def after(self, last: int) -> list[Event]:
        """This process's recent appends ``last+1, last+2, ...``, oldest first, up to the first
        cursor another process holds (the database has that one). Read from the newest end,
        so a tail that keeps up looks at one or two of them."""
        fresh: list[Event] = []
        for event in reversed(self._events):
            if event.cursor <= last:
                break
            fresh.append(event)
        fresh.reverse()
        for taken, event in enumerate(fresh):
            if event.cursor != last + 1 + taken:
                return fresh[:taken]
        return fresh


class PolledLog(Protocol):
    """What the polling tail reads of the log (looked up at each read: tests count them)."""

    async def head_cursor(self) -> int:
        """The head document's cursor."""
        ...

    async def after(
        self, cursor: int, *, limit: int, organization_id: str | None = None
    ) -> list[Event]:
        """Up to ``limit`` events after ``cursor``, oldest first."""
        ...


@dataclass(frozen=True, slots=True)
class PollOptions:
    """How often a polling tail looks, and how much it reads at once."""

    interval: float
    limit: int
    backstop_seconds: float = BACKSTOP_SECONDS


async def _woken(waker: asyncio.Event, seconds: float) -> None:
    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that races
    # with the waker, and the tail would never stop.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, seconds)):
            await waker.wait()


class _PollingTail:
    """One polling tail's position and timers (see :func:`poll`)."""

    def __init__(
        self,
        log: PolledLog,
        ring: HeadAndRing,
        local: LocalAppends,
        options: PollOptions,
        last: int,
    ) -> None:
        self._log, self._ring, self._local, self._options = log, ring, local, options
        self.last = last
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        self._backstop = now + options.backstop_seconds
        self._next_read = now  # when to look at the database again
        self._gap_since: float | None = None  # when the ring first lacked a promised event

    async def batches(self) -> AsyncGenerator[list[Event], None]:
        with self._local.waker() as waker:
            while True:
                waker.clear()
                local = self._local.after(self.last)
                if local:
                    self.last = local[-1].cursor
                    yield local
                now = self._loop.time()
                if now < self._next_read:  # woken by an append of this process: nothing to read
                    await _woken(waker, self._next_read - now)
                    continue
                self._next_read = now + self._options.interval
                fresh, more = await self._read(now)
                raise_if_cancelled()  # a close that PyMongo's lock swallowed mid-read
                if fresh:  # (this process's own may have come from memory already)
                    self.last = fresh[-1].cursor
                    yield fresh
                if more:
                    self._next_read = now  # more to read at once
                    continue
                await _woken(waker, self._next_read - self._loop.time())

    async def _read(self, now: float) -> tuple[list[Event], bool]:
        """New events from the ring, or from the log when the ring cannot serve; and whether
        the log read was full (more to read at once)."""
        last = self.last
        head = await self._log.head_cursor()
        batch = await self._from_ring(head, now) if head > last else []
        read_log = (
            batch is None  # too far behind for the ring
            or (self._gap_since is not None and now - self._gap_since >= GAP_PATIENCE)
            or (head <= last and now >= self._backstop)
        )
        if not read_log:
            return [event for event in batch or [] if event.cursor > last], False
        self._backstop, self._gap_since = now + self._options.backstop_seconds, None
        # Every read costs a whole-log scan on FerretDB: when far behind, take everything
        # missed (bounded) in one read instead of pages of the poll limit.
        limit = max(self._options.limit, min(head - last, CATCH_UP_LIMIT))
        batch = await self._log.after(last, limit=limit)
        return [event for event in batch if event.cursor > last], len(batch) == limit

    async def _from_ring(self, head: int, now: float) -> list[Event] | None:
        self._backstop = now + self._options.backstop_seconds  # the head moves: a gap shows
        found = await self._ring.ring_after(self.last, head)
        if found is None or found[1]:
            self._gap_since = None
        elif self._gap_since is None:
            self._gap_since = now
        return None if found is None else found[0]


def poll(
    log: PolledLog, ring: HeadAndRing, local: LocalAppends, options: PollOptions, last: int
) -> AsyncGenerator[list[Event], None]:
    """Tail without server-side waiting, cheaply on FerretDB (which scans the whole log for
    any query): events this process appended are delivered from memory at once; events from
    other processes come from the ring when the head document shows them. The log itself is
    read only when the ring cannot serve: the tail is too far behind, or a slot the head
    promised stayed empty for :data:`GAP_PATIENCE` (a writer died between its insert and its
    ring write; a slot written a moment late by a racing writer is simply read at the next
    poll); and, as a backstop in case a head update was lost, after ten seconds without a new
    event. (A backstop on a timer regardless of traffic cost a whole-log scan in the middle of
    busy polling: ``bench/fanout.py`` saw deliveries stall 200 to 370 ms when one landed.)
    Batches come read ahead (:func:`read_ahead`)."""
    return read_ahead(_PollingTail(log, ring, local, options, last).batches())


async def read_ahead(
    batches: AsyncGenerator[list[Event], None],
) -> AsyncGenerator[list[Event], None]:
    """``batches``, iterated by a task of its own so that the next read of the database is
    under way while the caller handles the previous batch. Polling and handling otherwise take
    turns on one loop: in ``bench/fanout.py`` (1,000 subscribers, 100 events/s from another
    process) a poll cycle was the head and ring reads (about 8 ms) *then* the fan-out and the
    socket writes (about 40 ms), every event waiting for both. Batches the caller has not taken
    yet are handed over joined, as one (up to :data:`READ_AHEAD` reads are held)."""
    queue: asyncio.Queue[list[Event] | BaseException | None] = asyncio.Queue(READ_AHEAD)

    async def pump() -> None:
        try:
            async with contextlib.aclosing(batches) as source:
                async for batch in source:
                    await queue.put(batch)
        except Exception as exc:  # noqa: BLE001  handed over: the caller raises it (and retries)
            await queue.put(exc)
        else:
            await queue.put(None)

    reader = asyncio.create_task(pump(), name="event-log-read-ahead")
    try:
        while True:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            joined = [event for item in items if isinstance(item, list) for event in item]
            if joined:
                yield joined
            end = items[-1]  # the reader stops after an exception or the end, so they come last
            if isinstance(end, BaseException):
                raise end
            if end is None:
                return
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
