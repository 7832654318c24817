"""The catalogue document: one per organisation, its git source, sync state and parsed entries.

The document is the snapshot every replica serves (``catalog`` answers from it, never from a
replica's own checkout), so both replicas agree on what the catalogue holds. The last good
snapshot is replaced only by a successful sync; a failed one writes only ``sync.last_error``.
The credential is in the secret store; the document holds its reference only.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from storage.collection import Repository
from storage.documents import Document, InferenceEngine, utcnow


class SyncErrorKind(StrEnum):
    """Why the last sync did not replace the snapshot."""

    UNREACHABLE = "UNREACHABLE"
    AUTH_REFUSED = "AUTH_REFUSED"
    BRANCH_MISSING = "BRANCH_MISSING"
    FORCE_PUSHED = "FORCE_PUSHED"
    FAILED = "FAILED"


class EntryIssueRecord(BaseModel):
    """One problem of one entry file."""

    path: str
    line: int | None = None
    field: str | None = None
    message: str


class EntryRecord(BaseModel):
    """One parsed entry file as stored (see ``services/catalogue/entries.py``)."""

    path: str
    name: str
    repo: str | None = None
    revision: str | None = None
    display_name: str | None = None
    description: str | None = None
    engine: InferenceEngine = InferenceEngine.VLLM
    flags: list[str] = Field(default_factory=list)
    cpu: str | None = None
    memory: str | None = None
    gpu: int | None = None
    gpu_type: str | None = None
    tags: list[str] = Field(default_factory=list)
    issues: list[EntryIssueRecord] = Field(default_factory=list)


class SyncState(BaseModel):
    """What the last syncs did."""

    commit: str | None = None
    """The commit the entries were read from (the last accepted one)."""
    last_success_at: datetime | None = None
    last_attempt_at: datetime | None = None
    """When the last sync that wrote this document started (a slower sync that started
    earlier does not overwrite a newer one)."""
    last_error: str | None = None
    last_error_kind: SyncErrorKind | None = None
    last_error_at: datetime | None = None
    remote_commit: str | None = None
    """The branch's commit as last seen on the remote (differs from ``commit`` while a
    rewritten branch waits to be accepted)."""


class CatalogueDocument(Document):
    """An organisation's catalogue: ``_id`` is ``catalogue-<organisation id>``."""

    organization_id: str
    url: str
    branch: str
    folder: str = ""
    username: str | None = None
    secret_ref: str | None = None
    configured_by: str
    configured_at: datetime = Field(default_factory=utcnow)
    """When the source was last set: a sync of an older configuration writes nothing."""
    sync: SyncState = Field(default_factory=SyncState)
    entries: list[EntryRecord] = Field(default_factory=list)


def catalogue_id(organization_id: str) -> str:
    """The document id of an organisation's catalogue."""
    return f"catalogue-{organization_id}"


class CatalogueRepository(Repository[CatalogueDocument]):
    """Catalogues; the id is derived from the organisation, so each has at most one."""

    collection_name = "catalogues"
    document_type = CatalogueDocument

    async def every(self, *, limit: int = 1000) -> list[CatalogueDocument]:
        """Every organisation's catalogue (for the leader's scheduled pull)."""
        return (await self.find(where={}, limit=limit)).items
