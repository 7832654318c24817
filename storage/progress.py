"""The one progress record shape of a download, for every target.

Written by whatever runs a download (an in-process worker, a Job's pod) at most once per
progress interval, stored on the weights without a revision bump
(:meth:`~storage.repositories.WeightsRepository.set_progress`) and carried by PROGRESS events.
Split from :mod:`storage.documents` (which re-exports these names) as the part of a weights
document that changes every second and is read by the transfer code and the API alike.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from storage.clock import utcnow


class WeightsStage(StrEnum):
    """What a PULLING download is doing right now."""

    PREFLIGHT = "PREFLIGHT"
    DOWNLOADING = "DOWNLOADING"
    VERIFYING = "VERIFYING"
    FINALIZING = "FINALIZING"


class FileState(StrEnum):
    """One file of a download."""

    PENDING = "PENDING"
    DOWNLOADING = "DOWNLOADING"
    VERIFYING = "VERIFYING"
    DONE = "DONE"
    FAILED = "FAILED"


class FileProgress(BaseModel):
    """Progress of one file."""

    path: str
    bytes_done: int
    bytes_total: int
    state: FileState


class Progress(BaseModel):
    """The one progress record shape, for every target."""

    stage: WeightsStage
    bytes_done: int = 0
    bytes_total: int = 0
    files_done: int = 0
    files_total: int = 0
    bytes_per_second: float = 0.0
    eta_seconds: float | None = None
    files: list[FileProgress] = Field(default_factory=list)
    current_file: str | None = None
    updated_at: datetime = Field(default_factory=utcnow)
    bytes_resumed: int = 0
    """Bytes already stored when this attempt began (included in ``bytes_done``)."""
