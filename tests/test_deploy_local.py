"""``deployModel`` on the local runtime: an engine that fetches its own model, as a process.

The engine is a stand-in ``vllm`` put first on PATH that takes ``serve <hub repo>
--served-model-name <name> --host --port`` (the organisation API's example: the command
fetches the model itself), says in its log whether it got a hub token and whether
``HF_HUB_OFFLINE`` is set (never the token), and answers ``/health`` and ``/v1/models``.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelplane.embedded import free_port
from storage.client import Client
from storage.documents import Role
from testbed.hub import RunningHub
from tests import helpers
from tests.conftest import RunningApp, make_settings, serve_app
from tests.graphql_client import run
from tests.test_inference_local import STAND_IN_SERVER
from tests.test_inference_replicas import two_replicas

ORG = "org-d"
HUB_TOKEN = "hf_localDeployToken0123456789abcdef"

FETCHING_VLLM = (
    '''#!{python}
"""A stand-in for vLLM that fetches its model from the hub itself."""
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = sys.argv[1:]
assert args[0] == "serve", args
def flag(name):
    return args[args.index(name) + 1]
name, host, port = flag("--served-model-name"), flag("--host"), int(flag("--port"))
token = "yes" if os.environ.get("HF_TOKEN") == {token!r} else "no"
offline = os.environ.get("HF_HUB_OFFLINE", "unset")
print(f"fetching {{args[1]}} token={{token}} offline={{offline}}", flush=True)
'''
    + STAND_IN_SERVER
)


@pytest.fixture
def fetching_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in ``vllm`` first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    vllm = bin_dir / "vllm"
    vllm.write_text(FETCHING_VLLM.format(python=sys.executable, token=HUB_TOKEN))
    vllm.chmod(vllm.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return bin_dir


@pytest.fixture
async def local_app(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub, fetching_vllm: Path
) -> AsyncIterator[RunningApp]:
    del fetching_vllm
    # Admins may run commands here, as the server's user (see test_inference_local.py).
    settings = make_settings(
        tmp_path, mongo_uri, hf_endpoint=hub.endpoint, allow_host_commands=True, engine_user=""
    )
    async with serve_app(settings, mongo_client) as running:
        yield running


def value(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "hubToken": HUB_TOKEN,
        "inference": {
            "engine": "VLLM",
            "command": ["vllm", "serve", "tiny-org/tiny-model"],
            "args": ["--served-model-name", name, "--host", "127.0.0.1", "--port", str(port)],
            "port": port,
            "resources": {"gpu": 0},
        },
    }


async def deploy(app: RunningApp, variables: dict[str, Any], role: Role) -> dict[str, Any]:
    token = app.token(role=role, organization=ORG)
    data = await run(app.graphql_url, "DeployModel", {"input": variables}, token=token)
    result: dict[str, Any] = data["deployModel"]
    return result


async def test_deploy_model_runs_a_command_that_fetches_its_model_with_the_token(
    local_app: RunningApp,
) -> None:
    port = free_port()
    result = await deploy(local_app, value("fetcher", port), Role.ADMIN)
    assert result["__typename"] == "DeployPayload", result
    assert HUB_TOKEN not in str(result)
    assert result["model"]["source"]["accessMode"] == "ENGINE"
    assert result["model"]["source"]["url"] == "tiny-org/tiny-model"
    inference = result["inference"]
    editor = local_app.token(role=Role.EDITOR, organization=ORG)
    running = await helpers.wait_inference(
        local_app.graphql_url, editor, inference["id"], {"RUNNING", "FAILED"}, timeout=30
    )
    assert running["phase"] == "RUNNING", running
    async with httpx.AsyncClient() as client:
        models = (await client.get(f"{running['endpoint']}/models")).json()
    assert [m["id"] for m in models["data"]] == ["fetcher"]
    logs = await run(local_app.graphql_url, "InferenceLogs", {"id": inference["id"]}, token=editor)
    lines = logs["inferenceLogs"]["lines"]
    assert "fetching tiny-org/tiny-model token=yes offline=unset" in lines, lines
    assert await local_app.resources.database["weights"].count_documents({}) == 0


async def test_refused_local_deploys_write_nothing(local_app: RunningApp) -> None:
    # A command of one's own runs on this host: admins only (an editor is refused) ...
    forbidden = await deploy(local_app, value("fetcher", free_port()), Role.EDITOR)
    assert forbidden["__typename"] == "ForbiddenError", forbidden
    # ... and a vLLM command serving another name is refused naming the field.
    wrong = value("fetcher", free_port())
    wrong["inference"]["args"][1] = "wrong-name"
    refused = await deploy(local_app, wrong, Role.ADMIN)
    assert refused["__typename"] == "ValidationError", refused
    assert refused["field"] == "input.inference.args"
    # An ENGINE model comes with its engine: createModel alone cannot make one.
    created = await run(
        local_app.graphql_url,
        "CreateModel",
        {"input": {"source": {"url": "smollm2:135m", "accessMode": "ENGINE"}, "name": "x"}},
        token=local_app.token(role=Role.EDITOR, organization=ORG),
    )
    assert created["createModel"]["__typename"] == "ValidationError", created
    assert created["createModel"]["field"] == "source.accessMode"
    database = local_app.resources.database
    for collection in ("models", "inferences", "secrets", "weights"):
        assert await database[collection].count_documents({}) == 0, collection


async def test_a_deploy_sent_to_the_follower_is_served_by_the_leader(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub, fetching_vllm: Path
) -> None:
    del fetching_vllm
    async with two_replicas(tmp_path, mongo_uri, mongo_client, hub) as (leader, follower):
        began = time.monotonic()
        result = await deploy(follower, value("follower-sent", free_port()), Role.ADMIN)
        assert result["__typename"] == "DeployPayload", result
        editor = follower.token(role=Role.EDITOR, organization=ORG)
        running = await helpers.wait_inference(
            follower.graphql_url, editor, result["inference"]["id"], {"RUNNING", "FAILED"}
        )
        took = time.monotonic() - began
        print(f"deployModel on the follower -> RUNNING by the leader: {took:.2f} s")  # noqa: T201
        assert running["phase"] == "RUNNING", running
        assert took < 30  # generous: the leader hears the event at once, not at its resync
        assert leader.resources.inference_controller is not None
