"""Issue 17's inference behaviours on the kubernetes runtime (kube-apiserver, controller
manager, scheduler and kwok; see ``tests/test_inference_kubernetes.py``): the model's resources
in the Deployment, stop clearing the model's inference, a dry run leaving nothing in the
cluster, and the Deployment's status on Inference."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client as k8s

from controllers.inference.workloads import WorkloadCounts
from controllers.runtimes.kubernetes.status import workload_counts
from storage.documents import WorkloadCondition
from tests import test_inference_kubernetes as cluster
from tests.conftest import RunningApp
from tests.graphql_client import run
from tests.test_inference_kubernetes import (  # noqa: F401  unrefusing_app: a fixture
    editor,
    ready_model,
    start,
    unrefusing_app,
    wait_gone,
    wait_inference,
)

cluster_app = cluster.cluster_app  # the fixture, shared with tests/test_inference_kubernetes.py


async def set_resources(app: RunningApp, model_id: str, resources: dict[str, Any]) -> None:
    data = await run(
        app.graphql_url,
        "UpdateModel",
        {"id": model_id, "input": {"resources": resources}},
        token=editor(app),
    )
    assert data["updateModel"]["__typename"] == "Model", data


async def dry_run(app: RunningApp, model_id: str, value: dict[str, Any] | None) -> dict[str, Any]:
    data = await run(
        app.graphql_url,
        "StartInference",
        {"modelId": model_id, "input": value, "dryRun": True},
        token=editor(app),
    )
    result: dict[str, Any] = data["startInference"]
    assert result["__typename"] == "InferencePayload", result
    return result


async def wait_reason(app: RunningApp, inference_id: str, reason: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        data = await run(app.graphql_url, "Inference", {"id": inference_id}, token=editor(app))
        inference: dict[str, Any] = data["inference"]
        if inference["reason"] == reason:
            return inference
        assert time.monotonic() < deadline, f"timed out waiting for {reason}; last {inference}"
        await asyncio.sleep(0.1)


def engine_resources(manifests: list[str]) -> dict[str, Any]:
    for text in manifests:
        obj = yaml.safe_load(text)
        if obj["kind"] == "Deployment":
            resources: dict[str, Any] = obj["spec"]["template"]["spec"]["containers"][0][
                "resources"
            ]
            return resources
    raise AssertionError(f"no Deployment in {manifests}")


async def test_the_models_resources_size_the_deployment(
    unrefusing_app: RunningApp,  # noqa: F811  the fixture imported above
    control_plane_api: k8s.ApiClient,
    gpu_namespace: str,
) -> None:
    """(Two GPUs on one-GPU nodes: with GPUs no node can offer refused up front, this runs on
    an app that refuses nothing, as where a node autoscaler adds bigger nodes.)"""
    cluster_app = unrefusing_app
    model = await ready_model(cluster_app)
    await set_resources(cluster_app, model.id, {"cpu": "2", "memory": "3Gi", "gpu": 2})

    rendered = engine_resources((await dry_run(cluster_app, model.id, None))["manifests"])
    assert rendered["requests"] == {"cpu": "2", "memory": "3Gi", "nvidia.com/gpu": "2"}
    assert rendered["limits"] == {"memory": "3Gi", "nvidia.com/gpu": "2"}
    partial = engine_resources(
        (await dry_run(cluster_app, model.id, {"resources": {"memory": "1Gi"}}))["manifests"]
    )
    assert partial["requests"] == {"cpu": "2", "memory": "1Gi", "nvidia.com/gpu": "2"}

    inference = await start(cluster_app, model.id)
    # Two GPUs on one-GPU nodes: PENDING, and the Deployment says why.
    await wait_reason(cluster_app, inference["id"], "InsufficientGPU")
    apps, core = k8s.AppsV1Api(control_plane_api), k8s.CoreV1Api(control_plane_api)
    deployment = await apps.read_namespaced_deployment(inference["name"], gpu_namespace)
    container = deployment.spec.template.spec.containers[0]
    assert container.resources.requests == {"cpu": "2", "memory": "3Gi", "nvidia.com/gpu": "2"}
    assert container.resources.limits == {"memory": "3Gi", "nvidia.com/gpu": "2"}

    await run(
        cluster_app.graphql_url, "StopInference", {"modelId": model.id}, token=editor(cluster_app)
    )
    await wait_gone(apps, core, gpu_namespace, inference["name"], inference["id"])


async def managed_objects(api: k8s.ApiClient, namespace: str) -> list[str]:
    """Every object with modelplane's label in the namespace, as ``Kind/name``."""
    selector = "app.kubernetes.io/managed-by=modelplane"
    apps, core = k8s.AppsV1Api(api), k8s.CoreV1Api(api)
    scaling = k8s.AutoscalingV2Api(api)
    found: list[str] = []
    for kind, lister in (
        ("Deployment", apps.list_namespaced_deployment),
        ("Service", core.list_namespaced_service),
        ("ConfigMap", core.list_namespaced_config_map),
        ("Secret", core.list_namespaced_secret),
        ("PersistentVolumeClaim", core.list_namespaced_persistent_volume_claim),
        ("Pod", core.list_namespaced_pod),
        ("HorizontalPodAutoscaler", scaling.list_namespaced_horizontal_pod_autoscaler),
    ):
        listing = await lister(namespace, label_selector=selector)
        found += [f"{kind}/{item.metadata.name}" for item in listing.items]
    return found


async def test_a_dry_run_creates_nothing_in_the_cluster_nor_the_database(
    cluster_app: RunningApp, control_plane_api: k8s.ApiClient, gpu_namespace: str
) -> None:
    database = cluster_app.resources.database
    model = await ready_model(cluster_app)
    before = await database["models"].find_one({"_id": model.id})
    events = await database["events"].count_documents({})
    for value in (
        None,
        {"engine": "OLLAMA"},
        {"replicas": 2, "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetMetric": "cpu"}},
    ):
        result = await dry_run(cluster_app, model.id, value)
        kinds = [yaml.safe_load(text)["kind"] for text in result["manifests"]]
        assert {"Deployment", "Service"} <= set(kinds), kinds
    await asyncio.sleep(1)  # a controller acting on anything would have written by now
    assert await managed_objects(control_plane_api, gpu_namespace) == []
    assert await database["inferences"].count_documents({}) == 0
    assert await database["models"].find_one({"_id": model.id}) == before
    assert await database["events"].count_documents({}) == events


@pytest.mark.parametrize(
    ("deployment", "expected"),
    [
        (None, None),
        ({"spec": {"replicas": 2}}, WorkloadCounts(0, 0, 0, ())),
        (
            {
                "status": {
                    "replicas": 3,
                    "readyReplicas": 2,
                    "availableReplicas": 2,
                    "updatedReplicas": 1,
                    "conditions": [
                        {
                            "type": "Available",
                            "status": "True",
                            "reason": "MinimumReplicasAvailable",
                            "message": "Deployment has minimum availability.",
                            "lastUpdateTime": "2026-12-05T10:00:00Z",
                        },
                        {"type": "Progressing", "status": "True"},
                    ],
                }
            },
            WorkloadCounts(
                3,
                2,
                1,
                (
                    WorkloadCondition(
                        type="Available",
                        status="True",
                        reason="MinimumReplicasAvailable",
                        message="Deployment has minimum availability.",
                    ),
                    WorkloadCondition(type="Progressing", status="True"),
                ),
            ),
        ),
    ],
    ids=["no-deployment", "no-status-yet", "rolling"],
)
def test_workload_counts(
    deployment: dict[str, Any] | None, expected: WorkloadCounts | None
) -> None:
    assert workload_counts(deployment) == expected


async def test_the_deployments_status_and_autoscaling_are_on_the_inference(
    cluster_app: RunningApp, control_plane_api: k8s.ApiClient, gpu_namespace: str
) -> None:
    model = await ready_model(cluster_app)
    inference = await start(
        cluster_app,
        model.id,
        {"autoscaling": {"minReplicas": 1, "maxReplicas": 2, "targetMetric": "cpu"}},
    )
    running = await wait_inference(cluster_app, inference["id"], {"RUNNING", "FAILED"})
    assert running["phase"] == "RUNNING", running
    assert running["ready"] is True
    status = running["deployment"]
    assert status["desiredReplicas"] == 1, status
    assert (status["currentReplicas"], status["readyReplicas"]) == (1, 1), status
    assert (status["availableReplicas"], status["updatedReplicas"]) == (1, 1), status
    available = [c for c in status["conditions"] if c["type"] == "Available"]
    assert available, status
    assert available[0]["status"] == "True"
    # The HPA's own status comes from its informer, maybe a write after RUNNING; the HPA
    # controller here has no metrics to read, so the value is null and says why.
    deadline = time.monotonic() + 30
    while running["autoscaling"]["autoscaler"] is None:
        assert time.monotonic() < deadline, running["autoscaling"]
        await asyncio.sleep(0.1)
        running = await wait_inference(cluster_app, inference["id"], {"RUNNING"})
    message = running["autoscaling"].pop("currentValueMessage")
    assert message, running["autoscaling"]
    assert running["autoscaling"] == {
        "autoscaler": "HORIZONTAL_POD_AUTOSCALER",
        "currentReplicas": 1,
        "desiredReplicas": 1,
        "minReplicas": 1,
        "maxReplicas": 2,
        "targetMetric": running["spec"]["autoscaling"]["targetMetric"],
        "targetValue": running["spec"]["autoscaling"]["targetValue"],
        "currentValue": None,
        "lastScaleTime": None,
    }

    await run(
        cluster_app.graphql_url, "StopInference", {"modelId": model.id}, token=editor(cluster_app)
    )
    apps, core = k8s.AppsV1Api(control_plane_api), k8s.CoreV1Api(control_plane_api)
    await wait_gone(apps, core, gpu_namespace, inference["name"], inference["id"])
    stopped = await wait_inference(cluster_app, inference["id"], {"STOPPED"})
    assert stopped["ready"] is False
    assert stopped["deployment"] is None
    # The stop completes: the model has no inference any more (issue 17, item 2).
    deadline = time.monotonic() + 30
    while True:
        data = await run(
            cluster_app.graphql_url, "ModelInference", {"id": model.id}, token=editor(cluster_app)
        )
        if data["model"]["inference"] is None:
            break
        assert time.monotonic() < deadline, data
        await asyncio.sleep(0.1)
    assert data["model"]["inferencePhase"] is None
