"""The testbed's Kubernetes control plane does what the inference runtime will rely on.

Real kube-controller-manager, kube-scheduler and kwok (see ``tests/cluster_fixtures.py``):
Deployments become ReplicaSets and pods, GPU requests are scheduled onto the fake A100 nodes or
fail with the scheduler's own ``FailedScheduling`` event, pods go Running and Ready, the
failure behaviours of ``testbed/kwok-stages.yaml`` show what the kubelet would show, and the
garbage collector removes what a deleted owner leaves behind.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from kubernetes_asyncio import client as k8s

from testbed.servers import KubeControlPlane
from tests.cluster_fixtures import CPU_NODES, GPU_NODES

pytestmark = pytest.mark.slow

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, what: str, timeout: float = 60
) -> T:
    """Call ``probe`` every 0.2 s until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.2)


def container(image: str, *, gpus: int = 0) -> k8s.V1Container:
    limits = {"nvidia.com/gpu": str(gpus)} if gpus else None
    return k8s.V1Container(
        name="engine",
        image=image,
        resources=k8s.V1ResourceRequirements(limits=limits, requests={"cpu": "100m"}),
    )


def deployment(name: str, *, replicas: int, gpus: int = 0) -> k8s.V1Deployment:
    labels = {"app": name}
    return k8s.V1Deployment(
        metadata=k8s.V1ObjectMeta(name=name, labels=labels),
        spec=k8s.V1DeploymentSpec(
            replicas=replicas,
            selector=k8s.V1LabelSelector(match_labels=labels),
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(labels=labels),
                spec=k8s.V1PodSpec(containers=[container("vllm/vllm-openai:v0.11.0", gpus=gpus)]),
            ),
        ),
    )


def pod(
    name: str, image: str, *, gpus: int = 0, annotations: dict[str, str] | None = None
) -> k8s.V1Pod:
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name, annotations=annotations),
        spec=k8s.V1PodSpec(containers=[container(image, gpus=gpus)]),
    )


def condition(item: k8s.V1Pod, kind: str) -> k8s.V1PodCondition | None:
    return next((c for c in item.status.conditions or [] if c.type == kind), None)


async def ready_deployment(apps: k8s.AppsV1Api, namespace: str, name: str, replicas: int) -> None:
    async def ready() -> k8s.V1Deployment | None:
        found = await apps.read_namespaced_deployment_status(name, namespace)
        return found if found.status.ready_replicas == replicas else None

    await eventually(ready, what=f"deployment {name} with {replicas} ready replicas")


async def test_gpu_deployment_runs_on_gpu_nodes(
    control_plane_api: k8s.ApiClient, gpu_namespace: str
) -> None:
    apps, core = k8s.AppsV1Api(control_plane_api), k8s.CoreV1Api(control_plane_api)
    await apps.create_namespaced_deployment(gpu_namespace, deployment("engine", replicas=2, gpus=1))
    await ready_deployment(apps, gpu_namespace, "engine", 2)

    sets = (
        await apps.list_namespaced_replica_set(gpu_namespace, label_selector="app=engine")
    ).items
    assert len(sets) == 1
    assert sets[0].metadata.owner_references[0].kind == "Deployment"
    pods = (await core.list_namespaced_pod(gpu_namespace, label_selector="app=engine")).items
    assert len(pods) == 2
    # one GPU each, and each node has one: the scheduler must have used both GPU nodes
    assert sorted(p.spec.node_name for p in pods) == sorted(GPU_NODES)
    for item in pods:
        assert item.metadata.owner_references[0].name == sets[0].metadata.name
        assert item.status.phase == "Running"
        assert item.status.pod_ip
        ready = condition(item, "Ready")
        assert ready is not None
        assert ready.status == "True"
        [status] = item.status.container_statuses
        assert status.ready
        assert status.state.running is not None


async def test_gpu_nodes_carry_feature_discovery_labels(control_plane_api: k8s.ApiClient) -> None:
    core = k8s.CoreV1Api(control_plane_api)
    nodes = {n.metadata.name: n for n in (await core.list_node()).items}
    assert set(GPU_NODES) | set(CPU_NODES) <= set(nodes)
    gpu = nodes[GPU_NODES[0]]
    assert gpu.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"
    assert gpu.metadata.labels["nvidia.com/gpu.memory"] == "81920"
    assert gpu.metadata.labels["nvidia.com/gpu.count"] == "1"
    assert gpu.status.allocatable["nvidia.com/gpu"] == "1"
    assert gpu.status.capacity["nvidia.com/gpu"] == "1"
    cpu = nodes[CPU_NODES[0]]
    assert "nvidia.com/gpu" not in cpu.status.allocatable
    assert "nvidia.com/gpu.product" not in cpu.metadata.labels


async def test_pod_asking_for_more_gpus_than_a_node_has_stays_pending(
    control_plane_api: k8s.ApiClient, gpu_namespace: str
) -> None:
    core = k8s.CoreV1Api(control_plane_api)
    await core.create_namespaced_pod(gpu_namespace, pod("too-big", "vllm/vllm-openai", gpus=2))

    async def failed_scheduling() -> k8s.CoreV1Event | None:
        events = await core.list_namespaced_event(
            gpu_namespace, field_selector="involvedObject.name=too-big,reason=FailedScheduling"
        )
        return events.items[0] if events.items else None

    async def marked_unschedulable() -> k8s.V1Pod | None:
        # The scheduler records the event and patches the pod's condition in separate calls,
        # in no guaranteed order: the event can be listed before the condition is set.
        found = await core.read_namespaced_pod("too-big", gpu_namespace)
        return found if condition(found, "PodScheduled") is not None else None

    event = await eventually(failed_scheduling, what="a FailedScheduling event")
    assert event.type == "Warning"
    assert "Insufficient nvidia.com/gpu" in event.message
    found = await eventually(marked_unschedulable, what="the pod's PodScheduled condition")
    assert found.status.phase == "Pending"
    assert found.spec.node_name is None
    scheduled = condition(found, "PodScheduled")
    assert scheduled is not None
    assert (scheduled.status, scheduled.reason) == ("False", "Unschedulable")


@pytest.mark.parametrize(
    ("image", "annotations"),
    [
        ("registry.example/never-pulls:1.0", None),
        ("registry.example/engine:1.0", {"modelplane.test/behaviour": "image-pull-backoff"}),
    ],
    ids=["by-image", "by-annotation"],
)
async def test_image_that_never_pulls_backs_off(
    control_plane_api: k8s.ApiClient,
    gpu_namespace: str,
    image: str,
    annotations: dict[str, str] | None,
) -> None:
    core = k8s.CoreV1Api(control_plane_api)
    await core.create_namespaced_pod(
        gpu_namespace, pod("pull", image, gpus=1, annotations=annotations)
    )

    async def backing_off() -> k8s.V1Pod | None:
        found = await core.read_namespaced_pod("pull", gpu_namespace)
        statuses = found.status.container_statuses or []
        waiting = statuses[0].state.waiting if statuses else None
        return found if waiting is not None and waiting.reason == "ImagePullBackOff" else None

    found = await eventually(backing_off, what="ImagePullBackOff")
    [status] = found.status.container_statuses
    assert status.state.waiting.message == f'Back-off pulling image "{image}"'
    assert not status.ready
    assert found.status.phase == "Pending"
    assert found.spec.node_name in GPU_NODES
    ready = condition(found, "Ready")
    assert ready is not None
    assert ready.status == "False"

    async def pull_events() -> set[str] | None:
        events = await core.list_namespaced_event(
            gpu_namespace, field_selector="involvedObject.name=pull"
        )
        reasons = {e.reason for e in events.items}
        return reasons if {"Scheduled", "BackOff", "Failed"} <= reasons else None

    await eventually(pull_events, what="Scheduled, Failed and BackOff events")


@pytest.mark.parametrize(
    ("image", "annotations"),
    [
        ("registry.example/crash-loop:1.0", None),
        ("registry.example/engine:1.0", {"modelplane.test/behaviour": "crash-loop"}),
    ],
    ids=["by-image", "by-annotation"],
)
async def test_crashing_container_loops_with_growing_restart_count(
    control_plane_api: k8s.ApiClient,
    gpu_namespace: str,
    image: str,
    annotations: dict[str, str] | None,
) -> None:
    core = k8s.CoreV1Api(control_plane_api)
    await core.create_namespaced_pod(gpu_namespace, pod("crash", image, annotations=annotations))

    def crash_looping(minimum: int) -> Callable[[], Awaitable[k8s.V1Pod | None]]:
        async def probe() -> k8s.V1Pod | None:
            found = await core.read_namespaced_pod("crash", gpu_namespace)
            statuses = found.status.container_statuses or []
            if not statuses or statuses[0].restart_count < minimum:
                return None
            waiting = statuses[0].state.waiting
            return found if waiting is not None and waiting.reason == "CrashLoopBackOff" else None

        return probe

    found = await eventually(crash_looping(1), what="CrashLoopBackOff after a restart")
    [status] = found.status.container_statuses
    assert status.last_state.terminated.exit_code == 1
    assert status.last_state.terminated.reason == "Error"
    assert status.state.waiting.message.startswith("back-off ")
    assert "restarting failed container=engine" in status.state.waiting.message
    assert not status.ready
    assert found.status.phase == "Running"
    ready = condition(found, "Ready")
    assert ready is not None
    assert ready.status == "False"

    await eventually(
        crash_looping(status.restart_count + 1), what="the restart count to grow", timeout=30
    )


async def test_deleting_a_deployment_removes_its_pods(
    control_plane_api: k8s.ApiClient, gpu_namespace: str
) -> None:
    apps, core = k8s.AppsV1Api(control_plane_api), k8s.CoreV1Api(control_plane_api)
    await apps.create_namespaced_deployment(gpu_namespace, deployment("web", replicas=2))
    await ready_deployment(apps, gpu_namespace, "web", 2)

    await apps.delete_namespaced_deployment("web", gpu_namespace)

    async def all_gone() -> bool | None:
        pods = await core.list_namespaced_pod(gpu_namespace, label_selector="app=web")
        sets = await apps.list_namespaced_replica_set(gpu_namespace, label_selector="app=web")
        return True if not pods.items and not sets.items else None

    await eventually(all_gone, what="the garbage collector to remove the ReplicaSet and pods")


def job(name: str, image: str) -> k8s.V1Job:
    return k8s.V1Job(
        metadata=k8s.V1ObjectMeta(name=name),
        spec=k8s.V1JobSpec(
            backoff_limit=0,
            template=k8s.V1PodTemplateSpec(
                spec=k8s.V1PodSpec(restart_policy="Never", containers=[container(image)])
            ),
        ),
    )


async def finished_job(batch: k8s.BatchV1Api, namespace: str, name: str, kind: str) -> k8s.V1Job:
    async def finished() -> k8s.V1Job | None:
        found = await batch.read_namespaced_job_status(name, namespace)
        conditions = {c.type: c.status for c in found.status.conditions or []}
        return found if conditions.get(kind) == "True" else None

    return await eventually(finished, what=f"the Job to be {kind}")


async def test_job_pod_completes_and_the_job_succeeds(
    control_plane_api: k8s.ApiClient, gpu_namespace: str
) -> None:
    batch = k8s.BatchV1Api(control_plane_api)
    await batch.create_namespaced_job(gpu_namespace, job("download", "modelplane:dev"))
    found = await finished_job(batch, gpu_namespace, "download", "Complete")
    assert found.status.succeeded == 1


async def test_job_whose_image_exits_1_fails(
    control_plane_api: k8s.ApiClient, gpu_namespace: str
) -> None:
    batch, core = k8s.BatchV1Api(control_plane_api), k8s.CoreV1Api(control_plane_api)
    await batch.create_namespaced_job(
        gpu_namespace, job("download", "registry.example/modelplane-exits-1:dev")
    )
    found = await finished_job(batch, gpu_namespace, "download", "Failed")
    assert found.status.failed == 1
    pods = await core.list_namespaced_pod(gpu_namespace, label_selector="job-name=download")
    [failed] = pods.items
    assert failed.status.phase == "Failed"
    [status] = failed.status.container_statuses
    assert (status.state.terminated.exit_code, status.state.terminated.reason) == (1, "Error")


async def test_pending_pod_is_scheduled_once_a_big_enough_node_joins(
    kube_control_plane: KubeControlPlane, control_plane_api: k8s.ApiClient, gpu_namespace: str
) -> None:
    core = k8s.CoreV1Api(control_plane_api)
    await core.create_namespaced_pod(gpu_namespace, pod("waits", "vllm/vllm-openai", gpus=2))

    async def unschedulable() -> bool | None:
        found = await core.read_namespaced_pod("waits", gpu_namespace)
        scheduled = condition(found, "PodScheduled")
        return True if scheduled is not None and scheduled.reason == "Unschedulable" else None

    await eventually(unschedulable, what="the scheduler to give up on the pod")
    node = f"gpu-h100-{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(
        kube_control_plane.add_gpu_node,
        node,
        2,
        gpu_product="NVIDIA-H100-80GB-HBM3",
        gpu_memory_mib=81559,
    )
    try:

        async def running() -> k8s.V1Pod | None:
            found = await core.read_namespaced_pod("waits", gpu_namespace)
            return found if found.status.phase == "Running" else None

        found = await eventually(running, what="the pod to run on the new node")
        assert found.spec.node_name == node
    finally:
        await asyncio.to_thread(kube_control_plane.delete_node, node)


async def test_ready_after_annotation_delays_running(
    control_plane_api: k8s.ApiClient, gpu_namespace: str
) -> None:
    core = k8s.CoreV1Api(control_plane_api)
    started = time.monotonic()
    await core.create_namespaced_pod(
        gpu_namespace,
        pod("slow", "vllm/vllm-openai", annotations={"modelplane.test/ready-after": "1500ms"}),
    )

    async def running() -> k8s.V1Pod | None:
        found = await core.read_namespaced_pod("slow", gpu_namespace)
        return found if found.status.phase == "Running" else None

    await eventually(running, what="the pod to run")
    assert time.monotonic() - started >= 1.5
