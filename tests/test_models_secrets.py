"""Credentials on the kubernetes runtime: kept in a labelled Secret and nowhere else."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s

from controllers.runtimes.kubernetes.runtime import KubernetesRuntime
from storage.documents import Role
from testbed.hub import RunningHub
from tests.conftest import RunningApp
from tests.graphql_client import run

CANARY_TOKEN = "hf_canaryTokenDoNotLeak7h3x9"
CANARY_S3_SECRET = "s3CanarySecretDoNotLeak/K7MDENGbPxRfi"
CANARIES = (CANARY_TOKEN, CANARY_S3_SECRET)


def leaks(text: str) -> list[str]:
    found = []
    for canary in CANARIES:
        for form in (canary, base64.b64encode(canary.encode()).decode()):
            if form in text:
                found.append(form)
    return found


def gated_s3_model() -> dict[str, Any]:
    return {
        "source": {
            "url": "gated-org/gated-model",
            "accessMode": "LOCAL",
            "token": CANARY_TOKEN,
        },
        "downloadTarget": {
            "s3": {
                "endpoint": "http://127.0.0.1:9000",
                "bucket": "weights",
                "region": "eu-west-1",
                "prefix": "models",
                "accessKeyId": "AKIATESTBED",
                "secretAccessKey": CANARY_S3_SECRET,
            }
        },
    }


async def core_api(app: RunningApp) -> k8s.CoreV1Api:
    runtime = app.resources.runtime
    assert isinstance(runtime, KubernetesRuntime)
    return k8s.CoreV1Api(runtime.api)


async def test_canary_credentials_appear_only_in_the_secret(
    kube_app: RunningApp, hub: RunningHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hub.hub.grant(CANARY_TOKEN, "gated-org/gated-model")
    url = kube_app.graphql_url
    token = kube_app.token(role=Role.ADMIN, organization="org-a")
    responses: list[dict[str, Any]] = []

    created = await run(url, "CreateModel", {"input": gated_s3_model()}, token=token)
    responses.append(created)
    model = created["createModel"]
    assert model["__typename"] == "Model", model
    assert model["source"]["hasToken"] is True
    assert model["downloadTarget"]["hasSecretAccessKey"] is True
    responses.append(await run(url, "Model", {"id": model["id"]}, token=token))
    responses.append(await run(url, "Models", {"limit": 50}, token=token))
    responses.append(
        await run(url, "UpdateModel", {"id": model["id"], "input": {"label": "x"}}, token=token)
    )

    # The Secret holds both values, labelled as ours.
    core = await core_api(kube_app)
    namespace = kube_app.resources.settings.namespace
    secret = await core.read_namespaced_secret(f"{model['id']}-credentials", namespace)
    assert base64.b64decode(secret.data["hf-token"]).decode() == CANARY_TOKEN
    assert base64.b64decode(secret.data["s3-secret-access-key"]).decode() == CANARY_S3_SECRET
    assert secret.metadata.labels["app.kubernetes.io/managed-by"] == "modelplane"
    assert secret.metadata.labels["modelplane.io/owner-id"] == model["id"]
    managers = {entry.manager for entry in secret.metadata.managed_fields or []}
    assert managers == {"modelplane"}

    # ...and nothing else does: API responses, logs, every MongoDB document, every other object.
    assert leaks(json.dumps(responses)) == []
    assert leaks("\n".join(r.getMessage() for r in caplog.records)) == []
    assert leaks(caplog.text) == []
    database = kube_app.resources.database
    for name in await database.list_collection_names():
        async for document in database[name].find({}):
            assert leaks(repr(document)) == [], name
    api = kube_app.resources.runtime.api  # type: ignore[attr-defined]
    # The download Job holds the credentials only as secretKeyRefs: wait for it, then check it.
    for _ in range(100):
        if (await k8s.BatchV1Api(api).list_namespaced_job(namespace)).items:
            break
        await asyncio.sleep(0.1)
    job = (await k8s.BatchV1Api(api).list_namespaced_job(namespace)).items[0]
    others: list[Any] = []
    for listing in (
        await core.list_namespaced_secret(namespace),
        await core.list_namespaced_config_map(namespace),
        await core.list_namespaced_event(namespace),
        await core.list_namespaced_pod(namespace),
        await core.list_namespaced_service(namespace),
        await k8s.AppsV1Api(api).list_namespaced_deployment(namespace),
        await k8s.BatchV1Api(api).list_namespaced_job(namespace),
    ):
        others.extend(item for item in listing.items if item.metadata.name != secret.metadata.name)
    assert leaks(json.dumps(api.sanitize_for_serialization(others))) == []

    deleted = (await run(url, "DeleteModel", {"id": model["id"]}, token=token))["deleteModel"]
    assert deleted["removed"] == [
        {"kind": "Job", "name": job.metadata.name},
        {"kind": "Secret", "name": f"{model['id']}-credentials"},
    ]
    remaining = await core.list_namespaced_secret(
        namespace, label_selector="app.kubernetes.io/managed-by=modelplane"
    )
    assert remaining.items == []
    assert leaks(json.dumps(deleted)) == []


async def test_refused_model_leaves_no_secret(kube_app: RunningApp) -> None:
    value = gated_s3_model()
    value["resources"] = {"memory": "64GB"}
    token = kube_app.token(role=Role.EDITOR, organization="org-a")
    result = (await run(kube_app.graphql_url, "CreateModel", {"input": value}, token=token))[
        "createModel"
    ]
    assert result["__typename"] == "ValidationError"
    assert result["field"] == "resources.memory"
    core = await core_api(kube_app)
    secrets = await core.list_namespaced_secret(
        kube_app.resources.settings.namespace,
        label_selector="app.kubernetes.io/managed-by=modelplane",
    )
    assert secrets.items == []
    assert await kube_app.resources.database["models"].count_documents({}) == 0


async def test_pvc_target_is_accepted_on_kubernetes(kube_app: RunningApp) -> None:
    value = {
        "source": {"url": "tiny-org/tiny-model", "accessMode": "LOCAL"},
        "downloadTarget": {
            "pvc": {
                "claimName": "model-weights",
                "subPath": "tiny",
                "storageClass": "standard",
                "sizeGi": 20,
            }
        },
    }
    token = kube_app.token(role=Role.EDITOR, organization="org-a")
    model = (await run(kube_app.graphql_url, "CreateModel", {"input": value}, token=token))[
        "createModel"
    ]
    assert model["downloadTarget"] == {
        "__typename": "PvcTarget",
        "claimName": "model-weights",
        "subPath": "tiny",
        "storageClass": "standard",
        "sizeGi": 20,
    }
    assert model["source"]["hasToken"] is False
