"""Events streamed by subscriptions: phase changes, progress, and the two stream markers; and
their API views, made once per stored event and shared by every subscriber it reaches (so
:class:`~schema.sharing.SharingExecutor` executes each selection over it once)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime
from enum import Enum

import strawberry

from live.broker import Marker, MarkerKind
from live.events import Event as StoredEvent
from schema.sharing import SharedBatch, SharedPayload
from schema.weights import DownloadProgress
from storage.documents import Progress


@strawberry.enum(name="EventType", description="What happened (or, for markers, what to do).")
class EventTypeEnum(Enum):
    """Event and marker types."""

    CREATED = strawberry.enum_value("CREATED", description="The resource was created.")
    UPDATED = strawberry.enum_value("UPDATED", description="Fields other than the phase changed.")
    DELETED = strawberry.enum_value("DELETED", description="The resource was deleted.")
    PHASE_CHANGED = strawberry.enum_value(
        "PHASE_CHANGED", description="The phase (or weights state) changed; see `phase`."
    )
    PROGRESS = strawberry.enum_value(
        "PROGRESS", description="A download progressed (at most one per second per download)."
    )
    RESYNC_REQUIRED = strawberry.enum_value(
        "RESYNC_REQUIRED",
        description="Marker: events were trimmed from the log before they reached you (`after` "
        "is older than the log still holds, or a burst outran this server's reading). Re-read "
        "the resources with queries; the stream goes on after `cursor`, which is also the "
        "`after` to resubscribe with.",
    )
    OVERFLOW = strawberry.enum_value(
        "OVERFLOW",
        description="Marker: this subscriber fell too far behind and the stream ends here. "
        "Subscribe again with `after: cursor` to continue without a gap.",
    )


@strawberry.enum(name="ResourceKind", description="Which kind of resource an event is about.")
class ResourceKindEnum(Enum):
    """Resource kinds in the event log."""

    MODEL = strawberry.enum_value("MODEL", description="A model of the catalogue.")
    WEIGHTS = strawberry.enum_value("WEIGHTS", description="A download (weights entry).")
    INFERENCE = strawberry.enum_value("INFERENCE", description="An inference service.")
    ALERT = strawberry.enum_value(
        "ALERT",
        description="A storage location crossed its usage threshold (`resourceId` is the "
        "location; `phase` ALERTING or CLEAR; `message` the figures). Server-wide.",
    )


@strawberry.type(
    description="One entry of the event log (or a stream marker), with the cursor to resume "
    "after it."
)
class Event(SharedPayload):
    """A change, as delivered to subscribers (one object per stored event, shared by every
    subscriber it reaches, so each selection over it executes once)."""

    cursor: str = strawberry.field(
        description="Opaque position in the log: pass it as `after` when resubscribing."
    )
    type: EventTypeEnum = strawberry.field(description="What happened.")
    resource_kind: ResourceKindEnum | None = strawberry.field(
        description="Kind of the resource (null for markers)."
    )
    resource_id: strawberry.ID | None = strawberry.field(
        description="Id of the resource (null for markers)."
    )
    model_ids: list[strawberry.ID] = strawberry.field(
        description="Models the event concerns (a download's models, or the model itself)."
    )
    phase: str | None = strawberry.field(
        description="The phase (models, inferences) or state (weights) after the change."
    )
    message: str | None = strawberry.field(description="Why, when the phase says FAILED etc.")
    progress: DownloadProgress | None = strawberry.field(
        description="For PROGRESS events: the download's progress record."
    )
    at: datetime | None = strawberry.field(description="When it was appended (UTC).")

    @classmethod
    def marker(cls, kind: EventTypeEnum, cursor: str) -> Event:
        """A RESYNC_REQUIRED or OVERFLOW marker."""
        return cls(
            cursor=cursor,
            type=kind,
            resource_kind=None,
            resource_id=None,
            model_ids=[],
            phase=None,
            message=None,
            progress=None,
            at=None,
        )

    @staticmethod
    def progress_view(record: object) -> DownloadProgress | None:
        """The API view of a stored progress mapping (None if absent or unreadable)."""
        if not isinstance(record, dict):
            return None
        return DownloadProgress.from_record(Progress.model_validate(record))


class EventViews:
    """The API view of each recent stored event, made once and shared by every subscriber it
    reaches (so :class:`~schema.sharing.SharingExecutor` executes each selection once)."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._views: OrderedDict[tuple[int, datetime, str], Event] = OrderedDict()
        self._batch: Sequence[StoredEvent] = ()
        self._shared = SharedBatch(())

    def batch(self, items: Sequence[StoredEvent]) -> SharedBatch:
        """The shared views of a batch the broker offered, made once per batch: the broker
        hands the same list to every subscriber whose filter it matched, so from the second
        subscriber on this is one comparison (holding the batch keeps its identity from
        reuse), and the :class:`~schema.sharing.SharedBatch` carries each selection's
        encodings for the fast lane."""
        if items is not self._batch:
            self._shared = SharedBatch([self.view(item) for item in items])
            self._batch = items
        return self._shared

    def view(self, item: StoredEvent | Marker) -> Event:
        """The shared view of a stored event (markers are per subscriber: never shared)."""
        if isinstance(item, Marker):
            return event_view(item)
        key = (item.cursor, item.at, item.resource_id)  # a reset log reuses cursors
        found = self._views.get(key)
        if found is None:
            found = self._views[key] = event_view(item)
            if len(self._views) > self._size:
                self._views.popitem(last=False)
        return found


def event_view(item: StoredEvent | Marker) -> Event:
    """A new API view of a stored event or a marker."""
    if isinstance(item, Marker):
        kind = (
            EventTypeEnum.OVERFLOW
            if item.kind is MarkerKind.OVERFLOW
            else EventTypeEnum.RESYNC_REQUIRED
        )
        return Event.marker(kind, item.token)
    return Event(
        cursor=item.token,
        type=EventTypeEnum(item.type.value),
        resource_kind=ResourceKindEnum(item.resource_kind.value),
        resource_id=strawberry.ID(item.resource_id),
        model_ids=[strawberry.ID(m) for m in item.model_ids],
        phase=item.phase,
        message=item.message,
        progress=Event.progress_view(item.progress),
        at=item.at,
    )
