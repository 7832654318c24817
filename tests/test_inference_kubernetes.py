"""Inference on the kubernetes runtime, against a real control plane with fake GPU nodes.

kube-apiserver, kube-controller-manager, kube-scheduler and kwok (``tests/cluster_fixtures.py``)
turn our Deployments into ReplicaSets and pods, schedule them onto two 1-GPU nodes or fail to,
and run them as kwok's stages say: normal pods go Running and Ready, an image containing
``never-pulls`` stays in ImagePullBackOff, one containing ``crash-loop`` crash-loops.

Models are arranged directly in the database as READY with weights in a node directory (a
hostPath; the testbed runs no volume provisioner, so PVCs would stay Pending; a download Job
would need a real kubelet: downloads on this runtime are covered by test_download_jobs.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s

from modelplane.settings import Settings
from storage.client import Client
from storage.documents import (
    AccessMode,
    LocalTarget,
    ModelDocument,
    ModelPhase,
    ModelSource,
    Role,
    WeightsDocument,
    WeightsState,
    new_id,
)
from testbed import servers
from testbed.hub import RunningHub
from tests import helpers
from tests.conftest import RunningApp, make_settings, serve_app
from tests.graphql_client import run

ORG = "org-k"


def cluster_settings(
    tmp_path: Path, mongo_uri: str, hub: RunningHub, plane: servers.KubeControlPlane, ns: str
) -> Settings:
    return make_settings(
        tmp_path,
        mongo_uri,
        hf_endpoint=hub.endpoint,
        runtime="kubernetes",
        kubeconfig=plane.kubeconfig,
        namespace=ns,
    )


@pytest.fixture
async def cluster_app(
    tmp_path: Path,
    mongo_uri: str,
    mongo_client: Client,
    hub: RunningHub,
    kube_control_plane: servers.KubeControlPlane,
    gpu_namespace: str,
) -> AsyncIterator[RunningApp]:
    settings = cluster_settings(tmp_path, mongo_uri, hub, kube_control_plane, gpu_namespace)
    async with serve_app(settings, mongo_client) as running:
        yield running


def editor(app: RunningApp) -> str:
    return app.token(role=Role.EDITOR, organization=ORG)


async def ready_model(app: RunningApp, name: str | None = None) -> ModelDocument:
    """A LOCAL model whose weights are READY in a node directory, as a download leaves it."""
    database = app.resources.database
    model_id = new_id("model")
    name = name or f"m-{uuid.uuid4().hex[:6]}"
    target = LocalTarget(local_path=f"/data/models/{name}")
    weights = WeightsDocument(
        id=new_id("weights"),
        organization_id=ORG,
        repo_id="tiny-org/tiny-model",
        commit_sha="c" * 40,
        target=target,
        location=f"/data/models/{name}",
        state=WeightsState.READY,
        model_ids=[model_id],
    )
    model = ModelDocument(
        id=model_id,
        organization_id=ORG,
        name=name,
        name_key=name,
        display_name=name,
        source=ModelSource(url="tiny-org/tiny-model", access_mode=AccessMode.LOCAL),
        download_target=target,
        weights_id=weights.id,
        phase=ModelPhase.READY,
    )
    await database["weights"].insert_one(weights.to_mongo())
    await database["models"].insert_one(model.to_mongo())
    return model


async def start(
    app: RunningApp, model_id: str, value: dict[str, Any] | None = None
) -> dict[str, Any]:
    data = await run(
        app.graphql_url, "StartInference", {"modelId": model_id, "input": value}, token=editor(app)
    )
    result: dict[str, Any] = data["startInference"]
    assert result["__typename"] == "InferencePayload", result
    inference: dict[str, Any] = result["inference"]
    return inference


async def wait_inference(
    app: RunningApp, inference_id: str, phases: set[str], *, timeout: float = 60
) -> dict[str, Any]:
    return await helpers.wait_inference(
        app.graphql_url, editor(app), inference_id, phases, timeout=timeout
    )


async def wait_gone(
    apps: k8s.AppsV1Api, core: k8s.CoreV1Api, ns: str, name: str, owner: str
) -> None:
    deadline = time.monotonic() + 60
    while True:
        deployments = await apps.list_namespaced_deployment(
            ns, field_selector=f"metadata.name={name}"
        )
        pods = await core.list_namespaced_pod(ns, label_selector=f"modelplane.io/owner-id={owner}")
        services = await core.list_namespaced_service(ns, field_selector=f"metadata.name={name}")
        if not deployments.items and not pods.items and not services.items:
            return
        assert time.monotonic() < deadline, "objects were not removed"
        await asyncio.sleep(0.2)


async def test_start_runs_on_a_gpu_node_and_stop_removes_everything(
    cluster_app: RunningApp, control_plane_api: k8s.ApiClient, gpu_namespace: str
) -> None:
    model = await ready_model(cluster_app)
    inference = await start(cluster_app, model.id)
    running = await wait_inference(cluster_app, inference["id"], {"RUNNING", "FAILED"})
    assert running["phase"] == "RUNNING", running
    assert running["readyReplicas"] == 1
    assert running["endpoint"] == (
        f"http://{inference['name']}.{gpu_namespace}.svc.cluster.local:8000/v1"
    )

    apps, core = k8s.AppsV1Api(control_plane_api), k8s.CoreV1Api(control_plane_api)
    deployment = await apps.read_namespaced_deployment(inference["name"], gpu_namespace)
    labels = deployment.metadata.labels
    assert labels["app.kubernetes.io/managed-by"] == "modelplane"
    assert labels["modelplane.io/owner-id"] == inference["id"]
    assert labels["modelplane.io/model-id"] == model.id
    container = deployment.spec.template.spec.containers[0]
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    volume = deployment.spec.template.spec.volumes[0]
    assert volume.host_path.path == f"/data/models/{model.name}"
    assert container.args[0] == f"/data/models/{model.name}"
    pods = await core.list_namespaced_pod(
        gpu_namespace, label_selector=f"modelplane.io/owner-id={inference['id']}"
    )
    assert pods.items[0].spec.node_name.startswith("gpu-a100-")
    await core.read_namespaced_service(inference["name"], gpu_namespace)

    await run(
        cluster_app.graphql_url, "StopInference", {"modelId": model.id}, token=editor(cluster_app)
    )
    stopped = await wait_inference(cluster_app, inference["id"], {"STOPPED"})
    assert stopped["endpoint"] is None
    await wait_gone(apps, core, gpu_namespace, inference["name"], inference["id"])
    phases = [entry["phase"] for entry in stopped["phaseHistory"]]
    assert "RUNNING" in phases
    assert phases[-1] == "STOPPED"


@pytest.fixture
async def unrefusing_app(
    tmp_path: Path,
    mongo_uri: str,
    mongo_client: Client,
    hub: RunningHub,
    kube_control_plane: servers.KubeControlPlane,
    gpu_namespace: str,
) -> AsyncIterator[RunningApp]:
    """A cluster whose node autoscaler would add bigger GPU nodes: nothing refused up front."""
    settings = cluster_settings(tmp_path, mongo_uri, hub, kube_control_plane, gpu_namespace)
    async with serve_app(
        settings.model_copy(update={"refuse_unfit_gpus": False}), mongo_client
    ) as running:
        yield running


async def test_two_gpus_on_one_gpu_nodes_is_pending_with_the_reason(
    unrefusing_app: RunningApp,
) -> None:
    """With ``MODELPLANE_REFUSE_UNFIT_GPUS=false`` (refused up front otherwise:
    tests/test_fidelity_k8s.py) the inference waits PENDING and says why."""
    cluster_app = unrefusing_app
    model = await ready_model(cluster_app)
    inference = await start(cluster_app, model.id, {"resources": {"gpu": 2}})
    pending = await wait_inference(cluster_app, inference["id"], {"PENDING", "RUNNING"})
    deadline = time.monotonic() + 30
    while pending["reason"] != "InsufficientGPU" and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        pending = await wait_inference(cluster_app, inference["id"], {"PENDING"})
    assert pending["phase"] == "PENDING"
    assert pending["reason"] == "InsufficientGPU", pending
    assert pending["message"].startswith("insufficient nvidia.com/gpu (needs 2")
    assert "largest free 1" in pending["message"]
    seen = await run(
        cluster_app.graphql_url, "ModelInference", {"id": model.id}, token=editor(cluster_app)
    )
    assert seen["model"]["inferencePhase"] == "PENDING"
    await run(
        cluster_app.graphql_url, "StopInference", {"modelId": model.id}, token=editor(cluster_app)
    )
    await wait_inference(cluster_app, inference["id"], {"STOPPED"})


@pytest.mark.parametrize(
    ("image", "phase", "reason", "words"),
    [
        (
            "registry.example.com/never-pulls:1",
            "FAILED",
            "ImagePullBackOff",
            "Back-off pulling image",
        ),
        (
            "registry.example.com/crash-loop:1",
            "CRASH_LOOP_BACK_OFF",
            "CrashLoopBackOff",
            "Error (exit code 1)",
        ),
    ],
    ids=["image-never-pulls", "crash-loop"],
)
async def test_failing_pods_are_named_as_such(
    cluster_app: RunningApp, image: str, phase: str, reason: str, words: str
) -> None:
    model = await ready_model(cluster_app)
    inference = await start(
        cluster_app,
        model.id,
        {"engine": "CUSTOM", "image": image, "command": ["serve"], "resources": {"gpu": 0}},
    )
    seen = await wait_inference(cluster_app, inference["id"], {phase}, timeout=60)
    deadline = time.monotonic() + 30
    while seen["reason"] != reason and time.monotonic() < deadline:
        # ErrImagePull comes first, then the kubelet backs off: ImagePullBackOff.
        await asyncio.sleep(0.2)
        seen = await wait_inference(cluster_app, inference["id"], {phase})
    assert seen["reason"] == reason, seen
    assert words in seen["message"], seen
    await run(
        cluster_app.graphql_url, "StopInference", {"modelId": model.id}, token=editor(cluster_app)
    )
    await wait_inference(cluster_app, inference["id"], {"STOPPED"})


async def test_a_restarted_controller_converges(
    tmp_path: Path,
    mongo_uri: str,
    mongo_client: Client,
    hub: RunningHub,
    kube_control_plane: servers.KubeControlPlane,
    gpu_namespace: str,
    control_plane_api: k8s.ApiClient,
) -> None:
    settings = cluster_settings(tmp_path, mongo_uri, hub, kube_control_plane, gpu_namespace)
    async with serve_app(settings, mongo_client, keep_database=True) as first:
        model = await ready_model(first)
        inference = await start(first, model.id)
        # The service stops right after accepting: the rollout is in flight, or not begun.
    async with serve_app(settings, mongo_client) as second:
        running = await wait_inference(second, inference["id"], {"RUNNING"})
        assert running["readyReplicas"] == 1
        apps = k8s.AppsV1Api(control_plane_api)
        listing = await apps.list_namespaced_deployment(
            gpu_namespace, label_selector=f"modelplane.io/owner-id={inference['id']}"
        )
        assert len(listing.items) == 1
        await run(second.graphql_url, "StopInference", {"modelId": model.id}, token=editor(second))
        await wait_inference(second, inference["id"], {"STOPPED"})


MANIFEST = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: my-server
  annotations: {modelplane.io/model-name: my-served-model}
spec:
  replicas: 1
  selector: {matchLabels: {app: my-server}}
  template:
    metadata: {labels: {app: my-server}}
    spec:
      containers:
        - name: server
          image: registry.example.com/my-server:1
          ports: [{containerPort: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: my-server}
spec:
  selector: {app: my-server}
  ports: [{port: 9000, targetPort: 9000}]
"""


async def test_manifests_and_found_deployments_are_listed_as_unmanaged(
    cluster_app: RunningApp, control_plane_api: k8s.ApiClient, gpu_namespace: str
) -> None:
    created = await run(
        cluster_app.graphql_url,
        "CreateInferenceFromManifest",
        {"yaml": MANIFEST},
        token=editor(cluster_app),
    )
    payload = created["createInferenceFromManifest"]
    assert payload["__typename"] == "InferencePayload", payload
    inference = payload["inference"]
    assert inference["managed"] is False
    assert inference["modelName"] == "my-served-model"
    running = await wait_inference(cluster_app, inference["id"], {"RUNNING"})
    assert running["endpoint"] == (
        f"http://{inference['name']}.{gpu_namespace}.svc.cluster.local:9000/v1"
    )

    # A Deployment with our labels but no record (e.g. its document was lost).
    apps = k8s.AppsV1Api(control_plane_api)
    labels = {
        "app.kubernetes.io/managed-by": "modelplane",
        "app.kubernetes.io/component": "inference",
        "modelplane.io/owner-id": "inf-orphn",
        "modelplane.io/organization-id": ORG,
    }
    orphan: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "inf-orphn", "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"modelplane.io/owner-id": "inf-orphn"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "registry.example.com/x:1"}]},
            },
        },
    }
    await apps.create_namespaced_deployment(gpu_namespace, orphan)  # type: ignore[arg-type]  # a dict body is sent as is
    deadline = time.monotonic() + 30
    while True:
        data = await run(
            cluster_app.graphql_url,
            "Inferences",
            {"filter": {"managed": False}},
            token=editor(cluster_app),
        )
        items = {item["id"]: item for item in data["inferences"]["items"]}
        if "inf-orphn" in items:
            break
        assert time.monotonic() < deadline, data
        await asyncio.sleep(0.2)
    assert inference["id"] in items
    assert items["inf-orphn"]["reason"] == "NoDocument"
    assert data["inferences"]["total"] == 2
    managed_only = await run(
        cluster_app.graphql_url,
        "Inferences",
        {"filter": {"managed": True}},
        token=editor(cluster_app),
    )
    assert managed_only["inferences"]["total"] == 0
    # Another organisation sees neither.
    other = cluster_app.token(role=Role.VIEWER, organization="org-other")
    hidden = await run(cluster_app.graphql_url, "Inferences", {}, token=other)
    assert hidden["inferences"]["total"] == 0

    await run(
        cluster_app.graphql_url,
        "StopInferenceById",
        {"id": inference["id"]},
        token=editor(cluster_app),
    )
    await wait_inference(cluster_app, inference["id"], {"STOPPED"})
    await apps.delete_namespaced_deployment("inf-orphn", gpu_namespace)


async def test_manifest_refusals_write_nothing(cluster_app: RunningApp) -> None:
    privileged = MANIFEST.replace(
        "          image: registry",
        "          securityContext: {privileged: true}\n          image: registry",
    )
    result = await run(
        cluster_app.graphql_url,
        "CreateInferenceFromManifest",
        {"yaml": privileged},
        token=editor(cluster_app),
    )
    refusal = result["createInferenceFromManifest"]
    assert refusal["__typename"] == "ValidationError"
    assert "privileged" in refusal["errorMessage"]
    assert await cluster_app.resources.database["inferences"].count_documents({}) == 0
