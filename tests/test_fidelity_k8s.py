"""What teams coming from the organisation API expect of the Kubernetes side (issue 17, items
8-12), against the real servers: AIBrix labels and autoscaling defaults, refusals up front,
PVC defaults, workloads named after the model, a gated repo's public preview.

``kube_app`` runs on the bare API server (no nodes, no controllers: our objects are applied and
stay as written); the refusals of GPU counts use the whole control plane with its two 1-GPU
A100 nodes (``tests/cluster_fixtures.py``). CRDs are cluster-scoped and the API server is shared
by the session: a test that installs one removes it again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from controllers.runtimes.inventory import ClusterOffer, GpuNode, Integrations
from controllers.runtimes.kubernetes.job_specs import render_claim
from services.naming import base_name, suffixed
from services.offers import refusal
from storage.client import Client
from storage.documents import (
    AutoscalingSpec,
    InferenceDocument,
    InferenceEngine,
    InferencePhase,
    InferenceSpec,
    PvcTarget,
    Role,
    WeightsDocument,
    new_id,
)
from testbed import servers
from testbed.hub import RunningHub
from tests.conftest import RunningApp, serve_app
from tests.graphql_client import run
from tests.test_cluster_status import CRDS, crd_body, remove_crd, status
from tests.test_download_jobs import _create_pvc_model, _jobs, _mongo_secret
from tests.test_inference_kubernetes import (
    ORG,
    cluster_settings,
    editor,
    ready_model,
    wait_inference,
)

MANAGED = "app.kubernetes.io/managed-by=modelplane"


def _api(app: RunningApp) -> k8s.ApiClient:
    return app.resources.runtime.api  # type: ignore[attr-defined, no-any-return]  # the kubernetes runtime's client


async def start_raw(
    app: RunningApp, model_id: str, value: dict[str, Any], *, dry_run: bool = False
) -> dict[str, Any]:
    data = await run(
        app.graphql_url,
        "StartInference",
        {"modelId": model_id, "input": value, "dryRun": dry_run},
        token=editor(app),
    )
    result: dict[str, Any] = data["startInference"]
    return result


def objects(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """A dry run's objects (one YAML document each)."""
    return [yaml.safe_load(text) for text in payload["manifests"]]


async def until(check: Callable[[], Awaitable[Any]], what: str, *, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def read_or_none(call: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    try:
        return await call(*args)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


async def installed(app: RunningApp, flag: str) -> None:
    """Install the CRD of ``flag`` and wait until discovery serves it."""
    group, plural, kind, version = CRDS[flag]
    body = crd_body(group, plural, kind, version=version)
    await k8s.ApiextensionsV1Api(_api(app)).create_custom_resource_definition(body)  # type: ignore[arg-type]  # a dict body is sent as is

    async def served() -> bool:
        return bool((await status(app))["integrations"][flag])

    await until(served, f"the {kind} CRD to be served")


async def nothing_left(api: k8s.ApiClient, namespace: str) -> None:
    """No object of ours in the namespace: Deployment, Service, Secret, ConfigMap, PVC."""
    apps, core = k8s.AppsV1Api(api), k8s.CoreV1Api(api)
    for lister in (
        apps.list_namespaced_deployment,
        core.list_namespaced_service,
        core.list_namespaced_secret,
        core.list_namespaced_config_map,
        core.list_namespaced_persistent_volume_claim,
    ):
        found = await lister(namespace, label_selector=MANAGED)
        assert not found.items, (lister.__name__, [i.metadata.name for i in found.items])


async def no_inference_stored(app: RunningApp, model_id: str) -> None:
    stored = await app.resources.database["inferences"].count_documents({"model_id": model_id})
    assert stored == 0


# -- item 8: AIBrix --------------------------------------------------------------------------


async def test_aibrix_labels_and_the_organisation_api_autoscaling_defaults(
    kube_app: RunningApp, kube_namespace: str
) -> None:
    """``autoscaling: {}`` takes 002's defaults; with AIBrix installed the controller applies a
    KPA PodAutoscaler with them, and the Deployment and its pods carry ``model.aibrix.ai/name``
    (and the port) so AIBrix's gateway and autoscaler find them."""
    api = _api(kube_app)
    extensions = k8s.ApiextensionsV1Api(api)
    await installed(kube_app, "podAutoscaler")
    try:
        model = await ready_model(kube_app)
        result = await start_raw(kube_app, model.id, {"resources": {"gpu": 0}, "autoscaling": {}})
        assert result["__typename"] == "InferencePayload", result
        spec = result["inference"]["spec"]
        assert spec["autoscaling"] == {
            "minReplicas": 1,
            "maxReplicas": 8,
            "targetMetric": "num_requests_running",
            "targetValue": 40,
            "scaleDownDelaySeconds": 180,
        }
        name = result["inference"]["name"]
        apps = k8s.AppsV1Api(api)
        deployment = await until(
            lambda: read_or_none(apps.read_namespaced_deployment, name, kube_namespace),
            "the Deployment",
        )
        for labels in (deployment.metadata.labels, deployment.spec.template.metadata.labels):
            assert labels["model.aibrix.ai/name"] == model.name
            assert labels["model.aibrix.ai/port"] == "8000"
        assert deployment.spec.replicas is None or deployment.spec.replicas >= 1  # the PA's
        custom = k8s.CustomObjectsApi(api)
        scaler = await until(
            lambda: read_or_none(
                custom.get_namespaced_custom_object,
                "autoscaling.aibrix.ai",
                "v1alpha1",
                kube_namespace,
                "podautoscalers",
                name,
            ),
            "the PodAutoscaler",
        )
        assert scaler["spec"]["scalingStrategy"] == "KPA"
        assert (scaler["spec"]["minReplicas"], scaler["spec"]["maxReplicas"]) == (1, 8)
        source = scaler["spec"]["metricsSources"][0]
        assert (source["targetMetric"], source["targetValue"]) == ("num_requests_running", "40")
        annotations = scaler["metadata"]["annotations"]
        assert annotations["autoscaling.aibrix.ai/scale-down-cooldown-window"] == "180s"
        assert annotations["kpa.autoscaling.aibrix.ai/scale-down-delay"] == "180s"
        assert scaler["metadata"]["labels"]["model.aibrix.ai/name"] == model.name
        # Overridable, field by field.
        other = await ready_model(kube_app)
        tuned = await start_raw(
            kube_app,
            other.id,
            {
                "resources": {"gpu": 0},
                "autoscaling": {"maxReplicas": 3, "scaleDownDelaySeconds": 30},
            },
            dry_run=True,
        )
        assert tuned["inference"]["spec"]["autoscaling"]["maxReplicas"] == 3
        (scaler,) = [m for m in objects(tuned) if m["kind"] == "PodAutoscaler"]
        assert scaler["metadata"]["annotations"]["kpa.autoscaling.aibrix.ai/scale-down-delay"] == (
            "30s"
        )
    finally:
        await remove_crd(extensions, "podautoscalers.autoscaling.aibrix.ai")


# -- item 9: refusals up front ---------------------------------------------------------------


def _node(gpus: int, product: str = "NVIDIA-A100-SXM4-80GB") -> GpuNode:
    return GpuNode(
        name=f"n-{product}-{gpus}",
        gpu_type=product,
        memory_bytes_per_gpu=None,
        allocatable=gpus,
        requested=gpus,  # all busy: a busy node is not refused
        ready=True,
        schedulable=False,
    )


K8S = "kubernetes"
NODES = (_node(1), _node(4, "NVIDIA-L4"))
NO_CRDS = Integrations()
SCALE = AutoscalingSpec()


@pytest.mark.parametrize(
    ("spec", "offer", "field"),
    [
        (InferenceSpec(gpu=4), ClusterOffer(K8S, NODES, NO_CRDS), None),
        (InferenceSpec(gpu=5), ClusterOffer(K8S, NODES, NO_CRDS), "input.resources.gpu"),
        (InferenceSpec(gpu=1), ClusterOffer(K8S, (), NO_CRDS), "input.resources.gpu"),
        (InferenceSpec(gpu=0), ClusterOffer(K8S, (), NO_CRDS), None),
        (InferenceSpec(gpu=5), ClusterOffer(K8S, None, None), None),  # unreadable: unknown
        (
            InferenceSpec(gpu=2, gpu_type="NVIDIA-A100-SXM4-80GB"),
            ClusterOffer(K8S, NODES, NO_CRDS),
            "input.resources.gpu",
        ),
        (InferenceSpec(gpu=1, gpu_type="H100"), ClusterOffer(K8S, NODES, NO_CRDS), "input.gpuType"),
        (InferenceSpec(gpu=0, gpu_type="H100"), ClusterOffer(K8S, NODES, NO_CRDS), None),
        (InferenceSpec(engine=None, gpu=9), ClusterOffer(K8S, (), NO_CRDS), None),  # a route
        (
            InferenceSpec(gpu=0, autoscaling=SCALE),
            ClusterOffer(K8S, (), NO_CRDS),
            "input.autoscaling.targetMetric",
        ),
        (
            InferenceSpec(gpu=0, autoscaling=SCALE),
            ClusterOffer(K8S, (), Integrations(pod_autoscaler=True)),
            None,
        ),
        (
            InferenceSpec(gpu=0, autoscaling=SCALE),
            ClusterOffer(K8S, (), Integrations(custom_metrics=True)),
            None,
        ),
        (
            InferenceSpec(gpu=0, autoscaling=AutoscalingSpec(target_metric="cpu")),
            ClusterOffer(K8S, (), NO_CRDS),
            None,
        ),
        (
            InferenceSpec(gpu=0, service_monitor=True),
            ClusterOffer(K8S, (), NO_CRDS),
            "input.serviceMonitor",
        ),
        (
            InferenceSpec(gpu=0, service_monitor=True),
            ClusterOffer(K8S, (), Integrations(service_monitor=True)),
            None,
        ),
        (InferenceSpec(gpu=0, service_monitor=False), ClusterOffer(K8S, (), NO_CRDS), None),
        (InferenceSpec(gpu=0, autoscaling=SCALE), ClusterOffer(K8S, (), None), None),
        (InferenceSpec(gpu=8), ClusterOffer("local", None, NO_CRDS), None),  # no nvidia-smi
        (InferenceSpec(gpu=2), ClusterOffer("local", (_node(1),), NO_CRDS), "input.resources.gpu"),
        (
            InferenceSpec(gpu=0, autoscaling=SCALE),
            ClusterOffer("local", None, NO_CRDS),
            "input.autoscaling",
        ),
        (
            InferenceSpec(gpu=0, service_monitor=True),
            ClusterOffer("local", None, NO_CRDS),
            "input.serviceMonitor",
        ),
    ],
)
def test_refusal(spec: InferenceSpec, offer: ClusterOffer, field: str | None) -> None:
    refused = refusal(spec, offer)
    assert (refused.field if refused else None) == field, refused


def test_refusal_of_gpus_can_be_turned_off() -> None:
    offer = ClusterOffer(K8S, (), NO_CRDS)
    assert refusal(InferenceSpec(gpu=2), offer, refuse_gpus=False) is None


@pytest.fixture
async def gpu_app(
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


@pytest.mark.parametrize(
    ("value", "field", "words"),
    [
        (
            {"resources": {"gpu": 2}},
            "input.resources.gpu",
            "2 GPUs per replica, but the largest node of the cluster has 1 allocatable",
        ),
        (
            {"gpuType": "NVIDIA-H100-80GB-HBM3"},
            "input.gpuType",
            "present: NVIDIA-A100-SXM4-80GB",
        ),
    ],
    ids=["more-gpus-than-a-node", "no-such-gpu-type"],
)
async def test_gpus_no_node_can_ever_offer_are_refused_and_nothing_is_made(
    gpu_app: RunningApp,
    control_plane_api: k8s.ApiClient,
    gpu_namespace: str,
    value: dict[str, Any],
    field: str,
    words: str,
) -> None:
    model = await ready_model(gpu_app)
    for dry_run in (True, False):
        result = await start_raw(gpu_app, model.id, value, dry_run=dry_run)
        assert result["__typename"] == "ValidationError", result
        assert result["field"] == field
        assert words in result["errorMessage"], result["errorMessage"]
    await no_inference_stored(gpu_app, model.id)
    await asyncio.sleep(1)  # a controller acting on a stray event would have begun by now
    await nothing_left(control_plane_api, gpu_namespace)
    # One GPU of the type the nodes have is accepted.
    fits = await start_raw(gpu_app, model.id, {"gpuType": "NVIDIA-A100-SXM4-80GB"}, dry_run=True)
    assert fits["__typename"] == "InferencePayload", fits


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"resources": {"gpu": 0}, "autoscaling": {}}, "input.autoscaling.targetMetric"),
        ({"resources": {"gpu": 0}, "serviceMonitor": True}, "input.serviceMonitor"),
        ({"resources": {"gpu": 1}}, "input.resources.gpu"),  # this API server has no GPU node
    ],
    ids=["aibrix-autoscaler", "service-monitor", "no-gpu-node"],
)
async def test_features_whose_crd_is_missing_are_refused_and_nothing_is_made(
    kube_app: RunningApp, kube_namespace: str, value: dict[str, Any], field: str
) -> None:
    model = await ready_model(kube_app)
    result = await start_raw(kube_app, model.id, value)
    assert result["__typename"] == "ValidationError", result
    assert result["field"] == field
    await no_inference_stored(kube_app, model.id)
    await asyncio.sleep(1)
    await nothing_left(_api(kube_app), kube_namespace)


async def test_a_crd_installed_after_a_refusal_is_accepted_at_once(
    kube_app: RunningApp,
) -> None:
    """Starts read what the cluster offers at most every few seconds (a node list and API
    discovery each), but a refusal always reads it again: the CRD installed a moment after a
    refusal is honoured by the next start, not after the reading expires (``OFFER_SECONDS``)."""
    api = _api(kube_app)
    model = await ready_model(kube_app)
    wanted = {"resources": {"gpu": 0}, "autoscaling": {}}
    refused = await start_raw(kube_app, model.id, wanted, dry_run=True)
    assert refused["__typename"] == "ValidationError", refused
    started = time.monotonic()
    await installed(kube_app, "podAutoscaler")  # clusterStatus (read now) shows it
    try:
        accepted = await start_raw(kube_app, model.id, wanted, dry_run=True)
        print(f"CRD served {time.monotonic() - started:.2f} s after the refusal")  # noqa: T201
        assert accepted["__typename"] == "InferencePayload", accepted
    finally:
        await remove_crd(k8s.ApiextensionsV1Api(api), "podautoscalers.autoscaling.aibrix.ai")


async def test_cpu_autoscaling_needs_no_crd_and_waits_3m_before_scaling_down(
    kube_app: RunningApp,
) -> None:
    model = await ready_model(kube_app)
    result = await start_raw(
        kube_app,
        model.id,
        {"resources": {"gpu": 0}, "autoscaling": {"targetMetric": "cpu", "targetValue": 80}},
        dry_run=True,
    )
    assert result["__typename"] == "InferencePayload", result
    (hpa,) = [m for m in objects(result) if m["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 180
    assert hpa["spec"]["maxReplicas"] == 8


async def test_autoscaling_is_refused_on_the_local_runtime(running_app: RunningApp) -> None:
    model = await ready_model(running_app)
    result = await start_raw(running_app, model.id, {"autoscaling": {}})
    assert result["__typename"] == "ValidationError", result
    assert result["field"] == "input.autoscaling"
    await no_inference_stored(running_app, model.id)


# -- item 10: PVC defaults -------------------------------------------------------------------


async def test_a_missing_claim_without_a_size_is_created_with_20_gi_and_an_existing_one_kept(
    kube_app: RunningApp, kube_namespace: str, mongo_uri: str
) -> None:
    core = k8s.CoreV1Api(_api(kube_app))
    await _mongo_secret(kube_app, mongo_uri)
    created = await _create_pvc_model(
        kube_app, "tiny-org/tiny-model", claim="fresh-claim", size_gi=None
    )
    claim = await until(
        lambda: read_or_none(
            core.read_namespaced_persistent_volume_claim, "fresh-claim", kube_namespace
        ),
        "the claim to be created",
    )
    assert claim.spec.resources.requests["storage"] == "20Gi"
    assert claim.metadata.labels["modelplane.io/organization-id"] == "org-a"

    # An existing claim of the organisation is used as it is: not resized, not relabelled.
    existing: dict[str, Any] = {
        "metadata": {
            "name": "kept-claim",
            "labels": {"modelplane.io/organization-id": "org-a"},
        },
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "3Gi"}}},
    }
    await core.create_namespaced_persistent_volume_claim(kube_namespace, existing)  # type: ignore[arg-type]  # a dict body is sent as is
    used = await _create_pvc_model(
        kube_app, "tiny-org/sharded-model", claim="kept-claim", size_gi=None
    )

    async def job_of(model_id: str) -> bool:
        jobs = await _jobs(kube_app)
        return any(job.metadata.labels.get("modelplane.io/owner-id") == model_id for job in jobs)

    await until(lambda: job_of(used["id"]), "the download Job on the existing claim")
    kept = await core.read_namespaced_persistent_volume_claim("kept-claim", kube_namespace)
    assert kept.spec.resources.requests["storage"] == "3Gi"
    assert "modelplane.io/owner-id" not in (kept.metadata.labels or {})
    assert created["id"] != used["id"]


@pytest.mark.parametrize(
    ("size_gi", "default", "storage"), [(None, 20, "20Gi"), (None, 7, "7Gi"), (5, 7, "5Gi")]
)
def test_a_claim_takes_the_target_size_else_the_setting(
    size_gi: int | None, default: int, storage: str
) -> None:
    weights = WeightsDocument(
        id="weights-x",
        organization_id="org-a",
        repo_id="org/x",
        commit_sha="c" * 40,
        target=PvcTarget(claim_name="data", size_gi=size_gi),
        location="pvc://data",
    )
    claim = render_claim(weights, namespace="ns", default_size_gi=default)
    assert claim is not None
    assert claim["spec"]["resources"]["requests"]["storage"] == storage


# -- item 11: names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_name", "expected"),
    [
        ("llama-7b", "llama-7b"),
        ("7b-chat", "m-7b-chat"),
        ("a" * 63, "a" * 63),
    ],
)
def test_base_name(model_name: str, expected: str) -> None:
    assert base_name(model_name) == expected


def test_suffixed_names_stay_within_63_characters() -> None:
    assert suffixed("llama-7b", "inf-x7k2p") == "llama-7b-x7k2p"
    assert len(suffixed("a" * 63, "inf-x7k2p")) == 63


async def test_deployments_and_services_are_named_after_the_model(
    gpu_app: RunningApp, control_plane_api: k8s.ApiClient, gpu_namespace: str
) -> None:
    """On the whole control plane, so the inference runs and its endpoint is recorded."""
    kube_app, kube_namespace, api = gpu_app, gpu_namespace, control_plane_api
    apps, core = k8s.AppsV1Api(api), k8s.CoreV1Api(api)
    model = await ready_model(kube_app, name=f"llama-{uuid.uuid4().hex[:4]}")
    result = await start_raw(kube_app, model.id, {"resources": {"gpu": 0}})
    inference = result["inference"]
    assert inference["name"] == model.name
    deployment = await until(
        lambda: read_or_none(apps.read_namespaced_deployment, model.name, kube_namespace),
        "the Deployment named after the model",
    )
    assert deployment.metadata.labels["modelplane.io/owner-id"] == inference["id"]
    service = await until(
        lambda: read_or_none(core.read_namespaced_service, model.name, kube_namespace),
        "the Service named after the model",
    )
    assert service.metadata.labels["modelplane.io/owner-id"] == inference["id"]
    running = await wait_inference(kube_app, inference["id"], {"RUNNING"})
    assert running["endpoint"] == f"http://{model.name}.{kube_namespace}.svc.cluster.local:8000/v1"

    # A name held by an object that is not ours: the id's suffix keeps it unique.
    taken = await ready_model(kube_app, name=f"taken-{uuid.uuid4().hex[:4]}")
    foreign: dict[str, Any] = {
        "metadata": {"name": taken.name},
        "spec": {"ports": [{"port": 80}], "selector": {"app": "theirs"}},
    }
    await core.create_namespaced_service(kube_namespace, foreign)  # type: ignore[arg-type]  # a dict body is sent as is
    second = (await start_raw(kube_app, taken.id, {"resources": {"gpu": 0}}))["inference"]
    assert second["name"] == suffixed(taken.name, second["id"])
    await until(
        lambda: read_or_none(apps.read_namespaced_deployment, second["name"], kube_namespace),
        "the suffixed Deployment",
    )
    theirs = await core.read_namespaced_service(taken.name, kube_namespace)
    assert theirs.spec.selector == {"app": "theirs"}  # untouched

    # Stopping removes the objects by their stored name.
    await run(kube_app.graphql_url, "StopInference", {"modelId": model.id}, token=editor(kube_app))
    await until(lambda: _gone(apps, core, model.name, kube_namespace), "the model's objects to go")


async def test_an_inference_named_inf_id_before_the_upgrade_keeps_working(
    kube_app: RunningApp, kube_namespace: str
) -> None:
    """A stopped inference stored before the upgrade (``inf-<id>``) restarts under its stored
    name, and stopping it removes those objects: labels are the identity, names are stored."""
    api = _api(kube_app)
    apps, core = k8s.AppsV1Api(api), k8s.CoreV1Api(api)
    model = await ready_model(kube_app)
    legacy_id = new_id("inf")
    legacy = InferenceDocument(
        id=legacy_id,
        organization_id=ORG,
        model_id=model.id,
        model_name=model.name,
        name=legacy_id,
        active_key=model.id,
        runtime="kubernetes",
        enabled=False,
        phase=InferencePhase.STOPPED,
        spec=InferenceSpec(engine=InferenceEngine.VLLM, gpu=0),
    )
    await kube_app.resources.database["inferences"].insert_one(legacy.to_mongo())
    result = await start_raw(kube_app, model.id, {"resources": {"gpu": 0}})
    assert (result["inference"]["id"], result["inference"]["name"]) == (legacy_id, legacy_id)
    await until(
        lambda: read_or_none(apps.read_namespaced_deployment, legacy_id, kube_namespace),
        "the legacy-named Deployment",
    )
    await run(kube_app.graphql_url, "StopInference", {"modelId": model.id}, token=editor(kube_app))
    await until(lambda: _gone(apps, core, legacy_id, kube_namespace), "the legacy objects to go")


async def _gone(apps: k8s.AppsV1Api, core: k8s.CoreV1Api, name: str, namespace: str) -> bool:
    deployment = await read_or_none(apps.read_namespaced_deployment, name, namespace)
    service = await read_or_none(core.read_namespaced_service, name, namespace)
    return deployment is None and service is None


# -- item 12: gated previews -----------------------------------------------------------------


async def test_a_gated_repo_is_previewed_without_a_token(running_app: RunningApp) -> None:
    """The hub serves a gated repo's metadata to anyone; only its files need a grant."""
    data = await run(
        running_app.graphql_url,
        "HuggingFaceModel",
        {"repoId": "gated-org/gated-model"},
        token=running_app.token(role=Role.VIEWER, organization="org-a"),
    )
    found = data["huggingFaceModel"]
    assert found["__typename"] == "HuggingFaceModel", found
    assert found["gated"] is True
    assert found["files"], "the file list is public metadata too"
