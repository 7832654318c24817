"""Fixtures for tests that need workloads to really run: a whole Kubernetes control plane.

``kube_control_plane`` is etcd + kube-apiserver + kube-controller-manager + kube-scheduler +
kwok, started once per session and separate from the ``kube`` fixture (a bare API server that
other tests drive with a stand-in kubelet). Deployments become ReplicaSets and pods, the
scheduler places pods by their resource requests, and kwok's fake kubelets run them as
``testbed/kwok-stages.yaml`` says -- including the failures a test can ask for by image name or
by the ``modelplane.test/behaviour`` annotation (see that file).

Nodes, created at session start and shared by every test (tests must not change them; a test
that adds a node of its own deletes it again):

* ``gpu-a100-0`` and ``gpu-a100-1``: one NVIDIA A100 80GB each (``nvidia.com/gpu: 1`` and the
  GPU feature discovery labels), 32 CPUs, 256Gi;
* ``cpu-0``: no GPU, 8 CPUs, 32Gi.

A pod asking for two GPUs therefore never fits, which is what the unschedulable tests rely on.
``kube_control_plane.add_gpu_node`` / ``add_node`` / ``delete_node`` are synchronous (urllib);
from an async test call them through ``asyncio.to_thread``.

``control_plane_api`` is a kubernetes_asyncio ``ApiClient`` for the control plane (one per
test), ``gpu_namespace`` a fresh namespace per test whose pods are gone before the next test.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from testbed import servers

GPU_NODES = ("gpu-a100-0", "gpu-a100-1")
CPU_NODES = ("cpu-0",)


@pytest.fixture(scope="session")
def kube_control_plane(
    testbed_binaries: dict[str, Path], session_dir: Path
) -> Iterator[servers.KubeControlPlane]:
    """The whole control plane with two 1-GPU A100 nodes and one CPU-only node."""
    started = time.monotonic()
    with servers.kube_control_plane(
        session_dir / "control-plane", binaries=testbed_binaries
    ) as plane:
        for name in GPU_NODES:
            plane.add_gpu_node(name, 1)
        for name in CPU_NODES:
            plane.add_node(name, cpu="8", memory="32Gi")
        sys.stderr.write(
            f"\n[testbed] control plane with {len(GPU_NODES) + len(CPU_NODES)} nodes ready "
            f"in {time.monotonic() - started:.1f} s\n"
        )
        yield plane


@pytest.fixture
async def control_plane_api(
    kube_control_plane: servers.KubeControlPlane,
) -> AsyncIterator[k8s.ApiClient]:
    """A kubernetes_asyncio client for the control plane, closed after the test."""
    configuration = k8s.Configuration()
    await k8s_config.load_kube_config(
        config_file=str(kube_control_plane.kubeconfig), client_configuration=configuration
    )
    async with k8s.ApiClient(configuration) as api:
        yield api


@pytest.fixture
async def gpu_namespace(control_plane_api: k8s.ApiClient) -> AsyncIterator[str]:
    """A fresh namespace on the control plane, deleted after the test with all it holds.

    The namespace controller waits five seconds before it acts on a deleted namespace, so the
    teardown first deletes the workloads and force-deletes their pods itself and waits until no
    pod is left (the next test then finds every GPU free); the namespace is deleted last and not
    waited for.
    """
    name = f"gpu-{uuid.uuid4().hex[:8]}"
    core = k8s.CoreV1Api(control_plane_api)
    await core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        await empty_namespace(control_plane_api, name)
        await core.delete_namespace(name)


async def empty_namespace(api: k8s.ApiClient, namespace: str, *, timeout: float = 60) -> None:
    """Delete the workloads of ``namespace`` and force-delete its pods; wait until none is left."""
    apps, batch, core = k8s.AppsV1Api(api), k8s.BatchV1Api(api), k8s.CoreV1Api(api)
    for delete in (
        apps.delete_collection_namespaced_deployment,
        apps.delete_collection_namespaced_replica_set,
        apps.delete_collection_namespaced_stateful_set,
        batch.delete_collection_namespaced_job,
    ):
        await delete(namespace, propagation_policy="Background")
    deadline = time.monotonic() + timeout
    while (await core.list_namespaced_pod(namespace)).items:
        await core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
        if time.monotonic() > deadline:
            pytest.fail(f"pods of namespace {namespace} still there after {timeout:.0f} s")
        await asyncio.sleep(0.1)
