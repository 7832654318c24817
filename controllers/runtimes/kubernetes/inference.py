"""Inference on Kubernetes: Deployments, Services and friends, for the controller and the API.

:class:`KubernetesInferenceExecutor` is the leader's: it applies with server-side apply,
observes through informer caches (a steady state makes no API requests) and removes. The
caches hold its Deployments, pods, events and autoscalers (HorizontalPodAutoscalers, and
AIBrix PodAutoscalers once AIBrix is found): a change of an autoscaler's status queues its
inference like a pod's does, and :mod:`~controllers.runtimes.kubernetes.autoscalers` reads it.
:class:`KubernetesInferenceRuntime` is built in every replica for the API: the plan, a dry
run's objects, an engine's logs and labelled Deployments without a document, each read from
the API server (never from an informer only the leader runs).

A refused apply is classified where it happens
(:func:`~controllers.runtimes.kubernetes.errors.refused`): 400, 403 (RBAC), 422
(validation) and an admission webhook's or ValidatingAdmissionPolicy's denial are
:class:`~controllers.errors.PermanentError` carrying the API server's own message (trying again
unchanged cannot help); 409, 429, 5xx, timeouts and dropped connections are
:class:`~controllers.errors.TemporaryError` (with the server's Retry-After when it sent one).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from controllers.inference.workloads import Obj, Observed, WorkloadPlan, WorkloadPlanner
from controllers.runtimes.kubernetes.autoscalers import autoscaler_status
from controllers.runtimes.kubernetes.errors import refused
from controllers.runtimes.kubernetes.informers import Informer
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
from controllers.runtimes.kubernetes.status import derive_status, workload_counts
from storage.documents import InferenceDocument, ModelDocument

log = logging.getLogger(__name__)

INFERENCE_SELECTOR = f"{MANAGED_BY}={MANAGED_BY_VALUE},{COMPONENT}=inference"
IntegrationsFn = Callable[[], Awaitable[Integrations]]
REFUSED_REASONS = frozenset({"Forbidden", "Invalid", "BadRequest", "AdmissionDenied"})
"""Reasons :func:`refused` gives a permanent refusal (the decision leaves them alone)."""


EVENT_KINDS = frozenset({"Pod", "ReplicaSet", "Deployment"})
"""The objects whose events an inference's status reads (kept by the events informer)."""


def inference_key(name: str) -> str | None:
    """The inference id in a legacy object's name (``inf-abc12``, ``inf-abc12-7d9f-x2`` for
    pods): inferences created before workloads were named after their model."""
    parts = name.split("-")
    if len(parts) >= 2 and parts[0] == "inf":
        return f"{parts[0]}-{parts[1]}"
    return None


async def render_objects(
    inference: InferenceDocument,
    plan: WorkloadPlan,
    *,
    namespace: str,
    integrations: IntegrationsFn | None,
) -> list[Obj]:
    """The objects applying ``plan`` writes: the manifest, or the rendered engine."""
    if plan.engine is None:
        objects: list[Obj] = json.loads(inference.manifest or "[]")
        return objects
    found = await integrations() if integrations else Integrations()
    return render_all(inference, plan.engine, namespace=namespace, integrations=found)


class KubernetesInferenceRuntime:
    """What the API reads from the cluster, in every replica (no informer, no controller)."""

    kind = "kubernetes"

    def __init__(
        self,
        api: k8s.ApiClient,
        *,
        namespace: str,
        planner: WorkloadPlanner,
        integrations: IntegrationsFn | None = None,
    ) -> None:
        self._namespace = namespace
        self._api = api
        self._apps = k8s.AppsV1Api(api)
        self._core = k8s.CoreV1Api(api)
        self._planner = planner
        self._integrations = integrations

    async def plan(self, inference: InferenceDocument, model: ModelDocument | None) -> WorkloadPlan:
        return await self._planner.plan(inference, model)

    async def render(self, inference: InferenceDocument, plan: WorkloadPlan) -> list[Obj]:
        return await render_objects(
            inference, plan, namespace=self._namespace, integrations=self._integrations
        )

    async def logs(self, inference: InferenceDocument, tail: int) -> list[str]:
        listing = await self._core.list_namespaced_pod(
            self._namespace, label_selector=f"{OWNER_ID}={inference.id}"
        )
        pods = sorted(listing.items, key=lambda p: p.metadata.creation_timestamp)
        if not pods:
            return []
        options: dict[str, Any] = {"tail_lines": tail}
        if inference.managed:
            options["container"] = ENGINE_CONTAINER
        try:
            text = await self._core.read_namespaced_pod_log(
                pods[-1].metadata.name, self._namespace, **options
            )
        except ApiException as exc:
            if exc.status in {400, 404}:
                return []  # the container has not started, or the pod is gone
            raise
        return str(text).splitlines()[-tail:] if text else []

    async def name_taken(self, name: str, owner_id: str) -> bool:
        """Whether a Deployment or Service called ``name`` exists that is not ``owner_id``'s
        (one that cannot be read counts as taken)."""
        for read in (self._apps.read_namespaced_deployment, self._core.read_namespaced_service):
            try:
                found = await read(name, self._namespace)
            except ApiException as exc:
                if exc.status == 404:
                    continue
                return True
            except (aiohttp.ClientError, TimeoutError):
                return True
            if (found.metadata.labels or {}).get(OWNER_ID) != owner_id:
                return True
        return False

    async def unmanaged(self) -> list[Obj]:
        """Labelled Deployments; none (logged) when the API server cannot list them: the
        stored inferences still list."""
        try:
            listing = await self._apps.list_namespaced_deployment(
                self._namespace, label_selector=f"{MANAGED_BY}={MANAGED_BY_VALUE}"
            )
        except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("cannot list labelled Deployments", extra={"error": type(exc).__name__})
            return []
        found: list[Obj] = [self._api.sanitize_for_serialization(item) for item in listing.items]
        return found


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
        integrations: IntegrationsFn | None = None,
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
            on_event=self._on_labelled,
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
            keep=lambda e: e.get("involvedObject", {}).get("kind") in EVENT_KINDS,
        )
        self._owner_by_pod: dict[str, str] = {}
        self.hpas = Informer(
            "horizontalpodautoscalers",
            self._autoscaling.list_namespaced_horizontal_pod_autoscaler,
            namespace=namespace,
            label_selector=INFERENCE_SELECTOR,
            on_event=self._on_labelled,
        )
        self.pod_autoscalers = Informer(
            "podautoscalers",
            self._list_pod_autoscalers,
            namespace=namespace,
            label_selector=INFERENCE_SELECTOR,
            on_event=self._on_labelled,
        )
        """AIBrix's, started once AIBrix is found (:meth:`_follow_pod_autoscalers`): a watch
        of a kind the API server does not serve would fail and retry for ever."""
        self._watching = False
        self._following_aibrix = False

    @property
    def informers(self) -> list[Informer]:
        """Every informer that must have synced before reconciles read the caches (the
        benchmark counts their requests)."""
        return [self.deployments, self.pods, self.events, self.hpas]

    def watch(self, notify: Callable[[str], None]) -> None:
        self._notify = notify
        self._watching = True
        for informer in self.informers:
            informer.start()

    async def _list_pod_autoscalers(self, namespace: str, **options: Any) -> Any:
        return await self._custom.list_namespaced_custom_object(
            "autoscaling.aibrix.ai", "v1alpha1", namespace, "podautoscalers", **options
        )

    async def _follow_pod_autoscalers(self, inference: InferenceDocument) -> None:
        """Start AIBrix's informer the first time an autoscaled inference is observed while
        AIBrix is installed (after a restart nothing is applied again, so apply cannot be
        the place); its answer comes with the next change it reports."""
        if (
            self._watching
            and not self._following_aibrix
            and inference.spec.autoscaling is not None
            and inference.name not in self.hpas.items
            and self._integrations is not None
            and (await self._integrations()).aibrix
        ):
            self._following_aibrix = True
            self.pod_autoscalers.start()

    def _on_labelled(self, _kind: str, obj: Obj) -> None:
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
            self._owner_by_pod.pop(name, None)
            if not pods:
                self._pods_by_owner.pop(owner, None)
        else:
            pods[name] = obj
            self._owner_by_pod[name] = owner
        self._notify(owner)

    def _owner_of(self, name: str) -> str | None:
        """The inference owning the pod, ReplicaSet or Deployment ``name``, by labels (names
        are the model's, no longer ``inf-<id>``), else a legacy name's id."""
        owner = self._owner_by_pod.get(name)
        if owner is None:
            for candidate in (name, name.rsplit("-", 1)[0]):  # a Deployment, a ReplicaSet's
                labels = self.deployments.items.get(candidate, {}).get("metadata", {})
                owner = (labels.get("labels") or {}).get(OWNER_ID)
                if owner:
                    break
        return owner or inference_key(name)

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
        key = self._owner_of(name)
        if key:
            self._notify(key)

    async def ready(self) -> bool:
        """Every cache synced; the HPAs' may instead be refused (a Role without
        ``horizontalpodautoscalers``): inferences without autoscaling need none of it, and
        an autoscaled one says why its value is unknown."""
        hpas = self.hpas.synced.is_set() or self.hpas.refused is not None
        return hpas and all(i.synced.is_set() for i in self.informers if i is not self.hpas)

    async def present(self, inference: InferenceDocument) -> bool:
        deployment = self.deployments.items.get(inference.name)
        if deployment is None:
            return False
        annotations = deployment.get("metadata", {}).get("annotations") or {}
        return annotations.get(GENERATION) == str(inference.generation) or not inference.managed

    async def exists(self, inference: InferenceDocument) -> bool:
        return inference.name in self.deployments.items or bool(
            self._pods_by_owner.get(inference.id)
        )

    async def apply(self, inference: InferenceDocument, plan: WorkloadPlan) -> None:
        objects = await render_objects(
            inference, plan, namespace=self._namespace, integrations=self._integrations
        )
        for obj in objects:
            try:
                await self._apply(obj)
            except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
                raise refused(exc, f"{obj['kind']} {obj['metadata']['name']}") from exc
        if plan.engine is not None and inference.spec.autoscaling is None:
            try:
                await self._delete_quietly("HorizontalPodAutoscaler", inference.name)
            except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
                raise refused(exc, f"HorizontalPodAutoscaler {inference.name}") from exc

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
        observed = derive_status(
            deployment,
            pods,
            events,
            generation=generation,
            requested_gpus=requested,
            initial_delay=inference.spec.initial_delay_seconds,
            largest_free_gpus=largest,
        )
        counts = workload_counts(deployment)
        scaling = inference.spec.autoscaling
        if counts is not None and scaling is not None:
            await self._follow_pod_autoscalers(inference)
            found = autoscaler_status(
                self.hpas.items.get(inference.name),
                self.pod_autoscalers.items.get(inference.name),
                scaling.target_metric,
                unreadable=self.hpas.refused,
            )
            counts = replace(counts, autoscaler=found)
        return replace(observed, counts=counts)

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
            try:
                await self._delete_quietly(kind, name)
            except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
                raise refused(exc, f"{kind} {name}", verb="delete") from exc
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

    async def release_all(self) -> None:
        return None

    async def close(self) -> None:
        for informer in [*self.informers, self.pod_autoscalers]:
            await informer.close()
