"""The inference controller: keeps each inference's workload as its document asks.

Level-triggered (docs/architecture.md decision 4), in the reconciler shape of STYLE.md. The
work queue is keyed by inference id and fed by:

* **the event log** (:meth:`InferenceController.on_event`): the services write the document and
  append the event on whichever replica took the request; the leader's broker delivers it here
  (INFERENCE created, updated, phase changed, deleted; a MODEL's phase change or deletion,
  resolved to the model's inference). Events of this controller's own status writes are
  recognised by their revision and dropped, so a status write does not trigger a reconcile;
* the runtime, as backstops: Kubernetes watches through informers, or the local process
  supervisor's callbacks;
* the resync, after a lease is won and periodically, and at once when the broker says events
  were trimmed before they were read (:meth:`InferenceController.resync_soon`).

Each reconcile is read -> decide -> apply -> write: it reads the inference, its model, its
weights and the observed workload (:class:`~controllers.inference.deciding.Facts`), asks the
pure :func:`~controllers.inference.deciding.decide`, applies or removes the workload
(idempotent), and writes status only when it changed -- appending the change to the event log
and mirroring the phase onto the model. After an apply or a remove it reads and decides once
more to report what the runtime now shows, without acting a second time.

Errors are typed at the runtime boundary (:mod:`controllers.errors`): a permanent refusal
(RBAC, validation, admission, a program that cannot be spawned) is written once as FAILED with
the runtime's own words and not retried until a person starts the inference again; a temporary
one keeps the phase, says "retrying in N s" and is requeued after that delay by the work queue.

Where workloads run is an :class:`~controllers.inference.workloads.InferenceExecutor` from the
runtime's package; the plan comes from the runtime's
:class:`~controllers.inference.workloads.InferenceRuntime`, the same object the API uses.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from controllers.errors import PermanentError, TemporaryError, retry_message
from controllers.inference.deciding import Action, Decision, Facts, decide
from controllers.inference.engines import EnginePlanError
from controllers.inference.routes import RouteProber
from controllers.inference.workloads import (
    InferenceExecutor,
    InferenceRuntime,
    Observed,
    WeightsGone,
    WorkloadCounts,
    manifest_plan,
)
from controllers.looping import ControllerLoop, OwnWrites
from controllers.runtimes.secrets import SecretStore
from integrations.addresses import OutboundPolicy
from live import Event, EventType, Recorder, ResourceKind, event_key
from storage.documents import (
    AccessMode,
    InferenceDocument,
    InferencePhase,
    ModelDocument,
    ModelPhase,
    PhaseEntry,
)
from storage.errors import Contended, NotFound
from storage.repositories import (
    InferenceRepository,
    LeaseRepository,
    ModelRepository,
    WeightsRepository,
)

log = logging.getLogger(__name__)

LEASE_NAME = "inference-controller"
LEASE_SECONDS = 15.0
RESYNC_SECONDS = 60.0
"""A backstop only: the event log, watches and the supervisor report every change."""
HISTORY_LIMIT = 50
MODEL_KEY = "model:"
"""Queue keys of model changes, resolved to the model's inference by the reconcile."""
_MODEL_EVENTS = frozenset({EventType.PHASE_CHANGED, EventType.DELETED})
_INFERENCE_EVENTS = frozenset(
    {EventType.CREATED, EventType.UPDATED, EventType.PHASE_CHANGED, EventType.DELETED}
)


class InferenceController:
    """Owns the queue, the resync loop and the lease; workloads run through an executor."""

    def __init__(
        self,
        *,
        inferences: InferenceRepository,
        models: ModelRepository,
        weights: WeightsRepository,
        secrets: SecretStore,
        executor: InferenceExecutor,
        runtime: InferenceRuntime,
        recorder: Recorder | None = None,
        outbound: OutboundPolicy | None = None,
        leases: LeaseRepository | None = None,
        holder: str = "",
        lease_seconds: float = LEASE_SECONDS,
        resync_seconds: float = RESYNC_SECONDS,
    ) -> None:
        self._inferences = inferences
        self._models = models
        self._weights = weights
        self.executor = executor
        self._runtime = runtime
        self._record = recorder or Recorder(None)
        self._routes = RouteProber(secrets=secrets, outbound=outbound)
        self._own = OwnWrites()
        # Reconciles wait on MongoDB and the API server, not the CPU: several run at once.
        self._loop = ControllerLoop(
            self.reconcile,
            name="inference",
            workers=8,
            leases=leases,
            lease_name=LEASE_NAME,
            holder=holder or f"inference-{uuid.uuid4().hex[:8]}",
            lease_seconds=lease_seconds,
            resync=self.resync,
            resync_seconds=resync_seconds,
            on_loss=self.executor.release_all,
        )
        self._queue = self._loop.queue

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the queue, the runtime's watches, the resync loop and the lease."""
        self._routes.start()
        self.executor.watch(self.notify)
        self._loop.start()

    @property
    def leading(self) -> bool:
        """True while this replica holds the inference controller's lease."""
        return self._loop.leading

    async def stop(self) -> None:
        """Cancel everything started here; cluster workloads keep running."""
        await self._loop.stop()
        await self.executor.close()
        await self._routes.close()

    # -- what feeds the queue -------------------------------------------------------------

    def notify(self, inference_id: str) -> None:
        """An inference's workload changed (informer, supervisor): look at it soon."""
        self._queue.add(inference_id)

    def on_event(self, event: Event) -> None:
        """An event from the log (any replica wrote it): queue the inference it concerns.
        Cheap and synchronous, as the broker requires of a listener."""
        if event.resource_kind is ResourceKind.MODEL and event.type in _MODEL_EVENTS:
            for model_id in event.model_ids:
                self._queue.add(MODEL_KEY + model_id)
        elif event.resource_kind is ResourceKind.INFERENCE and event.type in _INFERENCE_EVENTS:
            if event.key in self._own:
                return  # this controller's own status write: nothing new to act on
            self._queue.add(event.resource_id)

    def resync_soon(self) -> None:
        """Events this controller is fed were lost (trimmed from the log before they were
        read): look at every live inference now instead of at the next periodic resync."""
        self._loop.resync_soon()

    async def wait_idle(self) -> None:
        """For tests: until the queue has drained."""
        await self._queue.wait_idle()

    async def resync(self) -> None:
        """Queue every live inference (reconciles read caches; no API requests)."""
        if not self.leading:
            return
        for inference_id in await self._inferences.live_ids():
            self._queue.add(inference_id)

    # -- reconcile: read -> decide -> apply -> write ----------------------------------------

    async def reconcile(self, key: str) -> float | None:
        """One pass over one inference (see the module docstring)."""
        if not self.leading:
            return None
        if key.startswith(MODEL_KEY):
            found = await self._inferences.for_model(key.removeprefix(MODEL_KEY))
            if found is not None:
                self._queue.add(found.id)
            return None
        if not await self.executor.ready():
            return 1.0
        facts = await self.read(key)
        if facts is None:
            return None
        decision = decide(facts)
        applied: int | None = None
        if decision.action is not Action.NOTHING:
            applied = await self._act(facts, decision)
            # What the runtime shows now (no second act); the documents were just read.
            facts = await self._facts(facts.inference, facts.model, applied=applied is not None)
            decision = decide(facts)
        if decision.status is not None or applied is not None:
            await self._write(
                facts.inference,
                decision.status,
                endpoint=decision.endpoint,
                applied=applied,
                model=facts.model,
            )
        if decision.retire:
            await self._retire(facts.inference, facts.model)
        return decision.requeue

    async def read(self, inference_id: str) -> Facts | None:
        """Everything :func:`decide` needs about one inference (None: no such document)."""
        inference = await self._inferences.get(inference_id)
        if inference is None:
            return None
        model = await self._models.get(inference.model_id) if inference.model_id else None
        return await self._facts(inference, model)

    async def _facts(
        self, inference: InferenceDocument, model: ModelDocument | None, *, applied: bool = False
    ) -> Facts:
        """The runtime's side of the facts; ``applied``: this reconcile just applied it."""
        leftover = await self.executor.exists(inference)
        if inference.is_deleted or not inference.enabled:
            return Facts(inference, model, leftover=leftover)
        if _is_route(inference, model):
            assert model is not None  # noqa: S101  _is_route checked it
            route = await self._routes.probe(model)
            return Facts(inference, model, route=route, endpoint=model.source.url.rstrip("/"))
        if not _wants_workload(inference, model):
            return Facts(inference, model, leftover=leftover)
        applied = applied or (
            inference.observed_generation == inference.generation
            and await self.executor.present(inference)
        )
        if applied:
            return await self._observed(inference, model, leftover)
        return await self._planned(inference, model, leftover)

    async def _observed(
        self, inference: InferenceDocument, model: ModelDocument | None, leftover: bool
    ) -> Facts:
        """An applied workload: observe only (no weights read, no API request)."""
        plan = manifest_plan(inference)
        observed = await self.executor.observe(inference, plan)
        endpoint = self.executor.endpoint(inference, plan.port)
        return Facts(inference, model, leftover, True, observed, endpoint)

    async def _planned(
        self, inference: InferenceDocument, model: ModelDocument | None, leftover: bool
    ) -> Facts:
        """A workload to apply: its plan, or why there is none."""
        try:
            plan = await self._runtime.plan(inference, model)
        except WeightsGone:
            return Facts(inference, model, leftover=leftover, weights_missing=True)
        except EnginePlanError as exc:
            return Facts(inference, model, leftover=leftover, plan_error=exc.message)
        return Facts(inference, model, leftover=leftover, plan=plan)

    async def _act(self, facts: Facts, decision: Decision) -> int | None:
        """Apply or remove the workload; returns the generation applied (recorded with the
        status write). A refusal is written into status, then re-raised for the work queue
        (permanent: no retry until the next event; temporary: after the delay it says)."""
        inference = facts.inference
        try:
            if decision.action is Action.REMOVE:
                await self.executor.remove(inference)
                return None
            assert facts.plan is not None  # noqa: S101  decide applies only with a plan
            await self.executor.apply(inference, facts.plan)
        except PermanentError as exc:
            failed = Observed(InferencePhase.FAILED, exc.reason, exc.message)
            await self._write(inference, failed, endpoint=None, model=facts.model)
            raise
        except TemporaryError as exc:
            delay = exc.delay if exc.delay is not None else self._queue.next_delay(inference.id)
            message = retry_message(exc.message, delay)
            retrying = _retrying(inference, message)
            await self._write(inference, retrying, endpoint=None, model=facts.model)
            raise TemporaryError(exc.message, delay=delay) from exc
        return inference.generation

    # -- write -----------------------------------------------------------------------------

    async def _write(
        self,
        inference: InferenceDocument,
        observed: Observed | None,
        *,
        endpoint: str | None,
        applied: int | None = None,
        model: ModelDocument | None = None,
    ) -> None:
        """Write the observed status if it changed (and the generation just applied); record
        it. The phase is mirrored on ``model`` (as this reconcile read it) first, so whoever
        sees the inference's new status sees its phase on the model too."""

        def change(doc: InferenceDocument) -> dict[str, Any] | None:
            if doc.is_deleted or doc.enabled != inference.enabled:
                return None  # the user moved on meanwhile: the next reconcile sees it
            changes = status_changes(doc, observed, endpoint) if observed else None
            changes = dict(changes or {})
            if applied is not None and doc.generation == applied != doc.observed_generation:
                changes["observed_generation"] = applied
            wrote[0] = bool(changes)
            return changes or None

        wrote = [False]
        first = change(inference)
        if first is None:
            return
        event = _event_of(first)
        mirrored = await self._mirror(model, observed.phase) if observed and model else None
        try:
            written = await self._inferences.modify(
                inference.id, change, current=inference, event=event
            )
        except (Contended, NotFound):
            self._queue.add(inference.id)  # others keep writing: look again with fresh data
            return
        if mirrored is not None:
            await self._record.model(mirrored, EventType.UPDATED)
        if not wrote[0] or event is None:
            return
        self._own.remember(event_key(ResourceKind.INFERENCE, written.id, written.revision, event))
        await self._record.inference(written, event)
        if event is EventType.PHASE_CHANGED:
            log.info(
                "inference phase changed",
                extra={
                    "inference_id": written.id,
                    "phase": written.phase.value,
                    "reason": written.reason,
                },
            )

    async def _retire(self, inference: InferenceDocument, model: ModelDocument | None) -> None:
        """A stop that completed (STOPPED written): the model's ``inference_phase`` is cleared
        first (whoever sees the inference unlinked sees the model cleared too), then the
        document leaves the live set -- ``is_deleted``, its ``active_key`` freed for the
        model's next inference -- with a DELETED event. It stays readable by id as history."""

        def change(doc: InferenceDocument) -> dict[str, Any] | None:
            if doc.is_deleted or doc.enabled or doc.phase is not InferencePhase.STOPPED:
                return None  # started again meanwhile, or not stopped yet: not ours to retire
            wrote[0] = True
            return {"is_deleted": True, "active_key": f"{doc.id}#stopped"}

        wrote = [False]
        cleared = await self._mirror(model, None) if model is not None else None
        try:
            written = await self._inferences.modify(inference.id, change, event=EventType.DELETED)
        except (Contended, NotFound):
            self._queue.add(inference.id)
            return
        if cleared is not None:
            await self._record.model(cleared, EventType.UPDATED)
        if not wrote[0]:
            return
        key = event_key(ResourceKind.INFERENCE, written.id, written.revision, EventType.DELETED)
        self._own.remember(key)
        await self._record.inference(written, EventType.DELETED)
        log.info("inference retired", extra={"inference_id": written.id})

    async def _mirror(
        self, model: ModelDocument, new_phase: InferencePhase | None
    ) -> ModelDocument | None:
        """Set the model's ``inference_phase`` (None: it has no inference any more); the
        written model (its event is owed), or None when nothing was written."""
        wrote = [False]

        def change(current: ModelDocument) -> dict[str, Any] | None:
            wrote[0] = current.inference_phase is not new_phase and not current.is_deleted
            return {"inference_phase": new_phase} if wrote[0] else None

        if change(model) is None:
            return None
        try:
            updated = await self._models.modify(
                model.id, change, current=model, event=EventType.UPDATED
            )
        except (NotFound, Contended):
            return None
        return updated if wrote[0] else None


def status_changes(
    doc: InferenceDocument, observed: Observed, endpoint: str | None
) -> dict[str, Any] | None:
    """The fields to write for ``observed`` (None when nothing differs); a phase change also
    appends to the history."""
    counts = observed.counts or WorkloadCounts()
    conditions = None if counts.conditions is None else list(counts.conditions)
    fields = {
        "phase": observed.phase,
        "reason": observed.reason,
        "message": observed.message,
        "replicas": observed.replicas,
        "ready_replicas": observed.ready_replicas,
        "current_replicas": counts.current,
        "available_replicas": counts.available,
        "updated_replicas": counts.updated,
        "conditions": conditions,
        "autoscaler": counts.autoscaler,
        "endpoint": endpoint if observed.phase is InferencePhase.RUNNING else None,
    }
    changes: dict[str, Any] = {
        name: value for name, value in fields.items() if getattr(doc, name) != value
    }
    if "conditions" in changes and conditions is not None:
        changes["conditions"] = [condition.model_dump() for condition in conditions]
    if changes.get("autoscaler") is not None:
        changes["autoscaler"] = changes["autoscaler"].model_dump()
    if not changes:
        return None
    if "phase" in changes:
        entry = PhaseEntry(phase=observed.phase, reason=observed.reason, message=observed.message)
        history = [*doc.phase_history, entry][-HISTORY_LIMIT:]
        changes["phase_history"] = [item.model_dump() for item in history]
    return changes


def _event_of(changes: dict[str, Any]) -> EventType | None:
    """The event a write owes: none for bookkeeping only (the applied generation)."""
    if "phase" in changes:
        return EventType.PHASE_CHANGED
    return None if set(changes) == {"observed_generation"} else EventType.UPDATED


def _retrying(inference: InferenceDocument, message: str) -> Observed:
    """A temporary failure: the phase stays (PENDING for a new one), the message says when."""
    return Observed(
        inference.phase, "Retrying", message, inference.replicas, inference.ready_replicas
    )


def _is_route(inference: InferenceDocument, model: ModelDocument | None) -> bool:
    return (
        inference.spec.engine is None
        and inference.managed
        and model is not None
        and (not model.is_deleted)
    )


def _wants_workload(inference: InferenceDocument, model: ModelDocument | None) -> bool:
    """A workload is wanted (the model exists and its weights are READY, or none are needed)."""
    if not inference.managed:
        return True
    if model is None or model.is_deleted:
        return False
    return model.source.access_mode is AccessMode.REMOTE_API or model.phase is ModelPhase.READY
