"""What teams coming from the four REST model APIs rely on (docs/coming-from-rest.md).

Two halves: every GraphQL example in the guide parses and validates against the committed
schema (so the guide cannot drift from the contract), and the gaps the guide's table closed
hold against a running modelplane: the organisation API addresses a model by its name
(``GET /v1/organization/models/{name}`` -> ``models(filter: {name})``), and the playground API
says why a remote model is Ready.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes_asyncio import client as k8s

from graphql import OperationDefinitionNode, build_schema, parse, validate
from storage.client import Client
from storage.documents import Role
from testbed.hub import RunningHub
from testbed.openai_upstream import FakeUpstream
from tests import helpers
from tests.conftest import RunningApp
from tests.graphql_client import execute, run
from tests.helpers import weights_area
from tests.operations import operation
from tests.test_gateway import serve_upstream
from tests.test_inference_kubernetes import cluster_app, ready_model, start, wait_inference
from tests.test_inference_kubernetes import editor as kube_editor
from tests.test_inference_local import editor as local_editor
from tests.test_inference_local import fake_engines
from tests.test_inference_local import ready_model as local_ready_model
from tests.test_inference_local import start as local_start
from tests.test_inference_replicas import two_replicas

__all__ = ["cluster_app", "fake_engines"]  # the fixtures, for pytest to find here

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "coming-from-rest.md"
SCHEMA = ROOT / "graphql" / "schema.graphql"
_BLOCK = re.compile(r"```graphql( planned)?\n(.*?)```", re.DOTALL)


def guide_examples() -> list[tuple[str, str, bool]]:
    """(operation name, text, planned) of every ```graphql block of the guide; a block fenced
    ```graphql planned shows the shape of a contract change not merged yet."""
    found: list[tuple[str, str, bool]] = []
    for planned, text in _BLOCK.findall(GUIDE.read_text()):
        definition = parse(text).definitions[0]
        assert isinstance(definition, OperationDefinitionNode)
        assert definition.name is not None, f"an example has no operation name:\n{text}"
        found.append((definition.name.value, text, bool(planned)))
    return found


def test_the_guide_has_an_example_for_each_rest_operation() -> None:
    names = [name for name, _, _ in guide_examples()]
    assert len(names) >= 20
    assert len(names) == len(set(names)), "example operation names repeat"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        pytest.param(
            name,
            text,
            marks=pytest.mark.xfail(
                strict=True,
                reason="planned shape: once it validates, drop 'planned' from its fence",
            )
            if planned
            else (),
        )
        for name, text, planned in guide_examples()
    ],
)
def test_each_guide_example_is_valid_against_the_schema(name: str, text: str) -> None:
    schema = build_schema(SCHEMA.read_text())
    errors = validate(schema, parse(text))
    assert errors == [], f"{name}: {[e.message for e in errors]}"


def remote(name: str, **overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "source": {"url": "https://api.deepseek.com/v1", "accessMode": "REMOTE_API"},
        "displayName": f"Remote {name}",
        "name": name,
    }
    value.update(overrides)
    return value


async def test_a_model_is_found_by_its_exact_name(running_app: RunningApp) -> None:
    """The organisation API's id is the model's name; ``filter: {name}`` is an exact match
    (not a substring like ``search``), live models only unless ``includeDeleted``."""
    url = running_app.graphql_url
    editor = running_app.token(role=Role.EDITOR, organization="org-a")
    created = {}
    for name in ("llama-7b", "llama-7b-chat"):
        data = await run(url, "CreateModel", {"input": remote(name)}, token=editor)
        created[name] = data["createModel"]
    await run(
        url,
        "CreateModel",
        {"input": remote("llama-7b")},
        token=running_app.token(role=Role.EDITOR, organization="org-b"),
    )

    async def names(token: str, **filter_: Any) -> list[tuple[str, str]]:
        data = await run(url, "Models", {"filter": filter_, "limit": 50}, token=token)
        return [(m["name"], m["id"]) for m in data["models"]["items"]]

    assert await names(editor, name="llama-7b") == [("llama-7b", created["llama-7b"]["id"])]
    assert await names(editor, name="llama-7") == []
    assert await names(editor, search="llama-7b") != await names(editor, name="llama-7b")

    await run(url, "DeleteModel", {"id": created["llama-7b"]["id"]}, token=editor)
    assert await names(editor, name="llama-7b") == []
    again = await run(url, "CreateModel", {"input": remote("llama-7b")}, token=editor)
    admin = running_app.token(role=Role.ADMIN, organization="org-a")
    assert await names(admin, name="llama-7b") == [("llama-7b", again["createModel"]["id"])]
    assert sorted(await names(admin, name="llama-7b", includeDeleted=True)) == sorted(
        [("llama-7b", again["createModel"]["id"]), ("llama-7b", created["llama-7b"]["id"])]
    )

    body = await execute(url, operation("Models"), {"filter": {"name": "Llama 7B"}}, token=editor)
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "filter.name"}
    assert "DNS-1123" in body["errors"][0]["message"]


async def test_a_remote_model_says_why_it_is_ready(running_app: RunningApp) -> None:
    """The playground API answers a remote model with ``phase: Ready`` and a message saying
    nothing is downloaded; modelplane's message said nothing."""
    editor = running_app.token(role=Role.EDITOR, organization="org-a")
    data = await run(
        running_app.graphql_url, "CreateModel", {"input": remote("deepseek")}, token=editor
    )
    model = data["createModel"]
    assert model["phase"] == "READY"
    assert model["message"] == "ready: a REMOTE_API model is proxied, nothing is downloaded"


async def test_a_downloaded_model_says_so_when_ready(running_app: RunningApp) -> None:
    """The playground API's Ready model says "Download completed successfully"; modelplane's
    said nothing once its weights were in place."""
    editor = running_app.token(role=Role.EDITOR, organization="org-a")
    root = weights_area(running_app.resources.settings.local_roots)
    value = {
        "source": {"url": "tiny-org/tiny-model", "accessMode": "LOCAL"},
        "downloadTarget": {"local": {"localPath": str(root / "tiny")}},
    }
    data = await run(running_app.graphql_url, "CreateModel", {"input": value}, token=editor)
    model_id = data["createModel"]["id"]
    deadline = time.monotonic() + 60
    while True:
        model = (await run(running_app.graphql_url, "Model", {"id": model_id}, token=editor))[
            "model"
        ]
        if model["phase"] in {"READY", "FAILED"}:
            break
        assert time.monotonic() < deadline, model
        await asyncio.sleep(0.1)
    assert model["phase"] == "READY", model
    assert model["message"] == "downloaded and verified"


async def test_deleting_a_model_deletes_its_inference(running_app: RunningApp) -> None:
    """Both REST APIs delete a model's deployment with the model (the organisation API's model
    *is* its deployment): afterwards it is in no listing. modelplane left the inference
    listed, FAILED with "the model was deleted", for ever. Now deleteModel marks the
    inference deleted in the same request and records it; the leader's controller removes
    whatever runs, and the gateway stops routing the name."""
    async with serve_upstream(FakeUpstream()) as upstream:
        url = running_app.graphql_url
        editor = running_app.token(role=Role.EDITOR, organization="org-a")
        created = await run(
            url,
            "CreateModel",
            {
                "input": remote(
                    "remote-chat",
                    source={
                        "url": upstream.endpoint("org-a"),
                        "accessMode": "REMOTE_API",
                        "token": "sk-1",
                    },
                )
            },
            token=editor,
        )
        model = created["createModel"]
        started = await run(url, "StartInference", {"modelId": model["id"]}, token=editor)
        inference_id = started["startInference"]["inference"]["id"]
        running = await helpers.wait_inference(url, editor, inference_id, {"RUNNING", "FAILED"})
        assert running["phase"] == "RUNNING", running

        deleted = await run(url, "DeleteModel", {"id": model["id"]}, token=editor)
        assert deleted["deleteModel"]["__typename"] == "DeletedModel"

        listed = await run(url, "Inferences", {"limit": 50}, token=editor)
        assert listed["inferences"]["total"] == 0, listed
        stored = await running_app.resources.database["inferences"].find_one({"_id": inference_id})
        assert stored is not None
        assert (stored["is_deleted"], stored["enabled"]) == (True, False)
        assert (stored["phase"], stored["reason"]) == ("STOPPED", "ModelDeleted")
        assert stored["phase_history"][-1]["phase"] == "STOPPED"

        chat = {"model": "remote-chat", "messages": [{"role": "user", "content": "hi"}]}
        deadline = time.monotonic() + 10
        answer: httpx.Response | None = None
        async with httpx.AsyncClient(timeout=10) as client:
            while time.monotonic() < deadline:  # the gateway caches a route for 2 s
                answer = await client.post(
                    f"{running_app.base_url}/v1/chat/completions",
                    json=chat,
                    headers={"Authorization": f"Bearer {editor}"},
                )
                if answer.status_code != 200:
                    break
                await asyncio.sleep(0.2)
        assert answer is not None
        assert answer.status_code == 404, answer.text


async def test_deleting_a_model_removes_its_deployment_from_the_cluster(
    cluster_app: RunningApp, control_plane_api: k8s.ApiClient, gpu_namespace: str
) -> None:
    """The organisation API's ``DELETE /models/{id}`` on the kubernetes runtime: the running
    Deployment, its pods, Service and ConfigMaps go, and the inference is in no listing."""
    model = await ready_model(cluster_app)
    inference = await start(cluster_app, model.id)
    running = await wait_inference(cluster_app, inference["id"], {"RUNNING", "FAILED"})
    assert running["phase"] == "RUNNING", running

    url, token = cluster_app.graphql_url, kube_editor(cluster_app)
    deleted = await run(url, "DeleteModel", {"id": model.id}, token=token)
    assert deleted["deleteModel"]["__typename"] == "DeletedModel"
    assert (await run(url, "Inferences", {"limit": 50}, token=token))["inferences"]["total"] == 0

    apps, core = k8s.AppsV1Api(control_plane_api), k8s.CoreV1Api(control_plane_api)
    selector = f"modelplane.io/owner-id in ({inference['id']},{model.id})"
    listings = (
        apps.list_namespaced_deployment,
        core.list_namespaced_pod,
        core.list_namespaced_service,
        core.list_namespaced_config_map,
        core.list_namespaced_secret,
        core.list_namespaced_persistent_volume_claim,
    )
    deadline = time.monotonic() + 60
    while True:
        left = [
            f"{item.kind or listing.__name__}/{item.metadata.name}"
            for listing in listings
            for item in (await listing(gpu_namespace, label_selector=selector)).items
        ]
        if not left:
            break
        assert time.monotonic() < deadline, f"left behind: {left}"
        await asyncio.sleep(0.2)


def pvc_model(claim: str, storage_class: str) -> dict[str, Any]:
    return {
        "name": claim,
        "source": {"url": "tiny-org/tiny-model", "accessMode": "LOCAL"},
        "downloadTarget": {
            "pvc": {"claimName": claim, "subPath": "models", "storageClass": storage_class}
        },
    }


async def test_a_storage_class_the_cluster_lacks_is_refused_up_front(
    cluster_app: RunningApp, control_plane_api: k8s.ApiClient, gpu_namespace: str
) -> None:
    """The organisation API checks storage class availability before deploying; a claim
    naming a class the cluster does not have is never bound, so the download waited for
    ever. Now createModel refuses it on the field, writing nothing; a class that exists is
    taken."""
    url, token = cluster_app.graphql_url, kube_editor(cluster_app)
    database = cluster_app.resources.database
    refused = await run(
        url, "CreateModel", {"input": pvc_model("w-none", "no-such-class")}, token=token
    )
    error = refused["createModel"]
    assert error["__typename"] == "ValidationError", error
    assert error["field"] == "downloadTarget.pvc.storageClass"
    assert "no-such-class" in error["errorMessage"]
    assert await database["models"].count_documents({}) == 0
    core = k8s.CoreV1Api(control_plane_api)
    claims = await core.list_namespaced_persistent_volume_claim(gpu_namespace)
    assert claims.items == []

    storage = k8s.StorageV1Api(control_plane_api)
    name = f"fast-{uuid.uuid4().hex[:6]}"
    await storage.create_storage_class(
        k8s.V1StorageClass(metadata=k8s.V1ObjectMeta(name=name), provisioner="example.com/none")
    )
    try:
        taken = await run(url, "CreateModel", {"input": pvc_model("w-fast", name)}, token=token)
        model = taken["createModel"]
        assert model["__typename"] == "Model", model
        assert model["downloadTarget"]["storageClass"] == name
        await run(url, "DeleteModel", {"id": model["id"]}, token=token)
    finally:
        await storage.delete_storage_class(name)


async def test_deleting_a_model_on_the_follower_stops_its_engine_on_the_leader(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub, fake_engines: Path
) -> None:
    """Two replicas: deleteModel lands on the one that runs no controllers; the leader hears
    the inference's DELETED event and ends the engine process it supervises."""
    del fake_engines
    async with two_replicas(tmp_path, mongo_uri, mongo_client, hub) as (leader, follower):
        model = await local_ready_model(leader)
        started = await local_start(follower, model["id"])
        assert started["__typename"] == "InferencePayload", started
        running = await helpers.wait_inference(
            follower.graphql_url,
            local_editor(follower),
            started["inference"]["id"],
            {"RUNNING"},
            timeout=30,
        )
        endpoint = running["endpoint"]
        async with httpx.AsyncClient(timeout=2) as client:
            assert (await client.get(f"{endpoint}/models")).status_code == 200
            began = time.monotonic()
            deleted = await run(
                follower.graphql_url,
                "DeleteModel",
                {"id": model["id"]},
                token=local_editor(follower),
            )
            assert deleted["deleteModel"]["__typename"] == "DeletedModel"
            while True:
                try:
                    await client.get(f"{endpoint}/models")
                except httpx.TransportError:
                    # refused, or (stopped mid-request) the connection closed without an answer
                    break
                assert time.monotonic() - began < 15, "the engine still answers"
                await asyncio.sleep(0.05)
        ended = time.monotonic() - began
        print(f"deleteModel on the follower -> the engine stopped answering: {ended:.3f} s")  # noqa: T201
        assert ended < 5
