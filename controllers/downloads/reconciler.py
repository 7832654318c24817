"""The download controller: moves LOCAL models PENDING -> PULLING -> READY (or FAILED).

Level-triggered (ARCHITECTURE.md decision 4): a work queue keyed by model id is fed by model
changes, by download completions and by a periodic resync. Each reconcile re-reads the model,
computes a plan from what it finds (:func:`plan`, pure), applies it idempotently and writes
status only when it changes. Downloads themselves run as supervised in-process tasks (the
``local`` runtime), one per Weights; :func:`run_weights` is also what ``modelplane download``
runs, so the same code can run in a Job pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from controllers.downloads.executions import Execution, Executor
from controllers.leading import Leadership
from controllers.runtimes.secrets import HF_TOKEN_KEY, S3_SECRET_KEY, SecretStore, SecretStoreError
from controllers.transfer.downloader import (
    Downloader,
    DownloadError,
    DownloadOptions,
    LocalSink,
    Sink,
)
from controllers.transfer.s3_sink import MIN_PART as S3_MIN_PART
from controllers.transfer.s3_sink import S3Sink
from controllers.workqueue import WorkQueue
from integrations.addresses import OutboundPolicy
from integrations.huggingface import HubClient, HubError
from integrations.s3 import S3Client, S3Location
from live import EventType, Recorder
from storage.documents import (
    AccessMode,
    DownloadTarget,
    ModelDocument,
    ModelPhase,
    Progress,
    TargetKind,
    VolumeUsage,
    WeightsDocument,
    WeightsFile,
    WeightsState,
    new_id,
)
from storage.errors import DuplicateKey, RevisionConflict
from storage.repositories import (
    LeaseRepository,
    LedgerRepository,
    ModelRepository,
    WeightsRepository,
)

log = logging.getLogger(__name__)

RESYNC_SECONDS = 15.0
LEASE_SECONDS = 15.0
LEASE_NAME = "download-controller"
S3_PART = 16 * 1024 * 1024


STOPPED_BY_DELETE = "download stopped: its model was deleted"
"""Why the download of weights that no model uses any more was cancelled."""
_DOWNLOADING = (WeightsState.PENDING, WeightsState.PULLING)


class Action(enum.Enum):
    """What a reconcile decides for one model."""

    NOTHING = "nothing"
    FORGET = "forget"  # gone, deleted or not LOCAL, and nothing of it left to undo
    RELEASE = "release"  # deleted, still listed by weights that go on: unlist it
    STOP = "stop"  # deleted, its download used by no other model: cancel it, unlist it
    CREATE_WEIGHTS = "create-weights"
    START = "start"  # no worker for the current attempt: launch one
    FAIL = "fail"  # the worker failed without recording why: record the runtime's reason
    HALT = "halt"  # the download ended (cancelled, failed) but a worker lingers
    MIRROR = "mirror"  # copy the weights' state onto the model


def plan(  # noqa: PLR0911  a decision table reads best as one return per row
    model: ModelDocument | None, weights: WeightsDocument | None, execution: Execution
) -> Action:
    """The pure decision of a reconcile (table-tested)."""
    if model is None or model.is_deleted or model.source.access_mode is not AccessMode.LOCAL:
        return plan_release(model, weights, execution)
    if model.download_target is None:
        return Action.NOTHING
    if weights is None:
        return Action.CREATE_WEIGHTS if model.phase is ModelPhase.PENDING else Action.NOTHING
    if weights.state in _DOWNLOADING:
        if execution.failure is not None:
            return Action.FAIL
        if not execution.active:
            return Action.START
        return Action.MIRROR
    if execution.active and weights.state is not WeightsState.READY:
        return Action.HALT
    return Action.MIRROR


def plan_release(
    model: ModelDocument | None, weights: WeightsDocument | None, execution: Execution
) -> Action:
    """A model that no longer wants its weights (deleted): a download that no other model
    uses stops (CANCELLED, :data:`STOPPED_BY_DELETE`), whether or not the model is still
    listed (weights left PULLING with no model by an older version stop too); weights that
    other models use, or that are settled, only lose the model from their list."""
    if model is None or weights is None:
        return Action.FORGET
    others = [owner for owner in weights.model_ids if owner != model.id]
    if not others and (weights.state in _DOWNLOADING or execution.active):
        return Action.STOP
    return Action.RELEASE if model.id in weights.model_ids else Action.FORGET


def restarts_on_attach(weights: WeightsDocument) -> bool:
    """A new model asking for stopped weights that no model uses (their model was deleted)
    restarts them: creating the model again downloads, resuming from the verified files."""
    return not weights.model_ids and weights.state in (WeightsState.CANCELLED, WeightsState.FAILED)


def model_status(weights: WeightsDocument) -> tuple[ModelPhase, str | None]:
    """The model phase and message that mirror a Weights' state."""
    if weights.state is WeightsState.READY:
        return ModelPhase.READY, None
    if weights.state is WeightsState.FAILED:
        return ModelPhase.FAILED, weights.message
    if weights.state is WeightsState.CANCELLED:
        return ModelPhase.FAILED, "download cancelled; retryDownload resumes it"
    if weights.state is WeightsState.PULLING:
        return ModelPhase.PULLING, weights.message
    return ModelPhase.PENDING, "waiting for the download to start"


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


def weights_location(target: DownloadTarget, repo_id: str, commit_sha: str) -> str:
    """Where a repo at a commit goes for a target."""
    return target.location(repo_id, commit_sha)


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
        )
        await record.weights(doc, EventType.PHASE_CHANGED)

    async def on_progress(progress: Progress) -> None:
        # At most once per progress interval (1 s): the downloader throttles at the source.
        record_ = progress.model_dump(mode="python")
        if await weights.set_progress(weights_id, progress=record_, attempt=attempt):
            await record.weights(doc, EventType.PROGRESS, progress=progress.model_dump(mode="json"))

    options = options_for(doc.target, config.options)
    downloader = Downloader(endpoint=config.hub_endpoint, ledgers=ledgers, options=options)
    try:
        sink = make_sink(
            doc,
            secrets=secrets,
            ledgers=ledgers,
            chunk_size=options.chunk_size,
            pvc_mount_path=config.pvc_mount_path,
            outbound=config.outbound,
        )
        await downloader.run(
            weights_id=doc.id,
            repo_id=doc.repo_id,
            commit_sha=doc.commit_sha,
            files=doc.files,
            sink=sink,
            token=secrets.get(HF_TOKEN_KEY),
            on_progress=on_progress,
        )
    except (DownloadError, ValueError) as exc:
        log.warning("download failed", extra={"weights_id": doc.id, "reason": str(exc)})
        return await _finish(
            weights, doc.id, attempt, WeightsState.FAILED, str(exc), recorder=record
        )
    volume = None
    if isinstance(sink, LocalSink):
        disk = await asyncio.to_thread(shutil.disk_usage, sink.directory)
        volume = VolumeUsage(used=disk.used, free=disk.free, total=disk.total)
    return await _finish(
        weights, doc.id, attempt, WeightsState.READY, None, volume=volume, recorder=record
    )


async def _finish(
    weights: WeightsRepository,
    weights_id: str,
    attempt: int,
    state: WeightsState,
    message: str | None,
    *,
    volume: VolumeUsage | None = None,
    recorder: Recorder | None = None,
) -> WeightsDocument | None:
    changes: dict[str, object] = {"state": state, "message": message}
    if volume is not None:
        changes["volume"] = volume.model_dump(mode="python")
    while True:
        current = await weights.get(weights_id)
        if current is None or current.attempt != attempt:
            return current  # deleted, or a retry or cancel took over
        try:
            updated = await weights.update(
                weights_id,
                expected_revision=current.revision,
                changes=changes,
                event=EventType.PHASE_CHANGED,
            )
        except RevisionConflict:
            continue
        if recorder is not None:
            await recorder.weights(updated, EventType.PHASE_CHANGED)
        return updated


class LocalExecutor:
    """The local runtime's workers: one supervised in-process task per downloading Weights."""

    def __init__(
        self,
        *,
        weights: WeightsRepository,
        ledgers: LedgerRepository,
        secrets: Callable[[ModelDocument], Awaitable[dict[str, str]]],
        config: WeightsRuntimeConfig,
        recorder: Recorder | None = None,
    ) -> None:
        self._recorder = recorder
        self._weights = weights
        self._ledgers = ledgers
        self._secrets = secrets
        self._config = config
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._notify: Callable[[str], None] = lambda _model_id: None

    def watch(self, notify: Callable[[str], None]) -> None:
        self._notify = notify

    async def observe(self, weights: WeightsDocument) -> Execution:
        task = self._runners.get(weights.id)
        return Execution(active=task is not None and not task.done())

    async def launch(self, model: ModelDocument, weights: WeightsDocument) -> Execution | None:
        if (await self.observe(weights)).active:
            return None

        async def runner() -> None:
            secrets = await self._secrets(model)
            try:
                await run_weights(
                    weights.id,
                    weights=self._weights,
                    ledgers=self._ledgers,
                    secrets=secrets,
                    config=self._config,
                    recorder=self._recorder,
                )
            finally:
                self._runners.pop(weights.id, None)
                current = await self._weights.get(weights.id)
                for owner in current.model_ids if current is not None else weights.model_ids:
                    self._notify(owner)

        self._runners[weights.id] = asyncio.create_task(runner(), name=f"download:{weights.id}")
        return None

    async def halt(self, weights_id: str) -> None:
        task = self._runners.pop(weights_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def release_all(self) -> None:
        for weights_id in list(self._runners):
            await self.halt(weights_id)

    async def clean(self, weights: WeightsDocument, *, partials_only: bool) -> bool:
        del weights, partials_only  # this process reaches every local target: sinks do it
        return False

    async def close(self) -> None:
        await self.release_all()


class DownloadController:
    """Owns the work queue, the resync loop and the leadership loop; workers run through an
    :class:`~controllers.downloads.executions.Executor` (in-process tasks or Jobs)."""

    def __init__(
        self,
        *,
        models: ModelRepository,
        weights: WeightsRepository,
        ledgers: LedgerRepository,
        secrets: SecretStore,
        hub: HubClient,
        config: WeightsRuntimeConfig,
        executor: Executor | None = None,
        recorder: Recorder | None = None,
        leases: LeaseRepository | None = None,
        holder: str = "",
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self._models = models
        self._weights = weights
        self._ledgers = ledgers
        self._secrets = secrets
        self._hub = hub
        self._config = config
        self._record = recorder or Recorder(None)
        self._executor: Executor = executor or LocalExecutor(
            weights=weights,
            ledgers=ledgers,
            secrets=self._secret_values,
            config=config,
            recorder=self._record,
        )
        self._queue = WorkQueue(self.reconcile, name="downloads")
        self._leadership = Leadership(
            leases,
            name=LEASE_NAME,
            holder=holder or f"controller-{id(self):x}",
            seconds=lease_seconds,
            resync=self.resync,
            resync_seconds=RESYNC_SECONDS,
            on_loss=self._executor.release_all,
        )

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start workers, the watch, the resync loop and (with leases) the leadership loop."""
        self._queue.start()
        self._executor.watch(self.notify)
        self._leadership.start()

    @property
    def leading(self) -> bool:
        """True while this replica holds the controllers' lease (or runs without leases)."""
        return self._leadership.leading

    async def stop(self) -> None:
        """Cancel everything this controller started; downloads resume on the next start."""
        await self._leadership.stop()
        await self._queue.stop()
        await self._executor.close()

    def notify(self, model_id: str) -> None:
        """A model changed: look at it soon."""
        self._queue.add(model_id)

    async def wait_idle(self) -> None:
        """For tests: until the queue has drained."""
        await self._queue.wait_idle()

    async def running(self, weights: WeightsDocument) -> bool:
        """True while a worker downloads these weights."""
        return (await self._executor.observe(weights)).active

    async def cancel_runner(self, weights_id: str) -> None:
        """Stop the worker(s) of these weights, if any, and wait for it."""
        await self._executor.halt(weights_id)

    # -- reconcile ----------------------------------------------------------------------

    async def reconcile(self, model_id: str) -> float | None:
        """Re-read, plan, apply. Returns when to look again, if ever."""
        if not self.leading:
            return None  # the leader's resync picks the model up
        model = await self._models.get(model_id)
        weights = await self._weights.get(model.weights_id) if model and model.weights_id else None
        execution = await self._executor.observe(weights) if weights is not None else Execution()
        action = plan(model, weights, execution)
        if action in (Action.RELEASE, Action.STOP) and model is not None and weights is not None:
            await self._release(model, weights, stop=action is Action.STOP)
            return None
        if action in (Action.NOTHING, Action.FORGET) or model is None:
            return None
        if action is Action.CREATE_WEIGHTS:
            model, weights = await self._attach_weights(model)
            execution = await self._executor.observe(weights)
            action = plan(model, weights, execution)
        assert weights is not None  # noqa: S101  every remaining action has weights
        current = await self._apply(action, model, weights, execution)
        if current is not None:
            await self._mirror(model, current)
        return None

    async def _apply(
        self,
        action: Action,
        model: ModelDocument,
        weights: WeightsDocument,
        execution: Execution,
    ) -> WeightsDocument | None:
        """Carry out START, FAIL, HALT or MIRROR; the weights as they are afterwards."""
        if action is Action.START:
            if weights.state is not WeightsState.PULLING:
                weights = await self._weights.update(
                    weights.id,
                    expected_revision=weights.revision,
                    changes={"state": WeightsState.PULLING, "message": None},
                    event=EventType.PHASE_CHANGED,
                )
                await self._record.weights(weights, EventType.PHASE_CHANGED)
            refused = await self._executor.launch(model, weights)
            if refused is None or refused.failure is None:
                return weights
            action, execution = Action.FAIL, refused
        if action is Action.FAIL:
            await self._executor.halt(weights.id)
            log.warning(
                "download failed in the runtime",
                extra={"model_id": model.id, "reason": execution.failure},
            )
            return await _finish(
                self._weights,
                weights.id,
                weights.attempt,
                WeightsState.FAILED,
                execution.failure,
                recorder=self._record,
            )
        if action is Action.HALT:
            await self._executor.halt(weights.id)
        elif execution.active and execution.note != weights.message:
            return await self._note(weights, execution.note)
        return weights

    async def _note(self, weights: WeightsDocument, note: str | None) -> WeightsDocument:
        """Show why a running worker waits (unschedulable, OOMKilled and retrying)."""
        try:
            noted = await self._weights.update(
                weights.id,
                expected_revision=weights.revision,
                changes={"message": note},
                event=EventType.UPDATED,
            )
        except RevisionConflict:
            for owner in weights.model_ids:
                self._queue.add(owner)  # the worker wrote first: look again with fresh data
            return weights
        await self._record.weights(noted, EventType.UPDATED)
        return noted

    async def _attach_weights(self, model: ModelDocument) -> tuple[ModelDocument, WeightsDocument]:
        """Find or create the weights of the model's repo, commit and target, list the model
        in them and point the model at them. Returns both as written: the reconcile goes on
        with the model this write returned (its copy from before would conflict with itself)."""
        target = model.download_target
        assert target is not None  # noqa: S101  plan() only creates weights for LOCAL targets
        assert model.hub is not None  # noqa: S101  LOCAL models carry hub facts
        commit = model.hub.commit_sha or ""
        location = weights_location(target, model.source.url, commit)
        found = await self._weights.for_location(
            organization_id=model.organization_id, location=location, commit_sha=commit
        )
        if found is None:
            token = await self._token(model)
            try:
                info = await self._hub.model(model.source.url, revision=commit, token=token)
            except HubError as exc:
                await self._set_model(model, ModelPhase.FAILED, f"hub: {exc}")
                raise
            found = WeightsDocument(
                id=new_id("weights"),
                organization_id=model.organization_id,
                repo_id=model.source.url,
                requested_revision=model.source.revision,
                commit_sha=info.sha,
                target=target,
                location=location,
                files=[
                    WeightsFile(path=f.path, size=f.size or 0, sha256=f.sha256, blob_id=f.blob_id)
                    for f in info.files
                ],
                model_ids=[model.id],
                secret_ref=model.secret_ref,
            )
            with contextlib.suppress(DuplicateKey):
                await self._weights.insert(found)
        elif model.id not in found.model_ids:
            changes: dict[str, object] = {"model_ids": [*found.model_ids, model.id]}
            restart = restarts_on_attach(found)
            if restart:
                changes |= {"state": WeightsState.PENDING, "message": None}
                changes["attempt"] = found.attempt + 1
            found = await self._weights.update(
                found.id,
                expected_revision=found.revision,
                changes=changes,
                event=EventType.PHASE_CHANGED if restart else EventType.UPDATED,
            )
            await self._record.weights(
                found, EventType.PHASE_CHANGED if restart else EventType.UPDATED
            )
        attached = await self._models.update(
            model.id, expected_revision=model.revision, changes={"weights_id": found.id}
        )
        return attached, found

    async def _token(self, model: ModelDocument) -> str | None:
        return (await self._secret_values(model)).get(HF_TOKEN_KEY)

    async def _secret_values(self, model: ModelDocument) -> dict[str, str]:
        if model.secret_ref is None:
            return {}
        try:
            return await self._secrets.get(model.secret_ref)
        except SecretStoreError:
            log.warning("the model's credentials could not be read", extra={"model_id": model.id})
            return {}

    async def discard_partials(self, weights: WeightsDocument) -> None:
        """Remove in-flight parts (partial files, or S3 multipart uploads) of a download."""
        stored = await self._ledgers.find(where={"weights_id": weights.id}, limit=10_000)
        if not await self._executor.clean(weights, partials_only=True):
            sink = await self._sink_for(weights)
            if sink is not None:
                await sink.discard_partials(stored.items)
        await self._ledgers.forget(weights.id)

    async def remove_files(self, weights: WeightsDocument) -> None:
        """Delete a download's files (directory or S3 prefix)."""
        if await self._executor.clean(weights, partials_only=False):
            return
        sink = await self._sink_for(weights)
        if sink is not None:
            await sink.remove_all()

    async def _sink_for(self, weights: WeightsDocument) -> Sink | None:
        """The sink of a download, with credentials from its first model (None if unusable)."""
        model = await self._models.get(weights.model_ids[0]) if weights.model_ids else None
        secrets = await self._secret_values(model) if model else {}
        try:
            return make_sink(
                weights,
                secrets=secrets,
                ledgers=self._ledgers,
                chunk_size=options_for(weights.target, self._config.options).chunk_size,
                pvc_mount_path=self._config.pvc_mount_path,
                outbound=self._config.outbound,
            )
        except (DownloadError, ValueError):
            return None

    async def _mirror(self, model: ModelDocument, weights: WeightsDocument) -> None:
        phase, message = model_status(weights)
        if (phase, message) != (model.phase, model.message):
            await self._set_model(model, phase, message)

    async def _set_model(
        self, model: ModelDocument, phase: ModelPhase, message: str | None
    ) -> None:
        try:
            updated = await self._models.update(
                model.id,
                expected_revision=model.revision,
                changes={"phase": phase, "message": message},
                event=EventType.PHASE_CHANGED,
            )
        except RevisionConflict:
            self._queue.add(model.id)  # someone wrote first: look again with fresh data
            return
        await self._record.model(updated, EventType.PHASE_CHANGED)

    async def _release(self, model: ModelDocument, weights: WeightsDocument, *, stop: bool) -> None:
        """RELEASE: drop the model from the weights' list. STOP: also cancel the download (one
        compare-and-set with the bumped attempt, so the worker's last write is a no-op), halt
        the worker and discard in-flight parts; verified files stay, as after cancelDownload:
        deleteWeights removes them, a new model and retryDownload resume from them.
        Idempotent; on a conflict the model is looked at again with fresh data."""
        changes: dict[str, object] = {
            "model_ids": [owner for owner in weights.model_ids if owner != model.id]
        }
        stopping = stop and weights.state in _DOWNLOADING
        if stopping:
            changes |= {
                "state": WeightsState.CANCELLED,
                "message": STOPPED_BY_DELETE,
                "attempt": weights.attempt + 1,
            }
        if changes != {"model_ids": weights.model_ids}:
            try:
                weights = await self._weights.update(
                    weights.id,
                    expected_revision=weights.revision,
                    changes=changes,
                    event=EventType.PHASE_CHANGED if stopping else EventType.UPDATED,
                )
            except RevisionConflict:
                self._queue.add(model.id)
                return
            await self._record.weights(
                weights, EventType.PHASE_CHANGED if stopping else EventType.UPDATED
            )
        if stop:
            await self.cancel_runner(weights.id)
        if stopping:
            log.info("download stopped: its model was deleted", extra={"weights_id": weights.id})
            try:
                await self.discard_partials(weights)
            except DownloadError as exc:
                log.warning(
                    "partial downloads could not be discarded",
                    extra={"weights_id": weights.id, "reason": str(exc)},
                )

    async def resync(self) -> None:
        """Enqueue every LOCAL model that is not settled, and every model pointing at a
        download in progress: a deleted model whose deletion this replica never heard of (the
        API call went to another replica) still has its download to stop."""
        page = await self._models.find(
            where={
                "is_deleted": False,
                "source.access_mode": AccessMode.LOCAL.value,
                "phase": {"$in": [ModelPhase.PENDING.value, ModelPhase.PULLING.value]},
            },
            limit=10_000,
        )
        downloading = await self._weights.find(
            where={"state": {"$in": [state.value for state in _DOWNLOADING]}}, limit=10_000
        )
        for model in page.items:
            self._queue.add(model.id)
        if downloading.items:
            users = await self._models.find(
                where={"weights_id": {"$in": [w.id for w in downloading.items]}}, limit=10_000
            )
            for model in users.items:
                self._queue.add(model.id)
