"""``engineArgs`` on the Kubernetes runtime, against the testbed's real control plane (with
kwok's fake GPU nodes): the rendered Deployment's container args end with them, an update
rolls the Deployment to the new ones, and bad input leaves no Deployment, Service or
ConfigMap behind (and no inference document)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s

from storage.client import Client
from testbed import servers
from testbed.hub import RunningHub
from tests.conftest import RunningApp, serve_app
from tests.graphql_client import run
from tests.test_inference_kubernetes import cluster_settings, editor, ready_model, wait_inference

FLAGS = ["--dtype=float16", "--gpu-memory-utilization=0.8"]


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


async def call(app: RunningApp, operation: str, **variables: Any) -> Any:
    data = await run(app.graphql_url, operation, variables, token=editor(app))
    return next(iter(data.values()))


async def container_args(apps: k8s.AppsV1Api, ns: str, name: str, *, ends: list[str]) -> list[str]:
    """The engine container's args once they end with ``ends`` (the controller applied)."""
    deadline = time.monotonic() + 30
    while True:
        found = await apps.list_namespaced_deployment(ns, field_selector=f"metadata.name={name}")
        if found.items:
            args: list[str] = found.items[0].spec.template.spec.containers[0].args
            if args[-len(ends) :] == ends:
                return args
        assert time.monotonic() < deadline, found.items
        await asyncio.sleep(0.2)


async def test_the_deployment_carries_them_and_an_update_rolls_it(
    cluster_app: RunningApp, control_plane_api: k8s.ApiClient, gpu_namespace: str
) -> None:
    model = await ready_model(cluster_app)
    started = await call(
        cluster_app,
        "StartInference",
        modelId=model.id,
        input={"engineArgs": FLAGS, "contextLength": 2048},
    )
    assert started["__typename"] == "InferencePayload", started
    inference = started["inference"]
    apps = k8s.AppsV1Api(control_plane_api)
    args = await container_args(apps, gpu_namespace, inference["name"], ends=FLAGS)
    assert args[:3] == [f"/data/models/{model.name}", "--served-model-name", model.name]
    assert args[args.index("--max-model-len") + 1] == "2048"
    running = await wait_inference(cluster_app, inference["id"], {"RUNNING", "FAILED"})
    assert running["phase"] == "RUNNING", running
    assert running["spec"]["engineArgs"] == FLAGS

    updated = await call(
        cluster_app,
        "UpdateInference",
        modelId=model.id,
        input={"engineArgs": ["--enforce-eager"], "contextLength": 2048},
    )
    assert updated["__typename"] == "InferencePayload", updated
    args = await container_args(apps, gpu_namespace, inference["name"], ends=["--enforce-eager"])
    assert not set(FLAGS) & set(args)
    await call(cluster_app, "StopInference", modelId=model.id)
    await wait_inference(cluster_app, inference["id"], {"STOPPED"})


async def _objects(control_plane_api: k8s.ApiClient, ns: str) -> set[str]:
    apps, core = k8s.AppsV1Api(control_plane_api), k8s.CoreV1Api(control_plane_api)
    deployments = await apps.list_namespaced_deployment(ns)
    services = await core.list_namespaced_service(ns)
    maps = await core.list_namespaced_config_map(ns)
    return {
        f"{kind}/{item.metadata.name}"
        for kind, listing in (("deploy", deployments), ("svc", services), ("cm", maps))
        for item in listing.items
    }


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"engineArgs": ["--port=9000"]}, "input.engineArgs[0]"),
        ({"engineArgs": ["--dtype=half", "--served-model-name", "x"]}, "input.engineArgs[1]"),
        ({"engineArgs": ["--tensor-parallel-size", "2"]}, "input.engineArgs[0]"),
        ({"engineArgs": ["bfloat16"]}, "input.engineArgs[0]"),
        ({"engineArgs": ["--dtype=half"], "command": ["vllm", "serve"]}, "input.engineArgs"),
    ],
    ids=["port", "served-name", "tensor-parallel", "bare-value", "with-command"],
)
async def test_bad_engine_args_leave_nothing_in_the_cluster(
    cluster_app: RunningApp,
    control_plane_api: k8s.ApiClient,
    gpu_namespace: str,
    value: dict[str, Any],
    field: str,
) -> None:
    model = await ready_model(cluster_app)
    before = await _objects(control_plane_api, gpu_namespace)
    for dry_run in (True, False):
        refused = await call(
            cluster_app, "StartInference", modelId=model.id, input=value, dryRun=dry_run
        )
        assert refused["__typename"] == "ValidationError", refused
        assert refused["field"] == field
    assert await cluster_app.resources.database["inferences"].count_documents({}) == 0
    await asyncio.sleep(0.5)  # a controller acting on a stray event would have applied by now
    assert await _objects(control_plane_api, gpu_namespace) == before
