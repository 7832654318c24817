"""The event log: a capped collection of phase changes and progress, read by cursor (decision 5).

Every event's ``_id`` is its cursor, an int64 taken from one dense sequence (1, 2, 3, ...).
Clients see it as an opaque decimal string and hand it back as ``after:`` to resume.

Cursor allocation is *head + 1, probing upward on a duplicate key*. The ``_id`` unique index is
the only arbiter: a writer reads the head document (``event_head``, one tiny document holding the
newest cursor, raised with ``$max`` after each insert) and inserts the next number; if another
process took it, it tries the one after. This was chosen over a counter bumped with ``$inc``
before the insert for two reasons:

* FerretDB 1.24 loses concurrent ``$inc`` updates, so a counter needs ``_id`` as arbiter anyway.
* More importantly, a counter hands out numbers before the event is written, so event 6 can
  become visible before event 5 (writer of 5 paused between ``$inc`` and insert). A reader that
  already moved past 6 would never see 5. Here a number above the head is only tried after
  every number up to the head was inserted (or seen taken), so events become visible in cursor
  order, the sequence has no holes, and insertion (natural) order equals cursor order -- which
  tailable cursors rely on.

The head (rather than ``max(_id)``) matters on FerretDB, which reads the whole log for any query
on it: 15 ms per append at 100 events, 90 ms at 1,000 (``max(_id)``), against about 1 ms for the
head. If a process dies between its insert and the head update, the head trails by one until the
next append probes past it; :meth:`EventLog.ensure` repairs it at start-up.

Exactly once per write: an event that describes a document write carries a ``key`` (resource,
revision, type; :func:`event_key`) under a sparse unique index, so the writer, a recovery on
another replica and a retry cannot append it twice (:class:`DuplicateEvent`). The write marks
the event as owed in the document itself and :class:`Recorder` clears the mark after the
append; ``storage/recovering.py`` appends what a crash left owed. PROGRESS events have no key.

Tailing: on MongoDB a tailable awaitData cursor blocks in ``getMore`` until data arrives. FerretDB
1.24 closes a tailable cursor whenever its first batch is not full (``msg_find.go``), so the
cursor is dead right after the first (empty or short) batch. :meth:`EventLog.ensure` therefore
asks the server (``buildInfo``) and polls on FerretDB from the start; on other servers
:meth:`EventLog.tail` tries the tailable cursor and, when the server ended it at once while the
log holds events, falls back to polling (logged once). It also falls back when a tailable
cursor hands back an event at or below one it already returned, which FerretDB's did under load
in ``bench/fanout.py`` (a range of several hundred old events, again and again); MongoDB's never
do. (Before the ``buildInfo`` check, a FerretDB cursor that stayed open also handed a burst of
5,000 PROGRESS events/s over one at a time, and subscribers had not reached the final value
when the benchmark stopped.)

Polling is made cheap. Events this process appended are handed to its tail from memory at once.
Events of other processes are read from a 128-slot ring collection (``event_ring``, written
before the head is raised), one ``find_one`` per new event by its slot's *string* ``_id``
(``"017"`` for cursor 145): FerretDB 1.24 pushes an ``_id`` equality down to SQLite for a
string but not for a number, so these cost about 1 ms of FerretDB CPU each, against 4 to 6 ms
for an integer-keyed slot and 190 ms for ``find_one`` by cursor in a 5,000-event log (measured
here, ``bench/fanout.py`` and ad-hoc timings). The log itself is read only when a tail is too
far behind for the ring, and as a backstop after ten quiet seconds (see :meth:`EventLog._poll`).

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
import logging
from collections import deque
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from bson.int64 import Int64
from pymongo import ASCENDING, DESCENDING, CursorType
from pymongo.errors import CollectionInvalid, DuplicateKeyError, OperationFailure, PyMongoError

from storage.client import Database
from storage.documents import (
    ApiKeyDocument,
    InferenceDocument,
    ModelDocument,
    WeightsDocument,
    utcnow,
)
from storage.errors import StorageError
from storage.locks import document_lock
from storage.repositories import InferenceRepository, ModelRepository, WeightsRepository

logger = logging.getLogger(__name__)

COLLECTION = "events"
HEAD_COLLECTION = "event_head"
HEAD_ID = "head"
RECENT_COLLECTION = "event_ring"
LEGACY_RECENT_COLLECTION = "event_recent"  # integer slots: dropped by ensure()
RECENT_SLOTS = 128
RECENT_MARGIN = 16
LOCAL_BUFFER = 4096
BACKSTOP_SECONDS = 10.0
GAP_PATIENCE = 1.0
CATCH_UP_LIMIT = 20_000
DEFAULT_SIZE_BYTES = 64 * 1024 * 1024
DEFAULT_POLL_INTERVAL = 0.02
MAX_APPEND_ATTEMPTS = 100
KEY_INDEX = "key_unique"
OUTBOX_COLLECTION = "event_outbox"
READ_AHEAD = 8
_AWAIT_MS = 1000  # how long a MongoDB getMore waits for new events before returning empty


class ResourceKind(StrEnum):
    """What an event is about."""

    MODEL = "MODEL"
    WEIGHTS = "WEIGHTS"
    INFERENCE = "INFERENCE"
    API_KEY = "API_KEY"
    """A credential, for the replicas only: no subscription's filter takes it (its phase is
    ``REVOKED`` once revoked; each replica then closes the sockets that use it)."""


API_KEY_REVOKED = "REVOKED"


class EventType(StrEnum):
    """What happened to the resource."""

    CREATED = "CREATED"
    UPDATED = "UPDATED"
    DELETED = "DELETED"
    PHASE_CHANGED = "PHASE_CHANGED"
    PROGRESS = "PROGRESS"


class TailStrategy(StrEnum):
    """How :meth:`EventLog.tail` follows the log.

    ``AUTO`` polls on a server that says it is FerretDB (``buildInfo``, checked by
    :meth:`EventLog.ensure`); elsewhere it tries a tailable awaitData cursor and switches to
    ``POLL`` for good once the server ends such a cursor at once on a non-empty log, or hands
    back an old event. ``TAILABLE`` never polls, ``POLL`` never opens a tailable cursor.
    """

    AUTO = "AUTO"
    TAILABLE = "TAILABLE"
    POLL = "POLL"


class InvalidCursor(StorageError):
    """A cursor string that is not one this log hands out."""

    def __init__(self, text: str) -> None:
        super().__init__(f"invalid event cursor {text!r}")
        self.text = text


class DuplicateEvent(StorageError):
    """The log already holds the event with this key (a recovery or a racing writer was
    first): nothing was appended, and nothing needs to be."""

    def __init__(self, key: str) -> None:
        super().__init__(f"event {key!r} is already in the log")
        self.key = key


def event_key(kind: ResourceKind, resource_id: str, revision: int, type: EventType) -> str:
    """The identity of the event one write of a document owes the log: at most one event per
    resource, revision and type is ever appended (the log's unique ``key`` index)."""
    return f"{kind.value}:{resource_id}:{revision}:{type.value}"


class EventLogNotCapped(StorageError):
    """The ``events`` collection exists but is not capped, so it would grow without bound."""


def format_cursor(cursor: int) -> str:
    """The opaque form of a cursor that clients see."""
    return str(cursor)


def parse_cursor(text: str) -> int:
    """The cursor behind an opaque string from a client; :class:`InvalidCursor` if malformed."""
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise InvalidCursor(text)
    value = int(text)
    if value >= 2**63:
        raise InvalidCursor(text)
    return value


@dataclass(frozen=True, slots=True)
class Event:
    """One stored event; ``cursor`` orders events and resumes subscriptions."""

    cursor: int
    organization_id: str
    resource_kind: ResourceKind
    resource_id: str
    type: EventType
    at: datetime
    model_ids: tuple[str, ...] = ()
    phase: str | None = None
    message: str | None = None
    progress: Mapping[str, Any] | None = field(default=None, hash=False)
    key: str | None = None
    """What the event is the event of (:func:`event_key`), unique in the log; None for events
    that may repeat (PROGRESS)."""

    @property
    def token(self) -> str:
        """The cursor as the opaque string handed to clients."""
        return format_cursor(self.cursor)

    def to_mongo(self) -> dict[str, Any]:
        """The document as stored, ``_id`` being the cursor as an int64 (``key`` only when
        set: the unique index on it is sparse, and a stored null would be indexed)."""
        document: dict[str, Any] = {
            "_id": Int64(self.cursor),
            "organization_id": self.organization_id,
            "resource_kind": self.resource_kind.value,
            "resource_id": self.resource_id,
            "model_ids": list(self.model_ids),
            "type": self.type.value,
            "phase": self.phase,
            "message": self.message,
            "progress": None if self.progress is None else dict(self.progress),
            "at": self.at,
        }
        if self.key is not None:
            document["key"] = self.key
        return document

    @classmethod
    def from_mongo(cls, raw: Mapping[str, Any]) -> Event:
        """Parse a stored document."""
        return cls(
            cursor=int(raw["_id"]),
            organization_id=raw["organization_id"],
            resource_kind=ResourceKind(raw["resource_kind"]),
            resource_id=raw["resource_id"],
            model_ids=tuple(raw.get("model_ids") or ()),
            type=EventType(raw["type"]),
            phase=raw.get("phase"),
            message=raw.get("message"),
            progress=raw.get("progress"),
            at=raw["at"],
            key=raw.get("key"),
        )


def _slot(cursor: int) -> str:
    """The ring slot of a cursor, as a string ``_id`` (see the module docstring)."""
    return f"{cursor % RECENT_SLOTS:03d}"


class EventLog:
    """Append to and read the capped ``events`` collection of one database."""

    def __init__(
        self,
        database: Database,
        *,
        size_bytes: int = DEFAULT_SIZE_BYTES,
        max_events: int | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        poll_limit: int = 500,
        strategy: TailStrategy = TailStrategy.AUTO,
        backstop_seconds: float = BACKSTOP_SECONDS,
    ) -> None:
        if size_bytes <= 0:
            raise ValueError("size_bytes must be positive")
        if poll_interval <= 0 or poll_limit <= 0:
            raise ValueError("poll_interval and poll_limit must be positive")
        self._database = database
        self._collection = database[COLLECTION]
        self._size_bytes = size_bytes
        self._max_events = max_events
        self._poll_interval = poll_interval
        self._poll_limit = poll_limit
        self._strategy = strategy
        self._head = database[HEAD_COLLECTION]
        self._backstop_seconds = backstop_seconds
        self._recent = database[RECENT_COLLECTION]
        self._append_lock = asyncio.Lock()
        self._publish_lock = asyncio.Lock()
        self._fallback_logged = False
        self._poll_reason: str | None = None
        self._next_hint = 0
        self._local: deque[Event] = deque(maxlen=LOCAL_BUFFER)
        self._wakers: set[asyncio.Event] = set()

    @property
    def strategy(self) -> TailStrategy:
        """How tails follow the log (``AUTO`` becomes ``POLL`` in :meth:`ensure` on FerretDB)."""
        return self._strategy

    @property
    def database(self) -> Database:
        """The database the log lives in (the recorder settles documents' marks there)."""
        return self._database

    @property
    def poll_interval(self) -> float:
        """Seconds between polls when the server cannot await data."""
        return self._poll_interval

    async def ensure(self) -> None:
        """Create the capped collection if missing; refuse an existing uncapped one."""
        options: dict[str, Any] = {"capped": True, "size": self._size_bytes}
        if self._max_events is not None:
            options["max"] = self._max_events
        if COLLECTION not in await self._database.list_collection_names(
            filter={"name": COLLECTION}
        ):
            try:
                await self._database.create_collection(COLLECTION, **options)
            except CollectionInvalid:
                pass  # another replica created it first; check it below like any existing one
            except OperationFailure as exc:
                if exc.code != 48:  # NamespaceExists: same race, reported by the server
                    raise
        existing = await self._collection.options()
        if not existing.get("capped"):
            raise EventLogNotCapped(
                f"collection {self._database.name}.{COLLECTION} exists but is not capped; "
                "drop it (events are transient) or convert it with convertToCapped, "
                f"size {self._size_bytes} bytes"
            )
        await self._ensure_key_index()
        newest = await self.latest_cursor()
        if newest is not None:
            await self._raise_head(newest)  # repairs a head left behind by a crash
        if self._strategy is TailStrategy.AUTO:
            build = await self._database.command("buildInfo")
            if "ferretdbVersion" in build:
                # Known not to await data; and a tailable cursor it kept open was seen handing
                # events over one at a time, too slowly for a burst of progress: never try one.
                self._strategy = TailStrategy.POLL
                self._poll_reason = f"is FerretDB {build['ferretdbVersion']}"  # said by tails
        if LEGACY_RECENT_COLLECTION in await self._database.list_collection_names(
            filter={"name": LEGACY_RECENT_COLLECTION}
        ):
            await self._database.drop_collection(LEGACY_RECENT_COLLECTION)  # a cache only

    async def _ensure_key_index(self) -> None:
        """The unique index on ``key`` that lets the log refuse an event it already holds
        (sparse: events without a key, and those of older versions, may repeat)."""
        cursor = await self._collection.list_indexes()
        if KEY_INDEX not in {index["name"] async for index in cursor}:
            await self._collection.create_index(
                [("key", ASCENDING)], name=KEY_INDEX, unique=True, sparse=True
            )

    async def append(
        self,
        *,
        organization_id: str,
        resource_kind: ResourceKind,
        resource_id: str,
        type: EventType,
        model_ids: Sequence[str] = (),
        phase: str | None = None,
        message: str | None = None,
        progress: Mapping[str, Any] | None = None,
        key: str | None = None,
    ) -> Event:
        """Store an event under the next cursor and return it as stored.

        With a ``key`` (:func:`event_key`) the append happens at most once: when the log
        already holds that key, nothing is stored and :class:`DuplicateEvent` is raised.

        Two stages, so this process's appends overlap: the insert (which fixes the cursor and
        hands the event to this process's tails at once) under one lock, then the ring slot
        and the head (which let other processes see it) under another, taken in insert order.
        The cursor tried first follows this process's last append, without reading the head;
        a duplicate key means another process appended meanwhile, and the head says how far.
        """
        async with self._append_lock:  # writers of this process do not race each other
            candidate = (self._next_hint or await self.head_cursor()) + 1
            for _ in range(MAX_APPEND_ATTEMPTS):
                event = Event(
                    cursor=candidate,
                    organization_id=organization_id,
                    resource_kind=resource_kind,
                    resource_id=resource_id,
                    type=type,
                    at=utcnow(),
                    model_ids=tuple(model_ids),
                    phase=phase,
                    message=message,
                    progress=None if progress is None else dict(progress),
                    key=key,
                )
                try:
                    await self._collection.insert_one(event.to_mongo())
                except DuplicateKeyError as exc:
                    head = await self.head_cursor()
                    if key is not None and await self._holds_key(key, exc, candidate, head):
                        raise DuplicateEvent(key) from None
                    # another process took that number: skip to the head (it may have
                    # appended many), or to the next number while its head update trails
                    candidate = max(candidate, head) + 1
                    continue
                self._next_hint = candidate
                self._local.append(event)
                for waker in self._wakers:
                    waker.set()
                break
            else:
                raise StorageError(
                    f"no event cursor after {MAX_APPEND_ATTEMPTS} attempts (contention)"
                )
        # No await between releasing the insert lock and queueing for this one (asyncio locks
        # are FIFO), so events are published in the order they were inserted.
        async with self._publish_lock:
            await self._remember(event)
            await self._raise_head(candidate)
        return event

    async def _holds_key(self, key: str, exc: DuplicateKeyError, candidate: int, head: int) -> bool:
        """Whether a duplicate key on inserting ``candidate`` was the event's ``key`` (already
        in the log) rather than its cursor. MongoDB names the index; FerretDB 1.24 does not:
        a head at or past the candidate means the cursor was taken (a clash on the key too
        shows at the next number); otherwise the key is looked up, a whole-log read on
        FerretDB but only on this rare path (a recovery racing a writer)."""
        pattern = (exc.details or {}).get("keyPattern")
        if isinstance(pattern, Mapping) and pattern:
            return "key" in pattern
        if head >= candidate:
            return False
        return await self._collection.find_one({"key": key}, {"_id": 1}) is not None

    async def head_cursor(self) -> int:
        """The newest cursor as the head document records it (one tiny-collection read; it may
        trail the log briefly after a crash, which appends and the tail's backstop tolerate)."""
        raw = await self._head.find_one({"_id": HEAD_ID})
        return 0 if raw is None else int(raw["cursor"])

    async def _remember(self, event: Event) -> None:
        """Copy the event into its slot of the small ring other processes poll (written
        before the head is raised, so a head value promises its ring entry, barring a crash)."""
        document = {**event.to_mongo(), "_id": _slot(event.cursor)}
        document["cursor"] = Int64(event.cursor)
        for _ in range(2):
            try:
                await self._recent.replace_one({"_id": document["_id"]}, document, upsert=True)
            except DuplicateKeyError:
                continue  # two first upserts of a slot raced; it exists now
            return

    async def _recent_after(self, last: int, head: int) -> tuple[list[Event], bool] | None:
        """Events ``last+1 ..`` from the ring, and whether they reach ``head``: it stops at a
        slot not written yet (another process's append between its insert and its ring write,
        or a writer that died there). None when the tail is too far behind for the ring (a
        slot already holds a newer event): then the log itself must be read."""
        if head - last > RECENT_SLOTS - RECENT_MARGIN:
            return None
        wanted = range(last + 1, head + 1)
        found = await asyncio.gather(
            *(self._recent.find_one({"_id": _slot(cursor)}) for cursor in wanted)
        )
        events: list[Event] = []
        for cursor, raw in zip(wanted, found, strict=True):
            if raw is None or int(raw["cursor"]) < cursor:
                return events, False  # not written yet
            if int(raw["cursor"]) > cursor:
                return None  # overwritten: too far behind
            events.append(Event.from_mongo({**raw, "_id": cursor}))
        return events, True

    async def _raise_head(self, cursor: int) -> None:
        for _ in range(2):
            try:
                await self._head.update_one(
                    {"_id": HEAD_ID}, {"$max": {"cursor": Int64(cursor)}}, upsert=True
                )
            except DuplicateKeyError:
                continue  # two first upserts raced; the document exists now: update it
            return

    async def after(
        self, cursor: int, *, limit: int, organization_id: str | None = None
    ) -> list[Event]:
        """Up to ``limit`` events with a cursor above ``cursor``, oldest first."""
        query: dict[str, Any] = {"_id": {"$gt": Int64(cursor)}}
        if organization_id is not None:
            query["organization_id"] = organization_id
        found = self._collection.find(query).sort("_id", ASCENDING).limit(limit)
        return [Event.from_mongo(raw) async for raw in found]

    async def oldest_cursor(self) -> int | None:
        """The cursor of the oldest event still held, None when the log is empty."""
        return await self._edge(ASCENDING)

    async def latest_cursor(self) -> int | None:
        """The cursor of the newest event, None when the log is empty."""
        return await self._edge(DESCENDING)

    async def tail(self, after: int | None = None) -> AsyncGenerator[Event, None]:
        """Every event with a cursor above ``after`` (default: the newest now), as it arrives.

        Runs until the caller stops iterating (close it with ``aclose``). Database errors are
        raised; the caller may resume with the last cursor it saw.
        """
        async with contextlib.aclosing(self.tail_batches(after)) as batches:
            async for batch in batches:
                for event in batch:
                    yield event

    async def tail_batches(self, after: int | None = None) -> AsyncGenerator[list[Event], None]:
        """Like :meth:`tail`, in the batches the events arrived in (oldest first, never empty),
        so a reader can see that a later event of a batch supersedes an earlier one. Polling
        yields what each read returned; a tailable cursor one event at a time."""
        last = after if after is not None else (await self.latest_cursor() or 0)
        awaits: bool | None = {
            TailStrategy.AUTO: None,
            TailStrategy.TAILABLE: True,
            TailStrategy.POLL: False,
        }[self._strategy]
        while True:
            if awaits is False:
                if self._poll_reason is not None:
                    self._log_fallback(self._poll_reason)
                async with contextlib.aclosing(read_ahead(self._poll(last))) as polled:
                    async for batch in polled:
                        yield batch
                return  # _poll only returns when its caller stops iterating
            cursor = self._collection.find(
                {"_id": {"$gt": Int64(last)}}, cursor_type=CursorType.TAILABLE_AWAIT
            ).max_await_time_ms(_AWAIT_MS)
            try:
                while True:
                    try:
                        raw = await cursor.next()
                    except StopAsyncIteration:
                        if not cursor.alive:
                            break
                        awaits = True  # an empty batch and a live cursor: the server waits
                        continue
                    event = Event.from_mongo(raw)
                    if event.cursor <= last:
                        # MongoDB's tailable cursors only move forward; FerretDB's was seen
                        # handing back hundreds of old events under load: poll instead.
                        awaits = False
                        self._log_fallback("handed back an old event")
                        break
                    last = event.cursor
                    yield [event]
            finally:
                await cursor.close()
            if awaits is None and (last > 0 or await self.latest_cursor() is not None):
                # MongoDB only kills a tailable cursor on an empty collection; this server
                # ended it on a non-empty log, so it cannot wait for data.
                awaits = False
                self._log_fallback("ended a tailable awaitData cursor at once")
            elif awaits is not False:
                await asyncio.sleep(self._poll_interval)  # empty log: nothing to tail yet

    async def _poll(self, last: int) -> AsyncGenerator[list[Event], None]:
        """Tail without server-side waiting, cheaply on FerretDB (which scans the whole log for
        any query): events this process appended are delivered from memory at once; events
        from other processes come from the small ring (``event_ring``, 128 slots) when the
        head document shows them. The log itself is read only when the ring cannot serve: the
        tail is too far behind, or a slot the head promised stayed empty for
        :data:`GAP_PATIENCE` (a writer died between its insert and its ring write; a slot
        written a moment late by a racing writer is simply read at the next poll); and, as a
        backstop in case a head update was lost, after ten seconds without a new event. (A
        backstop on a timer regardless of traffic cost a whole-log scan in the middle of busy
        polling: ``bench/fanout.py`` saw deliveries stall 200 to 370 ms when one landed.)"""
        waker = asyncio.Event()
        self._wakers.add(waker)
        loop = asyncio.get_running_loop()
        backstop = loop.time() + self._backstop_seconds
        next_read = loop.time()  # when to look at the database again
        gap_since: float | None = None  # when the ring first lacked an event the head promised
        try:
            while True:
                waker.clear()
                local = self._local_after(last)
                if local:
                    last = local[-1].cursor
                    yield local
                now = loop.time()
                if now < next_read:  # woken by an append of this process: nothing to read
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(next_read - now):
                            await waker.wait()
                    continue
                next_read = now + self._poll_interval
                head = await self.head_cursor()
                batch: list[Event] | None = []
                if head > last:
                    backstop = now + self._backstop_seconds  # the head moves: a gap would show
                    found = await self._recent_after(last, head)
                    batch = None if found is None else found[0]
                    if found is None or found[1]:
                        gap_since = None
                    elif gap_since is None:
                        gap_since = now
                read_log = (
                    batch is None  # too far behind for the ring
                    or (gap_since is not None and now - gap_since >= GAP_PATIENCE)
                    or (head <= last and now >= backstop)
                )
                limit = self._poll_limit
                if read_log:
                    backstop, gap_since = now + self._backstop_seconds, None
                    # Every read costs a whole-log scan on FerretDB: when far behind, take
                    # everything missed (bounded) in one read instead of pages of poll_limit.
                    limit = max(self._poll_limit, min(head - last, CATCH_UP_LIMIT))
                    batch = await self.after(last, limit=limit)
                fresh = [event for event in batch or [] if event.cursor > last]
                if fresh:  # (this process's own may have come from memory already)
                    last = fresh[-1].cursor
                    yield fresh
                if read_log and batch is not None and len(batch) == limit:
                    next_read = now  # more to read at once
                    continue
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                # that races with the waker, and the tail would never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, next_read - loop.time())):
                        await waker.wait()
        finally:
            self._wakers.discard(waker)

    def _local_after(self, last: int) -> list[Event]:
        """This process's recent appends ``last+1, last+2, ...``, oldest first, up to the first
        cursor another process holds (the database has that one). Read from the newest end,
        so a tail that keeps up looks at one or two of them."""
        fresh: list[Event] = []
        for event in reversed(self._local):
            if event.cursor <= last:
                break
            fresh.append(event)
        fresh.reverse()
        for taken, event in enumerate(fresh):
            if event.cursor != last + 1 + taken:
                return fresh[:taken]
        return fresh

    async def _edge(self, direction: int) -> int | None:
        raw = await self._collection.find_one({}, {"_id": 1}, sort=[("_id", direction)])
        return None if raw is None else int(raw["_id"])

    def _log_fallback(self, why: str) -> None:
        if not self._fallback_logged:
            self._fallback_logged = True
            logger.info(
                "event log: the server %s; polling every %.0f ms instead",
                why,
                self._poll_interval * 1000,
            )


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


EventSource = ModelDocument | WeightsDocument | InferenceDocument
"""The documents events are about."""

DOCUMENT_COLLECTIONS: dict[ResourceKind, str] = {
    ResourceKind.MODEL: ModelRepository.collection_name,
    ResourceKind.WEIGHTS: WeightsRepository.collection_name,
    ResourceKind.INFERENCE: InferenceRepository.collection_name,
}


def describe(document: EventSource) -> dict[str, Any]:
    """The fields of an event about ``document``: its kind, organisation, models, phase and
    message, as :meth:`EventLog.append` takes them."""
    fields: dict[str, Any] = {
        "organization_id": document.organization_id,
        "resource_id": document.id,
        "message": document.message,
    }
    model_ids: tuple[str, ...]
    if isinstance(document, ModelDocument):
        kind, model_ids, phase = ResourceKind.MODEL, (document.id,), document.phase.value
    elif isinstance(document, WeightsDocument):
        model_ids = tuple(document.model_ids)
        kind, phase = ResourceKind.WEIGHTS, document.state.value
    else:
        model_ids = (document.model_id,) if document.model_id else ()
        kind, phase = ResourceKind.INFERENCE, document.phase.value
    return {**fields, "resource_kind": kind, "model_ids": model_ids, "phase": phase}


async def remove_mark(
    database: Database, kind: ResourceKind, document_id: str, marker: str
) -> None:
    """Pull ``marker`` from the document's ``pending_events`` under the document's lock, as
    the compare-and-set writes take it: FerretDB 1.24 writes an update back as the whole
    document it read, so an unlocked ``$pull`` racing one of them undid it (measured: a
    ``deleteModel`` came back not deleted; ``tests/test_event_marks.py``)."""
    collection = DOCUMENT_COLLECTIONS[kind]
    async with document_lock(database.name, collection, document_id):
        await database[collection].update_one(
            {"_id": document_id}, {"$pull": {"pending_events": marker}}
        )


@dataclass(frozen=True, slots=True)
class Owed:
    """A ``pending_events`` mark read back: the event a write of ``revision`` owes the log."""

    revision: int
    type: EventType
    at: datetime


def parse_marker(marker: str) -> Owed | None:
    """What a ``pending_events`` mark says (:func:`pending_marker`); None if it is not one."""
    parts = marker.split(":")
    if (
        len(parts) != 3
        or not parts[0].isdigit()
        or parts[1] not in EventType.__members__
        or not parts[2].isdigit()
    ):
        return None
    at = datetime.fromtimestamp(int(parts[2]) / 1000, tz=UTC)
    return Owed(revision=int(parts[0]), type=EventType(parts[1]), at=at)


def _marker_of(document: EventSource, revision: int, type: EventType) -> str | None:
    """The mark ``document`` carries for its write of ``revision``'s ``type`` event."""
    prefix = f"{revision}:{type.value}:"
    return next((m for m in document.pending_events if m.startswith(prefix)), None)


class Recorder:
    """Appends the events of document writes and settles the marks those writes left.

    A writer passes ``event=`` to the repository's insert or update, so the write itself marks
    the event as owed (``pending_events``, in the same single-document write: no transaction
    needed), then calls the recorder: it appends the event under its key (:func:`event_key`;
    the log refuses a second copy) and removes the mark. A crash between the two leaves the
    mark, and :class:`storage.recovering.EventRecovery` appends the event later: a write and
    its event are never separated for good. A document removed for good cannot carry a mark,
    so its DELETED event is put in the outbox first (:meth:`before_removal`).

    Persistence and notification stay two visible steps (STYLE.md): repositories never publish.
    A failed append is logged and swallowed, the mark staying for the recovery: the document is
    the truth, and the write it describes must not be reported as failed.
    """

    def __init__(self, log: EventLog | None) -> None:
        self._log = log

    async def model(self, model: ModelDocument, type: EventType) -> Event | None:
        """CREATED / UPDATED / DELETED / PHASE_CHANGED of a model, with its phase and message."""
        return await self.record(model, type)

    async def weights(
        self,
        weights: WeightsDocument,
        type: EventType,
        *,
        progress: Mapping[str, Any] | None = None,
    ) -> Event | None:
        """A change of a download (its state, or a PROGRESS record), for its models too."""
        return await self.record(weights, type, progress=progress)

    async def inference(self, inference: InferenceDocument, type: EventType) -> Event | None:
        """A change of an inference service (its phase, replicas or message), for its model."""
        return await self.record(inference, type)

    async def api_key_revoked(self, key: ApiKeyDocument) -> Event | None:
        """An API key was revoked: every replica closes the sockets authenticated with it.
        Not keyed (no owed-event mark): a lost one is covered by the sockets' periodic
        re-check of their credential."""
        if self._log is None:
            return None
        fields = {
            "organization_id": key.organization_id,
            "resource_kind": ResourceKind.API_KEY,
            "resource_id": key.id,
            "type": EventType.UPDATED,
            "phase": API_KEY_REVOKED,
        }
        return (await self._append(fields, None))[1]

    async def record(
        self,
        document: EventSource,
        type: EventType,
        *,
        revision: int | None = None,
        progress: Mapping[str, Any] | None = None,
    ) -> Event | None:
        """Append the event of ``document``'s write of ``revision`` (default: its current one)
        unless the log holds it already, then settle the write's mark. The event appended, or
        None (already in the log, no log, or the append failed and the mark stays)."""
        if self._log is None:
            return None
        fields = describe(document)
        revision = document.revision if revision is None else revision
        key = None
        if type is not EventType.PROGRESS:  # progress repeats within a revision
            key = event_key(fields["resource_kind"], document.id, revision, type)
        held, event = await self._append({**fields, "type": type, "progress": progress}, key)
        if not held or key is None:
            return event
        marker = _marker_of(document, revision, type)
        await self._settle(
            fields["resource_kind"],
            document.id,
            marker,
            outbox_key=key if type is EventType.DELETED and marker is None else None,
        )
        return event

    async def before_removal(self, document: EventSource) -> None:
        """Keep ``document``'s DELETED event in the outbox before the document is removed for
        good; :meth:`record` of that event takes it out again. Raises when it cannot be stored:
        the removal must not go ahead then."""
        if self._log is None:
            return
        fields = describe(document)
        key = event_key(fields["resource_kind"], document.id, document.revision, EventType.DELETED)
        entry = {
            **fields,
            "resource_kind": fields["resource_kind"].value,
            "model_ids": list(fields["model_ids"]),
            "type": EventType.DELETED.value,
            "at": utcnow(),
        }
        outbox = self._log.database[OUTBOX_COLLECTION]
        await outbox.replace_one({"_id": key}, entry, upsert=True)

    async def replay_removal(self, entry: Mapping[str, Any]) -> Event | None:
        """Append the DELETED event an outbox entry kept (its document is gone) and drop the
        entry; the event, or None when the log had it already or the append failed."""
        if self._log is None:
            return None
        fields = {
            name: entry[name] for name in ("organization_id", "resource_id", "message", "phase")
        }
        fields["resource_kind"] = ResourceKind(entry["resource_kind"])
        fields["model_ids"] = tuple(entry.get("model_ids") or ())
        key = str(entry["_id"])
        held, event = await self._append({**fields, "type": EventType.DELETED}, key)
        if not held:
            return None
        await self._settle(fields["resource_kind"], fields["resource_id"], None, outbox_key=key)
        return event

    async def _append(self, fields: dict[str, Any], key: str | None) -> tuple[bool, Event | None]:
        """Whether the log holds the event now, and the event if this call appended it."""
        assert self._log is not None  # noqa: S101  callers check
        try:
            return True, await self._log.append(**fields, key=key)
        except DuplicateEvent:
            return True, None
        except (PyMongoError, StorageError) as exc:
            logger.warning(
                "event not recorded",
                extra={"error": type(exc).__name__, "resource_id": fields["resource_id"]},
            )
            return False, None

    async def _settle(
        self,
        kind: ResourceKind,
        document_id: str,
        marker: str | None,
        *,
        outbox_key: str | None = None,
    ) -> None:
        """Remove a mark whose event is in the log, and an outbox entry whose event is (both
        by ``_id`` alone, which FerretDB 1.24 looks up without reading the collection)."""
        assert self._log is not None  # noqa: S101  callers check
        database = self._log.database
        try:
            if marker is not None:
                await remove_mark(database, kind, document_id, marker)
            if outbox_key is not None:
                await database[OUTBOX_COLLECTION].delete_one({"_id": outbox_key})
        except PyMongoError as exc:
            # the recovery settles it later; the log refuses the event a second time
            logger.warning(
                "event mark not cleared",
                extra={"error": type(exc).__name__, "resource_id": document_id},
            )
