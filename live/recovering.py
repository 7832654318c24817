"""Event recovery: appends the events that document writes owe the log and nobody appended.

A write that owes the log an event marks it in the document itself, in the same write
(``pending_events``: revision, type and time); a removal keeps its DELETED event in the
``event_outbox`` collection first. The recorder appends the event and
clears the mark. A writer killed in between (kill -9, an OOM kill, a node lost) leaves the
mark, and this recovery, run at start-up and then periodically by every replica, appends the
event from the document and clears it. Without it a model created just before a crash had no
CREATED event, and clients resuming from a cursor never learnt of it.

Why marks in the documents and not an outbox for every write: MongoDB and FerretDB 1.x write
one document atomically but have no transactions, so only a mark inside the written document
cannot be separated from the write by a crash. Removals cannot carry a mark (the document
goes), so they write their outbox entry first; an entry whose document still exists after the
grace period describes a removal that never happened and is dropped.

Idempotent and safe with two replicas at once: each event has a key (resource, revision,
type) and the log's unique index on it refuses a second copy, so a recovery racing the live
writer or another replica appends it once. Marks younger than ``grace_seconds`` are left to
their writer, which is normally a few milliseconds from appending. A recovered event carries
the document's phase and message as they are when it is recovered, and its cursor is the
next free one (after events written since). One limit: if an event was appended and then
trimmed from the capped log before its mark could be cleared (the mark's clearing failed and
the log turned over meanwhile), the event is appended again.

Cost: the writer clears its mark with one more update by ``_id`` (cheap on FerretDB 1.24 too,
which looks up a bare ``_id`` without reading the collection). Each pass asks every collection
for documents holding a mark, and the outbox for old entries, every ``interval_seconds``: a
multikey index range on MongoDB; FerretDB 1.24 reads each whole collection (650 ms at 10,000
documents, measured here). The arbiter is the unique index, not a compare-and-set, so the
recovery is exact on FerretDB too, whose compare-and-set is not atomic across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from pymongo.errors import PyMongoError

from live.events import ResourceKind
from live.recording import (
    DOCUMENT_COLLECTIONS,
    OUTBOX_COLLECTION,
    EventSource,
    Recorder,
    parse_marker,
    remove_mark,
)
from storage.cancellation import raise_if_cancelled
from storage.client import Database
from storage.documents import InferenceDocument, ModelDocument, WeightsDocument, utcnow

log = logging.getLogger(__name__)

DOCUMENT_TYPES: dict[ResourceKind, type[EventSource]] = {
    ResourceKind.MODEL: ModelDocument,
    ResourceKind.WEIGHTS: WeightsDocument,
    ResourceKind.INFERENCE: InferenceDocument,
}


class EventRecovery:
    """One replica's recovery of owed events: :meth:`run_once`, or :meth:`start` a task that
    runs it at once and then every ``interval_seconds``."""

    def __init__(
        self,
        database: Database,
        recorder: Recorder,
        *,
        grace_seconds: float,
        interval_seconds: float,
    ) -> None:
        if grace_seconds < 0 or interval_seconds <= 0:
            raise ValueError("grace_seconds must be >= 0 and interval_seconds > 0")
        self._database = database
        self._recorder = recorder
        self._grace = timedelta(seconds=grace_seconds)
        self._interval = interval_seconds
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """Append every event owed for longer than the grace period; how many were appended
        (events another writer appended first are settled, not counted)."""
        cutoff = utcnow() - self._grace
        appended = 0
        for kind, name in DOCUMENT_COLLECTIONS.items():
            documents = self._database[name]
            async for raw in documents.find({"pending_events": {"$type": "string"}}):
                try:
                    appended += await self._settle_document(kind, raw, cutoff)
                except ValidationError:  # one unreadable document must not stop the others
                    log.warning("event recovery skipped a document", extra={"id": raw["_id"]})
        outbox = self._database[OUTBOX_COLLECTION]
        async for entry in outbox.find({"at": {"$lt": cutoff}}):
            appended += await self._settle_removal(entry)
        if appended:
            log.warning("events recovered", extra={"count": appended})
        return appended

    async def _settle_document(
        self, kind: ResourceKind, raw: dict[str, Any], cutoff: datetime
    ) -> int:
        document = DOCUMENT_TYPES[kind].from_mongo(raw)
        appended = 0
        for marker in document.pending_events:
            owed = parse_marker(marker)
            if owed is None:
                log.warning("unknown event mark dropped", extra={"resource_id": document.id})
                await remove_mark(self._database, kind, document.id, marker)
                continue
            if owed.at >= cutoff:
                continue  # young: its writer is probably appending it right now
            event = await self._recorder.record(document, owed.type, revision=owed.revision)
            if event is not None:
                log.info(
                    "event recovered",
                    extra={"resource_id": document.id, "type": owed.type.value},
                )
                appended += 1
        return appended

    async def _settle_removal(self, entry: Mapping[str, Any]) -> int:
        kind = ResourceKind(entry["resource_kind"])
        documents = self._database[DOCUMENT_COLLECTIONS[kind]]
        if await documents.find_one({"_id": entry["resource_id"]}, {"_id": 1}) is not None:
            # the removal failed or never ran: there is nothing to announce
            await self._database[OUTBOX_COLLECTION].delete_one({"_id": entry["_id"]})
            return 0
        return 0 if await self._recorder.replay_removal(entry) is None else 1

    def start(self) -> None:
        """Run at once, then every ``interval_seconds``, until :meth:`stop`."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="event-recovery")

    async def stop(self) -> None:
        """Stop the periodic task (a pass under way is cancelled; the next start redoes it)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except PyMongoError as exc:
                log.warning("event recovery failed", extra={"error": type(exc).__name__})
            except Exception:  # anything else is logged with its traceback; the next pass runs
                log.exception("event recovery failed")
            raise_if_cancelled()  # a stop that PyMongo swallowed must not wait for the pause
            await asyncio.sleep(self._interval)
