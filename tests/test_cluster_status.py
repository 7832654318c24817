"""clusterStatus (and gpuFit's GPU rows) against a real kube-apiserver.

The testbed has no kubelet or GPU feature discovery, so the tests write what they would: Node
objects with ``nvidia.com/gpu`` capacity, the GFD labels and a Ready condition, and pods bound
to those nodes (``spec.nodeName``) as the scheduler leaves them. Nodes and CRDs are cluster
scoped and the apiserver is shared by the session: names are unique and everything is removed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from controllers.runtimes.inventory import read_inventory
from controllers.runtimes.kubernetes.runtime import KubernetesRuntime
from storage.documents import Role
from testbed.servers import KubeCluster
from tests.conftest import RunningApp
from tests.graphql_client import run

MIB = 1024 * 1024
GPU = "nvidia.com/gpu"


def _api(app: RunningApp) -> k8s.ApiClient:
    runtime = app.resources.runtime
    assert isinstance(runtime, KubernetesRuntime)
    return runtime.api


class Cluster:
    """Writes nodes and bound pods the way kubelets, GFD and the scheduler would."""

    def __init__(self, api: k8s.ApiClient, namespace: str) -> None:
        self.core = k8s.CoreV1Api(api)
        self.namespace = namespace
        self.prefix = f"gpu-{uuid.uuid4().hex[:6]}"
        self.nodes: list[str] = []
        self.pods: list[str] = []

    async def node(
        self,
        suffix: str,
        *,
        gpus: int,
        product: str | None = None,
        memory_mib: int | None = None,
        ready: bool = True,
        cordoned: bool = False,
    ) -> str:
        name = f"{self.prefix}-{suffix}"
        labels = {"kubernetes.io/hostname": name}
        if product is not None:
            labels["nvidia.com/gpu.product"] = product
            labels["nvidia.com/gpu.count"] = str(gpus)
        if memory_mib is not None:
            labels["nvidia.com/gpu.memory"] = str(memory_mib)
        node: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "spec": {"unschedulable": cordoned},
        }
        await self.core.create_node(node)  # type: ignore[arg-type]  # a dict body is accepted and serialised as is
        self.nodes.append(name)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        resources = {"cpu": "32", "memory": "256Gi", "pods": "110"}
        if gpus:
            resources[GPU] = str(gpus)
        await self.core.patch_node_status(
            name,
            {
                "status": {
                    "capacity": resources,
                    "allocatable": resources,
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True" if ready else "Unknown",
                            "reason": "KubeletReady" if ready else "NodeStatusUnknown",
                            "message": "kubelet is posting ready status"
                            if ready
                            else "Kubelet stopped posting node status.",
                            "lastHeartbeatTime": now,
                            "lastTransitionTime": now,
                        }
                    ],
                }
            },
        )
        return name

    async def pod(
        self,
        node: str,
        *,
        requests: int | None = None,
        limits: int | None = None,
        phase: str | None = None,
    ) -> str:
        name = f"{node}-{uuid.uuid4().hex[:5]}"
        resources: dict[str, Any] = {}
        if requests is not None:
            resources["requests"] = {GPU: str(requests)}
        if limits is not None:
            resources["limits"] = {GPU: str(limits)}
        pod: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "engine", "image": "vllm", "resources": resources}],
            },
        }
        await self.core.create_namespaced_pod(self.namespace, pod)  # type: ignore[arg-type]  # a dict body is accepted and serialised as is
        self.pods.append(name)
        if phase is not None:
            await self.core.patch_namespaced_pod_status(
                name, self.namespace, {"status": {"phase": phase}}
            )
        return name

    async def remove(self) -> None:
        for pod in self.pods:  # no kubelet confirms a graceful deletion: remove at once
            await self.core.delete_namespaced_pod(pod, self.namespace, grace_period_seconds=0)
        for node in self.nodes:
            await self.core.delete_node(node)


@pytest.fixture
async def cluster(kube_app: RunningApp, kube_namespace: str) -> AsyncIterator[Cluster]:
    made = Cluster(_api(kube_app), kube_namespace)
    try:
        yield made
    finally:
        await made.remove()


async def status(app: RunningApp) -> dict[str, Any]:
    data = await run(
        app.graphql_url,
        "ClusterStatus",
        token=app.token(role=Role.VIEWER, organization="org-a"),
    )
    result: dict[str, Any] = data["clusterStatus"]
    return result


async def test_local_runtime_has_no_cluster(running_app: RunningApp) -> None:
    found = await status(running_app)
    assert found == {
        "runtime": "local",
        "kubernetesVersion": None,
        "namespace": None,
        "integrations": {
            "serviceMonitor": False,
            "podAutoscaler": False,
            "kserve": False,
            "gpuOperator": False,
            "kuberay": False,
            "envoyGateway": False,
            "customMetrics": False,
        },
        "gpuNodes": [],  # this machine has no nvidia-smi
        "totalGpus": 0,
        "freeGpus": 0,
        "problems": [],
    }


async def test_gpu_nodes_and_free_gpus(
    kube_app: RunningApp, kube_namespace: str, cluster: Cluster
) -> None:
    a100 = await cluster.node("a100", gpus=8, product="NVIDIA-A100-SXM4-80GB", memory_mib=81920)
    l4 = await cluster.node("l4", gpus=4, product="NVIDIA-L4")  # memory from the catalogue
    cordoned = await cluster.node("cordoned", gpus=2, product="NVIDIA-L4", cordoned=True)
    not_ready = await cluster.node("notready", gpus=2, product="NVIDIA-L4", ready=False)
    bare = await cluster.node("bare", gpus=1)  # no GPU feature discovery labels
    await cluster.node("cpu", gpus=0)  # not a GPU node
    await cluster.pod(a100, requests=2, limits=2)
    await cluster.pod(a100, limits=3)  # the request defaults to the limit
    await cluster.pod(a100, limits=1, phase="Succeeded")  # finished: holds nothing
    await cluster.pod(a100, limits=1, phase="Failed")
    await cluster.pod(l4, limits=1, phase="Running")
    await cluster.pod(l4)  # no GPU asked for
    await cluster.pod(cordoned, limits=1)

    found = await status(kube_app)
    assert found["runtime"] == "kubernetes"
    assert found["kubernetesVersion"].startswith("v1.")
    assert found["namespace"] == kube_namespace
    assert found["problems"] == []
    nodes = {n["name"]: n for n in found["gpuNodes"] if n["name"].startswith(cluster.prefix)}
    assert nodes == {
        a100: {
            "name": a100,
            "gpuType": "NVIDIA-A100-SXM4-80GB",
            "memoryBytesPerGpu": 81920 * MIB,
            "allocatableGpus": 8,
            "requestedGpus": 5,
            "freeGpus": 3,
            "ready": True,
            "schedulable": True,
        },
        l4: {
            "name": l4,
            "gpuType": "NVIDIA-L4",
            "memoryBytesPerGpu": 23034 * MIB,
            "allocatableGpus": 4,
            "requestedGpus": 1,
            "freeGpus": 3,
            "ready": True,
            "schedulable": True,
        },
        cordoned: {
            "name": cordoned,
            "gpuType": "NVIDIA-L4",
            "memoryBytesPerGpu": 23034 * MIB,
            "allocatableGpus": 2,
            "requestedGpus": 1,
            "freeGpus": 0,
            "ready": True,
            "schedulable": False,
        },
        not_ready: {
            "name": not_ready,
            "gpuType": "NVIDIA-L4",
            "memoryBytesPerGpu": 23034 * MIB,
            "allocatableGpus": 2,
            "requestedGpus": 0,
            "freeGpus": 0,
            "ready": False,
            "schedulable": True,
        },
        bare: {
            "name": bare,
            "gpuType": "unknown",
            "memoryBytesPerGpu": None,
            "allocatableGpus": 1,
            "requestedGpus": 0,
            "freeGpus": 1,
            "ready": True,
            "schedulable": True,
        },
    }
    assert found["totalGpus"] == sum(n["allocatableGpus"] for n in found["gpuNodes"])
    assert found["freeGpus"] == sum(n["freeGpus"] for n in found["gpuNodes"])

    # gpuFit compares with the GPU types present, the most free on one node for each.
    data = await run(
        kube_app.graphql_url,
        "GpuFit",
        {"repoId": "tiny-org/tiny-model"},
        token=kube_app.token(role=Role.VIEWER, organization="org-a"),
    )
    fit = data["gpuFit"]
    rows = {row["gpuType"]: row for row in fit["rows"]}
    assert rows["NVIDIA-L4"]["freeGpus"] == 3
    assert rows["NVIDIA-L4"]["inCluster"] is True
    assert rows["NVIDIA-L4"]["fitsNow"] is True
    assert rows["NVIDIA-A100-SXM4-80GB"]["freeGpus"] == 3
    assert "unknown" not in rows
    assert any(note.startswith(f"node {bare}: GPU memory unknown") for note in fit["notes"])
    assert fit["gpuType"] == "NVIDIA-L4"  # fits now on one GPU, and the smaller GPU
    assert fit["summary"].startswith("needs 1 x NVIDIA-L4 (")
    assert fit["summary"].endswith("GiB); 3 free on the largest node")
    asked = await run(
        kube_app.graphql_url,
        "GpuFit",
        {"repoId": "tiny-org/tiny-model", "gpuType": "a100-80gb"},
        token=kube_app.token(role=Role.VIEWER, organization="org-a"),
    )
    assert [row["gpuType"] for row in asked["gpuFit"]["rows"]] == ["NVIDIA-A100-SXM4-80GB"]


def crd_body(group: str, plural: str, kind: str, *, version: str = "v1") -> dict[str, Any]:
    """A minimal CustomResourceDefinition of ``kind`` (any object accepted)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {
                "plural": plural,
                "singular": kind.lower(),
                "kind": kind,
                "listKind": f"{kind}List",
            },
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


CRDS = {
    "serviceMonitor": ("monitoring.coreos.com", "servicemonitors", "ServiceMonitor", "v1"),
    "podAutoscaler": ("autoscaling.aibrix.ai", "podautoscalers", "PodAutoscaler", "v1alpha1"),
    "kuberay": ("ray.io", "rayclusters", "RayCluster", "v1"),
    "envoyGateway": ("gateway.envoyproxy.io", "envoyproxies", "EnvoyProxy", "v1alpha1"),
}
"""Integration flag -> the CRD (group, plural, kind, version) whose presence turns it on."""


async def _flag(app: RunningApp, flag: str, wanted: bool) -> bool:
    for _ in range(100):
        if (await status(app))["integrations"][flag] is wanted:
            return True
        await asyncio.sleep(0.1)
    return False


async def remove_crd(extensions: k8s.ApiextensionsV1Api, name: str) -> None:
    try:
        await extensions.delete_custom_resource_definition(name)
    except ApiException as exc:  # pragma: no cover - already gone
        if exc.status != 404:
            raise


@pytest.mark.parametrize("flag", list(CRDS))
async def test_an_installed_crd_turns_its_integration_on(kube_app: RunningApp, flag: str) -> None:
    """Each integration (AIBrix, Prometheus Operator, KubeRay, Envoy Gateway) is found by its
    CRD once the API server serves it, and only that one."""
    found = await status(kube_app)
    assert found["integrations"] == {
        "serviceMonitor": False,
        "podAutoscaler": False,
        "kserve": False,
        "gpuOperator": False,
        "kuberay": False,
        "envoyGateway": False,
        "customMetrics": False,
    }
    extensions = k8s.ApiextensionsV1Api(_api(kube_app))
    group, plural, kind, version = CRDS[flag]
    body = crd_body(group, plural, kind, version=version)
    await extensions.create_custom_resource_definition(body)  # type: ignore[arg-type]  # a dict body is accepted and serialised as is
    try:
        assert await _flag(kube_app, flag, True)
        found = await status(kube_app)
        assert [name for name, on in found["integrations"].items() if on] == [flag]
    finally:
        await remove_crd(extensions, body["metadata"]["name"])
    assert await _flag(kube_app, flag, False)


async def test_a_service_account_without_the_cluster_role_is_told_what_is_missing(
    kube_app: RunningApp, kube: KubeCluster, kube_namespace: str, tmp_path: Path
) -> None:
    """No grant at all: the version and discovery still answer, the node list is refused."""
    core = k8s.CoreV1Api(_api(kube_app))
    account: dict[str, Any] = {"metadata": {"name": "no-grants"}}
    await core.create_namespaced_service_account(kube_namespace, account)  # type: ignore[arg-type]  # a dict body is accepted and serialised as is
    request: dict[str, Any] = {"spec": {"expirationSeconds": 600}}
    issued = await core.create_namespaced_service_account_token(
        "no-grants",
        kube_namespace,
        request,  # type: ignore[arg-type]  # a dict body is accepted and serialised as is
    )
    kubeconfig = tmp_path / "no-grants.kubeconfig"
    kubeconfig.write_text(kube.kubeconfig.read_text().replace(kube.token, issued.status.token))
    runtime = KubernetesRuntime(kubeconfig=kubeconfig, namespace=kube_namespace)
    await runtime.start()
    try:
        inventory = await read_inventory(runtime)
    finally:
        await runtime.close()
    assert inventory.version is not None
    assert inventory.version.startswith("v1.")
    assert inventory.nodes == ()
    assert inventory.problems == (
        "GPU nodes could not be listed: forbidden "
        "(the service account needs the chart's read-only ClusterRole)",
    )
