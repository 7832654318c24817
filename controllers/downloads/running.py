"""One download, run to its outcome: what a worker does, wherever it runs.

:func:`run_weights` is what the local runtime's in-process task runs
(:mod:`controllers.runtimes.local.downloads`) and what ``modelplane download`` runs inside a
download Job's pod (:mod:`controllers.runtimes.kubernetes.jobs`): it moves the Weights to
PULLING, streams files through the sink of its target, writes throttled progress and records
READY or FAILED, each with its event. Every write is for one ``attempt``: a cancel or retry
bumps the attempt, and a worker of an older one can no longer write an outcome.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from controllers.runtimes.secrets import HF_TOKEN_KEY, S3_SECRET_KEY
from controllers.transfer.downloader import Downloader
from controllers.transfer.local_sink import LocalSink
from controllers.transfer.s3_sink import MIN_PART as S3_MIN_PART
from controllers.transfer.s3_sink import S3Sink
from controllers.transfer.sinks import DownloadError, DownloadOptions, ProgressSink, Sink
from integrations.addresses import OutboundPolicy
from integrations.s3 import S3Client, S3Location
from live import EventType, Recorder
from storage.documents import (
    Document,
    DownloadTarget,
    Progress,
    TargetKind,
    VolumeUsage,
    WeightsDocument,
    WeightsState,
)
from storage.errors import NotFound
from storage.repositories import Change, LedgerRepository, Repository, WeightsRepository
from storage.selection import ALL_FILES, FileSelection

log = logging.getLogger(__name__)
D = TypeVar("D", bound=Document)

S3_PART = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class WeightsRuntimeConfig:
    """What runners need beyond repositories."""

    hub_endpoint: str
    options: DownloadOptions
    pvc_mount_path: Path = Path("/weights")
    """Where a download Job's pod has the PVC of a PVC target mounted."""
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy)
    """Where an S3 target's endpoint may connect (checked at every connection)."""


def make_sink(
    doc: WeightsDocument,
    *,
    secrets: dict[str, str],
    ledgers: LedgerRepository,
    chunk_size: int,
    outbound: OutboundPolicy,
    pvc_mount_path: Path = Path("/weights"),
) -> Sink:
    """The sink a Weights' target calls for."""
    target = doc.target
    if target.kind is TargetKind.S3:
        secret = secrets.get(S3_SECRET_KEY)
        if secret is None:
            raise DownloadError("the S3 secret access key is missing from the model's secret")
        client = S3Client(
            S3Location(
                endpoint=target.endpoint,
                region=target.region or "us-east-1",
                bucket=target.bucket or "",
                access_key_id=target.access_key_id or "",
                secret_access_key=secret,
            ),
            outbound=outbound,
        )
        prefix = target.key_prefix(doc.location)
        return S3Sink(client, prefix=prefix, ledgers=ledgers, chunk_size=chunk_size)
    if target.kind is TargetKind.PVC:
        return LocalSink.for_weights(doc, pvc_mount_path / (target.sub_path or ""))
    return LocalSink.for_weights(doc)


def options_for(target: DownloadTarget, options: DownloadOptions) -> DownloadOptions:
    """S3 parts stay at most 16 MiB: memory is parts in flight x part size (<= 300 MB)."""
    if target.kind is TargetKind.S3:
        return replace(options, chunk_size=max(S3_MIN_PART, min(options.chunk_size, S3_PART)))
    return options


def weights_location(
    target: DownloadTarget, repo_id: str, commit_sha: str, selection: FileSelection = ALL_FILES
) -> str:
    """Where a repo at a commit goes for a target. A subset of the files (file patterns) in a
    bucket gets a prefix of its own (``<commit>-files-<digest>``): two subsets never write
    into one prefix. A directory (LOCAL, PVC) is the user's choice; the service refuses a
    second subset in a directory holding another."""
    location = target.location(repo_id, commit_sha)
    if target.kind is TargetKind.S3 and not selection.everything:
        location += f"-files-{selection.digest()}"
    return location


async def run_weights(
    weights_id: str,
    *,
    weights: WeightsRepository,
    ledgers: LedgerRepository,
    secrets: dict[str, str],
    config: WeightsRuntimeConfig,
    recorder: Recorder | None = None,
) -> WeightsDocument | None:
    """Download one Weights to completion and record the outcome (None: deleted meanwhile);
    re-raises cancellation. State changes and progress are appended to the event log."""
    record = recorder or Recorder(None)
    doc = await weights.require(weights_id)
    attempt = doc.attempt
    if doc.state not in (WeightsState.PENDING, WeightsState.PULLING):
        return doc  # cancelled (or finished) before this runner got going
    if doc.state is not WeightsState.PULLING:
        doc = await weights.update(
            doc.id,
            expected_revision=doc.revision,
            changes={"state": WeightsState.PULLING, "message": None},
            event=EventType.PHASE_CHANGED,
            current=doc,
        )
        await record.weights(doc, EventType.PHASE_CHANGED)
    options = options_for(doc.target, config.options)
    try:
        sink = make_sink(
            doc,
            secrets=secrets,
            ledgers=ledgers,
            chunk_size=options.chunk_size,
            pvc_mount_path=config.pvc_mount_path,
            outbound=config.outbound,
        )
        await Downloader(endpoint=config.hub_endpoint, ledgers=ledgers, options=options).run(
            weights_id=doc.id,
            repo_id=doc.repo_id,
            commit_sha=doc.commit_sha,
            files=doc.files,
            sink=sink,
            token=secrets.get(HF_TOKEN_KEY),
            on_progress=_progress_writer(doc, weights, record),
        )
    except (DownloadError, ValueError) as exc:
        log.warning("download failed", extra={"weights_id": doc.id, "reason": str(exc)})
        return await finish(
            weights, doc.id, attempt, WeightsState.FAILED, str(exc), recorder=record
        )
    volume = await _volume(sink)
    return await finish(
        weights, doc.id, attempt, WeightsState.READY, None, volume=volume, recorder=record
    )


def _progress_writer(
    doc: WeightsDocument, weights: WeightsRepository, record: Recorder
) -> ProgressSink:
    """Progress of this attempt, stored and appended to the log (the downloader throttles
    it at the source: at most once per progress interval)."""

    async def on_progress(progress: Progress) -> None:
        stored = progress.model_dump(mode="python")
        if await weights.set_progress(doc.id, progress=stored, attempt=doc.attempt):
            await record.weights(doc, EventType.PROGRESS, progress=progress.model_dump(mode="json"))

    return on_progress


async def _volume(sink: Sink) -> VolumeUsage | None:
    """The filesystem of a local or PVC target when the download finished."""
    if not isinstance(sink, LocalSink):
        return None
    disk = await asyncio.to_thread(shutil.disk_usage, sink.directory)
    return VolumeUsage(used=disk.used, free=disk.free, total=disk.total)


async def finish(
    weights: WeightsRepository,
    weights_id: str,
    attempt: int,
    state: WeightsState,
    message: str | None,
    *,
    volume: VolumeUsage | None = None,
    recorder: Recorder | None = None,
) -> WeightsDocument | None:
    """Record the outcome of ``attempt``; a no-op (the current document returned) when a
    retry or cancel took over, None when the weights were deleted meanwhile."""
    changes: dict[str, object] = {"state": state, "message": message}
    if volume is not None:
        changes["volume"] = volume.model_dump(mode="python")
    try:
        current = await weights.require(weights_id)
        updated = await write_if(
            weights,
            current,
            lambda fresh: changes if fresh.attempt == attempt else None,
            event=EventType.PHASE_CHANGED,
        )
    except NotFound:
        return None
    if updated is None:
        return await weights.get(weights_id)  # a retry or cancel took over
    if recorder is not None:
        await recorder.weights(updated, EventType.PHASE_CHANGED)
    return updated


async def write_if(
    repository: Repository[D], current: D, change: Change[D], *, event: EventType
) -> D | None:
    """:meth:`Repository.modify` starting from ``current``: the document written, or None
    when ``change`` (asked again on every fresh copy) wants nothing written."""
    wrote = False

    def tracked(document: D) -> Mapping[str, Any] | None:
        nonlocal wrote
        fields = change(document)
        wrote = bool(fields)
        return fields

    written = await repository.modify(current.id, tracked, event=event, current=current)
    return written if wrote else None
