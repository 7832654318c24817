"""Recording document writes in the event log, exactly once (docs/architecture.md decision 5).

A writer passes ``event=`` to the repository's insert or update, so the write itself marks the
event as owed (``pending_events``, in the same single-document write: no transaction needed),
then calls the :class:`Recorder`: it appends the event under its key
(:func:`~live.events.event_key`; the log refuses a second copy) and removes the mark. A crash
between the two leaves the mark, and ``live/recovering.py`` appends the event later: a write and
its event are never separated for good. A document removed for good cannot carry a mark, so its
DELETED event is put in the outbox (``event_outbox``) first. PROGRESS events have no key.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import UpdateOne
from pymongo.errors import PyMongoError

from live.batching import GroupCommit
from live.events import (
    API_KEY_REVOKED,
    SERVER_WIDE,
    DuplicateEvent,
    Event,
    EventType,
    ResourceKind,
    event_key,
)
from live.ferretdb import BULK_LIMIT, bulk_write
from live.log import EventLog
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

OUTBOX_COLLECTION = "event_outbox"

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
class Mark:
    """A ``pending_events`` mark whose event is in the log: to be removed."""

    kind: ResourceKind
    document_id: str
    marker: str


async def remove_marks(database: Database, marks: list[Mark]) -> None:
    """:func:`remove_mark` for many at once: one bulk write per collection (up to
    :data:`~live.ferretdb.BULK_LIMIT` each), under the locks of every document it touches,
    taken in one order (no other holder of two locks exists)."""
    by_collection: dict[str, list[Mark]] = {}
    for mark in marks:
        by_collection.setdefault(DOCUMENT_COLLECTIONS[mark.kind], []).append(mark)
    for collection, some in sorted(by_collection.items()):
        for start in range(0, len(some), BULK_LIMIT):
            chunk = some[start : start + BULK_LIMIT]
            async with contextlib.AsyncExitStack() as locks:
                for document_id in sorted({mark.document_id for mark in chunk}):
                    await locks.enter_async_context(
                        document_lock(database.name, collection, document_id)
                    )
                writes = [
                    UpdateOne({"_id": m.document_id}, {"$pull": {"pending_events": m.marker}})
                    for m in chunk
                ]
                await bulk_write(database[collection], writes)


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
    mark, and :class:`live.recovering.EventRecovery` appends the event later: a write and
    its event are never separated for good. A document removed for good cannot carry a mark,
    so its DELETED event is put in the outbox first (:meth:`before_removal`).

    Persistence and notification stay two visible steps (STYLE.md): repositories never publish.
    A failed append is logged and swallowed, the mark staying for the recovery: the document is
    the truth, and the write it describes must not be reported as failed.
    """

    def __init__(self, log: EventLog | None) -> None:
        self._log = log
        self._marks: GroupCommit[Mark] | None = None
        if log is not None:
            database = log.database
            self._marks = GroupCommit(lambda marks: remove_marks(database, marks))

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

    async def storage_alert(
        self,
        *,
        location: str,
        transition: int,
        phase: str,
        message: str,
        organization_id: str = SERVER_WIDE,
    ) -> bool:
        """A storage location's crossing number ``transition`` (phase ``ALERTING`` or
        ``CLEAR``) for ``organization_id`` (default server-wide,
        :data:`~live.events.SERVER_WIDE`), keyed so the log holds it once per organisation.
        True when the log holds it now; False when the append failed (the alert state
        document keeps it owed, and the watcher tries again)."""
        if self._log is None:
            return False
        fields = {
            "organization_id": organization_id,
            "resource_kind": ResourceKind.ALERT,
            "resource_id": location,
            "type": EventType.PHASE_CHANGED,
            "phase": phase,
            "message": message,
        }
        keyed = location if organization_id == SERVER_WIDE else f"{location}@{organization_id}"
        key = event_key(ResourceKind.ALERT, keyed, transition, EventType.PHASE_CHANGED)
        return (await self._append(fields, key))[0]

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
            if marker is not None and self._marks is not None:
                await self._marks.submit(Mark(kind, document_id, marker))
            if outbox_key is not None:
                await database[OUTBOX_COLLECTION].delete_one({"_id": outbox_key})
        except PyMongoError as exc:
            # the recovery settles it later; the log refuses the event a second time
            logger.warning(
                "event mark not cleared",
                extra={"error": type(exc).__name__, "resource_id": document_id},
            )
