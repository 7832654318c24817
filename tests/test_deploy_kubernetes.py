"""One-call deploys, hosted Ollama, CUSTOM vLLM commands and LiteLLM routes on Kubernetes.

Against the real control plane with kwok's fake GPU nodes (``tests/cluster_fixtures.py``):
``deployModel`` writes the model, its Secret and its inference, and the controller creates the
Deployment and Service; a refused request leaves no document and no object in the namespace.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client as k8s

from storage.documents import AccessMode, ModelDocument, ModelPhase, ModelSource, new_id
from tests.conftest import RunningApp
from tests.graphql_client import run
from tests.test_inference_kubernetes import (
    ORG,
    cluster_app,
    editor,
    ready_model,
    start,
    wait_inference,
)

__all__ = ["cluster_app"]

HUB_TOKEN = "hf_deploySecretToken0123456789abcdef"
VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"


def vllm_command(served: str) -> list[str]:
    return [
        "python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--served-model-name",
        served,
        "--model",
        "meta-llama/Llama-2-7b-chat-hf",
    ]


async def deploy(
    app: RunningApp, value: dict[str, Any], *, dry_run: bool = False
) -> dict[str, Any]:
    data = await run(
        app.graphql_url,
        "DeployModel",
        {"input": value, "dryRun": dry_run},
        token=editor(app),
    )
    result: dict[str, Any] = data["deployModel"]
    return result


async def wait_objects(
    apps: k8s.AppsV1Api, core: k8s.CoreV1Api, ns: str, name: str
) -> tuple[Any, Any]:
    deadline = time.monotonic() + 60
    while True:
        found = await apps.list_namespaced_deployment(ns, field_selector=f"metadata.name={name}")
        services = await core.list_namespaced_service(ns, field_selector=f"metadata.name={name}")
        if found.items and services.items:
            return found.items[0], services.items[0]
        assert time.monotonic() < deadline, f"{name}: no Deployment and Service after 60 s"
        await asyncio.sleep(0.2)


async def left_behind(app: RunningApp, api: k8s.ApiClient, ns: str) -> dict[str, list[str]]:
    """Documents and namespace objects that exist (ours or not)."""
    database = app.resources.database
    apps, core = k8s.AppsV1Api(api), k8s.CoreV1Api(api)
    return {
        "models": [d["name"] async for d in database["models"].find({})],
        "inferences": [d["_id"] async for d in database["inferences"].find({})],
        "deployments": [d.metadata.name for d in (await apps.list_namespaced_deployment(ns)).items],
        "services": [s.metadata.name for s in (await core.list_namespaced_service(ns)).items],
        "secrets": [
            s.metadata.name
            for s in (await core.list_namespaced_secret(ns)).items
            if s.metadata.name.startswith("model-")
        ],
        "configmaps": [
            c.metadata.name
            for c in (await core.list_namespaced_config_map(ns)).items
            if c.metadata.name != "kube-root-ca.crt"
        ],
        "pvcs": [
            p.metadata.name for p in (await core.list_namespaced_persistent_volume_claim(ns)).items
        ],
    }


NOTHING: dict[str, list[str]] = {
    "models": [],
    "inferences": [],
    "deployments": [],
    "services": [],
    "secrets": [],
    "configmaps": [],
    "pvcs": [],
}


async def test_deploy_model_runs_a_vllm_command_that_fetches_its_model_with_the_token_by_reference(
    cluster_app: RunningApp,
    control_plane_api: k8s.ApiClient,
    gpu_namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    name = f"llama-{uuid.uuid4().hex[:5]}"
    result = await deploy(
        cluster_app,
        {
            "name": name,
            "displayName": "Llama 2 7B Chat",
            "tags": ["llama", "chat"],
            "hubToken": HUB_TOKEN,
            "inference": {
                "image": VLLM_IMAGE,
                "command": vllm_command(name),
                "resources": {"cpu": "2", "memory": "16Gi", "gpu": 1},
            },
        },
    )
    assert result["__typename"] == "DeployPayload", result
    assert HUB_TOKEN not in json.dumps(result)
    model, inference = result["model"], result["inference"]
    assert model["source"]["accessMode"] == "ENGINE"
    assert model["source"]["url"] == "meta-llama/Llama-2-7b-chat-hf"
    assert model["source"]["hasToken"] is True
    assert model["phase"] == "READY"
    assert model["downloadTarget"] is None
    assert inference["spec"]["engine"] == "CUSTOM"

    running = await wait_inference(cluster_app, inference["id"], {"RUNNING", "FAILED"})
    assert running["phase"] == "RUNNING", running
    apps, core = k8s.AppsV1Api(control_plane_api), k8s.CoreV1Api(control_plane_api)
    deployment, service = await wait_objects(apps, core, gpu_namespace, inference["name"])
    container = deployment.spec.template.spec.containers[0]
    assert container.image == VLLM_IMAGE
    assert container.command == vllm_command(name)
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    env = {var.name: var for var in container.env}
    assert "HF_HUB_OFFLINE" not in env
    secret_ref = env["HF_TOKEN"].value_from.secret_key_ref
    assert env["HF_TOKEN"].value is None
    assert service.spec.ports[0].port == 8000
    secret = await core.read_namespaced_secret(secret_ref.name, gpu_namespace)
    assert base64.b64decode(secret.data[secret_ref.key]).decode() == HUB_TOKEN
    raw = json.dumps(control_plane_api.sanitize_for_serialization(deployment))
    assert HUB_TOKEN not in raw
    assert deployment.spec.template.spec.volumes is None or all(
        v.host_path is None and v.persistent_volume_claim is None
        for v in deployment.spec.template.spec.volumes
    )
    weights = await cluster_app.resources.database["weights"].count_documents({})
    assert weights == 0  # nothing downloaded
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert HUB_TOKEN not in logged

    deleted = await run(
        cluster_app.graphql_url, "DeleteModel", {"id": model["id"]}, token=editor(cluster_app)
    )
    assert deleted["deleteModel"]["__typename"] == "DeletedModel", deleted
    deadline = time.monotonic() + 60
    while True:
        found = await left_behind(cluster_app, control_plane_api, gpu_namespace)
        if found["deployments"] == found["services"] == found["secrets"] == []:
            break
        assert time.monotonic() < deadline, f"left after deleteModel: {found}"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize(
    ("inference", "field", "words"),
    [
        (
            {"image": VLLM_IMAGE, "command": vllm_command("wrong-name")},
            "input.inference.command",
            "'wrong-name' must match the model name",
        ),
        (
            {"image": VLLM_IMAGE, "args": ["--model", "x/y"]},
            "input.inference.args",
            "--served-model-name",
        ),
        (
            {"engine": "OLLAMA", "ollamaModel": "smollm2:135m; rm -rf /"},
            "input.inference.ollamaModel",
            "Ollama model reference",
        ),
        ({"command": ["serve"]}, "input.inference.image", "CUSTOM needs an image"),
        (
            {"image": "x/y:1", "resources": {"memory": "lots"}},
            "input.inference.resources.memory",
            "",
        ),
    ],
)
async def test_refused_deploys_leave_nothing_behind(
    cluster_app: RunningApp,
    control_plane_api: k8s.ApiClient,
    gpu_namespace: str,
    inference: dict[str, Any],
    field: str,
    words: str,
) -> None:
    value = {"name": "llama-7b", "hubToken": HUB_TOKEN, "inference": inference}
    for dry_run in (True, False):
        refusal = await deploy(cluster_app, value, dry_run=dry_run)
        assert refusal["__typename"] == "ValidationError", refusal
        assert refusal["field"] == field, refusal
        assert words in refusal["errorMessage"]
    assert await left_behind(cluster_app, control_plane_api, gpu_namespace) == NOTHING


async def test_a_taken_name_is_a_conflict_and_a_dry_run_writes_nothing(
    cluster_app: RunningApp, control_plane_api: k8s.ApiClient, gpu_namespace: str
) -> None:
    value = {
        "name": "taken",
        "hubToken": HUB_TOKEN,
        "inference": {"image": VLLM_IMAGE, "command": vllm_command("taken")},
    }
    planned = await deploy(cluster_app, value, dry_run=True)
    assert planned["__typename"] == "DeployPayload", planned
    assert planned["dryRun"] is True
    kinds = [doc.split("kind: ", 1)[1].split("\n", 1)[0] for doc in planned["manifests"]]
    assert kinds[:2] == ["Deployment", "Service"]
    assert "secretKeyRef" in planned["manifests"][0]
    assert HUB_TOKEN not in json.dumps(planned)
    assert await left_behind(cluster_app, control_plane_api, gpu_namespace) == NOTHING

    first = await deploy(cluster_app, value)
    assert first["__typename"] == "DeployPayload", first
    before = await left_behind(cluster_app, control_plane_api, gpu_namespace)
    second = await deploy(cluster_app, value)
    assert second["__typename"] == "ConflictError", second
    assert second["conflictField"] == "input.name"
    after = await left_behind(cluster_app, control_plane_api, gpu_namespace)
    assert after["models"] == before["models"] == ["taken"]
    assert after["secrets"] == before["secrets"]
    assert len(after["inferences"]) == 1


async def test_hosted_ollama_pulls_its_model_itself_on_ollamas_port(
    cluster_app: RunningApp, control_plane_api: k8s.ApiClient, gpu_namespace: str
) -> None:
    result = await deploy(
        cluster_app,
        {
            "name": "ollama",
            "inference": {
                "engine": "OLLAMA",
                "ollamaModel": "smollm2:135m",
                "resources": {"memory": "2Gi"},
                "env": [{"name": "OLLAMA_DEBUG", "value": "false"}],
            },
        },
    )
    assert result["__typename"] == "DeployPayload", result
    model, inference = result["model"], result["inference"]
    assert model["source"] == {
        "url": "smollm2:135m",
        "accessMode": "ENGINE",
        "hasToken": False,
        "revision": None,
    }
    assert model["phase"] == "READY"
    assert inference["spec"]["port"] == 11434
    assert inference["spec"]["gpu"] == 0
    running = await wait_inference(cluster_app, inference["id"], {"RUNNING", "FAILED"})
    assert running["phase"] == "RUNNING", running
    assert running["endpoint"].endswith(":11434/v1")
    apps, core = k8s.AppsV1Api(control_plane_api), k8s.CoreV1Api(control_plane_api)
    deployment, service = await wait_objects(apps, core, gpu_namespace, inference["name"])
    pod = deployment.spec.template.spec
    pull = " ".join(pod.init_containers[0].command)
    assert "ollama pull smollm2:135m && ollama cp smollm2:135m ollama" in pull
    assert pod.containers[0].command == ["ollama", "serve"]
    assert {e.name: e.value for e in pod.containers[0].env}["OLLAMA_HOST"] == "0.0.0.0:11434"
    assert service.spec.ports[0].port == 11434
    assert await cluster_app.resources.database["weights"].count_documents({}) == 0
    # Its size is not on the hub (an Ollama reference is no repo id): said, not a fault.
    fit = await run(
        cluster_app.graphql_url,
        "GpuFit",
        {"modelId": model["id"], "engine": "OLLAMA"},
        token=editor(cluster_app),
    )
    assert fit["gpuFit"]["__typename"] == "ValidationError", fit
    assert fit["gpuFit"]["field"] == "modelId"
    assert "nothing is known about the size" in fit["gpuFit"]["errorMessage"]


async def test_a_custom_engine_running_vllm_must_serve_the_model_under_its_name(
    cluster_app: RunningApp, control_plane_api: k8s.ApiClient, gpu_namespace: str
) -> None:
    model = await ready_model(cluster_app, name="llama-7b")
    result = await run(
        cluster_app.graphql_url,
        "StartInference",
        {
            "modelId": model.id,
            "input": {
                "engine": "CUSTOM",
                "image": VLLM_IMAGE,
                "command": vllm_command("wrong-name"),
            },
        },
        token=editor(cluster_app),
    )
    refusal = result["startInference"]
    assert refusal["__typename"] == "ValidationError", refusal
    assert refusal["field"] == "input.command"
    assert "'wrong-name' must match the model name 'llama-7b'" in refusal["errorMessage"]
    found = await left_behind(cluster_app, control_plane_api, gpu_namespace)
    assert found["inferences"] == found["deployments"] == found["services"] == []
    inference = await start(
        cluster_app,
        model.id,
        {"engine": "CUSTOM", "image": VLLM_IMAGE, "command": vllm_command("llama-7b")},
    )
    running = await wait_inference(cluster_app, inference["id"], {"RUNNING", "FAILED"})
    assert running["phase"] == "RUNNING", running


async def remote_model(app: RunningApp, url: str) -> ModelDocument:
    """A REMOTE_API model as createModel leaves it (its URL is not resolved here)."""
    model = ModelDocument(
        id=new_id("model"),
        organization_id=ORG,
        name="upstream",
        name_key="upstream",
        display_name="upstream",
        source=ModelSource(url=url, access_mode=AccessMode.REMOTE_API),
        phase=ModelPhase.READY,
    )
    await app.resources.database["models"].insert_one(model.to_mongo())
    return model


async def test_litellm_routes_to_a_provider_prefixed_model_without_a_written_config(
    cluster_app: RunningApp, control_plane_api: k8s.ApiClient, gpu_namespace: str
) -> None:
    model = await remote_model(cluster_app, "http://ollama.ollama.svc:11434")
    for mode, chosen in (("WILDCARD", "ollama/smollm2:135m"), ("SINGLE", "ollama/*")):
        refused = await run(
            cluster_app.graphql_url,
            "StartInference",
            {
                "modelId": model.id,
                "input": {"engine": "LITELLM_PROXY", "litellm": {"mode": mode, "model": chosen}},
            },
            token=editor(cluster_app),
        )
        assert refused["startInference"]["__typename"] == "ValidationError", refused
        assert refused["startInference"]["field"] == "input.litellm.model"
    found = await left_behind(cluster_app, control_plane_api, gpu_namespace)
    assert found["inferences"] == found["deployments"] == found["configmaps"] == []

    inference = await start(
        cluster_app,
        model.id,
        {"engine": "LITELLM_PROXY", "litellm": {"mode": "SINGLE", "model": "ollama/smollm2:135m"}},
    )
    running = await wait_inference(cluster_app, inference["id"], {"RUNNING", "FAILED"})
    assert running["phase"] == "RUNNING", running
    core = k8s.CoreV1Api(control_plane_api)
    config = await core.read_namespaced_config_map(f"{inference['name']}-config", gpu_namespace)
    routes = yaml.safe_load(config.data["litellm.yaml"])["model_list"]
    assert routes == [
        {
            "model_name": "upstream",
            "litellm_params": {
                "model": "ollama/smollm2:135m",
                "api_base": "http://ollama.ollama.svc:11434",
            },
        }
    ]
