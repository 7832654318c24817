"""The dashboard's operator pages in headless Chromium (``dashboard/tests/pages.mjs``, driven by
playwright-core like tests/test_dashboard.py), each doing its main job against a real server:

* Cluster, on the kubernetes runtime (the session's bare kube-apiserver, nodes written as
  kubelets and GPU feature discovery would, as tests/test_cluster_status.py does): GPUs by
  type, nodes, the KubeRay CRD found, no problems; a pod bound to a GPU node afterwards lowers
  the free GPUs on the open page.
* Storage, on the local runtime: a downloaded and served model's weights with the usage of
  their root; a second download appears live; deleting the served weights is asked, then refused
  (ConflictError on `force`, shown in the row); the unused weights are deleted after confirming
  and leave the table without a reload. Also the Cluster page of the local runtime ("no cluster").
* API keys: keyboard only, a refused name shown next to the field, a key created and shown once
  with a working copy button, listed, usable on /v1, revoked after confirming, then refused.
* Playground: a model served by a stand-in ``vllm`` that streams its chat answers word by word
  (the one of tests/test_inference_local.py with a chat endpoint added), chatted with through
  /v1/chat/completions with the signed-in token: the answer grows while it streams, time to
  first token and tokens per second are shown; Stop ends an answer mid-stream; a bad API key
  gives a plain 401; the engine failing (a 500 from it) is shown as the gateway passes it on;
  the model stopped leaves the list live and the page says no model is running.

Screenshots: tests/artifacts/dashboard-{cluster,cluster-local,storage,keys,playground,
playground-errors}.png.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s

from controllers.runtimes.kubernetes.runtime import KubernetesRuntime
from storage.client import Client
from storage.documents import Role
from testbed.hub import RunningHub
from tests.conftest import RunningApp, make_settings, serve_app
from tests.graphql_client import run
from tests.test_cluster_status import Cluster, crd_body, remove_crd
from tests.test_dashboard import REPO_ROOT, _browser_prerequisites
from tests.test_inference_local import (
    FAKE_VLLM,
    STAND_IN_HANDLER,
    STAND_IN_SERVE,
    STAND_IN_SERVER,
    wait_inference,
)
from tests.test_weights_api import create_local, ready, wait_model

PAGES_SCRIPT = REPO_ROOT / "dashboard" / "tests" / "pages.mjs"
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
ORG = "org-a"

CHAT_SERVER = (
    """
import time

def words(messages):
    last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return ["You", " said", ":"] + [" " + w for w in last.split()] + [".", " Bye", "."]

"""
    + STAND_IN_HANDLER
    + """    def do_POST(self):
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if request["messages"][-1]["content"] == "please fail":
            data = json.dumps({{"error": {{"message": "the engine ran out of memory",
                                          "type": "server_error", "code": None}}}}).encode()
            self.send_response(500)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        answer = words(request["messages"])
        if not request.get("stream"):
            message = {{"role": "assistant", "content": "".join(answer)}}
            self._send({{"object": "chat.completion", "model": name,
                        "choices": [{{"index": 0, "message": message, "finish_reason": "stop"}}]}})
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        time.sleep(0.3)  # "prefill": a time to first token worth showing
        for word in answer:
            chunk = {{"object": "chat.completion.chunk", "model": name,
                     "choices": [{{"index": 0, "delta": {{"content": word}}}}]}}
            self.wfile.write(f"data: {{json.dumps(chunk)}}\\n\\n".encode())
            self.wfile.flush()
            time.sleep(0.12)
        usage = {{"prompt_tokens": 5, "completion_tokens": len(answer),
                 "total_tokens": 5 + len(answer)}}
        if (request.get("stream_options") or {{}}).get("include_usage"):
            tail = {{"object": "chat.completion.chunk", "choices": [], "usage": usage}}
            self.wfile.write(f"data: {{json.dumps(tail)}}\\n\\n".encode())
        self.wfile.write(b"data: [DONE]\\n\\n")
        self.wfile.flush()
        self.close_connection = True
"""
    + STAND_IN_SERVE
)
"""The stand-in's HTTP half with a streaming ``/v1/chat/completions``: it answers "You said:
<the last user message>. Bye." one word per server-sent event, 0.12 s apart after 0.3 s, and
"please fail" with a 500 in OpenAI's error shape, as an engine that failed would."""

CHATTY_VLLM = FAKE_VLLM.replace(STAND_IN_SERVER, CHAT_SERVER)
assert CHATTY_VLLM != FAKE_VLLM


@pytest.fixture
def chatty_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The chatting stand-in ``vllm`` first on PATH (the local runtime's default engine)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    vllm = bin_dir / "vllm"
    vllm.write_text(CHATTY_VLLM.format(python=sys.executable))
    vllm.chmod(vllm.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return bin_dir


@pytest.fixture
async def local_app(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub, chatty_vllm: Path
) -> AsyncIterator[RunningApp]:
    """modelplane on the local runtime; engines run as this process's user (see
    tests/test_dashboard.py's ``running_app``)."""
    settings = make_settings(tmp_path, mongo_uri, hf_endpoint=hub.endpoint, engine_user="")
    async with serve_app(settings, mongo_client) as running:
        yield running


def admin(app: RunningApp) -> str:
    return app.token(role=Role.ADMIN, organization=ORG)


async def browse(
    app: RunningApp,
    page: str,
    *,
    expect: dict[str, Any] | None = None,
    on_step: Callable[[str], Awaitable[None]] | None = None,
    timeout: int = 150,
) -> dict[str, Any]:
    """Runs pages.mjs for ``page``; ``on_step`` is awaited for each ``STEP <name>`` line it
    prints (the script waits for the page to show the step's effect). Returns its summary."""
    node = _browser_prerequisites()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        node,
        str(PAGES_SCRIPT),
        "--url",
        app.base_url,
        "--page",
        page,
        "--artifacts",
        str(ARTIFACTS),
        "--timeout",
        str(timeout),
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "MODELPLANE_TOKEN": admin(app),
            "PAGES_EXPECT": json.dumps(expect or {}),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    lines: list[str] = []
    while line := (await process.stdout.readline()).decode(errors="replace"):
        lines.append(line.rstrip("\n"))
        if line.startswith("STEP ") and on_step is not None:
            await on_step(line.split()[1])
    await process.wait()
    text = "\n".join(lines)
    print(text)  # noqa: T201 - the script's log, with its measured figures
    assert process.returncode == 0, f"pages.mjs --page {page} failed:\n{text}"
    summary: dict[str, Any] = json.loads(lines[-1])
    assert summary["ok"] is True
    assert summary["pageErrors"] == []
    assert summary["loads"] == 1, "the page was reloaded"
    return summary


async def serve(app: RunningApp, repo: str = "tiny-org/tiny-model") -> dict[str, Any]:
    """A READY model of ``repo`` with a RUNNING inference (the stand-in engine)."""
    created = await create_local(app, repo)
    model = await wait_model(app, created["id"], ready)
    assert model["phase"] == "READY", model
    data = await run(app.graphql_url, "StartInference", {"modelId": model["id"]}, token=admin(app))
    started = data["startInference"]
    assert started["__typename"] == "InferencePayload", started
    assert started["started"], started
    running = await wait_inference(app, started["inference"]["id"], {"RUNNING", "FAILED"})
    assert running["phase"] == "RUNNING", running
    return model


async def stop(app: RunningApp, model_id: str) -> None:
    data = await run(app.graphql_url, "StopInference", {"modelId": model_id}, token=admin(app))
    # the page may have stopped it already: then there is nothing left to stop
    assert data["stopInference"]["__typename"] in ("Inference", "NotFoundError"), data


# ---- Cluster ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_cluster_page_shows_gpus_by_type_nodes_and_integrations_live(
    kube_app: RunningApp, kube_namespace: str
) -> None:
    runtime = kube_app.resources.runtime
    assert isinstance(runtime, KubernetesRuntime)
    cluster = Cluster(runtime.api, kube_namespace)
    extensions = k8s.ApiextensionsV1Api(runtime.api)
    kuberay = crd_body("ray.io", "rayclusters", "RayCluster")
    await extensions.create_custom_resource_definition(kuberay)  # type: ignore[arg-type]  # a dict body is accepted and serialised as is
    try:
        a100 = await cluster.node("a100", gpus=8, product="NVIDIA-A100-SXM4-80GB", memory_mib=81920)
        await cluster.node("a100b", gpus=8, product="NVIDIA-A100-SXM4-80GB", memory_mib=81920)
        await cluster.node("l4", gpus=4, product="NVIDIA-L4", cordoned=True)
        await cluster.pod(a100, limits=3)

        async def on_step(step: str) -> None:
            assert step == "pod", step
            await cluster.pod(a100, requests=2, limits=2)  # no event: the page's poll sees it

        summary = await browse(
            kube_app,
            "cluster",
            expect={"prefix": cluster.prefix, "namespace": kube_namespace},
            on_step=on_step,
        )
    finally:
        await cluster.remove()
        await remove_crd(extensions, kuberay["metadata"]["name"])
    assert summary["freeA100"] == [13, 11]
    assert summary["integrationsFound"] == ["kuberay"]
    assert (ARTIFACTS / "dashboard-cluster.png").is_file()


# ---- Storage ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_storage_page_lists_usage_and_weights_and_deletes_after_asking(
    local_app: RunningApp,
) -> None:
    served = await serve(local_app)
    try:
        summary = await browse(
            local_app,
            "storage",
            expect={
                "servedWeightsId": served["weights"]["id"],
                "servedModelId": served["id"],
                "root": str(local_app.resources.settings.local_roots[0].resolve()),
            },
        )
    finally:
        await stop(local_app, served["id"])
    deleted = summary["deletedWeightsId"]
    page = await run(local_app.graphql_url, "WeightsList", {"limit": 100}, token=admin(local_app))
    left = [w["id"] for w in page["weightsList"]["items"]]
    assert deleted not in left
    assert served["weights"]["id"] in left  # refused: kept
    assert summary["refusal"].startswith("ConflictError:")
    assert (ARTIFACTS / "dashboard-storage.png").is_file()
    assert (ARTIFACTS / "dashboard-cluster-local.png").is_file()


# ---- API keys ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_keys_page_creates_a_key_shown_once_then_revokes_it_keyboard_only(
    local_app: RunningApp,
) -> None:
    summary = await browse(local_app, "keys")
    data = await run(
        local_app.graphql_url, "ApiKeys", {"includeRevoked": True}, token=admin(local_app)
    )
    keys = {k["id"]: k for k in data["apiKeys"]["items"]}
    key = keys[summary["keyId"]]
    assert key["name"] == "ci-bot"
    assert key["role"] == "EDITOR"
    assert key["revokedAt"] is not None
    assert summary["refusedName"].startswith("ValidationError:")
    assert (ARTIFACTS / "dashboard-keys.png").is_file()


# ---- Playground -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_playground_streams_a_chat_answer_with_its_figures(local_app: RunningApp) -> None:
    served = await serve(local_app)
    try:
        summary = await browse(
            local_app, "playground", expect={"model": served["name"], "modelId": served["id"]}
        )
    finally:
        await stop(local_app, served["id"])  # idempotent: the page stopped it already
    assert summary["answer"] == "You said: hello there. Bye."
    assert len(summary["partials"]) >= 3, summary["partials"]
    assert summary["ttftSeconds"] >= 0.3
    # The stand-in sends a word every 0.12 s (8.3 a second); generous bounds (a busy machine
    # can delay or bunch the deltas the browser sees).
    assert 1 < summary["tokensPerSecond"] < 30, summary["tokensPerSecond"]
    assert summary["unauthorised"].startswith("401")
    assert summary["engineFailure"].startswith("500 server_error: the engine ran out of memory")
    assert (ARTIFACTS / "dashboard-playground.png").is_file()
