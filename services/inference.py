"""Inference use cases: start, stop, toggle, list, logs, and manifests of the user's own.

Every input is checked here before anything is written: quantities, replica bounds, ports,
env (values or Secret references only), autoscaling bounds, and the engine plan itself (the
same pure planner the controller uses, so a vLLM command without ``--served-model-name`` is a
ValidationError now, not a FAILED inference later). One live inference per model: starting a
running one returns it with a message; starting a stopped one re-enables it with the new spec
(a new ``generation``, so the controller re-applies); ``updateInference`` changes a live one
in place the same way (:mod:`services.inference_updating`). ``dryRun`` renders the objects and
writes nothing. Manifests (kubernetes runtime only) are parsed and checked field by field
against an allow-list (:mod:`services.manifests`), namespaced to ours, relabelled as an
unmanaged inference.

Who may choose the program: on the local runtime an engine runs on the control-plane host, so
a CUSTOM engine, a command, args or a program-loading environment variable (``PATH``,
``LD_PRELOAD``, ``PYTHONPATH``...) needs the ADMIN role and the setting
``MODELPLANE_ALLOW_HOST_COMMANDS`` (off by default); refused before anything is written, dry
runs and toggles included (:mod:`services.inference_specs`, which also turns the input into
the stored spec). On Kubernetes they run inside the pod, an editor's right.
Secret references name only the model's own Secret (the planner checks it).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from controllers.inference.engines import EnginePlanError
from controllers.inference.workloads import InferenceRuntime
from controllers.runtimes.kubernetes.labels import owned_labels
from live import EventType, Recorder
from services.cluster import ClusterService
from services.discovering import discovered
from services.errors import Conflict, InvalidInput, Missing
from services.fitting import FitEstimate
from services.inference_inputs import (
    MAX_LOG_LINES,
    MAX_MANIFEST_BYTES,
    MAX_PAGE,
    Described,
    InferenceRequest,
    check_manifest,
    gpus_of,
    request_from,
)
from services.inference_specs import check_host_program, spec_for
from services.inference_updating import keep_port, write_update
from services.manifests import ManifestPolicy
from services.naming import workload_name
from services.principals import Principal
from storage.documents import (
    InferenceDocument,
    InferenceEngine,
    InferencePhase,
    InferenceSpec,
    LocalTarget,
    ModelDocument,
    PhaseEntry,
    PvcTarget,
    Role,
    new_id,
)
from storage.errors import Contended, DuplicateKey, NotFound
from storage.repositories import InferenceFilter, InferenceRepository, ModelRepository, Page

log = logging.getLogger(__name__)
__all__ = ["InferenceRequest", "InferenceService", "StartOutcome", "check_manifest"]


@dataclass(frozen=True, slots=True)
class StartOutcome:
    """What ``startInference`` answers: the inference, a note, and (dry run) its objects."""

    inference: InferenceDocument
    message: str | None = None
    started: bool = True
    dry_run: bool = False
    manifests: list[dict[str, Any]] = field(default_factory=list)
    fit: FitEstimate | None = None
    """Dry run: whether the model fits the cluster's GPUs."""


class InferenceService:
    """Inference use cases for one runtime."""

    def __init__(
        self,
        *,
        inferences: InferenceRepository,
        models: ModelRepository,
        runtime: InferenceRuntime,
        namespace: str | None,
        local_roots: tuple[Path, ...],
        recorder: Recorder | None = None,
        free_port: Any = None,
        cluster: ClusterService | None = None,
        allow_host_commands: bool = False,
        allow_external_services: bool = False,
    ) -> None:
        """``runtime`` is the API's view of the runtime, built in every replica (plans, dry
        runs, logs, labelled Deployments); the service never calls a controller: it writes the
        document and records the event, and the leader's controller, fed by the event log,
        acts on it. ``allow_host_commands`` (setting ``MODELPLANE_ALLOW_HOST_COMMANDS``): on
        the local runtime, ADMINs may run programs of their choice (see
        :meth:`_check_host_program`);
        ``allow_external_services`` (``MODELPLANE_MANIFEST_ALLOW_EXTERNAL_SERVICES``): manifest
        Services may be NodePort or LoadBalancer, with externalIPs."""
        self._inferences = inferences
        self._models = models
        self._runtime = runtime
        self._runtime_kind = runtime.kind
        self._namespace = namespace
        self._roots = local_roots
        self._record = recorder or Recorder(None)
        self._free_port = free_port
        self._cluster = cluster
        self._allow_host_commands = allow_host_commands
        self._allow_external_services = allow_external_services

    # -- reads ---------------------------------------------------------------------------

    async def get(
        self, principal: Principal, inference_id: str, *, history: bool = False
    ) -> InferenceDocument | None:
        """One live inference of the caller's organisation; with ``history``, a stopped one
        (retired from its model) too."""
        principal.require(Role.VIEWER)
        doc = await self._inferences.get(inference_id, scope=principal.scope)
        return None if doc is None or (doc.is_deleted and not history) else doc

    async def for_model(self, principal: Principal, model_id: str) -> InferenceDocument | None:
        """The live inference of a model, if any."""
        principal.require(Role.VIEWER)
        doc = await self._inferences.for_model(model_id)
        return doc if doc is not None and doc.organization_id == principal.organization_id else None

    async def page(
        self,
        principal: Principal,
        inference_filter: InferenceFilter,
        *,
        limit: int,
        offset: int,
    ) -> Page[InferenceDocument]:
        """Stored inferences (newest first), then labelled Deployments without a document."""
        principal.require(Role.VIEWER)
        if not 0 <= limit <= MAX_PAGE:
            raise InvalidInput("limit", f"limit must be between 0 and {MAX_PAGE}")
        if offset < 0:
            raise InvalidInput("offset", "offset must not be negative")
        where = InferenceRepository.where(principal.organization_id, inference_filter)
        stored = await self._inferences.find(
            where=where, limit=limit, offset=offset, sort=(("created_at", -1), ("_id", -1))
        )
        found = await discovered(
            self._runtime, self._inferences, principal, inference_filter, self._runtime_kind
        )
        items = list(stored.items)
        start = max(0, offset - stored.total)
        room = limit - len(items)
        if room > 0:
            items += found[start : start + room]
        return Page(items=items, total=stored.total + len(found))

    async def logs(self, principal: Principal, inference_id: str, tail: int) -> list[str]:
        """The engine's last ``tail`` lines."""
        principal.require(Role.VIEWER)
        if not 1 <= tail <= MAX_LOG_LINES:
            raise InvalidInput("tail", f"tail must be between 1 and {MAX_LOG_LINES}")
        doc = await self.get(principal, inference_id)
        if doc is None:
            raise Missing(inference_id)
        return await self._runtime.logs(doc, tail)

    # -- writes --------------------------------------------------------------------------

    async def start(
        self,
        principal: Principal,
        model_id: str,
        request: InferenceRequest,
        *,
        dry_run: bool = False,
    ) -> StartOutcome:
        """Start (or re-enable) the model's inference; see the module docstring."""
        principal.require(Role.EDITOR)
        model = await self._models.get(model_id, scope=principal.scope)
        if model is None or model.is_deleted:
            raise Missing(model_id)
        existing = await self._inferences.for_model(model.id)
        if existing is not None and existing.enabled and not dry_run:
            return StartOutcome(
                inference=existing,
                started=False,
                message=(
                    f"{model.name} already has an inference ({existing.phase.value}); "
                    "stop it first to start it with another spec"
                ),
            )
        doc, manifests = await self.prepare(principal, model, request, existing)
        if dry_run:
            return await self._dry_run(principal, model, doc, manifests)
        written = await self.store(doc, existing)
        log.info(
            "inference started",
            extra={"inference_id": written.id, "model_id": model.id, "engine": doc.spec.engine},
        )
        return StartOutcome(inference=written, manifests=[])

    async def prepare(
        self,
        principal: Principal,
        model: ModelDocument,
        request: InferenceRequest,
        existing: InferenceDocument | None = None,
    ) -> tuple[InferenceDocument, list[dict[str, Any]]]:
        """The checked document a start writes, and the objects it plans (nothing written;
        ``model`` may be a draft not stored yet, as ``deployModel`` plans it)."""
        spec = spec_for(model, request, runtime_kind=self._runtime_kind, free_port=self._free_port)
        check_host_program(
            principal, spec, runtime_kind=self._runtime_kind, allowed=self._allow_host_commands
        )
        if self._cluster is not None:  # what the runtime can never give: services/offers.py
            await self._cluster.check_offer(spec)
        inference_id = existing.id if existing is not None else new_id("inf")
        name = existing.name if existing else await self._name(model.name, inference_id)
        doc = self._draft(principal, model, spec, existing, inference_id=inference_id, name=name)
        return doc, await self._check_plan(doc, model)

    def _draft(
        self,
        principal: Principal,
        model: ModelDocument,
        spec: InferenceSpec,
        existing: InferenceDocument | None,
        *,
        inference_id: str,
        name: str,
    ) -> InferenceDocument:
        """The document a start writes: the stopped one re-enabled, or a new one."""
        if existing is not None:
            return existing.model_copy(
                update={
                    "spec": spec,
                    "enabled": True,
                    "generation": existing.generation + 1,
                    "model_name": model.name,
                }
            )
        return InferenceDocument(
            id=inference_id,
            organization_id=principal.organization_id,
            model_id=model.id,
            model_name=model.name,
            name=name,
            active_key=model.id,
            runtime=self._runtime_kind,
            spec=spec,
            created_by=principal.subject,
            reason="Accepted",
            message="accepted; the controller will start it",
            phase_history=[PhaseEntry(phase=InferencePhase.PENDING, reason="Accepted")],
        )

    async def _dry_run(
        self,
        principal: Principal,
        model: ModelDocument,
        doc: InferenceDocument,
        manifests: list[dict[str, Any]],
    ) -> StartOutcome:
        """What a dry run answers: the objects, and whether the model fits the cluster."""
        spec = doc.spec
        fit = None
        if self._cluster is not None and spec.engine is not None:
            fit = await self._cluster.fit_for_model(
                principal,
                model,
                engine=spec.engine,
                gpu_type=spec.gpu_type,
                context_length=spec.context_length,
            )
        return StartOutcome(
            fit=fit,
            inference=doc,
            dry_run=True,
            manifests=manifests,
            message="dry run: nothing was created",
        )

    async def store(
        self, doc: InferenceDocument, existing: InferenceDocument | None
    ) -> InferenceDocument:
        """Insert the new document, or re-enable the stopped one; record the event."""
        if existing is None:
            try:
                written = await self._inferences.insert(doc, event=EventType.CREATED)
            except DuplicateKey:
                raise Conflict(
                    "modelId", "another request started this model's inference first"
                ) from None
            await self._record.inference(written, EventType.CREATED)
            return written

        def change(current: InferenceDocument) -> dict[str, Any]:
            if current.is_deleted:
                raise Conflict("modelId", "its inference finished stopping meanwhile; try again")
            if current.enabled:
                raise Conflict("modelId", "another request started this model's inference first")
            entry = PhaseEntry(phase=InferencePhase.PENDING, reason="Started")
            history = [*current.phase_history, entry][-50:]
            return {
                "spec": doc.spec.model_dump(),
                "enabled": True,
                "generation": current.generation + 1,
                "model_name": doc.model_name,
                "phase": InferencePhase.PENDING,
                "reason": "Started",
                "message": None,
                "phase_history": [item.model_dump() for item in history],
            }

        try:
            written = await self._inferences.modify(
                existing.id, change, current=existing, event=EventType.PHASE_CHANGED
            )
        except NotFound:
            raise Missing(existing.id) from None
        except Contended:
            raise Conflict("modelId", "the inference changed meanwhile; try again") from None
        await self._record.inference(written, EventType.PHASE_CHANGED)
        return written

    async def update(
        self,
        principal: Principal,
        model_id: str,
        request: InferenceRequest,
        *,
        dry_run: bool = False,
    ) -> StartOutcome:
        """Change the live inference's spec in place: :mod:`services.inference_updating`."""
        principal.require(Role.EDITOR)
        model = await self._models.get(model_id, scope=principal.scope)
        if model is None or model.is_deleted:
            raise Missing(model_id)
        existing = await self._inferences.for_model(model.id)
        if existing is None or not existing.enabled:
            raise Missing(model_id, f"{model.name} has no inference to update; start one")
        request = keep_port(request, existing)
        doc, manifests = await self.prepare(principal, model, request, existing)
        if dry_run:
            return await self._dry_run(principal, model, doc, manifests)
        written = await write_update(self._inferences, self._record, existing, doc)
        log.info("inference updated", extra={"inference_id": written.id, "model_id": model.id})
        return StartOutcome(inference=written, message="updated; the new configuration rolls out")

    async def stop(self, principal: Principal, model_id: str) -> InferenceDocument:
        """Stop the model's inference (its objects go; the document, model and weights stay)."""
        principal.require(Role.EDITOR)
        model = await self._models.get(model_id, scope=principal.scope)
        if model is None or model.is_deleted:
            raise Missing(model_id)
        existing = await self._inferences.for_model(model.id)
        if existing is None:
            raise Missing(model_id, f"{model.name} has no inference to stop")
        return await self._disable(existing)

    async def stop_inference(self, principal: Principal, inference_id: str) -> InferenceDocument:
        """Stop an inference by its own id (unmanaged ones have no model)."""
        principal.require(Role.EDITOR)
        existing = await self.get(principal, inference_id)
        if existing is None:
            raise Missing(inference_id)
        return await self._disable(existing)

    async def _disable(self, existing: InferenceDocument) -> InferenceDocument:
        """Write ``enabled: false`` and record it; the leader's controller removes the
        workload when the event reaches it."""
        wrote = [False]

        def change(current: InferenceDocument) -> dict[str, Any] | None:
            wrote[0] = current.enabled
            if not current.enabled:
                return None  # stopped already (by this request's twin, or before)
            return {"enabled": False, "reason": "Stopping", "message": "stopping"}

        try:
            written = await self._inferences.modify(
                existing.id, change, current=existing, event=EventType.UPDATED
            )
        except NotFound:
            raise Missing(existing.id) from None
        except Contended:
            raise Conflict("id", "the inference changed meanwhile; try again") from None
        if wrote[0]:
            await self._record.inference(written, EventType.UPDATED)
        return written

    async def toggle(self, principal: Principal, model_id: str, *, enabled: bool) -> StartOutcome:
        """The one-switch form: on starts with the last spec (a stopped inference's too;
        resources not given then are the model's) or the defaults; off stops."""
        if not enabled:
            return StartOutcome(inference=await self.stop(principal, model_id), started=False)
        principal.require(Role.EDITOR)
        existing = await self._inferences.for_model(model_id)
        existing = existing or await self._inferences.last_for_model(model_id)
        request = InferenceRequest()
        if existing is not None and existing.organization_id == principal.organization_id:
            request = request_from(existing.spec)
        return await self.start(principal, model_id, request)

    # -- manifests -----------------------------------------------------------------------

    async def create_from_manifest(
        self,
        principal: Principal,
        text: str,
        *,
        dry_run: bool = False,
        described: Described | None = None,
    ) -> StartOutcome:
        """Apply the user's Deployment (+ Service) as an unmanaged inference."""
        principal.require(Role.EDITOR)
        about = (described or Described()).checked()
        if self._runtime_kind != "kubernetes" or self._namespace is None:
            raise InvalidInput("manifest", "manifests need the kubernetes runtime")
        if len(text.encode("utf-8", "surrogatepass")) > MAX_MANIFEST_BYTES:
            raise InvalidInput("manifest", f"the manifest is over {MAX_MANIFEST_BYTES} bytes")
        inference_id = new_id("inf")
        objects, model_name, port = check_manifest(
            text,
            namespace=self._namespace,
            name=inference_id,
            policy=await self._manifest_policy(principal),
        )
        name = await self._name(model_name, inference_id)
        labels = owned_labels(inference_id, principal.organization_id, component="inference")
        for obj in objects:
            obj["metadata"]["name"] = name
            obj["metadata"].setdefault("labels", {}).update(labels)
            if obj["kind"] == "Deployment":
                template = obj["spec"]["template"].setdefault("metadata", {})
                template.setdefault("labels", {}).update(labels)
        doc = InferenceDocument(
            id=inference_id,
            organization_id=principal.organization_id,
            model_name=model_name,
            name=name,
            active_key=inference_id,
            managed=False,
            **about,
            runtime=self._runtime_kind,
            spec=InferenceSpec(engine=InferenceEngine.CUSTOM, port=port, gpu=gpus_of(objects)),
            manifest=json.dumps(objects),
            created_by=principal.subject,
            phase_history=[PhaseEntry(phase=InferencePhase.PENDING, reason="Accepted")],
        )
        if dry_run:
            return StartOutcome(
                inference=doc,
                dry_run=True,
                manifests=objects,
                message="dry run: nothing was created",
            )
        written = await self._inferences.insert(doc, event=EventType.CREATED)
        await self._record.inference(written, EventType.CREATED)
        return StartOutcome(inference=written)

    # -- helpers --------------------------------------------------------------------------

    async def _manifest_policy(self, principal: Principal) -> ManifestPolicy:
        """What the organisation's manifests may mount: its LOCAL weights directories (inside
        the allowed roots) and its PVC targets' claims."""
        found = await self._models.find(
            where={"organization_id": principal.organization_id, "is_deleted": {"$ne": True}},
            limit=1000,
        )
        dirs: list[PurePosixPath] = []
        claims: set[str] = set()
        for model in found.items:
            target = model.download_target
            if target is None:
                continue
            if isinstance(target, LocalTarget) and target.local_path:
                path = PurePosixPath(target.local_path)
                if any(
                    PurePosixPath(root) in path.parents for root in self._roots
                ):  # never a root itself
                    dirs.append(path)
            elif isinstance(target, PvcTarget):
                claims.add(target.claim_name)
        return ManifestPolicy(
            weights_dirs=tuple(dirs),
            claims=frozenset(claims),
            allow_external_services=self._allow_external_services,
        )

    async def _name(self, model_name: str, inference_id: str) -> str:  # services/naming.py
        return await workload_name(self._inferences, self._runtime, model_name, inference_id)

    async def _check_plan(
        self, doc: InferenceDocument, model: ModelDocument
    ) -> list[dict[str, Any]]:
        """Plan (and render) the inference as the controller will; errors are the caller's."""
        if doc.spec.engine is None:
            return []
        try:
            plan = await self._runtime.plan(doc, model)
        except EnginePlanError as exc:
            raise InvalidInput(exc.field, exc.message) from None
        return await self._runtime.render(doc, plan)
