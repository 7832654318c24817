"""API views of stored events, made once per event and shared by every subscriber it reaches
(so :class:`~schema.sharing.SharingExecutor` executes each selection over it once)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime

import strawberry

from live.broker import Marker, MarkerKind
from live.events import Event as StoredEvent
from schema.events import Event, EventTypeEnum, ResourceKindEnum
from schema.sharing import SharedBatch


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
