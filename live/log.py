"""The event log: a capped collection of phase changes and progress, read by cursor
(docs/architecture.md decision 5). Append, read after a cursor, tail.

Cursor allocation is *head + 1, probing upward on a duplicate key*. The ``_id`` unique index is
the only arbiter: a writer reads the head (the newest cursor, kept in a tiny document by
``live/ferretdb.py``) and inserts the next number; if another process took it, it tries the one
after. This was chosen over a counter bumped with ``$inc`` before the insert for two reasons:

* FerretDB 1.24 loses concurrent ``$inc`` updates, so a counter needs ``_id`` as arbiter anyway.
* More importantly, a counter hands out numbers before the event is written, so event 6 can
  become visible before event 5 (writer of 5 paused between ``$inc`` and insert). A reader that
  already moved past 6 would never see 5. Here a number above the head is only tried after
  every number up to the head was inserted (or seen taken), so events become visible in cursor
  order, the sequence has no holes, and insertion (natural) order equals cursor order -- which
  tailable cursors rely on.

Exactly once per write: with a ``key`` (``live/events.py``) the log's sparse unique index
refuses a second copy (:class:`~live.events.DuplicateEvent`); ``live/recording.py`` uses it.

Tailing (:meth:`EventLog.tail_batches`): on MongoDB a tailable awaitData cursor blocks in
``getMore`` until data arrives. On FerretDB, which cannot (``live/ferretdb.py`` says why and how
it is worked around), :meth:`EventLog.ensure` makes the log poll from the start; on other
servers the tail tries the tailable cursor and, when the server ended it at once while the log
holds events, or handed back an event at or below one it already returned, falls back to
polling (logged once). MongoDB's tailable cursors never do either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bson.int64 import Int64
from pymongo import ASCENDING, DESCENDING, CursorType
from pymongo.errors import BulkWriteError, CollectionInvalid, OperationFailure

from live.batching import GroupCommit
from live.events import (
    SERVER_WIDE,
    DuplicateEvent,
    Event,
    EventLogNotCapped,
    EventType,
    ResourceKind,
)
from live.ferretdb import (
    BACKSTOP_SECONDS,
    DUPLICATE_KEY,
    HeadAndRing,
    LocalAppends,
    PollOptions,
    clash_on_key,
    ferretdb_version,
    poll,
)
from storage.client import Database
from storage.documents import utcnow
from storage.errors import StorageError

logger = logging.getLogger(__name__)

COLLECTION = "events"
DEFAULT_SIZE_BYTES = 64 * 1024 * 1024
DEFAULT_POLL_INTERVAL = 0.02
MAX_APPEND_ATTEMPTS = 100
KEY_INDEX = "key_unique"
_AWAIT_MS = 1000  # how long a MongoDB getMore waits for new events before returning empty


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
        self._poll = PollOptions(poll_interval, poll_limit, backstop_seconds)
        self._strategy = strategy
        self._shared = HeadAndRing(database)
        self._local = LocalAppends()
        self._append_lock = asyncio.Lock()
        self._uninserted: list[_Pending] = []
        # Ring slots and the head, one batch at a time (:mod:`live.batching`).
        self._publisher = GroupCommit(self._shared.publish)
        self._fallback_logged = False
        self._poll_reason: str | None = None
        self._next_hint = 0

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
        return self._poll.interval

    async def ensure(self) -> None:
        """Create the capped collection if missing; refuse an existing uncapped one."""
        await self._ensure_capped()
        await self._ensure_key_index()
        newest = await self.latest_cursor()
        if newest is not None:
            await self._shared.raise_head(newest)  # repairs a head left behind by a crash
        if self._strategy is TailStrategy.AUTO:
            version = await ferretdb_version(self._database)
            if version is not None:
                # Known not to await data; and a tailable cursor it kept open was seen handing
                # events over one at a time, too slowly for a burst of progress: never try one.
                self._strategy = TailStrategy.POLL
                self._poll_reason = f"is FerretDB {version}"  # said by tails
        await self._shared.ensure()

    async def _ensure_capped(self) -> None:
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

        With a ``key`` (:func:`~live.events.event_key`) the append happens at most once: when
        the log already holds that key, nothing is stored and ``DuplicateEvent`` is raised.

        Two stages, so this process's appends overlap: the insert (which fixes the cursor and
        hands the event to this process's tails at once), then the ring slot and the head
        (which let other processes see it), in insert order. Each stage is a group commit
        (:mod:`live.batching`): appends that queue while one is in flight go in the next batch.
        """
        fields: dict[str, Any] = {
            "organization_id": organization_id,
            "resource_kind": resource_kind,
            "resource_id": resource_id,
            "type": type,
            "model_ids": tuple(model_ids),
            "phase": phase,
            "message": message,
            "progress": None if progress is None else dict(progress),
            "key": key,
        }
        pending = _Pending(fields, key, asyncio.get_running_loop().create_future())
        self._uninserted.append(pending)
        try:
            async with self._append_lock:  # writers of this process do not race each other
                if not pending.inserted.done():
                    await self._insert_pending()
        except asyncio.CancelledError:
            pending.abandon()
            raise
        event = pending.inserted.result()  # DuplicateEvent, or the batch's error
        assert pending.published is not None  # noqa: S101  queued with the insert
        await self._publisher.wait(pending.published)
        return event

    async def _insert_pending(self) -> None:
        """Insert every append waiting for a cursor, as one batch (group commit): appends queue
        behind the insert in flight, so under load each batch carries the appends of the
        previous round trip instead of one insert each in turn. The batch's events join the
        publication queue in cursor order. A failure is handed to every append of the batch;
        an insert cancelled half-way leaves the rest to the next holder of the lock."""
        batch = [item for item in self._uninserted if not item.inserted.done()]
        self._uninserted = []
        try:
            await self._insert(batch)
        except asyncio.CancelledError:
            self._uninserted[:0] = [item for item in batch if not item.inserted.done()]
            raise
        except Exception as exc:  # noqa: BLE001  handed to each append of the batch
            for item in batch:
                item.fail(exc)

    async def _insert(self, batch: list[_Pending]) -> None:
        """Insert ``batch`` under the next free cursors, in order. The cursor tried first
        follows this process's last append, without reading the head; a duplicate key means
        another process appended meanwhile (the head says how far), or that the log holds an
        append's key already (that append gets :class:`DuplicateEvent`)."""
        candidate = (self._next_hint or await self.head_cursor()) + 1
        for _ in range(MAX_APPEND_ATTEMPTS):
            events = [
                Event(cursor=candidate + index, at=utcnow(), **item.fields)
                for index, item in enumerate(batch)
            ]
            clash = await self._insert_many(events)
            inserted = len(events) if clash is None else clash[0]
            for item, event in zip(batch[:inserted], events[:inserted], strict=True):
                self._next_hint = event.cursor
                self._local.add(event)
                item.published = self._publisher.enqueue(event)  # in cursor order
                if not item.inserted.done():  # (an append cancelled meanwhile)
                    item.inserted.set_result(event)
            if clash is None:
                return
            batch, failed = batch[inserted:], events[inserted].cursor
            head = await self.head_cursor()
            if batch[0].key is not None and await clash_on_key(
                self._collection, batch[0].key, clash[1], failed, head
            ):
                batch[0].fail(DuplicateEvent(batch[0].key))
                batch, candidate = batch[1:], failed  # that cursor is still free
                if not batch:
                    return
                continue
            # another process took that number: skip to the head (it may have appended
            # many), or to the next number while its head update trails
            candidate = max(failed, head) + 1
        raise StorageError(f"no event cursor after {MAX_APPEND_ATTEMPTS} attempts (contention)")

    async def _insert_many(self, events: list[Event]) -> tuple[int, Mapping[str, Any]] | None:
        """Insert ``events`` in order; None when all were, else how many were before the
        first duplicate key, and that error's details. Other errors are raised."""
        try:
            await self._collection.insert_many([event.to_mongo() for event in events])
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors") or []
            if not errors or errors[0].get("code") != DUPLICATE_KEY:
                raise
            return int(errors[0]["index"]), errors[0]
        return None

    async def head_cursor(self) -> int:
        """The newest cursor as the head document records it (it may trail the log briefly
        after a crash, which appends and the polling tail's backstop tolerate)."""
        return await self._shared.head()

    async def after(
        self, cursor: int, *, limit: int, organization_id: str | None = None
    ) -> list[Event]:
        """Up to ``limit`` events with a cursor above ``cursor``, oldest first (with an
        ``organization_id``: its events and the server-wide ones)."""
        query: dict[str, Any] = {"_id": {"$gt": Int64(cursor)}}
        if organization_id is not None:
            query["organization_id"] = {"$in": [organization_id, SERVER_WIDE]}
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
        while awaits is not False:
            tailed = _Tailed(last, awaits)
            async with contextlib.aclosing(self._tailable(tailed)) as events:
                async for event in events:
                    yield [event]
            last, awaits = tailed.last, tailed.awaits
            if awaits is None and (last > 0 or await self.latest_cursor() is not None):
                # MongoDB only kills a tailable cursor on an empty collection; this server
                # ended it on a non-empty log, so it cannot wait for data.
                awaits = False
                self._log_fallback("ended a tailable awaitData cursor at once")
            elif awaits is not False:
                await asyncio.sleep(self._poll.interval)  # empty log: nothing to tail yet
        if self._poll_reason is not None:
            self._log_fallback(self._poll_reason)
        async with contextlib.aclosing(
            poll(self, self._shared, self._local, self._poll, last)
        ) as polled:
            async for batch in polled:
                yield batch

    async def _tailable(self, tailed: _Tailed) -> AsyncGenerator[Event, None]:
        """One tailable awaitData cursor, until the server ends it or hands back an old event
        (``tailed`` says where it stopped, and whether the server awaits data)."""
        cursor = self._collection.find(
            {"_id": {"$gt": Int64(tailed.last)}}, cursor_type=CursorType.TAILABLE_AWAIT
        ).max_await_time_ms(_AWAIT_MS)
        try:
            while True:
                try:
                    raw = await cursor.next()
                except StopAsyncIteration:
                    if not cursor.alive:
                        return
                    tailed.awaits = True  # an empty batch and a live cursor: the server waits
                    continue
                event = Event.from_mongo(raw)
                if event.cursor <= tailed.last:
                    # MongoDB's tailable cursors only move forward; FerretDB's was seen
                    # handing back hundreds of old events under load: poll instead.
                    tailed.awaits = False
                    self._log_fallback("handed back an old event")
                    return
                tailed.last = event.cursor
                yield event
        finally:
            await cursor.close()

    async def _edge(self, direction: int) -> int | None:
        raw = await self._collection.find_one({}, {"_id": 1}, sort=[("_id", direction)])
        return None if raw is None else int(raw["_id"])

    def _log_fallback(self, why: str) -> None:
        if not self._fallback_logged:
            self._fallback_logged = True
            logger.info(
                "event log: the server %s; polling every %.0f ms instead",
                why,
                self._poll.interval * 1000,
            )


@dataclass(slots=True)
class _Pending:
    """One append on its way: inserted (its cursor fixed), then published."""

    fields: dict[str, Any]
    key: str | None
    inserted: asyncio.Future[Event]
    published: asyncio.Future[None] | None = None

    def fail(self, exc: BaseException) -> None:
        """Hand ``exc`` to the append waiting for its insert (unless it gave up waiting)."""
        if not self.inserted.done():
            self.inserted.set_exception(exc)

    def abandon(self) -> None:
        """The append was cancelled before its insert finished: an insert not begun yet is
        dropped (a batch in flight still writes it, and publishes it)."""
        if self.inserted.done() and not self.inserted.cancelled():
            self.inserted.exception()  # retrieved: no "never retrieved" warning
        else:
            self.inserted.cancel()


class _Tailed:
    """Where a tailable cursor stopped, and whether the server awaits data (None: not known)."""

    __slots__ = ("awaits", "last")

    def __init__(self, last: int, awaits: bool | None) -> None:
        self.last = last
        self.awaits = awaits
