"""What the cluster offers to serve models: GPU nodes, their free GPUs, optional integrations.

Read on demand (``clusterStatus``, ``gpuFit``), never cached: a handful of list calls.

* **GPU nodes** are the nodes with ``nvidia.com/gpu`` allocatable. The GPU type is the GPU
  feature discovery label ``nvidia.com/gpu.product``; memory per GPU is its
  ``nvidia.com/gpu.memory`` label (MiB), else :data:`GPU_CATALOGUE` by product. Free GPUs are
  allocatable minus the ``nvidia.com/gpu`` requests (limits when no request) of the pods bound
  to the node that have not Succeeded or Failed; a cordoned or NotReady node counts 0 free.
* **Cost**: one paginated node list and one paginated, cluster-wide pod list (field selector
  ``spec.nodeName!=`` and phase, so unscheduled and finished pods stay on the server), both
  read as raw JSON: the generated model classes would cost far more CPU on a large cluster.
* **Integrations** are looked up in API discovery (``/apis``, then ``/apis/<group>/<version>``
  of the few groups present) rather than by reading CustomResourceDefinitions: discovery is
  small, needs no RBAC grant, and lists a resource only once its CRD is established and served
  (KServe's CRD alone is megabytes).
* The **local** runtime has no cluster: no version, no integrations, and GPUs only when
  ``nvidia-smi`` is on PATH (nothing tracks their use, so all count free).

A list the service account may not read is reported in ``problems``, not raised.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from controllers.runtimes.base import Runtime, RuntimeUnavailable
from controllers.runtimes.kubernetes.runtime import KubernetesRuntime

MIB = 1024 * 1024
GPU_RESOURCE = "nvidia.com/gpu"
PRODUCT_LABEL = "nvidia.com/gpu.product"
MEMORY_LABEL = "nvidia.com/gpu.memory"
PAGE_SIZE = 500
REQUEST_TIMEOUT = 10.0
NVIDIA_SMI_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class GpuProduct:
    """A GPU model with its memory as ``nvidia-smi`` reports it."""

    name: str
    memory_bytes: int
    tokens: frozenset[str]
    """Every one of these must be a token of a product name for it to be this GPU."""


def _product(name: str, memory_mib: int, *tokens: str) -> GpuProduct:
    return GpuProduct(name=name, memory_bytes=memory_mib * MIB, tokens=frozenset(tokens))


GPU_CATALOGUE: tuple[GpuProduct, ...] = (
    _product("H200", 143771, "H200"),
    _product("H100-NVL", 95830, "H100", "NVL"),
    _product("H100-80GB", 81559, "H100"),
    _product("A100-80GB", 81920, "A100", "80GB"),
    _product("A100-40GB", 40960, "A100"),
    _product("L40S", 46068, "L40S"),
    _product("L40", 46068, "L40"),
    _product("V100-32GB", 32768, "V100", "32GB"),
    _product("RTX-4090", 24564, "4090"),
    _product("L4", 23034, "L4"),
    _product("A10G", 23028, "A10G"),
    _product("A10", 23028, "A10"),
    _product("V100-16GB", 16384, "V100"),
    _product("T4", 15360, "T4"),
)
"""Known GPUs, first match wins (so A100 without a size is the 40 GB one). Memory in MiB is
what ``nvidia-smi`` and GPU feature discovery report, a little under the marketed size."""

_TOKEN_SPLIT = re.compile(r"[-_\s/]+")


def gpu_product(name: str) -> GpuProduct | None:
    """The catalogue entry for a product label (``NVIDIA-A100-SXM4-80GB``, ``Tesla-T4``) or a
    catalogue name (``A100-80GB``); None when unknown."""
    tokens = {token for token in _TOKEN_SPLIT.split(name.upper()) if token}
    for product in GPU_CATALOGUE:
        if product.tokens <= tokens:
            return product
    return None


@dataclass(frozen=True, slots=True)
class GpuNode:
    """A node (or the local machine) with GPUs."""

    name: str
    gpu_type: str
    """``nvidia.com/gpu.product``, or ``unknown`` when the node carries no such label."""
    memory_bytes_per_gpu: int | None
    allocatable: int
    requested: int
    ready: bool
    schedulable: bool

    @property
    def free(self) -> int:
        """GPUs a new pod could get now: 0 on a cordoned or NotReady node."""
        if not (self.ready and self.schedulable):
            return 0
        return max(0, self.allocatable - self.requested)


@dataclass(frozen=True, slots=True)
class Integrations:
    """Optional components modelplane can use when the cluster has them."""

    service_monitor: bool = False
    pod_autoscaler: bool = False
    kserve: bool = False
    gpu_operator: bool = False
    kuberay: bool = False
    envoy_gateway: bool = False
    custom_metrics: bool = False
    """A custom metrics API (``custom.metrics.k8s.io``, e.g. prometheus-adapter) is served, so
    a HorizontalPodAutoscaler can scale on a pod metric."""


INTEGRATION_RESOURCES: Mapping[str, tuple[str, str]] = {
    "service_monitor": ("monitoring.coreos.com", "servicemonitors"),
    "pod_autoscaler": ("autoscaling.aibrix.ai", "podautoscalers"),
    "kserve": ("serving.kserve.io", "inferenceservices"),
    "gpu_operator": ("nvidia.com", "clusterpolicies"),
    "kuberay": ("ray.io", "rayclusters"),
    "envoy_gateway": ("gateway.envoyproxy.io", "envoyproxies"),
}
"""Integration flag -> (API group, plural resource) whose presence means it is installed."""
INTEGRATION_GROUPS: Mapping[str, str] = {"custom_metrics": "custom.metrics.k8s.io"}
"""Integration flag -> an aggregated API group whose presence alone means it is served."""


@dataclass(frozen=True, slots=True)
class ClusterInventory:
    """What a runtime's cluster offers right now."""

    kind: str
    version: str | None = None
    namespace: str | None = None
    nodes: tuple[GpuNode, ...] = ()
    integrations: Integrations = field(default_factory=Integrations)
    problems: tuple[str, ...] = ()
    """Parts that could not be read (no permission, server unreachable), for a person."""


@dataclass(frozen=True, slots=True)
class ClusterOffer:
    """What the runtime could ever give one replica, read without the pod list: GPU nodes by
    allocatable (``requested`` left 0) and the integrations. None where it is not known (a list
    the service account may not read; a local host without ``nvidia-smi``)."""

    kind: str
    gpu_nodes: tuple[GpuNode, ...] | None
    integrations: Integrations | None


async def read_offer(runtime: Runtime) -> ClusterOffer:
    """The :class:`ClusterOffer` of ``runtime``: a node list and API discovery on Kubernetes,
    ``nvidia-smi`` on the local runtime (which has no integrations)."""
    if not isinstance(runtime, KubernetesRuntime):
        return ClusterOffer(
            kind=runtime.kind, gpu_nodes=(await local_gpus()) or None, integrations=Integrations()
        )
    nodes: tuple[GpuNode, ...] | None = None
    integrations: Integrations | None = None
    try:
        nodes = tuple(
            _gpu_node(node, {})
            for node in await _list_raw(k8s.CoreV1Api(runtime.api).list_node)
            if _count(((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE)) > 0
        )
    except (ApiException, aiohttp.ClientError, TimeoutError):
        nodes = None
    try:
        integrations = await _integrations(runtime.api)
    except (ApiException, aiohttp.ClientError, TimeoutError):
        integrations = None
    return ClusterOffer(kind=runtime.kind, gpu_nodes=nodes, integrations=integrations)


async def read_inventory(runtime: Runtime) -> ClusterInventory:
    """The inventory of ``runtime``'s cluster (or of this machine for the local runtime)."""
    if not isinstance(runtime, KubernetesRuntime):
        return ClusterInventory(kind=runtime.kind, nodes=await local_gpus())
    return await _kubernetes_inventory(runtime)


async def _kubernetes_inventory(runtime: KubernetesRuntime) -> ClusterInventory:
    problems: list[str] = []
    version: str | None = None
    try:
        version = (await runtime.describe()).version
    except (ApiException, aiohttp.ClientError, TimeoutError, RuntimeUnavailable) as exc:
        return ClusterInventory(
            kind=runtime.kind,
            namespace=runtime.namespace,
            problems=(f"the Kubernetes API server could not be asked: {_reason(exc)}",),
        )
    nodes: tuple[GpuNode, ...] = ()
    try:
        nodes = await _gpu_nodes(runtime.api)
    except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
        problems.append(f"GPU nodes could not be listed: {_reason(exc)}")
    integrations = Integrations()
    try:
        integrations = await _integrations(runtime.api)
    except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
        problems.append(f"API discovery failed: {_reason(exc)}")
    return ClusterInventory(
        kind=runtime.kind,
        version=version,
        namespace=runtime.namespace,
        nodes=nodes,
        integrations=integrations,
        problems=tuple(problems),
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        if exc.status == 403:
            return "forbidden (the service account needs the chart's read-only ClusterRole)"
        return f"HTTP {exc.status} {exc.reason}"
    return type(exc).__name__


async def _list_raw(call: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """Every item of a paginated list call, as raw JSON objects."""
    items: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        extra = {"_continue": token} if token else {}
        response = await call(
            limit=PAGE_SIZE,
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT,
            **kwargs,
            **extra,
        )
        try:
            data = await response.read()
        finally:
            response.release()
        if not 200 <= response.status <= 299:  # unchecked without preloading: check it here
            raise ApiException(status=response.status, reason=response.reason)
        body = json.loads(data)
        items.extend(body.get("items") or [])
        token = (body.get("metadata") or {}).get("continue")
        if not token:
            return items


async def _gpu_nodes(api: k8s.ApiClient) -> tuple[GpuNode, ...]:
    core = k8s.CoreV1Api(api)
    raw_nodes = [
        node
        for node in await _list_raw(core.list_node)
        if _count(((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE)) > 0
    ]
    if not raw_nodes:
        return ()
    requested: dict[str, int] = {}
    pods = await _list_raw(
        core.list_pod_for_all_namespaces,
        field_selector="spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed",
    )
    for pod in pods:
        spec = pod.get("spec") or {}
        node_name = spec.get("nodeName")
        if node_name:
            requested[node_name] = requested.get(node_name, 0) + pod_gpu_request(spec)
    return tuple(
        sorted(
            (_gpu_node(node, requested) for node in raw_nodes),
            key=lambda n: (n.gpu_type, n.name),
        )
    )


def _gpu_node(node: Mapping[str, Any], requested: Mapping[str, int]) -> GpuNode:
    metadata = node.get("metadata") or {}
    status = node.get("status") or {}
    labels: Mapping[str, str] = metadata.get("labels") or {}
    name = str(metadata.get("name", ""))
    product = labels.get(PRODUCT_LABEL)
    memory_mib = _count(labels.get(MEMORY_LABEL))
    memory: int | None = memory_mib * MIB if memory_mib > 0 else None
    if memory is None and product:
        known = gpu_product(product)
        memory = known.memory_bytes if known else None
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return GpuNode(
        name=name,
        gpu_type=product or "unknown",
        memory_bytes_per_gpu=memory,
        allocatable=_count((status.get("allocatable") or {}).get(GPU_RESOURCE)),
        requested=requested.get(name, 0),
        ready=ready,
        schedulable=not (node.get("spec") or {}).get("unschedulable", False),
    )


def pod_gpu_request(spec: Mapping[str, Any]) -> int:
    """GPUs a pod holds: the larger of its containers' sum and its largest init container,
    each container counting its request, or its limit when it states no request."""

    def gpus(container: Mapping[str, Any]) -> int:
        resources = container.get("resources") or {}
        value = (resources.get("requests") or {}).get(GPU_RESOURCE)
        if value is None:
            value = (resources.get("limits") or {}).get(GPU_RESOURCE)
        return _count(value)

    running = sum(gpus(c) for c in spec.get("containers") or [])
    init = max((gpus(c) for c in spec.get("initContainers") or []), default=0)
    return max(running, init)


def _count(value: object) -> int:
    """A whole-number quantity (extended resources and GFD labels are integers); 0 if not."""
    try:
        return int(str(value)) if value is not None else 0
    except ValueError:
        return 0


async def _integrations(api: k8s.ApiClient) -> Integrations:
    groups = await k8s.ApisApi(api).get_api_versions(_request_timeout=REQUEST_TIMEOUT)
    versions = {group.name: [v.version for v in group.versions or []] for group in groups.groups}
    custom = k8s.CustomObjectsApi(api)
    found: dict[str, bool] = {}
    for flag, (group, plural) in INTEGRATION_RESOURCES.items():
        found[flag] = False
        for version in versions.get(group, []):
            resources = await custom.get_api_resources(
                group, version, _request_timeout=REQUEST_TIMEOUT
            )
            if any(r.name == plural for r in resources.resources or []):
                found[flag] = True
                break
    for flag, group in INTEGRATION_GROUPS.items():
        found[flag] = bool(versions.get(group))
    return Integrations(**found)


def parse_nvidia_smi(output: str, *, host: str) -> tuple[GpuNode, ...]:
    """GPUs from ``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits``,
    one entry per GPU model on this machine."""
    counts: dict[str, tuple[int, int]] = {}
    for line in output.splitlines():
        name, _, memory = line.rpartition(",")
        name, memory = name.strip(), memory.strip()
        if not name or not memory.isdigit():
            continue
        gpu_type = "-".join(name.split())
        count, mib = counts.get(gpu_type, (0, int(memory)))
        counts[gpu_type] = (count + 1, min(mib, int(memory)))
    return tuple(
        GpuNode(
            name=host,
            gpu_type=gpu_type,
            memory_bytes_per_gpu=mib * MIB,
            allocatable=count,
            requested=0,
            ready=True,
            schedulable=True,
        )
        for gpu_type, (count, mib) in sorted(counts.items())
    )


async def local_gpus() -> tuple[GpuNode, ...]:
    """This machine's GPUs when ``nvidia-smi`` is on PATH; none otherwise or if it fails."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return ()
    process = await asyncio.create_subprocess_exec(
        binary,
        "--query-gpu=name,memory.total",
        "--format=csv,noheader,nounits",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), NVIDIA_SMI_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        return ()
    if process.returncode != 0:
        return ()
    return parse_nvidia_smi(output.decode(errors="replace"), host=socket.gethostname())
