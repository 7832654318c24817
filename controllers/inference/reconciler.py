"""The inference controller: keeps each inference's workload as its document asks.

Level-triggered (ARCHITECTURE.md decision 4), in the reconciler shape of STYLE.md: the work
queue is keyed by inference id and fed by the runtime (Kubernetes watches through informers,
or the local process supervisor), by the services on every start/stop, and by a resync.
Each reconcile re-reads the document and its model, plans the engine (a pure function),
applies the workload only when the document's ``generation`` moved past what was applied (or
the workload vanished), observes it, and writes status only when it changed -- appending the
change to the event log and mirroring the phase onto the model.

Where it runs is an :class:`InferenceExecutor`: :class:`KubernetesInferenceExecutor`
(Deployments and Services, status from informer caches so a steady state makes no API
requests) or :class:`LocalInferenceExecutor` (supervised subprocesses). A REMOTE_API model's
inference has no workload: it is RUNNING once the remote ``/models`` answers with the stored
key, which the gateway then uses. That probe goes through the outbound policy's guarded pool
(:mod:`integrations.addresses`): the address it connects to is checked, whatever the URL's name
resolves to now.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from controllers.inference.engines import (
    EngineImages,
    EnginePlan,
    EnginePlanError,
    host_program_field,
    plan_engine,
)
from controllers.leading import Leadership
from controllers.runtimes.kubernetes.informers import Informer, Obj
from controllers.runtimes.kubernetes.labels import (
    COMPONENT,
    FIELD_MANAGER,
    MANAGED_BY,
    MANAGED_BY_VALUE,
    OWNER_ID,
)
from controllers.runtimes.kubernetes.manifests import (
    ENGINE_CONTAINER,
    GENERATION,
    Integrations,
    endpoint_for,
    render_all,
)
from controllers.runtimes.kubernetes.status import Observed, derive_status
from controllers.runtimes.local.processes import (
    ProcessPhase,
    ProcessSpec,
    ProcessStatus,
    ProcessSupervisor,
)
from controllers.runtimes.secrets import HF_TOKEN_KEY, SecretStore, SecretStoreError
from controllers.workqueue import WorkQueue
from integrations.addresses import AddressRefused, GuardedConnector, OutboundPolicy
from live import EventType, Recorder
from storage.documents import (
    AccessMode,
    InferenceDocument,
    InferencePhase,
    ModelDocument,
    ModelPhase,
    PhaseEntry,
)
from storage.errors import NotFound, RevisionConflict
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
"""A backstop only: watches (or the supervisor) report every change as it happens."""
ROUTE_RECHECK_SECONDS = 30.0
HISTORY_LIMIT = 50
MODEL_KEY = "model:"
"""Queue keys of model changes, resolved to the model's inference by the reconcile."""
INFERENCE_SELECTOR = f"{MANAGED_BY}={MANAGED_BY_VALUE},{COMPONENT}=inference"


def inference_key(name: str) -> str | None:
    """The inference id in an object's name (``inf-abc12``, ``inf-abc12-7d9f-x2`` for pods)."""
    parts = name.split("-")
    if len(parts) >= 2 and parts[0] == "inf":
        return f"{parts[0]}-{parts[1]}"
    return None


@dataclass(frozen=True, slots=True)
class WorkloadPlan:
    """What to apply for an inference: a managed engine plan, or an unmanaged manifest."""

    engine: EnginePlan | None
    port: int
    gpu: int = 0
    """GPUs per replica (what an unschedulable message says is needed)."""


class InferenceExecutor(Protocol):
    """Runs inference workloads for the controller."""

    kind: str

    def watch(self, notify: Callable[[str], None]) -> None:
        """Start reporting workload changes as inference ids to look at."""

    async def ready(self) -> bool:
        """True once the executor's view of the runtime is complete (caches synced)."""

    async def present(self, inference: InferenceDocument) -> bool:
        """True when the inference's workload exists."""

    async def apply(self, inference: InferenceDocument, plan: WorkloadPlan) -> None:
        """Create or update the workload; idempotent."""

    async def observe(self, inference: InferenceDocument, plan: WorkloadPlan) -> Observed:
        """The workload's status."""

    async def remove(self, inference: InferenceDocument) -> bool:
        """Delete the workload; True once nothing of it is left. Idempotent."""

    def endpoint(self, inference: InferenceDocument, port: int) -> str:
        """The OpenAI base URL the workload answers on."""

    async def render(self, inference: InferenceDocument, plan: WorkloadPlan) -> list[Obj]:
        """What :meth:`apply` would write (dry runs)."""

    async def logs(self, inference: InferenceDocument, tail: int) -> list[str]:
        """The engine's last ``tail`` log lines."""

    def unmanaged(self) -> list[Obj]:
        """Deployments with our labels (the service finds those without a document)."""

    async def release_all(self) -> None:
        """This replica stopped leading (local processes stop; cluster objects stay)."""

    async def close(self) -> None:
        """Stop everything started here."""


# -- Kubernetes ------------------------------------------------------------------------------


class KubernetesInferenceExecutor:
    """Deployments, Services and friends, observed through informer caches."""

    kind = "kubernetes"
    EVENTS_PER_OBJECT = 20
    EVENT_OBJECTS = 20_000

    def __init__(
        self,
        api: k8s.ApiClient,
        *,
        namespace: str,
        largest_free_gpus: Callable[[], Awaitable[int | None]] | None = None,
        integrations: Callable[[], Awaitable[Integrations]] | None = None,
    ) -> None:
        self._api = api
        self._namespace = namespace
        self._apps = k8s.AppsV1Api(api)
        self._core = k8s.CoreV1Api(api)
        self._autoscaling = k8s.AutoscalingV2Api(api)
        self._custom = k8s.CustomObjectsApi(api)
        self._largest_free = largest_free_gpus
        self._integrations = integrations
        self._notify: Callable[[str], None] = lambda _key: None
        self._events: OrderedDict[str, deque[Obj]] = OrderedDict()
        self._pods_by_owner: dict[str, dict[str, Obj]] = {}
        self.deployments = Informer(
            "deployments",
            self._apps.list_namespaced_deployment,
            namespace=namespace,
            label_selector=MANAGED_BY + "=" + MANAGED_BY_VALUE,
            on_event=self._on_deployment,
        )
        self.pods = Informer(
            "pods",
            self._core.list_namespaced_pod,
            namespace=namespace,
            label_selector=INFERENCE_SELECTOR,
            on_event=self._on_pod,
        )
        self.events = Informer(
            "events",
            self._core.list_namespaced_event,
            namespace=namespace,
            on_event=self._on_event,
            keep=lambda e: (
                inference_key(str(e.get("involvedObject", {}).get("name", ""))) is not None
            ),
        )

    @property
    def informers(self) -> list[Informer]:
        """Every informer (the benchmark counts their requests)."""
        return [self.deployments, self.pods, self.events]

    def watch(self, notify: Callable[[str], None]) -> None:
        self._notify = notify
        for informer in self.informers:
            informer.start()

    def _on_deployment(self, _kind: str, obj: Obj) -> None:
        owner = obj.get("metadata", {}).get("labels", {}).get(OWNER_ID)
        if owner:
            self._notify(owner)

    def _on_pod(self, kind: str, obj: Obj) -> None:
        owner = obj.get("metadata", {}).get("labels", {}).get(OWNER_ID)
        if not owner:
            return
        name = obj["metadata"]["name"]
        pods = self._pods_by_owner.setdefault(owner, {})
        if kind == "DELETED":
            pods.pop(name, None)
            self._events.pop(name, None)
            if not pods:
                self._pods_by_owner.pop(owner, None)
        else:
            pods[name] = obj
        self._notify(owner)

    def _on_event(self, kind: str, obj: Obj) -> None:
        if kind == "DELETED":
            return
        name = str(obj.get("involvedObject", {}).get("name", ""))
        recent = self._events.get(name)
        if recent is None:
            recent = self._events[name] = deque(maxlen=self.EVENTS_PER_OBJECT)
            while len(self._events) > self.EVENT_OBJECTS:
                self._events.popitem(last=False)
        uid = obj.get("metadata", {}).get("uid")
        for index, seen in enumerate(recent):
            if seen.get("metadata", {}).get("uid") == uid:
                del recent[index]
                break
        recent.append(obj)
        key = inference_key(name)
        if key:
            self._notify(key)

    async def ready(self) -> bool:
        return all(informer.synced.is_set() for informer in self.informers)

    async def present(self, inference: InferenceDocument) -> bool:
        deployment = self.deployments.items.get(inference.name)
        if deployment is None:
            return False
        annotations = deployment.get("metadata", {}).get("annotations") or {}
        return annotations.get(GENERATION) == str(inference.generation) or not inference.managed

    async def render(self, inference: InferenceDocument, plan: WorkloadPlan) -> list[Obj]:
        if plan.engine is None:
            objects: list[Obj] = json.loads(inference.manifest or "[]")
            return objects
        integrations = await self._integrations() if self._integrations else Integrations()
        return render_all(
            inference, plan.engine, namespace=self._namespace, integrations=integrations
        )

    async def apply(self, inference: InferenceDocument, plan: WorkloadPlan) -> None:
        objects = await self.render(inference, plan)
        for obj in objects:
            await self._apply(obj)
        if plan.engine is not None and inference.spec.autoscaling is None:
            await self._delete_quietly("HorizontalPodAutoscaler", inference.name)

    async def _apply(self, obj: Obj) -> None:
        kind = obj["kind"]
        name = obj["metadata"]["name"]
        obj["metadata"]["namespace"] = self._namespace
        options: dict[str, Any] = {
            "field_manager": FIELD_MANAGER,
            "force": True,
            "_content_type": "application/apply-patch+yaml",
        }
        if kind == "Deployment":
            await self._apps.patch_namespaced_deployment(name, self._namespace, obj, **options)
        elif kind == "Service":
            await self._core.patch_namespaced_service(name, self._namespace, obj, **options)
        elif kind == "ConfigMap":
            await self._core.patch_namespaced_config_map(name, self._namespace, obj, **options)
        elif kind == "HorizontalPodAutoscaler":
            await self._autoscaling.patch_namespaced_horizontal_pod_autoscaler(
                name, self._namespace, obj, **options
            )
        else:
            group, _, version = obj["apiVersion"].partition("/")
            plural = {"ServiceMonitor": "servicemonitors", "PodAutoscaler": "podautoscalers"}[kind]
            await self._custom.patch_namespaced_custom_object(
                group, version, self._namespace, plural, name, obj, **options
            )

    async def _delete_quietly(self, kind: str, name: str) -> bool:
        """Delete one object; True when it existed."""
        calls: dict[str, Callable[..., Awaitable[Any]]] = {
            "Deployment": self._apps.delete_namespaced_deployment,
            "Service": self._core.delete_namespaced_service,
            "ConfigMap": self._core.delete_namespaced_config_map,
            "HorizontalPodAutoscaler": (
                self._autoscaling.delete_namespaced_horizontal_pod_autoscaler
            ),
        }
        try:
            await calls[kind](name, self._namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status in {404, 403} and kind == "HorizontalPodAutoscaler":
                return False
            if exc.status != 404:
                raise
            return False
        return True

    async def observe(self, inference: InferenceDocument, plan: WorkloadPlan) -> Observed:
        deployment = self.deployments.items.get(inference.name)
        pods = list(self._pods_by_owner.get(inference.id, {}).values())
        names = {p["metadata"]["name"] for p in pods}
        names.update({name.rsplit("-", 1)[0] for name in names})  # their ReplicaSets
        events = [e for name in names for e in self._events.get(name, ())]
        generation = inference.generation if inference.managed else None
        requested = plan.gpu
        short = self._unschedulable(pods) or any(
            "Insufficient nvidia.com/gpu" in str(e.get("message")) for e in events
        )
        largest = await self._largest_free() if short and self._largest_free else None
        return derive_status(
            deployment,
            pods,
            events,
            generation=generation,
            requested_gpus=requested,
            initial_delay=inference.spec.initial_delay_seconds,
            largest_free_gpus=largest,
        )

    @staticmethod
    def _unschedulable(pods: list[Obj]) -> bool:
        return any(
            c.get("reason") == "Unschedulable"
            for p in pods
            for c in p.get("status", {}).get("conditions") or []
        )

    async def remove(self, inference: InferenceDocument) -> bool:
        for kind, name in (
            ("Deployment", inference.name),
            ("Service", inference.name),
            ("ConfigMap", f"{inference.name}-config"),
            ("HorizontalPodAutoscaler", inference.name),
        ):
            await self._delete_quietly(kind, name)
        found = await self._integrations() if self._integrations else Integrations()
        optional = (
            (found.service_monitor, "monitoring.coreos.com", "v1", "servicemonitors"),
            (found.aibrix, "autoscaling.aibrix.ai", "v1alpha1", "podautoscalers"),
        )
        for served, group, version, plural in optional:
            if served:
                with contextlib.suppress(ApiException):  # absent already: nothing to remove
                    await self._custom.delete_namespaced_custom_object(
                        group, version, self._namespace, plural, inference.name
                    )
        return inference.name not in self.deployments.items and not self._pods_by_owner.get(
            inference.id
        )

    def endpoint(self, inference: InferenceDocument, port: int) -> str:
        return endpoint_for(inference, namespace=self._namespace, port=port)

    async def logs(self, inference: InferenceDocument, tail: int) -> list[str]:
        pods = sorted(
            self._pods_by_owner.get(inference.id, {}).values(),
            key=lambda p: str(p.get("metadata", {}).get("creationTimestamp", "")),
        )
        if not pods:
            return []
        pod = pods[-1]
        options: dict[str, Any] = {"tail_lines": tail}
        if inference.managed:
            options["container"] = ENGINE_CONTAINER
        try:
            text = await self._core.read_namespaced_pod_log(
                pod["metadata"]["name"], self._namespace, **options
            )
        except ApiException as exc:
            if exc.status in {400, 404}:
                return []  # the container has not started, or the pod is gone
            raise
        if not text:
            return []
        return str(text).splitlines()[-tail:]

    def unmanaged(self) -> list[Obj]:
        return list(self.deployments.items.values())

    async def release_all(self) -> None:
        return None

    async def close(self) -> None:
        for informer in self.informers:
            await informer.close()


# -- local --------------------------------------------------------------------------------------


class LocalInferenceExecutor:
    """Engines as supervised subprocesses on this machine, bound to loopback."""

    kind = "local"

    def __init__(self, *, supervisor: ProcessSupervisor, work_dir: Path) -> None:
        self._supervisor = supervisor
        self._work_dir = work_dir
        self._env: Callable[[InferenceDocument, EnginePlan], Awaitable[dict[str, str]]] | None = (
            None
        )

    def use_env(
        self, resolve: Callable[[InferenceDocument, EnginePlan], Awaitable[dict[str, str]]]
    ) -> None:
        """How secret references in the plan's env are resolved to values."""
        self._env = resolve

    def watch(self, notify: Callable[[str], None]) -> None:
        del notify  # the supervisor was built with the controller's notify

    async def ready(self) -> bool:
        return True

    async def present(self, inference: InferenceDocument) -> bool:
        status = self._supervisor.status(inference.id)
        return status is not None and status.phase is not ProcessPhase.STOPPED

    async def _spec(self, inference: InferenceDocument, plan: WorkloadPlan) -> ProcessSpec:
        engine = plan.engine
        assert engine is not None  # noqa: S101  manifests are refused on the local runtime
        cwd = self._work_dir / inference.id
        cwd.mkdir(parents=True, exist_ok=True)
        env = await self._env(inference, engine) if self._env else {}
        argv = list(engine.argv)
        for name, content in engine.config_files.items():
            path = cwd / name
            path.write_text(content)
            argv = [str(path) if a.endswith("/" + name) else a for a in argv]
        return ProcessSpec(
            argv=argv,
            env=env,
            cwd=cwd,
            port=plan.port,
            health_path=engine.health_path,
            initial_delay_seconds=0.0,
            startup_timeout_seconds=max(600.0, float(inference.spec.initial_delay_seconds) * 10),
        )

    async def render(self, inference: InferenceDocument, plan: WorkloadPlan) -> list[Obj]:
        spec = await self._spec(inference, plan)
        return [
            {
                "kind": "LocalProcess",
                "argv": spec.argv,
                "env": sorted(spec.env),
                "cwd": str(spec.cwd),
                "port": spec.port,
                "healthPath": spec.health_path,
            }
        ]

    async def apply(self, inference: InferenceDocument, plan: WorkloadPlan) -> None:
        await self._supervisor.ensure(inference.id, await self._spec(inference, plan))

    async def observe(self, inference: InferenceDocument, plan: WorkloadPlan) -> Observed:
        del plan  # the supervisor knows the process it runs
        status = self._supervisor.status(inference.id)
        if status is None:
            return Observed(
                InferencePhase.CREATING, "Starting", "the engine process is starting", 1, 0
            )
        return process_observed(status)

    async def remove(self, inference: InferenceDocument) -> bool:
        await self._supervisor.stop(inference.id)
        return True

    def endpoint(self, inference: InferenceDocument, port: int) -> str:
        del inference
        return f"http://127.0.0.1:{port}/v1"

    async def logs(self, inference: InferenceDocument, tail: int) -> list[str]:
        return self._supervisor.logs(inference.id, tail)

    def unmanaged(self) -> list[Obj]:
        return []

    async def release_all(self) -> None:
        for key in list(self._supervisor.keys()):  # stop() changes the set
            await self._supervisor.stop(key)

    async def close(self) -> None:
        await self._supervisor.close()


def process_observed(status: ProcessStatus) -> Observed:
    """A supervised process's status in inference terms."""
    ready = 1 if status.ready else 0
    if status.phase is ProcessPhase.RUNNING and status.ready:
        return Observed(
            InferencePhase.RUNNING, None, f"pid {status.pid}, answering its health check", 1, ready
        )
    if status.phase is ProcessPhase.CRASH_LOOP:
        return Observed(
            InferencePhase.CRASH_LOOP_BACK_OFF,
            status.reason or "CrashLoopBackOff",
            status.message,
            1,
            ready,
        )
    if status.phase is ProcessPhase.FAILED:
        return Observed(InferencePhase.FAILED, status.reason or "Failed", status.message, 1, ready)
    if status.phase is ProcessPhase.STOPPED:
        return Observed(InferencePhase.STOPPED, None, status.message, 0, 0)
    return Observed(
        InferencePhase.CREATING,
        status.reason or ("Restarting" if status.phase is ProcessPhase.BACKOFF else "Starting"),
        status.message or "waiting for the engine to answer its health check",
        1,
        ready,
    )


def _unreachable(url: str, exc: BaseException) -> Observed:
    """PENDING for a probe that got no answer; the outbound policy's refusal says so."""
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, AddressRefused):
        return Observed(
            InferencePhase.PENDING,
            "AddressRefused",
            f"{url} {exc.os_error}: the outbound address policy refuses it; checking again in 30 s",
        )
    return Observed(
        InferencePhase.PENDING,
        "RemoteUnreachable",
        f"{url} did not answer ({type(exc).__name__}); checking again in 30 s",
    )


# -- the controller --------------------------------------------------------------------------


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
        images: EngineImages,
        pvc_mount_path: str = "/weights",
        recorder: Recorder | None = None,
        outbound: OutboundPolicy | None = None,
        leases: LeaseRepository | None = None,
        holder: str = "",
        lease_seconds: float = LEASE_SECONDS,
        resync_seconds: float = RESYNC_SECONDS,
        allow_host_commands: bool = False,
    ) -> None:
        self._outbound = outbound or OutboundPolicy()
        self._inferences = inferences
        self._allow_host_commands = allow_host_commands
        self._models = models
        self._weights = weights
        self._secrets = secrets
        self.executor = executor
        self._images = images
        self._pvc_mount_path = pvc_mount_path
        self._record = recorder or Recorder(None)
        # Reconciles wait on MongoDB and the API server, not the CPU: several run at once.
        self._queue = WorkQueue(self.reconcile, name="inference", workers=8)
        self._http: aiohttp.ClientSession | None = None
        self._leadership = Leadership(
            leases,
            name=LEASE_NAME,
            holder=holder or f"inference-{uuid.uuid4().hex[:8]}",
            seconds=lease_seconds,
            resync=self.resync,
            resync_seconds=resync_seconds,
            on_loss=self.executor.release_all,
        )
        if isinstance(executor, LocalInferenceExecutor):
            executor.use_env(self._local_env)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the queue, the runtime's watches, the resync loop and the lease."""
        self._http = aiohttp.ClientSession(
            connector=GuardedConnector(self._outbound),
            timeout=aiohttp.ClientTimeout(total=5.0),
            trust_env=False,
        )
        self._queue.start()
        self.executor.watch(self.notify)
        self._leadership.start()

    @property
    def leading(self) -> bool:
        """True while this replica holds the inference controller's lease."""
        return self._leadership.leading

    async def stop(self) -> None:
        """Cancel everything started here; cluster workloads keep running."""
        await self._leadership.stop()
        await self._queue.stop()
        await self.executor.close()
        if self._http is not None:
            await self._http.close()
            self._http = None

    def notify(self, inference_id: str) -> None:
        """An inference (or its workload) changed: look at it soon."""
        self._queue.add(inference_id)

    def resync_soon(self) -> None:
        """Events this controller is fed were lost (trimmed from the log before they were
        read): look at every live inference now instead of at the next periodic resync."""
        self._leadership.resync_soon()

    def notify_model(self, model_id: str) -> None:
        """A model changed (its weights became READY, it was deleted): look at its inference."""
        self._queue.add(MODEL_KEY + model_id)

    async def wait_idle(self) -> None:
        """For tests: until the queue has drained."""
        await self._queue.wait_idle()

    async def resync(self) -> None:
        """Queue every live inference (reconciles read caches; no API requests)."""
        if not self.leading:
            return
        for inference_id in await self._inferences.live_ids():
            self._queue.add(inference_id)

    # -- planning ------------------------------------------------------------------------

    async def workload_plan(
        self, inference: InferenceDocument, model: ModelDocument | None
    ) -> WorkloadPlan:
        """The engine plan (managed) or the manifest (unmanaged); raises EnginePlanError."""
        if not inference.managed or model is None:
            return WorkloadPlan(engine=None, port=inference.spec.port, gpu=inference.spec.gpu)
        local = self.executor.kind == "local"
        where = host_program_field(inference.spec) if local else None
        if where is not None and not self._allow_host_commands:
            # Stored before the setting was turned off: the service refuses new ones.
            raise EnginePlanError(
                where, f"{where}: programs of the user's choice are not allowed on this host"
            )
        weights = await self._weights.get(model.weights_id) if model.weights_id else None
        engine = plan_engine(
            inference.spec,
            model,
            weights,
            local=local,
            images=self._images,
            secret_name=model.secret_ref if self.executor.kind == "kubernetes" else None,
            pvc_mount_path=self._pvc_mount_path,
        )
        return WorkloadPlan(engine=engine, port=engine.port, gpu=engine.gpu)

    async def _local_env(self, inference: InferenceDocument, plan: EnginePlan) -> dict[str, str]:
        """Literal values, and secret references resolved from the model's stored secret."""
        env: dict[str, str] = {}
        stored: dict[str, str] | None = None
        for var in plan.env:
            if var.value is not None:
                env[var.name] = var.value
                continue
            if stored is None:
                model = await self._models.get(inference.model_id or "")
                stored = {}
                if model is not None and model.secret_ref:
                    with contextlib.suppress(SecretStoreError):
                        stored = await self._secrets.get(model.secret_ref)
            if var.secret_key in stored:
                env[var.name] = stored[var.secret_key or ""]
        return env

    # -- reconcile -----------------------------------------------------------------------

    async def reconcile(self, inference_id: str) -> float | None:
        """Re-read, plan, apply when needed, observe, write status on change."""
        if not self.leading:
            return None
        if inference_id.startswith(MODEL_KEY):
            found = await self._inferences.for_model(inference_id.removeprefix(MODEL_KEY))
            if found is not None:
                self._queue.add(found.id)
            return None
        if not await self.executor.ready():
            return 1.0
        inference = await self._inferences.get(inference_id)
        if inference is None:
            return None
        if inference.is_deleted or not inference.enabled:
            return await self._reconcile_stopped(inference)
        return await self._reconcile_enabled(inference)

    async def _reconcile_stopped(self, inference: InferenceDocument) -> float | None:
        """Remove the workload; STOPPED once nothing of it is left."""
        gone = await self.executor.remove(inference)
        if inference.is_deleted:
            return None
        observed = (
            Observed(InferencePhase.STOPPED, "Stopped", "stopped; its objects are removed")
            if gone
            else Observed(inference.phase, "Stopping", "waiting for the engine to end")
        )
        await self._write(inference, observed, endpoint=None)
        return None if gone else 2.0

    async def _reconcile_enabled(self, inference: InferenceDocument) -> float | None:
        """Plan, apply when needed, observe, write."""
        model = await self._models.get(inference.model_id) if inference.model_id else None
        if inference.managed and (model is None or model.is_deleted):
            await self.executor.remove(inference)
            await self._write(
                inference,
                Observed(InferencePhase.FAILED, "ModelDeleted", "the model was deleted"),
                endpoint=None,
            )
            return None
        if inference.spec.engine is None and inference.managed and model is not None:
            return await self._reconcile_route(inference, model)
        waiting = self._waiting_for_weights(inference, model)
        if waiting is not None:
            await self._write(inference, waiting, endpoint=None)
            return None
        if inference.observed_generation == inference.generation and await self.executor.present(
            inference
        ):
            # Applied already: observe only (no weights read, no API request).
            plan = WorkloadPlan(engine=None, port=inference.spec.port, gpu=inference.spec.gpu)
        else:
            try:
                plan = await self.workload_plan(inference, model)
            except EnginePlanError as exc:
                await self._write(
                    inference,
                    Observed(InferencePhase.FAILED, "InvalidSpec", exc.message),
                    endpoint=None,
                )
                return None
            await self.executor.apply(inference, plan)
            inference = await self._set_applied(inference)
        observed = await self.executor.observe(inference, plan)
        await self._write(
            inference, observed, endpoint=self.executor.endpoint(inference, plan.port)
        )
        return None

    @staticmethod
    def _waiting_for_weights(
        inference: InferenceDocument, model: ModelDocument | None
    ) -> Observed | None:
        if (
            not inference.managed
            or model is None
            or model.source.access_mode is AccessMode.REMOTE_API
        ):
            return None
        if model.phase is ModelPhase.READY:
            return None
        if model.phase is ModelPhase.FAILED:
            return Observed(
                InferencePhase.FAILED,
                "WeightsFailed",
                f"the weights download failed: {model.message or 'see the model'}; "
                "retryDownload, and this inference starts when they are READY",
            )
        return Observed(
            InferencePhase.PENDING,
            "WaitingForWeights",
            f"weights are {model.phase.value}; the engine starts when they are READY",
        )

    async def _set_applied(self, inference: InferenceDocument) -> InferenceDocument:
        try:
            return await self._inferences.update(
                inference.id,
                expected_revision=inference.revision,
                changes={"observed_generation": inference.generation},
            )
        except RevisionConflict:
            fresh = await self._inferences.get(inference.id)
            return fresh or inference

    async def _reconcile_route(
        self, inference: InferenceDocument, model: ModelDocument
    ) -> float | None:
        """A REMOTE_API model: RUNNING once the remote ``/models`` answers with its key."""
        assert self._http is not None  # noqa: S101  started
        headers = {}
        if model.secret_ref:
            try:
                stored = await self._secrets.get(model.secret_ref)
            except SecretStoreError:
                stored = {}
            if stored.get(HF_TOKEN_KEY):
                headers["Authorization"] = f"Bearer {stored[HF_TOKEN_KEY]}"
        url = model.source.url.rstrip("/") + "/models"
        try:
            async with self._http.get(url, headers=headers, allow_redirects=False) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self._write(inference, _unreachable(url, exc), endpoint=None)
            return ROUTE_RECHECK_SECONDS
        if status in {401, 403}:
            observed = Observed(
                InferencePhase.FAILED,
                "RemoteRefusedKey",
                f"{url} answered {status}: the stored API key is refused",
            )
        elif 200 <= status < 300:
            observed = Observed(
                InferencePhase.RUNNING, None, f"routing to {model.source.url}", 1, 1
            )
        else:
            observed = Observed(
                InferencePhase.PENDING,
                "RemoteError",
                f"{url} answered {status}; checking again in 30 s",
            )
        await self._write(inference, observed, endpoint=model.source.url.rstrip("/"))
        return None if observed.phase is not InferencePhase.PENDING else ROUTE_RECHECK_SECONDS

    async def _write(
        self, inference: InferenceDocument, observed: Observed, *, endpoint: str | None
    ) -> None:
        """Write the observed status if it changed; record it and mirror it on the model."""
        changes: dict[str, Any] = {}
        fields = {
            "phase": observed.phase,
            "reason": observed.reason,
            "message": observed.message,
            "replicas": observed.replicas,
            "ready_replicas": observed.ready_replicas,
            "endpoint": endpoint if observed.phase is InferencePhase.RUNNING else None,
        }
        for name, value in fields.items():
            if getattr(inference, name) != value:
                changes[name] = value
        if not changes:
            return
        phase_changed = "phase" in changes
        if phase_changed or "reason" in changes:
            history = [
                *inference.phase_history,
                PhaseEntry(phase=observed.phase, reason=observed.reason, message=observed.message),
            ][-HISTORY_LIMIT:]
            if phase_changed:
                changes["phase_history"] = [entry.model_dump() for entry in history]
        event = EventType.PHASE_CHANGED if phase_changed else EventType.UPDATED
        try:
            written = await self._inferences.update(
                inference.id, expected_revision=inference.revision, changes=changes, event=event
            )
        except (RevisionConflict, NotFound):
            self._queue.add(inference.id)  # someone wrote first: look again with fresh data
            return
        await self._record.inference(written, event)
        if phase_changed:
            log.info(
                "inference phase changed",
                extra={
                    "inference_id": written.id,
                    "phase": written.phase.value,
                    "reason": written.reason,
                },
            )
        await self._mirror(written)

    async def _mirror(self, inference: InferenceDocument) -> None:
        """The model's ``inference_phase`` follows its inference's phase."""
        if not inference.model_id:
            return
        for _ in range(3):
            model = await self._models.get(inference.model_id)
            if model is None or model.inference_phase == inference.phase.value:
                return
            try:
                updated = await self._models.update(
                    model.id,
                    expected_revision=model.revision,
                    changes={"inference_phase": inference.phase.value},
                    event=EventType.UPDATED,
                )
            except RevisionConflict:
                continue
            except NotFound:
                return
            await self._record.model(updated, EventType.UPDATED)
            return

    async def logs(self, inference: InferenceDocument, tail: int) -> list[str]:
        """The engine's last log lines (any replica may answer: the executor reads the
        runtime, not this replica's memory, except on the local runtime)."""
        return await self.executor.logs(inference, tail)
