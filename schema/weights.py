"""Weights (downloads) in GraphQL: the entry, its progress, the inventory, result unions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import strawberry

from schema.enums import DownloadStageEnum, FileStateEnum, StorageKindEnum, WeightsStateEnum
from schema.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from schema.models import DownloadTarget, Model, target_view
from schema.scalars import BigInt
from storage.documents import DownloadAttempt as DownloadAttemptRecord
from storage.documents import Progress, WeightsDocument, utcnow
from storage.history import attempts_now


@strawberry.type(description="Progress of one file.")
class FileProgress:
    """Bytes and state of a file."""

    path: str = strawberry.field(description="Path in the repository.")
    bytes_done: BigInt = strawberry.field(description="Bytes on disk so far.")
    bytes_total: BigInt = strawberry.field(description="Size of the file.")
    state: FileStateEnum = strawberry.field(description="File state.")


@strawberry.type(description="Live progress of a download (updated at most once per second).")
class DownloadProgress:
    """The one progress record shape for every target."""

    stage: DownloadStageEnum = strawberry.field(description="What the download is doing.")
    bytes_done: BigInt = strawberry.field(description="Bytes in place or verified-in-progress.")
    bytes_total: BigInt = strawberry.field(description="Bytes of all files.")
    files_done: int = strawberry.field(description="Files verified and in place.")
    files_total: int = strawberry.field(description="Files in the download.")
    bytes_per_second: float = strawberry.field(description="Smoothed transfer rate.")
    eta_seconds: float | None = strawberry.field(description="Estimated seconds left.")
    current_file: str | None = strawberry.field(description="File most recently written.")
    files: list[FileProgress] = strawberry.field(description="Per-file progress.")
    updated_at: datetime = strawberry.field(description="When this record was written.")

    @classmethod
    def from_record(cls, record: Progress) -> DownloadProgress:
        """API view of a stored progress record."""
        return cls(
            stage=DownloadStageEnum(record.stage.value),
            bytes_done=BigInt(record.bytes_done),
            bytes_total=BigInt(record.bytes_total),
            files_done=record.files_done,
            files_total=record.files_total,
            bytes_per_second=record.bytes_per_second,
            eta_seconds=record.eta_seconds,
            current_file=record.current_file,
            files=[
                FileProgress(
                    path=f.path,
                    bytes_done=BigInt(f.bytes_done),
                    bytes_total=BigInt(f.bytes_total),
                    state=FileStateEnum(f.state.value),
                )
                for f in record.files
            ],
            updated_at=record.updated_at,
        )


@strawberry.type(
    description="One run of a download, from entering PULLING to READY, FAILED or CANCELLED "
    "(a retried or resumed download is a new attempt)."
)
class DownloadAttempt:
    """An attempt as stored on the weights (at most 20, oldest first)."""

    attempt: int = strawberry.field(
        description="The weights' attempt counter while it ran: the number in the download "
        "Job's name (`download-<weights>-<attempt>`). A cancel also advances it (the old "
        "attempt's worker stands down), so a cancel and a retry go from attempt 0 to 2."
    )
    started_at: datetime = strawberry.field(description="When it entered PULLING (UTC).")
    ended_at: datetime | None = strawberry.field(description="When it ended; null while running.")
    outcome: WeightsStateEnum = strawberry.field(
        description="READY, FAILED or CANCELLED; PULLING while it is in progress."
    )
    bytes_fetched: BigInt = strawberry.field(
        description="Bytes this attempt fetched, as of its last progress record (bytes already "
        "stored when it began are not counted)."
    )
    bytes_resumed: BigInt = strawberry.field(
        description="Bytes already stored when it began (a resumed attempt skips them)."
    )
    reason: str | None = strawberry.field(
        description="Why it ended (the failure, `cancelled`, the model deleted); null if READY."
    )
    duration_seconds: float = strawberry.field(description="Until it ended, or until now.")

    @classmethod
    def from_record(cls, record: DownloadAttemptRecord, now: datetime) -> DownloadAttempt:
        """API view of a stored attempt."""
        return cls(
            attempt=record.attempt,
            started_at=record.started_at,
            ended_at=record.ended_at,
            outcome=WeightsStateEnum(record.outcome.value),
            bytes_fetched=BigInt(record.bytes_fetched),
            bytes_resumed=BigInt(record.bytes_resumed),
            reason=record.reason,
            duration_seconds=max(
                0.0, ((record.ended_at or now) - record.started_at).total_seconds()
            ),
        )


@strawberry.type(description="A file of downloaded weights.")
class WeightsFileInfo:
    """Path, size and expected hash."""

    path: str = strawberry.field(description="Path in the repository and under the location.")
    size: BigInt = strawberry.field(description="Size in bytes.")
    sha256: str | None = strawberry.field(description="LFS sha256 it is verified against.")


@strawberry.type(
    description="One repository at one commit, downloaded (or downloading) to one place."
)
class Weights:
    """An entry of the weight cache."""

    id: strawberry.ID = strawberry.field(description="e.g. `weights-k2m9q`.")
    repo_id: str = strawberry.field(description="Hugging Face repo id.")
    commit_sha: str = strawberry.field(description="The exact commit downloaded.")
    revision: str | None = strawberry.field(description="The revision that was asked for.")
    target: DownloadTarget = strawberry.field(description="Where the files go.")
    location: str = strawberry.field(description="Directory (or s3:// prefix) holding the files.")
    state: WeightsStateEnum = strawberry.field(description="Download state.")
    message: str | None = strawberry.field(
        description="Why it failed (e.g. `needs 14.2 GiB, 3.1 GiB free at /data/models`)."
    )
    progress: DownloadProgress | None = strawberry.field(description="Latest progress record.")
    files: list[WeightsFileInfo] = strawberry.field(description="Files with sizes and hashes.")
    size_bytes: BigInt = strawberry.field(description="Total size of the files.")
    model_ids: list[strawberry.ID] = strawberry.field(description="Models using these weights.")
    allow_patterns: list[str] = strawberry.field(
        description="The allow globs the files were chosen by; empty: every file of the repo."
    )
    ignore_patterns: list[str] = strawberry.field(
        description="The ignore globs the files were chosen by. Weights with other patterns "
        "are another copy, never shared."
    )
    prefetched: bool = strawberry.field(
        description="Asked for by downloadWeights: kept and downloaded while no model uses "
        "them; attach them with createModel's weightsId."
    )
    download_attempts: list[DownloadAttempt] = strawberry.field(
        description="Every download attempt, oldest first (the last 20), from the stored "
        "history: start, end, outcome, bytes fetched and why it ended."
    )
    created_at: datetime = strawberry.field(description="When the entry was created (UTC).")
    updated_at: datetime = strawberry.field(description="Last change (UTC).")

    @classmethod
    def from_document(cls, doc: WeightsDocument) -> Weights:
        """API view of a stored entry (no credential is on it)."""
        return cls(
            id=strawberry.ID(doc.id),
            repo_id=doc.repo_id,
            commit_sha=doc.commit_sha,
            revision=doc.requested_revision,
            target=target_view(doc.target),
            location=doc.location,
            state=WeightsStateEnum(doc.state.value),
            message=doc.message,
            progress=DownloadProgress.from_record(doc.progress) if doc.progress else None,
            files=[
                WeightsFileInfo(path=f.path, size=BigInt(f.size), sha256=f.sha256)
                for f in doc.files
            ],
            size_bytes=BigInt(sum(f.size for f in doc.files)),
            model_ids=[strawberry.ID(m) for m in doc.model_ids],
            allow_patterns=list(doc.selection.allow),
            ignore_patterns=list(doc.selection.ignore),
            prefetched=doc.prefetched,
            download_attempts=[
                DownloadAttempt.from_record(attempt, utcnow()) for attempt in attempts_now(doc)
            ],
            created_at=doc.created_at,
            updated_at=doc.updated_at,
        )


@strawberry.type(description="A page of weights and the number of all entries.")
class WeightsPage:
    """A `limit`/`offset` page."""

    total: int = strawberry.field(description="Entries across all pages.")
    items: list[Weights] = strawberry.field(description="This page, newest first.")


@strawberry.type(
    description="Usage of one weights location (an allowed local root, a PVC, an S3 bucket "
    "prefix with a quota) and its storage alert."
)
class StorageUsage:
    """used / free / total bytes, the threshold and whether it is alerting."""

    root: str = strawberry.field(
        description="The location: the root directory (LOCAL), `pvc://<claim>` (PVC) or "
        "`s3://<bucket>/<prefix>` (S3)."
    )
    kind: StorageKindEnum = strawberry.field(description="LOCAL root, PVC or S3 prefix.")
    measured_at: datetime | None = strawberry.field(
        description="Null: measured now (local roots, S3 prefixes). For a PVC: when the last "
        "download pod that wrote to it measured its filesystem (the API cannot mount it)."
    )
    used: BigInt = strawberry.field(
        description="Bytes used on its filesystem (S3: bytes of READY weights under the prefix)."
    )
    free: BigInt = strawberry.field(description="Bytes free (S3: what the quota leaves).")
    total: BigInt = strawberry.field(
        description="Size of its filesystem (S3: the prefix's configured quota)."
    )
    weights_bytes: BigInt = strawberry.field(
        description="Bytes of your organisation's READY weights under it."
    )
    alert_threshold: float = strawberry.field(
        description="Usage fraction (used / total, 0 to 1) at which this location alerts "
        "(`MODELPLANE_STORAGE_ALERT_THRESHOLD`, or its per-location override)."
    )
    alerting: bool = strawberry.field(
        description="True from the check that found usage at or over the threshold until one "
        "finds it below the threshold minus the hysteresis; the same on every replica (stored "
        "by the leading one). Each change is an ALERT event of `storageAlerts`."
    )


@strawberry.type(description="What deleteWeights removed.")
class DeletedWeights:
    """The removed entry and the models that used it."""

    id: strawberry.ID = strawberry.field(description="The removed weights id.")
    detached_model_ids: list[strawberry.ID] = strawberry.field(
        description="Models that used these weights (now FAILED until recreated)."
    )


DownloadResult = Annotated[
    Weights | Model | NotFoundError | ConflictError | ForbiddenError,
    strawberry.union(
        "DownloadResult",
        description=(
            "The download's new state; the model, when retryDownload asked the hub again for "
            "a model whose download was never created; or why not."
        ),
    ),
]
DeleteWeightsResult = Annotated[
    DeletedWeights | NotFoundError | ConflictError | ForbiddenError | ValidationError,
    strawberry.union("DeleteWeightsResult", description="What was removed, or why not."),
]
