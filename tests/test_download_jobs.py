"""Download Jobs (kubernetes runtime): what goes into a Job, what its status means, and a PVC
model downloaded end to end by the Job's own command, against the real kube-apiserver.

The testbed has no Job controller or kubelet, so :mod:`testbed.kubelet` creates the Job's pod
and runs its container as a local process with env resolved from the Secrets.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s

from controllers.downloads.executions import Execution
from controllers.runtimes.kubernetes.job_specs import (
    JobTemplate,
    claim_refusal,
    job_execution,
    job_name,
    render_job,
)
from controllers.runtimes.kubernetes.runtime import KubernetesRuntime
from storage.client import Client
from storage.documents import (
    AccessMode,
    ModelDocument,
    ModelSource,
    PvcTarget,
    Role,
    S3Target,
    WeightsDocument,
)
from testbed import kubelet, servers
from testbed.hub import RunningHub
from tests.conftest import HUB_TOKEN, RunningApp, make_settings, serve_app
from tests.graphql_client import run

# -- status mapping (pure) ---------------------------------------------------------------


def _job(*conditions: dict[str, str], deadline: int = 600) -> dict[str, Any]:
    return {
        "spec": {"active_deadline_seconds": deadline},
        "status": {"conditions": [{"status": "True", **c} for c in conditions]},
    }


def _pod(
    *,
    waiting: tuple[str, str] | None = None,
    terminated: tuple[str, int] | None = None,
    last_terminated: tuple[str, int] | None = None,
    unschedulable: str | None = None,
) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if waiting:
        state["waiting"] = {"reason": waiting[0], "message": waiting[1]}
    if terminated:
        state["terminated"] = {"reason": terminated[0], "exit_code": terminated[1]}
    status: dict[str, Any] = {
        "phase": "Pending" if unschedulable or waiting else "Running",
        "container_statuses": [
            {
                "state": state,
                "last_state": {
                    "terminated": {"reason": last_terminated[0], "exit_code": last_terminated[1]}
                }
                if last_terminated
                else {},
            }
        ]
        if state or last_terminated
        else [],
    }
    if unschedulable:
        status["conditions"] = [
            {"type": "PodScheduled", "status": "False", "message": unschedulable}
        ]
    return {"status": status}


@pytest.mark.parametrize(
    ("job", "pods", "expected"),
    [
        (None, [], Execution(active=False)),
        (_job(), [], Execution(active=True)),
        (_job(), [_pod()], Execution(active=True)),
        (
            _job(),
            [_pod(waiting=("ImagePullBackOff", 'Back-off pulling image "mp:nope"'))],
            Execution(
                active=True,
                failure="download pod cannot start: ImagePullBackOff: "
                'Back-off pulling image "mp:nope"',
            ),
        ),
        (
            _job(),
            [_pod(waiting=("CreateContainerConfigError", 'secret "x" not found'))],
            Execution(
                active=True,
                failure="download pod cannot start: CreateContainerConfigError: "
                'secret "x" not found',
            ),
        ),
        (
            _job(),
            [_pod(waiting=("ContainerCreating", ""))],
            Execution(active=True),
        ),
        (
            _job(),
            [_pod(unschedulable="0/3 nodes are available: 3 Insufficient memory.")],
            Execution(
                active=True,
                note="download pod cannot be scheduled: 0/3 nodes are available: "
                "3 Insufficient memory.",
            ),
        ),
        (
            _job(),
            [_pod(terminated=("OOMKilled", 137)), _pod()],
            Execution(active=True, note="download pod was OOMKilled (memory limit 2Gi)"),
        ),
        (
            _job({"type": "Failed", "reason": "DeadlineExceeded", "message": "too long"}),
            [_pod()],
            Execution(
                active=False,
                failure="download Job exceeded its deadline of 600 s (DeadlineExceeded)",
            ),
        ),
        (
            _job(
                {
                    "type": "Failed",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                }
            ),
            [_pod(terminated=("Error", 1)), _pod(terminated=("OOMKilled", 137))],
            Execution(
                active=False,
                failure="download Job failed: Job has reached the specified backoff limit; "
                "last pod: OOMKilled (exit code 137), memory limit 2Gi",
            ),
        ),
        (
            _job({"type": "Complete", "reason": "CompletionsReached"}),
            [_pod(terminated=("Completed", 0))],
            Execution(active=False, failure="download Job completed without recording an outcome"),
        ),
        (
            _job({"type": "Complete", "status": "False"}),
            [],
            Execution(active=True),
        ),
    ],
)
def test_job_execution(job: Any, pods: list[Any], expected: Execution) -> None:
    assert job_execution(job, pods, memory_limit="2Gi") == expected


def test_job_name_is_per_attempt_and_dns_safe() -> None:
    assert job_name("weights-abc", 0) == "download-weights-abc-0"
    assert job_name("weights-abc", 3) != job_name("weights-abc", 0)
    assert len(job_name("w" * 80, 12)) <= 63


def _pvc_weights(size_gi: int | None) -> WeightsDocument:
    return WeightsDocument(
        id="weights-x",
        organization_id="org-a",
        repo_id="org/x",
        commit_sha="c" * 40,
        target=PvcTarget(claim_name="data", size_gi=size_gi),
        location="pvc://data/models/x",
    )


OURS = {"modelplane.io/organization-id": "org-a", "modelplane.io/owner-id": "weights-y"}


@pytest.mark.parametrize(
    ("size_gi", "labels", "refused"),
    [
        (5, None, None),  # created by this download
        (None, None, None),  # created with the default size (tests/test_fidelity_k8s.py)
        (None, OURS, None),  # the organisation's (created for its other weights)
        (5, OURS, None),  # the same, with a size: used, not applied again
        (None, {"modelplane.io/organization-id": "org-b"}, "is not labelled for this"),
        (5, {"app": "database"}, "is not labelled for this organisation"),  # a database's
        (None, {}, "is not labelled for this organisation"),
    ],
)
def test_a_claim_is_used_only_by_the_organisation_it_is_labelled_for(
    size_gi: int | None, labels: dict[str, str] | None, refused: str | None
) -> None:
    reason = claim_refusal(_pvc_weights(size_gi), labels, namespace="ns")
    if refused is None:
        assert reason is None
    else:
        assert reason is not None
        assert refused in reason
        assert "PersistentVolumeClaim data" in reason


def test_rendered_job_holds_references_never_values() -> None:
    model = ModelDocument(
        id="model-x",
        organization_id="org",
        name="x",
        name_key="x",
        display_name="X",
        source=ModelSource(url="org/x", access_mode=AccessMode.LOCAL),
        secret_ref="model-x-credentials",
    )
    weights = WeightsDocument(
        id="weights-x",
        organization_id="org",
        repo_id="org/x",
        commit_sha="c" * 40,
        target=S3Target(
            endpoint="http://s3",
            bucket="b",
            access_key_id="AK",
            has_secret_access_key=True,
        ),
        location="s3://b/org/x/" + "c" * 40,
        secret_ref="model-x-credentials",
        attempt=2,
    )
    template = JobTemplate(
        image="modelplane:test",
        hf_endpoint="http://hub",
        mongodb_database="db",
        mongodb_secret="mongo",
        download_env=(("MODELPLANE_DOWNLOAD_PARALLEL_FILES", "4"),),
    )
    job = render_job(model, weights, template, namespace="ns")
    assert job["metadata"]["name"] == "download-weights-x-2"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "model-x-credentials",
        "key": "hf-token",
        "optional": True,
    }
    assert env["S3_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == (
        "s3-secret-access-key"
    )
    assert env["MODELPLANE_MONGODB_URI"]["valueFrom"]["secretKeyRef"]["name"] == "mongo"
    assert all("value" not in e for e in (env["HF_TOKEN"], env["MODELPLANE_MONGODB_URI"]))
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 2
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "modelplane"
    assert job["metadata"]["labels"]["modelplane.io/owner-id"] == "model-x"
    # an S3 target mounts no weights volume (only the private /tmp)
    assert [v["name"] for v in job["spec"]["template"]["spec"]["volumes"]] == ["tmp"]


# -- against the API server ----------------------------------------------------------------


def _api(app: RunningApp) -> k8s.ApiClient:
    runtime = app.resources.runtime
    assert isinstance(runtime, KubernetesRuntime)
    return runtime.api


async def _jobs(
    app: RunningApp, selector: str = "app.kubernetes.io/component=download"
) -> list[Any]:
    namespace = app.resources.settings.namespace
    listing = await k8s.BatchV1Api(_api(app)).list_namespaced_job(
        namespace, label_selector=selector
    )
    return list(listing.items)


async def _wait_for(predicate: Any, *, timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def _model(app: RunningApp, model_id: str) -> dict[str, Any]:
    token = app.token(role=Role.EDITOR, organization="org-a")
    data = await run(app.graphql_url, "ModelDownload", {"id": model_id}, token=token)
    model: dict[str, Any] = data["model"]
    return model


async def _create_pvc_model(
    app: RunningApp, repo: str, *, claim: str, size_gi: int | None, token: str | None = None
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "source": {"url": repo, "accessMode": "LOCAL"},
        "downloadTarget": {
            "pvc": {"claimName": claim, "subPath": "models/a"}
            | ({"sizeGi": size_gi, "storageClass": "standard"} if size_gi else {})
        },
    }
    if token is not None:
        value["source"]["token"] = token
    data = await run(
        app.graphql_url,
        "CreateModel",
        {"input": value},
        token=app.token(role=Role.EDITOR, organization="org-a"),
    )
    created: dict[str, Any] = data["createModel"]
    assert created["__typename"] == "Model", created
    return created


async def _mongo_secret(app: RunningApp, mongo_uri: str) -> None:
    """The Secret the Helm chart creates for download pods."""
    await k8s.CoreV1Api(_api(app)).create_namespaced_secret(
        app.resources.settings.namespace,
        k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name="modelplane-mongodb"),
            string_data={"uri": mongo_uri},
        ),
    )


async def test_pvc_model_downloads_through_one_job(
    kube_app: RunningApp, hub: RunningHub, mongo_uri: str, tmp_path: Path
) -> None:
    await _mongo_secret(kube_app, mongo_uri)
    created = await _create_pvc_model(
        kube_app, "gated-org/gated-model", claim="weights-a", size_gi=5, token=HUB_TOKEN
    )
    (job,) = await _wait_for(lambda: _jobs(kube_app), what="the download Job")
    namespace = kube_app.resources.settings.namespace

    # The claim was created, labelled as the model's, with the requested size and class.
    claim = await k8s.CoreV1Api(_api(kube_app)).read_namespaced_persistent_volume_claim(
        "weights-a", namespace
    )
    weights_id = job.metadata.labels["modelplane.io/weights-id"]
    assert claim.metadata.labels["modelplane.io/owner-id"] == weights_id
    assert claim.spec.resources.requests["storage"] == "5Gi"
    assert claim.spec.storage_class_name == "standard"

    # The Job: our labels, the model as owner, the claim mounted, bounded resources, and the
    # credentials only as references.
    serialized = json.dumps(_api(kube_app).sanitize_for_serialization(job))
    assert HUB_TOKEN not in serialized
    assert mongo_uri not in serialized
    assert job.metadata.labels["modelplane.io/owner-id"] == created["id"]
    pod_spec = job.spec.template.spec
    (container,) = pod_spec.containers
    assert container.command[:2] == ["modelplane", "download"]
    assert container.resources.limits == {"cpu": "2", "memory": "2Gi"}
    env = {e.name: e for e in container.env}
    assert env["HF_TOKEN"].value_from.secret_key_ref.key == "hf-token"
    assert env["HF_TOKEN"].value is None
    volumes = {v.name: v for v in pod_spec.volumes}
    assert volumes["weights"].persistent_volume_claim.claim_name == "weights-a"
    await _wait_for(
        lambda: _model_if(kube_app, created["id"], "PULLING"), what="the model to be PULLING"
    )

    # The pod runs `modelplane download` with what the Job gives it, writing into the PVC.
    pvc = tmp_path / "pvc"
    code = await kubelet.run_job_pod(
        _api(kube_app), namespace, job.metadata.name, volumes={"weights": pvc}
    )
    assert code == 0
    model = await _wait_for(
        lambda: _model_if(kube_app, created["id"], "READY"), what="the model to be READY"
    )
    assert model["weights"]["state"] == "READY"
    source = hub.hub.repos["gated-org/gated-model"]
    for file in source.files:
        data = (pvc / "models/a" / file.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == hashlib.sha256(file.content).hexdigest()

    # The pod measured the claim's filesystem: the inventory shows the PVC with the weights.
    listing = await run(
        kube_app.graphql_url,
        "WeightsList",
        {},
        token=kube_app.token(role=Role.VIEWER, organization="org-a"),
    )
    (usage,) = [u for u in listing["weightsUsage"] if u["kind"] == "PVC"]
    assert usage["root"] == "pvc://weights-a"
    assert usage["weightsBytes"] == sum(f.size for f in source.files)
    assert usage["total"] > 0
    assert usage["measuredAt"] is not None

    # Level-triggered and idempotent: more reconciles never make a second Job.
    downloads = kube_app.resources.downloads
    assert downloads is not None
    for _ in range(3):
        downloads.notify(created["id"])
    await downloads.wait_idle()
    assert [j.metadata.name for j in await _jobs(kube_app)] == [job.metadata.name]

    # deleteWeights removes the claim modelplane created for them (and the data with it).
    deleted = await run(
        kube_app.graphql_url,
        "DeleteWeights",
        {"id": weights_id, "force": False},
        token=kube_app.token(role=Role.EDITOR, organization="org-a"),
    )
    assert deleted["deleteWeights"]["__typename"] == "DeletedWeights", deleted
    claims = await k8s.CoreV1Api(_api(kube_app)).list_namespaced_persistent_volume_claim(namespace)
    assert all(c.metadata.deletion_timestamp for c in claims.items)


async def _model_if(app: RunningApp, model_id: str, phase: str) -> dict[str, Any] | None:
    model = await _model(app, model_id)
    return model if model["phase"] == phase else None


async def test_image_pull_backoff_fails_with_the_reason_and_retry_makes_a_new_job(
    kube_app: RunningApp, mongo_uri: str
) -> None:
    await _mongo_secret(kube_app, mongo_uri)
    created = await _create_pvc_model(kube_app, "tiny-org/tiny-model", claim="weights-b", size_gi=1)
    (job,) = await _wait_for(lambda: _jobs(kube_app), what="the download Job")
    namespace = kube_app.resources.settings.namespace
    pod = await kubelet.create_job_pod(_api(kube_app), namespace, job.metadata.name)

    await kubelet.set_unschedulable(
        _api(kube_app), namespace, pod, "0/2 nodes are available: 2 Insufficient memory."
    )
    waiting = await _wait_for(
        lambda: _model_message(kube_app, created["id"], "cannot be scheduled"),
        what="the unschedulable note",
    )
    assert waiting["phase"] == "PULLING"
    assert "2 Insufficient memory" in waiting["message"]

    await kubelet.set_waiting(
        _api(kube_app),
        namespace,
        pod,
        "ImagePullBackOff",
        'Back-off pulling image "modelplane:latest"',
    )
    failed = await _wait_for(
        lambda: _model_if(kube_app, created["id"], "FAILED"), what="the model to be FAILED"
    )
    assert "ImagePullBackOff" in failed["message"]
    assert "modelplane:latest" in failed["message"]
    assert failed["weights"]["state"] == "FAILED"
    await _wait_for(lambda: _none(_jobs(kube_app)), what="the failed Job to be deleted")

    token = kube_app.token(role=Role.EDITOR, organization="org-a")
    retried = await run(
        kube_app.graphql_url, "RetryDownload", {"modelId": created["id"]}, token=token
    )
    assert retried["retryDownload"]["__typename"] == "Weights", retried
    (second,) = await _wait_for(lambda: _jobs(kube_app), what="the retry's Job")
    assert second.metadata.name == job_name(failed["weights"]["id"], 1)
    assert second.metadata.name != job.metadata.name

    # cancelDownload deletes the Job and leaves the cleanup to a cleanup Job on the volume.
    cancelled = await run(
        kube_app.graphql_url, "CancelDownload", {"modelId": created["id"]}, token=token
    )
    assert cancelled["cancelDownload"]["__typename"] == "Weights", cancelled
    await _wait_for(lambda: _none(_jobs(kube_app)), what="the Job to be deleted")
    # The controller deletes the download Job, then applies the cleanup Job: wait for it.
    (cleanup,) = await _wait_for(
        lambda: _jobs(kube_app, "app.kubernetes.io/component=cleanup"), what="the cleanup Job"
    )
    (clean_container,) = cleanup.spec.template.spec.containers
    assert clean_container.command[:2] == ["modelplane", "clean"]
    assert "--partials-only" in clean_container.command


async def _none(listing: Any) -> bool:
    return not await listing


async def _model_message(app: RunningApp, model_id: str, needle: str) -> dict[str, Any] | None:
    model = await _model(app, model_id)
    return model if needle in (model["message"] or "") else None


async def test_deadline_exceeded_and_missing_claim_fail_with_their_reasons(
    kube_app: RunningApp, mongo_uri: str
) -> None:
    await _mongo_secret(kube_app, mongo_uri)
    created = await _create_pvc_model(kube_app, "tiny-org/tiny-model", claim="weights-c", size_gi=1)
    (job,) = await _wait_for(lambda: _jobs(kube_app), what="the download Job")
    await kubelet.fail_job(
        _api(kube_app),
        kube_app.resources.settings.namespace,
        job.metadata.name,
        "DeadlineExceeded",
        "Job was active longer than specified deadline",
    )
    failed = await _wait_for(
        lambda: _model_if(kube_app, created["id"], "FAILED"), what="the model to be FAILED"
    )
    assert "exceeded its deadline of 21600 s" in failed["message"]

    # A claim that does not exist and no size: created with the default size
    # (tests/test_fidelity_k8s.py), no longer FAILED.


@pytest.fixture
async def refusing_kube_app(
    tmp_path: Path,
    mongo_uri: str,
    mongo_client: Client,
    hub: RunningHub,
    kube: servers.KubeCluster,
    kube_namespace: str,
) -> AsyncIterator[RunningApp]:
    """The kubernetes runtime with a download service account name the API server refuses
    (not a DNS subdomain: 422 Invalid)."""
    settings = make_settings(
        tmp_path,
        mongo_uri,
        hf_endpoint=hub.endpoint,
        runtime="kubernetes",
        kubeconfig=kube.kubeconfig,
        namespace=kube_namespace,
        download_service_account="Not_A_Name",
    )
    async with serve_app(settings, mongo_client) as running:
        yield running


async def test_a_job_the_api_server_refuses_fails_once_with_its_words(
    refusing_kube_app: RunningApp, mongo_uri: str
) -> None:
    """A refused apply is permanent: FAILED with the API server's own message, once, and
    not applied again (before, it was retried forever while the model stayed PULLING)."""
    app = refusing_kube_app
    await _mongo_secret(app, mongo_uri)
    created = await _create_pvc_model(app, "tiny-org/tiny-model", claim="weights-r", size_gi=1)

    failed = await _wait_for(
        lambda: _model_if(app, created["id"], "FAILED"), what="the model to be FAILED"
    )

    assert "the API server refused to apply Job download-" in failed["message"], failed
    assert "(422)" in failed["message"], failed
    assert "Not_A_Name" in failed["message"], failed  # the server's own words name the value
    await asyncio.sleep(2)  # a retry would come within the queue's first backoffs
    events = app.resources.database["events"].find(
        {"resource_id": created["id"], "resource_kind": "MODEL", "phase": "FAILED"}
    )
    assert len([e async for e in events]) == 1
    assert await _jobs(app) == []
