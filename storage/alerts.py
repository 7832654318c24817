"""The storage alert state: one document per weights location (``_id`` is the location as
``weightsUsage`` names it), written only by the replica leading the ``storage-alerts`` lease.

It is what makes an alert survive a restart or a change of leader: a new leader reads whether
each location is ALERTING before it decides anything, so it neither fires an alert again nor
misses the clear. ``transition`` counts the crossings (the ALERT event's key, so the log holds
each crossing's event once); ``owed_event`` and ``owed_webhook`` are set by the crossing's own
write and cleared once the event is in the log and the webhook delivered (or given up on): a
leader killed in between leaves them set, and the next leader finishes the job. Every replica
reads these documents to answer ``weightsUsage`` (``alerting``) and for its gauges.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from storage.collection import Repository
from storage.documents import Document, TargetKind, utcnow


class StorageAlertDocument(Document):
    """A location's alert state."""

    kind: TargetKind
    alerting: bool = False
    transition: int = 0
    """How many crossings were recorded (the newest one's number)."""
    threshold: float
    """The threshold the newest crossing was decided against."""
    used: int = 0
    total: int = 0
    message: str = ""
    """The newest crossing's message."""
    changed_at: datetime = Field(default_factory=utcnow)
    owed_event: bool = False
    owed_webhook: bool = False


class StorageAlertRepository(Repository[StorageAlertDocument]):
    """Alert states by location."""

    collection_name = "storage_alerts"
    document_type = StorageAlertDocument

    async def all(self) -> dict[str, StorageAlertDocument]:
        """Every location's state, by location (a handful: one per root, claim and quota)."""
        page = await self.find(where={}, limit=10_000)
        return {doc.id: doc for doc in page.items}
