"""What the event log holds: the :class:`Event` type, its kinds, and the cursors that order it.

Every event's cursor is an int64 taken from one dense sequence (1, 2, 3, ...; how it is
allocated is in ``live/log.py``). Clients see it as an opaque decimal string
(:func:`format_cursor`) and hand it back as ``after:`` to resume (:func:`parse_cursor`).

Exactly once per write: an event that describes a document write carries a ``key`` (resource,
revision, type; :func:`event_key`) under a sparse unique index, so the writer, a recovery on
another replica and a retry cannot append it twice (:class:`DuplicateEvent`). PROGRESS events
have no key. This module is data only (no database access), so every layer that reads events
(controllers, services, the GraphQL views, a download Job's pod) imports it cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from bson.int64 import Int64

from storage.errors import StorageError


class ResourceKind(StrEnum):
    """What an event is about."""

    MODEL = "MODEL"
    WEIGHTS = "WEIGHTS"
    INFERENCE = "INFERENCE"
    API_KEY = "API_KEY"
    """A credential, for the replicas only: no subscription's filter takes it (its phase is
    ``REVOKED`` once revoked; each replica then closes the sockets that use it)."""
    ALERT = "ALERT"
    """A storage location crossed its usage threshold (up: phase ``ALERTING``, back down:
    ``CLEAR``); ``resource_id`` is the location. Server-wide: see :data:`SERVER_WIDE`."""


API_KEY_REVOKED = "REVOKED"

SERVER_WIDE = "*"
"""The organisation of events about the server itself rather than one organisation's resources
(storage ALERT events: a disk or a claim is shared): every subscriber's filter that takes their
kind matches them, whatever its organisation."""


class EventType(StrEnum):
    """What happened to the resource."""

    CREATED = "CREATED"
    UPDATED = "UPDATED"
    DELETED = "DELETED"
    PHASE_CHANGED = "PHASE_CHANGED"
    PROGRESS = "PROGRESS"


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


class EventLogNotCapped(StorageError):
    """The ``events`` collection exists but is not capped, so it would grow without bound."""


def event_key(kind: ResourceKind, resource_id: str, revision: int, type: EventType) -> str:
    """The identity of the event one write of a document owes the log: at most one event per
    resource, revision and type is ever appended (the log's unique ``key`` index)."""
    return f"{kind.value}:{resource_id}:{revision}:{type.value}"


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
