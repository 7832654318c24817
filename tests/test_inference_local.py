"""Inference on the local runtime: engines as supervised processes, through the API.

The engine is a stand-in ``vllm`` program put first on PATH: a small HTTP server that takes
vLLM's command line (``serve <weights> --served-model-name <name> --host --port``), refuses to
start without the weights directory, and answers ``/health`` and ``/v1/models`` with the
served name. So the planner's real command line, the supervisor, the readiness check, the
status writes, the events and the logs are all exercised; only the GPU maths is not.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import time
from collections.abc import AsyncIterator, Iterator
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
from tests.test_weights_api import create_local, ready, wait_model

STAND_IN_HANDLER = """
class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def _send(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        if self.path == "/health":
            self._send({{}})
        elif self.path == "/v1/models":
            self._send({{"object": "list", "data": [{{"id": name, "object": "model"}}]}})
        else:
            self.send_error(404)
"""
"""The stand-in's request handler: /health and /v1/models under ``name``; its class body is
open at the end, so a variant appends methods (``do_POST``) before :data:`STAND_IN_SERVE`."""

STAND_IN_SERVE = """
ThreadingHTTPServer((host, port), Handler).serve_forever()
"""

STAND_IN_SERVER = STAND_IN_HANDLER + STAND_IN_SERVE
"""The HTTP half of a stand-in vLLM: /health and /v1/models under ``name`` on ``host``:``port``
(the script before it sets those); a ``str.format`` template like the scripts it ends."""

FAKE_VLLM = (
    '''#!{python}
"""A stand-in for vLLM's OpenAI server: same command line, same endpoints we use."""
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = sys.argv[1:]
assert args[0] == "serve", args
weights = args[1]
def flag(name):
    return args[args.index(name) + 1]
name, host, port = flag("--served-model-name"), flag("--host"), int(flag("--port"))
if not os.path.isdir(weights):
    print(f"error: no weights at {{weights}}", file=sys.stderr, flush=True)
    sys.exit(2)
print(f"loaded {{len(os.listdir(weights))}} files from {{weights}} as {{name}}", flush=True)
'''
    + STAND_IN_SERVER
)


@pytest.fixture
def fake_engines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``vllm`` on PATH that behaves like vLLM's server for our purposes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    vllm = bin_dir / "vllm"
    vllm.write_text(FAKE_VLLM.format(python=sys.executable))
    vllm.chmod(vllm.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return bin_dir


@pytest.fixture
async def local_app(
    tmp_path: Path,
    mongo_uri: str,
    mongo_client: Client,
    hub: RunningHub,
    fake_engines: Path,
) -> AsyncIterator[RunningApp]:
    # Admins may run commands here (the CUSTOM tests), as the server's user: the fake engines
    # run the test's Python, which lives under /root (tests/security/test_runtime.py covers
    # the engine user).
    settings = make_settings(
        tmp_path, mongo_uri, hf_endpoint=hub.endpoint, allow_host_commands=True, engine_user=""
    )
    async with serve_app(settings, mongo_client) as running:
        yield running


@pytest.fixture(autouse=True)
def clean_hub(hub: RunningHub) -> Iterator[None]:
    hub.hub.faults.clear()
    yield
    hub.hub.faults.clear()


def editor(app: RunningApp) -> str:
    return app.token(role=Role.EDITOR, organization="org-a")


def admin(app: RunningApp) -> str:
    return app.token(role=Role.ADMIN, organization="org-a")


async def start(
    app: RunningApp, model_id: str, value: dict[str, Any] | None = None, **variables: Any
) -> dict[str, Any]:
    """An editor starts it; an admin when the input runs a command of its own (only admins
    may on the local runtime)."""
    own_program = (bool(value) and any((value or {}).get(key) for key in ("command", "args"))) or (
        value or {}
    ).get("engine") == "CUSTOM"
    data = await run(
        app.graphql_url,
        "StartInference",
        {"modelId": model_id, "input": value, **variables},
        token=admin(app) if own_program else editor(app),
    )
    result: dict[str, Any] = data["startInference"]
    return result


async def wait_inference(
    app: RunningApp, inference_id: str, phases: set[str], *, timeout: float = 30
) -> dict[str, Any]:
    return await helpers.wait_inference(
        app.graphql_url, editor(app), inference_id, phases, timeout=timeout
    )


async def ready_model(app: RunningApp) -> dict[str, Any]:
    created = await create_local(app, "tiny-org/tiny-model")
    model = await wait_model(app, created["id"], ready)
    assert model["phase"] == "READY", model
    return model


async def until_no_inference(app: RunningApp, model_id: str) -> None:
    """Until the model's ``inferencePhase`` is null (its stop completed)."""
    deadline = time.monotonic() + 30
    while True:
        data = await run(app.graphql_url, "ModelInference", {"id": model_id}, token=editor(app))
        if data["model"]["inferencePhase"] is None:
            return
        assert time.monotonic() < deadline, f"the model's inference was not cleared: {data}"
        await asyncio.sleep(0.05)


async def _logged_phases(app: RunningApp, inference_id: str, *, until: str) -> list[str]:
    """The inference's phases in the event log, in cursor order, once the last is ``until``
    (or after 10 s). The document is written before its event is appended (the model's
    mirrored phase is appended between them), so a reader that saw the document waits."""
    events = app.resources.database["events"]
    query = {"resource_kind": "INFERENCE", "resource_id": inference_id}
    deadline = time.monotonic() + 10
    while True:
        kinds = [e["phase"] async for e in events.find(query).sort("_id", 1)]
        if kinds[-1:] == [until] or time.monotonic() > deadline:
            return kinds
        await asyncio.sleep(0.05)


async def test_vllm_starts_serves_logs_and_stops(local_app: RunningApp) -> None:
    model = await ready_model(local_app)
    result = await start(local_app, model["id"])
    assert result["__typename"] == "InferencePayload", result
    assert result["started"] is True
    inference = result["inference"]
    assert inference["spec"]["engine"] == "VLLM"
    assert inference["spec"]["gpu"] == 1
    assert inference["spec"]["cpu"] == "1"
    assert inference["spec"]["memory"] == "2Gi"

    running = await wait_inference(local_app, inference["id"], {"RUNNING", "FAILED"})
    assert running["phase"] == "RUNNING", running
    assert running["readyReplicas"] == 1
    endpoint = running["endpoint"]
    assert endpoint == f"http://127.0.0.1:{running['spec']['port']}/v1"
    async with httpx.AsyncClient() as client:
        models = (await client.get(f"{endpoint}/models")).json()
    assert [m["id"] for m in models["data"]] == [model["name"]]

    logs = await run(
        local_app.graphql_url, "InferenceLogs", {"id": inference["id"]}, token=editor(local_app)
    )
    assert any(
        "loaded" in line and model["name"] in line for line in logs["inferenceLogs"]["lines"]
    )

    # One active inference per model: a second start returns the same one with a message.
    again = await start(local_app, model["id"])
    assert again["__typename"] == "InferencePayload"
    assert again["started"] is False
    assert again["inference"]["id"] == inference["id"]
    assert "already has an inference" in again["message"]

    seen = await run(
        local_app.graphql_url, "ModelInference", {"id": model["id"]}, token=editor(local_app)
    )
    assert seen["model"]["inferencePhase"] == "RUNNING"
    assert seen["model"]["inference"]["id"] == inference["id"]

    stopped = await run(
        local_app.graphql_url, "StopInference", {"modelId": model["id"]}, token=editor(local_app)
    )
    assert stopped["stopInference"]["__typename"] == "Inference"
    final = await wait_inference(local_app, inference["id"], {"STOPPED"})
    assert final["endpoint"] is None
    phases = [entry["phase"] for entry in final["phaseHistory"]]
    assert phases[0] == "PENDING"
    assert "RUNNING" in phases
    assert phases[-1] == "STOPPED"
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{endpoint}/models")
    # The model and its weights stay.
    after = await wait_model(local_app, model["id"], lambda m: m["phase"] == "READY")
    assert after["weights"]["state"] == "READY"

    kinds = await _logged_phases(local_app, inference["id"], until="STOPPED")
    assert "RUNNING" in kinds
    assert kinds[-1] == "STOPPED"

    # Once the stop completes the model has no inference, and starting again is a new one.
    await until_no_inference(local_app, model["id"])
    restarted = await start(local_app, model["id"])
    assert restarted["started"] is True
    assert restarted["inference"]["id"] != inference["id"]
    await wait_inference(local_app, restarted["inference"]["id"], {"RUNNING"})
    await run(
        local_app.graphql_url, "StopInference", {"modelId": model["id"]}, token=editor(local_app)
    )
    await wait_inference(local_app, restarted["inference"]["id"], {"STOPPED"})


async def test_crash_looping_engine_is_reported_with_its_output(local_app: RunningApp) -> None:
    model = await ready_model(local_app)
    script = (
        "import sys; print('engine exploded: CUDA out of memory', file=sys.stderr); sys.exit(3)"
    )
    result = await start(
        local_app,
        model["id"],
        {"engine": "CUSTOM", "command": [sys.executable, "-c", script]},
    )
    assert result["__typename"] == "InferencePayload", result
    inference = await wait_inference(
        local_app, result["inference"]["id"], {"CRASH_LOOP_BACK_OFF"}, timeout=60
    )
    assert inference["reason"] == "CrashLoopBackOff"
    assert "CUDA out of memory" in inference["message"]
    logs = await run(
        local_app.graphql_url,
        "InferenceLogs",
        {"id": inference["id"], "tail": 5},
        token=editor(local_app),
    )
    assert any("CUDA out of memory" in line for line in logs["inferenceLogs"]["lines"])
    await run(
        local_app.graphql_url, "StopInference", {"modelId": model["id"]}, token=editor(local_app)
    )
    await wait_inference(local_app, inference["id"], {"STOPPED"})


async def test_start_before_weights_are_ready_waits_then_runs(
    local_app: RunningApp, hub: RunningHub
) -> None:
    hub.hub.faults.throttle("tiny-org/tiny-model/*", 50_000, times=None)
    created = await create_local(local_app, "tiny-org/tiny-model")
    result = await start(local_app, created["id"])
    assert result["__typename"] == "InferencePayload", result
    deadline = time.monotonic() + 20
    while True:
        data = await run(
            local_app.graphql_url,
            "Inference",
            {"id": result["inference"]["id"]},
            token=editor(local_app),
        )
        if data["inference"]["reason"] == "WaitingForWeights":
            break
        assert time.monotonic() < deadline, data
        await asyncio.sleep(0.05)
    assert data["inference"]["phase"] == "PENDING"
    assert "PULLING" in data["inference"]["message"] or "PENDING" in data["inference"]["message"]
    running = await wait_inference(local_app, result["inference"]["id"], {"RUNNING"}, timeout=60)
    assert running["readyReplicas"] == 1
    await run(
        local_app.graphql_url, "StopInference", {"modelId": created["id"]}, token=editor(local_app)
    )
    await wait_inference(local_app, running["id"], {"STOPPED"})


async def test_dry_run_plans_without_writing(local_app: RunningApp) -> None:
    model = await ready_model(local_app)
    result = await start(local_app, model["id"], None, dryRun=True)
    assert result["__typename"] == "InferencePayload", result
    assert result["dryRun"] is True
    assert "vllm" in result["manifests"][0]
    assert "--served-model-name" in result["manifests"][0]
    assert result["fit"]["summary"]
    assert await local_app.resources.database["inferences"].count_documents({}) == 0


BAD_INPUTS: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "vllm-command-without-served-name",
        {"command": ["vllm", "serve", "/w"]},
        "input.command",
        "--served-model-name",
    ),
    ("zero-replicas", {"replicas": 0}, "input.replicas", "between 1 and"),
    ("zero-context", {"contextLength": 0}, "input.contextLength", "between 1 and"),
    ("port-out-of-range", {"port": 70000}, "input.port", "between 1 and 65535"),
    (
        "env-value-and-secret",
        {"env": [{"name": "A", "value": "1", "secretName": "s", "secretKey": "k"}]},
        "input.env[0]",
        "either value or",
    ),
    ("env-bad-name", {"env": [{"name": "1A", "value": "x"}]}, "input.env[0].name", "not a valid"),
    ("bad-cpu", {"resources": {"cpu": "lots"}}, "input.resources.cpu", "CPU quantity"),
    ("custom-without-command", {"engine": "CUSTOM"}, "input.command", "needs a command"),
    (
        "autoscaling-bounds",
        {"autoscaling": {"minReplicas": 3, "maxReplicas": 2}},
        "input.autoscaling",
        "minReplicas",
    ),
    (
        "litellm-for-downloaded-model",
        {"engine": "LITELLM_PROXY"},
        "input.litellm.mode",
        "REMOTE_API",
    ),
]


@pytest.mark.parametrize(
    ("value", "field", "words"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
async def test_bad_input_is_refused_and_nothing_is_written(
    local_app: RunningApp, value: dict[str, Any], field: str, words: str
) -> None:
    model = await ready_model(local_app)
    result = await start(local_app, model["id"], value)
    assert result["__typename"] == "ValidationError", result
    assert result["field"] == field
    assert words in result["errorMessage"]
    assert await local_app.resources.database["inferences"].count_documents({}) == 0
    seen = await run(
        local_app.graphql_url, "ModelInference", {"id": model["id"]}, token=editor(local_app)
    )
    assert seen["model"]["inferencePhase"] is None


async def test_unknown_model_viewer_and_manifest_on_local_are_refused(
    local_app: RunningApp,
) -> None:
    missing = await start(local_app, "model-nope1")
    assert missing["__typename"] == "NotFoundError"
    model = await ready_model(local_app)
    viewer = local_app.token(role=Role.VIEWER, organization="org-a")
    refused = await run(
        local_app.graphql_url, "StartInference", {"modelId": model["id"]}, token=viewer
    )
    assert refused["startInference"]["__typename"] == "ForbiddenError"
    other_org = local_app.token(role=Role.EDITOR, organization="org-b")
    hidden = await run(
        local_app.graphql_url, "StartInference", {"modelId": model["id"]}, token=other_org
    )
    assert hidden["startInference"]["__typename"] == "NotFoundError"
    manifest = await run(
        local_app.graphql_url,
        "CreateInferenceFromManifest",
        {"yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n"},
        token=editor(local_app),
    )
    assert manifest["createInferenceFromManifest"]["__typename"] == "ValidationError"
    assert "kubernetes runtime" in manifest["createInferenceFromManifest"]["errorMessage"]
    assert await local_app.resources.database["inferences"].count_documents({}) == 0


async def test_toggle_uses_the_last_spec(local_app: RunningApp) -> None:
    model = await ready_model(local_app)
    on = await run(
        local_app.graphql_url,
        "ToggleInference",
        {"modelId": model["id"], "enabled": True},
        token=editor(local_app),
    )
    payload = on["toggleInference"]
    assert payload["__typename"] == "InferencePayload", payload
    inference_id = payload["inference"]["id"]
    port = payload["inference"]["spec"]["port"]
    await wait_inference(local_app, inference_id, {"RUNNING"})
    off = await run(
        local_app.graphql_url,
        "ToggleInference",
        {"modelId": model["id"], "enabled": False},
        token=editor(local_app),
    )
    assert off["toggleInference"]["__typename"] == "InferencePayload"
    await wait_inference(local_app, inference_id, {"STOPPED"})
    on_again = await run(
        local_app.graphql_url,
        "ToggleInference",
        {"modelId": model["id"], "enabled": True},
        token=editor(local_app),
    )
    # The same spec; a new inference once the stop completed (the same one re-enabled if it
    # was still being retired: issue 17).
    again = on_again["toggleInference"]["inference"]
    assert again["spec"]["port"] == port
    await wait_inference(local_app, again["id"], {"RUNNING"})
    await run(
        local_app.graphql_url, "StopInference", {"modelId": model["id"]}, token=editor(local_app)
    )
    await wait_inference(local_app, again["id"], {"STOPPED"})


HEALTH_ONLY = """#!{python}
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{{}}")

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


async def test_a_program_that_cannot_be_spawned_fails_once_and_recovers_on_retry(
    local_app: RunningApp, tmp_path: Path
) -> None:
    """Not found is permanent at the local boundary: FAILED with the reason, written once
    (no retry loop however often the controller looks); the user's retry after the program
    exists runs it."""
    model = await ready_model(local_app)
    port = free_port()
    program = tmp_path / "engine-bin" / "my-engine"
    value = {"engine": "CUSTOM", "command": [str(program), str(port)], "port": port}
    result = await start(local_app, model["id"], value)
    assert result["__typename"] == "InferencePayload", result
    inference_id = result["inference"]["id"]
    failed = await wait_inference(local_app, inference_id, {"FAILED", "RUNNING"})
    assert failed["reason"] == "ProgramNotFound", failed
    assert "command not found" in failed["message"]

    database = local_app.resources.database
    before = await database["inferences"].find_one({"_id": inference_id})
    controller = local_app.resources.inference_controller
    assert controller is not None
    controller.notify(inference_id)
    controller.resync_soon()
    await asyncio.sleep(2)
    await controller.wait_idle()
    after = await database["inferences"].find_one({"_id": inference_id})
    assert before is not None
    assert after is not None
    assert after["revision"] == before["revision"], "the status was written again"
    events = database["events"].find({"resource_id": inference_id, "phase": "FAILED"})
    assert len([e async for e in events]) == 1

    program.parent.mkdir()
    program.write_text(HEALTH_ONLY.format(python=sys.executable))
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    await run(
        local_app.graphql_url, "StopInference", {"modelId": model["id"]}, token=editor(local_app)
    )
    await wait_inference(local_app, inference_id, {"STOPPED"})
    # A new inference once the stop completed; the same one re-enabled if it was still being
    # retired (issue 17): which one depends on who is first, the retire or this start.
    again = await start(local_app, model["id"], value)
    assert again["__typename"] == "InferencePayload", again
    retried = again["inference"]["id"]
    running = await wait_inference(local_app, retried, {"RUNNING", "FAILED"})
    assert running["phase"] == "RUNNING", running
    await run(
        local_app.graphql_url, "StopInference", {"modelId": model["id"]}, token=editor(local_app)
    )
    await wait_inference(local_app, retried, {"STOPPED"})
