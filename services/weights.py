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

This service never calls a controller (docs/architecture.md decision 10): it writes the
document, appends the event and returns, and the leading replica's download controller acts
on the event. ``cancelDownload`` writes CANCELLED; ``deleteWeights`` marks the weights
(``deletion``) and waits, bounded, for the leader's outcome -- the record gone, or the target's
refusal written into the mark -- woken by this replica's broker (:meth:`WeightsService.on_event`),
so the answer tells the truth whichever replica took the call.

``weightsUsage`` measures with the storage watcher's own function
(``controllers/alerts/measuring.py``) and reads the alert state the leading replica stored
(``storage/alerts.py``), so every replica answers the same threshold and ``alerting``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

from controllers.alerts.deciding import AlertPolicy
from controllers.alerts.measuring import LocationStatus, measure
from live import Event, EventType, Recorder, ResourceKind
from services.errors import Conflict, InvalidInput, Missing
from services.principals import Principal
from storage.alerts import StorageAlertRepository
from storage.documents import (
    InferenceDocument,
    InferencePhase,
    ModelDocument,
    ModelPhase,
    Role,
    WeightsDeletion,
    WeightsDocument,
    WeightsState,
    new_id,
)
from storage.errors import NotFound
from storage.repositories import (
    InferenceRepository,
    ModelRepository,
    Page,
    WeightsRepository,
)

log = logging.getLogger(__name__)

MAX_PAGE = 100
REMOVAL_WAIT_SECONDS = 30.0
REMOVAL_RECHECK = 5.0
"""Seconds between re-reads of weights being removed when no event about them arrives."""


def holds_weights(*, enabled: bool, phase: InferencePhase) -> bool:
    """Whether an inference may read its model's weights now or later (module docstring)."""
    return enabled or phase is not InferencePhase.STOPPED


class WeightsService:
    """Use cases of the weight cache."""

    def __init__(
        self,
        *,
        weights: WeightsRepository,
        models: ModelRepository,
        inferences: InferenceRepository,
        local_roots: tuple[Path, ...],
        recorder: Recorder | None = None,
        removal_wait: float = REMOVAL_WAIT_SECONDS,
        alerts: StorageAlertRepository | None = None,
        alert_policy: AlertPolicy | None = None,
        s3_quotas: Mapping[str, int] | None = None,
    ) -> None:
        self._record = recorder or Recorder(None)
        self._weights = weights
        self._models = models
        self._inferences = inferences
        self._roots = local_roots
        self._alerts = alerts
        self._alert_policy = alert_policy or AlertPolicy()
        self._s3_quotas = dict(s3_quotas or {})
        self._removal_wait = removal_wait
        self._removals = _Waiters()

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

    async def usage(self, principal: Principal) -> list[LocationStatus]:
        """used / free / total bytes per allowed root (measured now), per PVC (as its last
        download pod measured it) and per S3 prefix with a quota, the caller's weights stored
        there, and each location's threshold and alert state (as the leading replica stored
        it: every replica answers the same)."""
        principal.require(Role.VIEWER)
        ready = await self._weights.find(where={"state": WeightsState.READY.value}, limit=10_000)
        measured = measure(
            ready.items,
            roots=self._roots,
            s3_quotas=self._s3_quotas,
            organization_id=principal.organization_id,
        )
        states = await self._alerts.all() if self._alerts is not None else {}
        policy = self._alert_policy
        return [
            LocationStatus(
                usage=u,
                threshold=policy.threshold_for(u.root),
                alerting=u.root in states and states[u.root].alerting,
            )
            for u in measured
        ]

    async def cancel(self, principal: Principal, model_id: str) -> WeightsDocument:
        """Stop the model's download: CANCELLED with a bumped attempt (an old worker's last
        write is then a no-op), recorded; the leading controller halts the worker and discards
        in-flight parts on that event. Verified files stay."""
        principal.require(Role.EDITOR)
        _model, weights = await self._model_weights(principal, model_id)
        return await self._cancel(principal, weights)

    async def cancel_weights(self, principal: Principal, weights_id: str) -> WeightsDocument:
        """:meth:`cancel` by the weights' id (prefetched weights have no model)."""
        principal.require(Role.EDITOR)
        return await self._cancel(principal, await self._require(principal, weights_id))

    async def retry_weights(self, principal: Principal, weights_id: str) -> WeightsDocument:
        """Resume FAILED or CANCELLED weights by their id; the controller mirrors the new
        state onto the models using them."""
        principal.require(Role.EDITOR)
        return await self._retry(principal, await self._require(principal, weights_id))

    async def _require(self, principal: Principal, weights_id: str) -> WeightsDocument:
        weights = await self._weights.get(weights_id, scope=principal.scope)
        if weights is None:
            raise Missing(weights_id, f"weights {weights_id} not found")
        return weights

    async def _cancel(self, principal: Principal, weights: WeightsDocument) -> WeightsDocument:
        def change(current: WeightsDocument) -> dict[str, object]:
            if current.state not in (WeightsState.PENDING, WeightsState.PULLING):
                raise Conflict(None, f"the download is {current.state.value}, nothing to cancel")
            return {"state": WeightsState.CANCELLED, "attempt": current.attempt + 1}

        updated = await self._weights.modify(
            weights.id,
            change,
            scope=principal.scope,
            event=EventType.PHASE_CHANGED,
            current=weights,
        )
        await self._record.weights(updated, EventType.PHASE_CHANGED)
        log.info("download cancelled", extra={"weights_id": weights.id})
        return updated

    async def retry(self, principal: Principal, model_id: str) -> WeightsDocument | ModelDocument:
        """Resume a FAILED or CANCELLED download (verified files and kept chunks are reused).
        A FAILED model with no download (its first look at the hub failed for good) is asked
        for again: PENDING, and the controller starts over; the model is returned then."""
        principal.require(Role.EDITOR)
        model, weights = await self._model_and_weights(principal, model_id)
        if weights is None:
            return await self._request_again(principal, model)
        updated = await self._retry(principal, weights)
        retrying = await self._models.modify(
            model.id,
            lambda _current: {"phase": ModelPhase.PULLING, "message": "retrying the download"},
            scope=principal.scope,
            event=EventType.PHASE_CHANGED,
            current=model,
        )
        await self._record.model(retrying, EventType.PHASE_CHANGED)
        return updated

    async def _retry(self, principal: Principal, weights: WeightsDocument) -> WeightsDocument:
        def change(current: WeightsDocument) -> dict[str, object]:
            if current.state not in (WeightsState.FAILED, WeightsState.CANCELLED):
                raise Conflict(
                    None,
                    f"the download is {current.state.value}; only FAILED or "
                    "CANCELLED downloads can be retried",
                )
            return {"state": WeightsState.PENDING, "message": None, "attempt": current.attempt + 1}

        updated = await self._weights.modify(
            weights.id,
            change,
            scope=principal.scope,
            event=EventType.PHASE_CHANGED,
            current=weights,
        )
        await self._record.weights(updated, EventType.PHASE_CHANGED)
        return updated

    async def _request_again(self, principal: Principal, model: ModelDocument) -> ModelDocument:
        """A model whose download was never created: PENDING again, for the controller."""

        def change(current: ModelDocument) -> dict[str, object]:
            if current.weights_id is not None or current.phase is not ModelPhase.FAILED:
                raise Conflict(None, f"model {model.id} has no failed download to retry")
            return {"phase": ModelPhase.PENDING, "message": "asking the hub again"}

        pending = await self._models.modify(
            model.id, change, scope=principal.scope, event=EventType.PHASE_CHANGED, current=model
        )
        await self._record.model(pending, EventType.PHASE_CHANGED)
        return pending

    async def delete(self, principal: Principal, weights_id: str, *, force: bool) -> list[str]:
        """Remove files and the entry; refuses while an inference uses them unless forced.
        Returns the ids of the models that used them (now FAILED, asking for a retry).

        The leading controller does the removal (it runs the download's worker, and halts it
        first): this marks the weights and waits, at most ``removal_wait`` seconds, for it to
        answer, re-reading the document whenever an event about it arrives."""
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
        request = new_id("removal")
        mark = WeightsDeletion(request=request).model_dump(mode="python")
        with self._removals.watching(weights.id) as changed:
            try:
                marked = await self._weights.modify(
                    weights.id,
                    lambda _current: {"deletion": mark},
                    scope=principal.scope,
                    event=EventType.UPDATED,
                    current=weights,
                )
            except NotFound:
                raise Missing(weights_id, f"weights {weights_id} not found") from None
            await self._record.weights(marked, EventType.UPDATED)
            await self._removal_outcome(marked, changed)
        return [m.id for m in users]

    def on_event(self, event: Event) -> None:
        """An event of the log (broker listener): wake the calls waiting on that weights."""
        if event.resource_kind is ResourceKind.WEIGHTS:
            self._removals.wake(event.resource_id)

    async def _removal_outcome(self, weights: WeightsDocument, changed: asyncio.Event) -> None:
        """Wait until the removal is done (the record is gone) or refused (the reason is in
        the mark); re-read on every event about the weights, and every few seconds as a
        backstop against an event this replica's tail missed."""
        deadline = asyncio.get_running_loop().time() + self._removal_wait
        while True:
            verdict, reason = removal_verdict(await self._weights.get(weights.id))
            if verdict is RemovalVerdict.REMOVED:
                return
            if verdict is RemovalVerdict.REFUSED:
                raise Conflict(None, f"{reason}; the weights and their record are kept")
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise Conflict(
                    None,
                    f"the removal of {weights.location} was asked for, but no controller "
                    f"finished it within {self._removal_wait:g} s; it goes on when one runs",
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=min(left, REMOVAL_RECHECK))
            changed.clear()

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

    async def _model_weights(
        self, principal: Principal, model_id: str
    ) -> tuple[ModelDocument, WeightsDocument]:
        model, weights = await self._model_and_weights(principal, model_id)
        if weights is None:
            raise Conflict(None, f"model {model_id} has no download")
        return model, weights

    async def _model_and_weights(
        self, principal: Principal, model_id: str
    ) -> tuple[ModelDocument, WeightsDocument | None]:
        model = await self._models.get(model_id, scope=principal.scope)
        if model is None or model.is_deleted:
            raise Missing(model_id, f"model {model_id} not found")
        weights = (
            await self._weights.get(model.weights_id, scope=principal.scope)
            if model.weights_id
            else None
        )
        return model, weights


class RemovalVerdict(enum.Enum):
    """Where a removal asked for by deleteWeights stands, as the weights document says."""

    WAITING = "waiting"
    REMOVED = "removed"
    REFUSED = "refused"


def removal_verdict(weights: WeightsDocument | None) -> tuple[RemovalVerdict, str | None]:
    """Pure: gone is removed; a refusal written into the mark (of this request or of one
    that replaced it) is refused, with its reason; anything else is still waiting for the
    controller."""
    if weights is None:
        return RemovalVerdict.REMOVED, None
    if weights.deletion is not None and weights.deletion.refused is not None:
        return RemovalVerdict.REFUSED, weights.deletion.refused
    return RemovalVerdict.WAITING, None


class _Waiters:
    """Calls waiting for news of a weights document, woken by the broker's listener."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Event]] = {}

    @contextlib.contextmanager
    def watching(self, weights_id: str) -> Iterator[asyncio.Event]:
        changed = asyncio.Event()
        self._waiting.setdefault(weights_id, set()).add(changed)
        try:
            yield changed
        finally:
            waiting = self._waiting.get(weights_id, set())
            waiting.discard(changed)
            if not waiting:
                self._waiting.pop(weights_id, None)

    def wake(self, weights_id: str) -> None:
        for changed in self._waiting.get(weights_id, ()):
            changed.set()
