"""A Kubernetes apply refused for good: FAILED with the API server's words, written once, and
recovered by the user's retry once the cause is gone (issue 16, "typed controller errors").

The app runs on the whole control plane (``tests/cluster_fixtures.py``: RBAC on, kwok runs the
pods) as a service account of its own, whose Role a test narrows and widens again:

* 403: the Role lets it read Deployments but not write them;
* 422: a ValidatingAdmissionPolicy denies every Deployment in the namespace.

"Written once" is checked in the database: one FAILED event in the log, and the document's
revision unchanged after the controller was nudged (an event, a resync) to look again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml
from kubernetes_asyncio import client as k8s

from controllers.runtimes.kubernetes.inference import KubernetesInferenceExecutor
from storage.client import Client
from testbed import servers
from testbed.hub import RunningHub
from tests.conftest import RunningApp, make_settings, serve_app
from tests.graphql_client import run
from tests.test_inference_kubernetes import editor, ready_model, start, wait_inference

ACCOUNT = "modelplane-restricted"
READ = ["get", "list", "watch"]
WRITE = ["create", "update", "patch", "delete"]


def _role(namespace: str, *, write_deployments: bool, autoscalers: bool = True) -> Any:
    """Everything the service does in its namespace, Deployments writable or not, the
    ``autoscaling`` group (HPAs) granted or not."""
    groups = ["", "batch", "monitoring.coreos.com"] + (["autoscaling"] if autoscalers else [])
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": ACCOUNT, "namespace": namespace},
        "rules": [
            {
                "apiGroups": groups,
                "resources": ["*"],
                "verbs": ["*"],
            },
            {
                "apiGroups": ["apps"],
                "resources": ["deployments", "replicasets"],
                "verbs": READ + (WRITE if write_deployments else []),
            },
        ],
    }


async def _set_role(
    api: k8s.ApiClient, namespace: str, *, write_deployments: bool, autoscalers: bool = True
) -> None:
    rbac = k8s.RbacAuthorizationV1Api(api)
    body = _role(namespace, write_deployments=write_deployments, autoscalers=autoscalers)
    try:
        await rbac.replace_namespaced_role(ACCOUNT, namespace, body)
    except k8s.ApiException as exc:
        if exc.status != 404:
            raise
        await rbac.create_namespaced_role(namespace, body)
    await _until_allowed(api, namespace, allowed=write_deployments)


async def _until_allowed(api: k8s.ApiClient, namespace: str, *, allowed: bool) -> None:
    """Until the authorizer answers as the Role now says (it follows Roles by watching)."""
    review: Any = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": f"system:serviceaccount:{namespace}:{ACCOUNT}",
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
            "resourceAttributes": {
                "namespace": namespace,
                "verb": "patch",
                "group": "apps",
                "resource": "deployments",
            },
        },
    }
    deadline = time.monotonic() + 30
    while True:
        answer = await k8s.AuthorizationV1Api(api).create_subject_access_review(review)
        if bool(answer.status.allowed) is allowed:
            return
        assert time.monotonic() < deadline, "the RBAC change did not take effect"
        await asyncio.sleep(0.1)


async def _make_account(
    api: k8s.ApiClient, namespace: str, *, write_deployments: bool, autoscalers: bool = True
) -> None:
    """The service account, its Role and the binding."""
    core, rbac = k8s.CoreV1Api(api), k8s.RbacAuthorizationV1Api(api)
    account: Any = {"metadata": {"name": ACCOUNT}}
    await core.create_namespaced_service_account(namespace, account)
    binding: Any = {
        "metadata": {"name": ACCOUNT},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ACCOUNT},
        "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": namespace}],
    }
    await rbac.create_namespaced_role_binding(namespace, binding)
    await _set_role(api, namespace, write_deployments=write_deployments, autoscalers=autoscalers)


async def _account_kubeconfig(plane: servers.KubeControlPlane, namespace: str, path: Path) -> Path:
    """A kubeconfig with a token of the service account."""
    reply = await asyncio.to_thread(
        plane.request,
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{ACCOUNT}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    )
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "plane",
                "cluster": {"server": plane.server, "certificate-authority": str(plane.ca)},
            }
        ],
        "users": [{"name": ACCOUNT, "user": {"token": reply["status"]["token"]}}],
        "contexts": [{"name": "sa", "context": {"cluster": "plane", "user": ACCOUNT}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@asynccontextmanager
async def restricted_app(
    tmp_path: Path,
    mongo_uri: str,
    mongo_client: Client,
    hub: RunningHub,
    plane: servers.KubeControlPlane,
    namespace: str,
) -> AsyncIterator[RunningApp]:
    kubeconfig = await _account_kubeconfig(plane, namespace, tmp_path / "kubeconfig")
    settings = make_settings(
        tmp_path,
        mongo_uri,
        hf_endpoint=hub.endpoint,
        runtime="kubernetes",
        kubeconfig=kubeconfig,
        namespace=namespace,
    )
    async with serve_app(settings, mongo_client) as running:
        yield running


async def _failed_once(app: RunningApp, inference_id: str) -> dict[str, Any]:
    """The FAILED inference; asserts one FAILED event, and no write after a nudge."""
    failed = await wait_inference(app, inference_id, {"FAILED", "RUNNING"})
    database = app.resources.database
    before = await database["inferences"].find_one({"_id": inference_id})
    controller = app.resources.inference_controller
    assert controller is not None
    controller.notify(inference_id)  # as a watch event would
    controller.resync_soon()  # as a trimmed event log would
    await asyncio.sleep(3)
    await controller.wait_idle()
    after = await database["inferences"].find_one({"_id": inference_id})
    assert before is not None
    assert after is not None
    assert after["revision"] == before["revision"], "the status was written again"
    events = [
        e async for e in database["events"].find({"resource_id": inference_id, "phase": "FAILED"})
    ]
    print(f"FAILED events: {len(events)}; revision {after['revision']}")  # noqa: T201  the record
    assert len(events) == 1, events
    return failed


async def _retry(app: RunningApp, model_id: str, inference_id: str) -> dict[str, Any]:
    """The user's retry: stop, then start again (a new inference once the stop completed,
    issue 17; the same one re-enabled if it was still being retired)."""
    token = editor(app)
    await run(app.graphql_url, "StopInference", {"modelId": model_id}, token=token)
    await wait_inference(app, inference_id, {"STOPPED"})
    restarted = await start(app, model_id)
    return await wait_inference(app, restarted["id"], {"RUNNING", "FAILED"})


async def test_apply_forbidden_by_rbac_fails_once_and_recovers_after_the_grant(
    tmp_path: Path,
    mongo_uri: str,
    mongo_client: Client,
    hub: RunningHub,
    kube_control_plane: servers.KubeControlPlane,
    control_plane_api: k8s.ApiClient,
    gpu_namespace: str,
) -> None:
    api, ns = control_plane_api, gpu_namespace
    await _make_account(api, ns, write_deployments=False)
    async with restricted_app(
        tmp_path, mongo_uri, mongo_client, hub, kube_control_plane, ns
    ) as app:
        model = await ready_model(app)
        inference = await start(app, model.id)
        failed = await _failed_once(app, inference["id"])
        assert failed["phase"] == "FAILED", failed
        assert failed["reason"] == "Forbidden", failed
        # The API server's own words reach the user.
        assert "403" in failed["message"]
        assert 'cannot patch resource "deployments"' in failed["message"], failed
        assert f"system:serviceaccount:{ns}:{ACCOUNT}" in failed["message"]

        await _set_role(api, ns, write_deployments=True)
        running = await _retry(app, model.id, inference["id"])
        assert running["phase"] == "RUNNING", running


async def test_a_role_without_autoscalers_still_serves_inferences_without_autoscaling(
    tmp_path: Path,
    mongo_uri: str,
    mongo_client: Client,
    hub: RunningHub,
    kube_control_plane: servers.KubeControlPlane,
    control_plane_api: k8s.ApiClient,
    gpu_namespace: str,
) -> None:
    """A Role from before autoscaler status was watched (no ``autoscaling`` group): the HPA
    cache is refused for good, and inferences that need no HPA must not wait for it."""
    api, ns = control_plane_api, gpu_namespace
    await _make_account(api, ns, write_deployments=True, autoscalers=False)
    async with restricted_app(
        tmp_path, mongo_uri, mongo_client, hub, kube_control_plane, ns
    ) as app:
        model = await ready_model(app)
        inference = await start(app, model.id)
        running = await wait_inference(app, inference["id"], {"RUNNING", "FAILED"}, timeout=90)
        assert running["phase"] == "RUNNING", running
        controller = app.resources.inference_controller
        assert controller is not None
        executor = controller.executor
        assert isinstance(executor, KubernetesInferenceExecutor)
        assert executor.hpas.refused is not None, "the HPA list was not refused"
        assert "403" in executor.hpas.refused


def _policy(name: str) -> Any:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["apps"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["deployments"],
                    }
                ]
            },
            "validations": [
                {"expression": "false", "message": "deployments are frozen in this namespace"}
            ],
        },
    }


def _binding(name: str, namespace: str) -> Any:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            },
        },
    }


async def _until_denied(api: k8s.ApiClient, namespace: str, *, denied: bool) -> None:
    """Until a dry-run Deployment is refused (or accepted) as the policy now says."""
    body: Any = {
        "metadata": {"name": "probe"},
        "spec": {
            "selector": {"matchLabels": {"app": "probe"}},
            "template": {
                "metadata": {"labels": {"app": "probe"}},
                "spec": {"containers": [{"name": "c", "image": "probe:1"}]},
            },
        },
    }
    deadline = time.monotonic() + 30
    while True:
        try:
            await k8s.AppsV1Api(api).create_namespaced_deployment(namespace, body, dry_run="All")
            refused = False
        except k8s.ApiException as exc:
            if exc.status != 422:
                raise
            refused = True
        if refused is denied:
            return
        assert time.monotonic() < deadline, "the admission policy change did not take effect"
        await asyncio.sleep(0.2)


async def test_apply_denied_by_admission_fails_once_and_recovers_after_the_policy_goes(
    tmp_path: Path,
    mongo_uri: str,
    mongo_client: Client,
    hub: RunningHub,
    kube_control_plane: servers.KubeControlPlane,
    control_plane_api: k8s.ApiClient,
    gpu_namespace: str,
) -> None:
    api, ns = control_plane_api, gpu_namespace
    admission = k8s.AdmissionregistrationV1Api(api)
    name = f"freeze-{ns}"
    await _make_account(api, ns, write_deployments=True)
    await admission.create_validating_admission_policy(_policy(name))
    await admission.create_validating_admission_policy_binding(_binding(name, ns))
    try:
        await _until_denied(api, ns, denied=True)
        async with restricted_app(
            tmp_path, mongo_uri, mongo_client, hub, kube_control_plane, ns
        ) as app:
            model = await ready_model(app)
            inference = await start(app, model.id)
            failed = await _failed_once(app, inference["id"])
            assert failed["phase"] == "FAILED", failed
            assert failed["reason"] == "AdmissionDenied", failed
            assert "422" in failed["message"]
            assert "deployments are frozen in this namespace" in failed["message"], failed

            await admission.delete_validating_admission_policy_binding(name)
            await _until_denied(api, ns, denied=False)
            running = await _retry(app, model.id, inference["id"])
            assert running["phase"] == "RUNNING", running
    finally:
        for delete in (
            admission.delete_validating_admission_policy_binding,
            admission.delete_validating_admission_policy,
        ):
            try:
                await delete(name)
            except k8s.ApiException as exc:
                if exc.status != 404:
                    raise


def _broken_webhook(name: str, namespace: str) -> Any:
    """A validating webhook nobody serves: the API server answers 500 for every Deployment."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "deployments.unreachable.test",
                "clientConfig": {"url": "https://127.0.0.1:1/validate"},
                "rules": [
                    {
                        "apiGroups": ["apps"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["deployments"],
                    }
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 1,
            }
        ],
    }


async def test_apply_failing_with_500_keeps_the_phase_says_retrying_and_recovers_alone(
    tmp_path: Path,
    mongo_uri: str,
    mongo_client: Client,
    hub: RunningHub,
    kube_control_plane: servers.KubeControlPlane,
    control_plane_api: k8s.ApiClient,
    gpu_namespace: str,
) -> None:
    """A temporary refusal (the API server's 500: a webhook it cannot call) keeps the phase,
    says in the message that it retries and when, and needs no user action once it passes."""
    api, ns = control_plane_api, gpu_namespace
    admission = k8s.AdmissionregistrationV1Api(api)
    name = f"unreachable-{ns}"
    await _make_account(api, ns, write_deployments=True)
    await admission.create_validating_webhook_configuration(_broken_webhook(name, ns))
    try:
        async with restricted_app(
            tmp_path, mongo_uri, mongo_client, hub, kube_control_plane, ns
        ) as app:
            model = await ready_model(app)
            inference = await start(app, model.id)
            deadline = time.monotonic() + 30
            while True:
                seen = await wait_inference(app, inference["id"], {"PENDING", "RUNNING", "FAILED"})
                if seen["reason"] == "Retrying":
                    break
                assert time.monotonic() < deadline, seen
                await asyncio.sleep(0.1)
            assert seen["phase"] == "PENDING", seen
            assert "answered 500" in seen["message"], seen
            assert seen["message"].endswith(("; retrying", " s")), seen  # when it tries again

            await admission.delete_validating_webhook_configuration(name)
            began = time.monotonic()
            running = await wait_inference(app, inference["id"], {"RUNNING", "FAILED"}, timeout=90)
            print(f"RUNNING {time.monotonic() - began:.1f} s after the webhook went")  # noqa: T201
            assert running["phase"] == "RUNNING", running
            history = [entry["phase"] for entry in running["phaseHistory"]]
            assert "FAILED" not in history, history
    finally:
        try:
            await admission.delete_validating_webhook_configuration(name)
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise
