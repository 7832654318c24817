"""Weights: list and inspect downloads, cancel, retry, delete, and the storage inventory.

Deleting weights without ``force`` refuses while an engine may read them. That is decided
from the inference documents of the models using the weights, never from the model's
``inference_phase``: that copy is mirrored by the controller after the inference's own write,
so it lags (a RUNNING engine read as its previous phase) and may be missing. An enabled
inference holds its weights whatever its phase says: PENDING and CREATING engines are about
to load them, CRASH_LOOP_BACK_OFF ones load them at every restart, and a FAILED one is
started again when its cause goes (a Kubernetes Deployment keeps retrying its image pull; a
model whose weights failed starts when they are READY). A stopped one holds them until it is
STOPPED: until its engine is gone it keeps its last phase and may still be reading.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from controllers.downloads.reconciler import DownloadController
from controllers.transfer.downloader import DownloadError, LocalSink
from live import EventType, Recorder
from services.errors import Conflict, InvalidInput, Missing
from services.principals import Principal
from storage.documents import (
    InferenceDocument,
    InferencePhase,
    ModelDocument,
    ModelPhase,
    PvcTarget,
    Role,
    TargetKind,
    WeightsDocument,
    WeightsState,
)
from storage.errors import RevisionConflict
from storage.repositories import (
    InferenceRepository,
    LedgerRepository,
    ModelRepository,
    Page,
    WeightsRepository,
)

log = logging.getLogger(__name__)

MAX_PAGE = 100


def holds_weights(*, enabled: bool, phase: InferencePhase) -> bool:
    """Whether an inference may read its model's weights now or later (module docstring)."""
    return enabled or phase is not InferencePhase.STOPPED


@dataclass(frozen=True, slots=True)
class RootUsage:
    """Disk usage of one allowed root and how much of it is weights."""

    root: str
    used: int
    free: int
    total: int
    weights_bytes: int
    kind: TargetKind = TargetKind.LOCAL
    measured_at: datetime | None = None
    """None: measured now (local roots); else when a download pod last measured a PVC."""


def _claims_usage(ready: list[WeightsDocument]) -> list[RootUsage]:
    """One entry per PVC holding READY weights: the newest measurement and their bytes."""
    claims: dict[str, RootUsage] = {}
    for weights in ready:
        if not isinstance(weights.target, PvcTarget) or weights.volume is None:
            continue
        root = f"pvc://{weights.target.claim_name}"
        size = sum(f.size for f in weights.files)
        seen = claims.get(root)
        volume = weights.volume
        if seen is None or (seen.measured_at is not None and volume.measured_at > seen.measured_at):
            claims[root] = RootUsage(
                root=root,
                used=volume.used,
                free=volume.free,
                total=volume.total,
                weights_bytes=size + (seen.weights_bytes if seen else 0),
                kind=TargetKind.PVC,
                measured_at=volume.measured_at,
            )
        else:
            claims[root] = replace(seen, weights_bytes=seen.weights_bytes + size)
    return sorted(claims.values(), key=lambda u: u.root)


class WeightsService:
    """Use cases of the weight cache."""

    def __init__(
        self,
        *,
        weights: WeightsRepository,
        models: ModelRepository,
        inferences: InferenceRepository,
        ledgers: LedgerRepository,
        controller: DownloadController | None,
        local_roots: tuple[Path, ...],
        recorder: Recorder | None = None,
    ) -> None:
        self._record = recorder or Recorder(None)
        self._weights = weights
        self._models = models
        self._inferences = inferences
        self._ledgers = ledgers
        self._controller = controller
        self._roots = local_roots

    async def get(self, principal: Principal, weights_id: str) -> WeightsDocument | None:
        """One entry of the caller's organisation."""
        principal.require(Role.VIEWER)
        return await self._weights.get(weights_id, scope=principal.scope)

    async def page(self, principal: Principal, *, limit: int, offset: int) -> Page[WeightsDocument]:
        """The organisation's weights, newest first."""
        principal.require(Role.VIEWER)
        if not 0 <= limit <= MAX_PAGE or offset < 0:
            raise InvalidInput("limit", f"limit must be 0 to {MAX_PAGE} and offset >= 0")
        return await self._weights.find(
            where=dict(principal.scope),
            limit=limit,
            offset=offset,
            sort=(("created_at", -1), ("_id", -1)),
        )

    async def usage(self, principal: Principal) -> list[RootUsage]:
        """used / free / total bytes per allowed root (measured now) and per PVC (as its last
        download pod measured it), and the weights stored there."""
        principal.require(Role.VIEWER)
        page = await self._weights.find(
            where={**principal.scope, "state": WeightsState.READY.value}, limit=10_000
        )
        result = []
        for root in self._roots:
            if not root.exists():
                continue
            disk = shutil.disk_usage(root)
            inside = sum(
                sum(f.size for f in w.files)
                for w in page.items
                if Path(w.location) == root or root in Path(w.location).parents
            )
            result.append(
                RootUsage(
                    root=str(root),
                    used=disk.used,
                    free=disk.free,
                    total=disk.total,
                    weights_bytes=inside,
                )
            )
        return result + _claims_usage(page.items)

    async def cancel(self, principal: Principal, model_id: str) -> WeightsDocument:
        """Stop the model's download; verified files stay, in-flight parts go."""
        principal.require(Role.EDITOR)
        model, weights = await self._model_weights(principal, model_id)
        if weights.state not in (WeightsState.PENDING, WeightsState.PULLING):
            raise Conflict(None, f"the download is {weights.state.value}, nothing to cancel")
        # State first: a reconcile racing with us must see CANCELLED, not a PULLING download
        # without a runner (which it would start again). The bumped attempt makes the old
        # runner's last write a no-op.
        updated = await self._set(
            weights, {"state": WeightsState.CANCELLED, "attempt": weights.attempt + 1}
        )
        await self._discard_partials(weights)
        await self._record.weights(updated, EventType.PHASE_CHANGED)
        self._notify(model)
        return updated

    async def retry(self, principal: Principal, model_id: str) -> WeightsDocument:
        """Resume a FAILED or CANCELLED download (verified files and kept chunks are reused)."""
        principal.require(Role.EDITOR)
        model, weights = await self._model_weights(principal, model_id)
        if weights.state not in (WeightsState.FAILED, WeightsState.CANCELLED):
            raise Conflict(
                None,
                f"the download is {weights.state.value}; only FAILED or "
                "CANCELLED downloads can be retried",
            )
        updated = await self._set(
            weights,
            {"state": WeightsState.PENDING, "message": None, "attempt": weights.attempt + 1},
        )
        retrying = await self._models.update(
            model.id,
            expected_revision=model.revision,
            changes={"phase": ModelPhase.PULLING, "message": "retrying the download"},
            scope=principal.scope,
            event=EventType.PHASE_CHANGED,
        )
        await self._record.weights(updated, EventType.PHASE_CHANGED)
        await self._record.model(retrying, EventType.PHASE_CHANGED)
        self._notify(model)
        return updated

    async def delete(self, principal: Principal, weights_id: str, *, force: bool) -> list[str]:
        """Remove files and the entry; refuses while an inference uses them unless forced.
        Returns the ids of the models that used them (now FAILED, asking for a retry)."""
        principal.require(Role.EDITOR)
        weights = await self._weights.get(weights_id, scope=principal.scope)
        if weights is None:
            raise Missing(weights_id, f"weights {weights_id} not found")
        users = [
            m
            for m in [await self._models.get(i, scope=principal.scope) for i in weights.model_ids]
            if m is not None and not m.is_deleted
        ]
        serving = await self._serving(principal, users)
        if serving and not force:
            raise Conflict(
                "force",
                f"inference of {', '.join(serving)} uses these weights; stop it or pass force",
            )
        await self._remove_files(weights)
        await self._record.before_removal(weights)  # its DELETED event survives a crash
        await self._weights.delete(weights.id, scope=principal.scope)
        await self._ledgers.forget(weights.id)
        await self._record.weights(weights, EventType.DELETED)
        for model in users:
            await self._detach(model)
        return [m.id for m in users]

    async def _serving(self, principal: Principal, users: list[ModelDocument]) -> list[str]:
        """Names of the models among ``users`` whose inference holds their weights, read from
        the inference documents themselves (one query)."""
        if not users:
            return []
        names = {m.id: m.name for m in users}
        found = await self._inferences.find(
            where={**principal.scope, "model_id": {"$in": list(names)}, "is_deleted": False},
            limit=10_000,
        )
        holding: list[InferenceDocument] = [
            i for i in found.items if holds_weights(enabled=i.enabled, phase=i.phase)
        ]
        return sorted({names[i.model_id] for i in holding if i.model_id in names})

    async def _discard_partials(self, weights: WeightsDocument) -> None:
        """Stop the runner and drop in-flight parts. A target that cannot be reached keeps its
        parts and the ledgers that name them (a retry resumes or aborts them): the cancel
        itself, already recorded, stands."""
        try:
            if self._controller is not None:
                await self._controller.cancel_runner(weights.id)
                await self._controller.discard_partials(weights)
            else:
                await LocalSink.for_weights(weights).discard_partials([])
        except DownloadError as exc:
            log.warning(
                "partial downloads could not be discarded",
                extra={"weights_id": weights.id, "reason": str(exc)},
            )
            return
        await self._ledgers.forget(weights.id)

    async def _remove_files(self, weights: WeightsDocument) -> None:
        """Stop the download and remove its files first: when the target refuses or cannot be
        reached, the record stays (nothing deleted) and the caller is told which and why."""
        try:
            if self._controller is not None:
                await self._controller.cancel_runner(weights.id)
                await self._controller.remove_files(weights)
            else:
                await LocalSink.for_weights(weights).remove_all()
        except DownloadError as exc:
            log.warning(
                "weights files could not be removed",
                extra={"weights_id": weights.id, "reason": str(exc)},
            )
            raise Conflict(
                None, f"{_where(weights)}: {exc}; the weights and their record are kept"
            ) from None

    async def _detach(self, model: ModelDocument) -> None:
        for _ in range(5):
            try:
                detached = await self._models.update(
                    model.id,
                    expected_revision=model.revision,
                    changes={
                        "weights_id": None,
                        "phase": ModelPhase.FAILED,
                        "message": "weights deleted; recreate the model to fetch them again",
                    },
                    event=EventType.PHASE_CHANGED,
                )
            except RevisionConflict:
                fresh = await self._models.get(model.id)
                if fresh is None:
                    return
                model = fresh
            else:
                await self._record.model(detached, EventType.PHASE_CHANGED)
                return

    async def _model_weights(
        self, principal: Principal, model_id: str
    ) -> tuple[ModelDocument, WeightsDocument]:
        model = await self._models.get(model_id, scope=principal.scope)
        if model is None or model.is_deleted:
            raise Missing(model_id, f"model {model_id} not found")
        weights = (
            await self._weights.get(model.weights_id, scope=principal.scope)
            if model.weights_id
            else None
        )
        if weights is None:
            raise Conflict(None, f"model {model_id} has no download")
        return model, weights

    async def _set(self, weights: WeightsDocument, changes: dict[str, object]) -> WeightsDocument:
        while True:
            try:
                return await self._weights.update(
                    weights.id,
                    expected_revision=weights.revision,
                    changes=changes,
                    event=EventType.PHASE_CHANGED,  # cancel and retry: both record one
                )
            except RevisionConflict:
                weights = await self._weights.require(weights.id)

    def _notify(self, model: ModelDocument) -> None:
        if self._controller is not None:
            self._controller.notify(model.id)


def _where(weights: WeightsDocument) -> str:
    """Where a download's files are, for messages: the S3 endpoint too (never a key)."""
    return weights.target.describe(weights.location)
