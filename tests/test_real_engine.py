"""A real inference engine end to end on the CPU: llama.cpp's server behind modelplane.

The engine is llama-cpp-python's OpenAI-compatible server, built from source by
``deploy/testbed/engine.sh`` (``make engine``) where the engine user can run it; the models are
real GGUF files the testbed writes (:mod:`testbed.gguf`): a tiny Llama with random weights, a
byte-level BPE tokenizer and a ChatML template, and the real all-MiniLM-L6-v2. Everything goes
through the public API: ``createModel`` downloads from the local hub, ``startInference`` runs
the engine as a CUSTOM command on the local runtime (admins only, host commands allowed) as the
default engine user (``nobody``: the server runs as root here), on the port and weights that
modelplane hands it as ``$PORT`` and ``$MODEL_PATH``; the inference is RUNNING only once the
engine's own ``/v1/models`` answers, and the official ``openai`` client talks to the gateway.
The failure cases run the same engine on a truncated file and with vLLM's flag for the served
name, and expect the engine's own error line in the status and the logs.

Memory (printed by the test; ``tests/artifacts/engine-memory.json``; llama-cpp-python 0.3.36,
2 busy cores): the chat engine peaked at 79-91 MiB RSS for a 0.4 MiB GGUF, the embedding
engine at 199-206 MiB for 87 MiB. ``gpuFit`` says 1536 / 1623 MiB for CUSTOM and 512 / 599 MiB
for OLLAMA: off by 17-19x (CUSTOM) and 3-6x (OLLAMA), on purpose. It answers "how many GPUs of
which type", and its terms are GPU memory: the weights term is exact (the GGUF's size: the
engine maps all of it), the KV cache is 0 (a GGUF repo has no config.json; the chat model's
would be 0.125 MiB in f16 at its 512 tokens), and the rest is the per-GPU overhead of
``services/fitting.py`` (CUDA context, CUDA graphs, cuBLAS workspaces; llama.cpp's CUDA context
for OLLAMA), none of which a CPU process has. A CPU engine's own cost is its runtime instead:
peak RSS less the GGUF is 79-91 MiB for the chat model (Python, FastAPI, llama.cpp) and
112-120 MiB for the embedding model. Neither is a GPU figure, so the estimate is left as it
is; a host-memory estimate would be a field of its own.
"""

from __future__ import annotations

import json
import math
import pwd
import shlex
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from modelplane.embedded import free_port
from storage.client import Client
from storage.documents import Role
from testbed.engine import Engine, ensure_engine
from testbed.gguf import CHAT_FILE, EMBEDDING_FILE, chat_gguf, chat_repo, embedding_repo
from testbed.hub import LocalHub, RunningHub, running_hub
from testbed.repos import HubFile, HubRepo
from tests import helpers
from tests.conftest import RunningApp, make_settings, serve_app
from tests.graphql_client import run
from tests.test_weights_api import create_local, ready, wait_model

pytestmark = [pytest.mark.engine, pytest.mark.slow, pytest.mark.timeout(600)]

CHAT_REPO = "engine-org/tiny-chat-gguf"
EMBEDDING_REPO = "engine-org/all-minilm-l6-v2-gguf"
TRUNCATED_REPO = "engine-org/truncated-chat-gguf"
ORG = "org-a"
MEMORY_REPORT = Path(__file__).resolve().parent / "artifacts" / "engine-memory.json"


@pytest.fixture(scope="session")
def engine() -> Engine:
    return ensure_engine()


@pytest.fixture(scope="session")
def engine_hub(engine: Engine) -> Iterator[RunningHub]:
    whole = chat_gguf(seed=TRUNCATED_REPO)
    truncated = HubRepo(TRUNCATED_REPO, (HubFile.of(CHAT_FILE, whole[: len(whole) // 2]),))
    repos = [chat_repo(CHAT_REPO), embedding_repo(engine.minilm, EMBEDDING_REPO), truncated]
    with running_hub(LocalHub(repos)) as running:
        yield running


@pytest.fixture
def state_parent() -> Iterator[Path]:
    """Where the state directory goes: a folder others may search, as a deployment's
    ``/var/lib/modelplane`` is (pytest's tmp_path sits under a 0700 folder, which the engine
    user could not cross: modelplane refuses that with PermissionDenied, see
    tests/security/test_runtime.py)."""
    parent = Path(tempfile.mkdtemp(prefix="mp-engine-"))
    parent.chmod(0o755)
    try:
        yield parent
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
async def engine_app(
    state_parent: Path, mongo_uri: str, mongo_client: Client, engine_hub: RunningHub
) -> AsyncIterator[RunningApp]:
    # The engine is a command of the admin's choice (CUSTOM), run as the default engine user
    # (nobody, when the tests run as root): engine.sh installs it where that user can run it.
    settings = make_settings(
        state_parent, mongo_uri, hf_endpoint=engine_hub.endpoint, allow_host_commands=True
    )
    assert settings.engine_user == "nobody"
    async with serve_app(settings, mongo_client) as running:
        yield running


def editor(app: RunningApp) -> str:
    return app.token(role=Role.EDITOR, organization=ORG)


def admin(app: RunningApp) -> str:
    return app.token(role=Role.ADMIN, organization=ORG)


async def downloaded(app: RunningApp, repo: str, name: str) -> dict[str, Any]:
    created = await create_local(app, repo, name=name)
    model = await wait_model(app, created["id"], ready, timeout=120)
    assert model["phase"] == "READY", model
    return model


async def start_engine(
    app: RunningApp, model: dict[str, Any], engine: Engine, *args: str, model_file: str = CHAT_FILE
) -> tuple[dict[str, Any], int]:
    port = free_port()
    server = shlex.join(engine.server_argv("--host", "127.0.0.1", *args))
    # The port and the weights come from the environment modelplane gives a CUSTOM engine.
    command = ["sh", "-c", f'exec {server} --port "$PORT" --model "$MODEL_PATH/{model_file}"']
    data = await run(
        app.graphql_url,
        "StartInference",
        {
            "modelId": model["id"],
            "input": {
                "engine": "CUSTOM",
                "command": command,
                "port": port,
                "healthPath": "/v1/models",
            },
        },
        token=admin(app),
    )
    result: dict[str, Any] = data["startInference"]
    assert result["__typename"] == "InferencePayload", result
    return result["inference"], port


async def wait_inference(
    app: RunningApp, inference_id: str, phases: set[str], *, timeout: float = 180
) -> dict[str, Any]:
    return await helpers.wait_inference(
        app.graphql_url, editor(app), inference_id, phases, timeout=timeout
    )


async def logs(app: RunningApp, inference_id: str) -> list[str]:
    data = await run(
        app.graphql_url, "InferenceLogs", {"id": inference_id, "tail": 2000}, token=editor(app)
    )
    lines: list[str] = data["inferenceLogs"]["lines"]
    return lines


async def stop(app: RunningApp, model: dict[str, Any], inference_id: str) -> None:
    await run(app.graphql_url, "StopInference", {"modelId": model["id"]}, token=editor(app))
    await wait_inference(app, inference_id, {"STOPPED"})


def engine_pids(port: int) -> list[int]:
    """The llama.cpp servers given ``port`` on their command line."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"llama_cpp.server" in argv and str(port).encode() in argv:
            found.append(int(proc.name))
    return found


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def process_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid for {pid}")


def memory_line(name: str, figures: dict[str, Any]) -> str:
    """Measured against estimated, in MiB: the engine's peak RSS and the GGUF it loaded, then
    gpuFit's total and terms for CUSTOM, and its total for OLLAMA."""

    def mib(value: int | str) -> str:
        return f"{int(value) / 2**20:.1f}"

    custom = figures["fit_custom"]
    return (
        f"{name}: engine peak RSS {mib(figures['peak_rss_bytes'])} MiB "
        f"(GGUF {mib(figures['gguf_bytes'])} MiB); gpuFit CUSTOM {mib(custom['totalBytes'])} MiB "
        f"= weights {mib(custom['weightsBytes'])} + KV cache {mib(custom['kvCacheBytes'])} "
        f"+ GPU overhead {mib(custom['overheadBytes'])}; gpuFit OLLAMA "
        f"{mib(figures['fit_ollama']['totalBytes'])} MiB"
    )


async def fit(app: RunningApp, model: dict[str, Any], engine: str) -> dict[str, Any]:
    data = await run(
        app.graphql_url, "GpuFit", {"modelId": model["id"], "engine": engine}, token=editor(app)
    )
    result: dict[str, Any] = data["gpuFit"]
    assert result["__typename"] == "GpuFit", result
    return result


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


async def chat_whole_and_streamed(client: AsyncOpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Hello"}]
    whole = await client.chat.completions.create(
        model="tiny-chat", messages=messages, max_tokens=16, temperature=0
    )
    assert whole.model == "tiny-chat"
    choice = whole.choices[0]
    # The model never picks a special token (testbed.gguf._output): it talks until max_tokens.
    assert choice.finish_reason == "length"
    answer = choice.message.content
    assert answer
    assert answer.isprintable(), answer
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 16
    # The ChatML template and the byte-level BPE ran: <|im_start|> user \n Hello <|im_end|> \n
    # <|im_start|> assistant \n is 23 tokens with this vocabulary.
    assert whole.usage.prompt_tokens == 23, whole.usage

    stream = await client.chat.completions.create(
        model="tiny-chat", messages=messages, max_tokens=16, temperature=0, stream=True
    )
    pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert len([piece for piece in pieces if piece]) == 16
    # Greedy decoding: the stream says, token by token, what the whole answer said.
    assert "".join(pieces) == answer


async def embed(client: AsyncOpenAI) -> None:
    texts = ["A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell sharply."]
    embedded = await client.embeddings.create(model="minilm", input=texts)
    vectors = [item.embedding for item in embedded.data]
    assert [len(v) for v in vectors] == [384, 384, 384]
    # A real sentence embedding: the two sentences about cats are the closest pair (measured:
    # 0.67 against 0.05).
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2


async def test_chat_and_embeddings_through_the_gateway(
    engine_app: RunningApp, engine: Engine, engine_hub: RunningHub
) -> None:
    app = engine_app
    chat = await downloaded(app, CHAT_REPO, "tiny-chat")
    embedder = await downloaded(app, EMBEDDING_REPO, "minilm")
    chat_inference, chat_port = await start_engine(
        app, chat, engine, "--model_alias", "tiny-chat", "--n_ctx", "512"
    )
    embed_inference, embed_port = await start_engine(
        app,
        embedder,
        engine,
        "--model_alias",
        "minilm",
        "--embedding",
        "true",
        model_file=EMBEDDING_FILE,
    )
    for inference, port in ((chat_inference, chat_port), (embed_inference, embed_port)):
        running = await wait_inference(app, inference["id"], {"RUNNING", "FAILED"})
        assert running["phase"] == "RUNNING", running
        history = [entry["phase"] for entry in running["phaseHistory"]]
        # CREATING ("waiting for the engine to answer its health check") until it answered.
        assert history == ["PENDING", "CREATING", "RUNNING"], running["phaseHistory"]
        # RUNNING means the engine's own health path answered: it lists the served name.
        async with httpx.AsyncClient() as http:
            listed = (await http.get(f"http://127.0.0.1:{port}/v1/models")).json()
        assert [m["id"] for m in listed["data"]] == [running["modelName"]]

    key = await run(
        app.graphql_url, "CreateApiKey", {"name": "engine", "role": "EDITOR"}, token=admin(app)
    )
    api_key = key["createApiKey"]["key"]
    async with AsyncOpenAI(
        base_url=f"{app.base_url}/v1", api_key=api_key, max_retries=0, timeout=120
    ) as client:
        models = await client.models.list()
        assert {"tiny-chat", "minilm"} <= {m.id for m in models.data}

        await chat_whole_and_streamed(client)
        await embed(client)

    chat_lines = await logs(app, chat_inference["id"])
    assert any("llama_model_loader" in line for line in chat_lines), chat_lines[-20:]
    assert any("Uvicorn running on" in line for line in chat_lines), chat_lines[-20:]

    # What the engine really used, beside what the fit estimate says it needs (see the module
    # docstring): the weights term is the GGUF file; the engine held all of it.
    report: dict[str, Any] = {}
    for name, model, port, repo in (
        ("chat", chat, chat_port, CHAT_REPO),
        ("embedding", embedder, embed_port, EMBEDDING_REPO),
    ):
        (pid,) = engine_pids(port)
        gguf_size = engine_hub.hub.repos[repo].by_path[CHAT_FILE].size
        report[name] = {
            "pid": pid,
            "peak_rss_bytes": peak_rss_bytes(pid),
            "gguf_bytes": gguf_size,
            "fit_custom": (await fit(app, model, "CUSTOM"))["requiredBytes"],
            "fit_ollama": (await fit(app, model, "OLLAMA"))["requiredBytes"],
        }
        assert report[name]["fit_custom"]["weightsBytes"] == gguf_size
        assert report[name]["peak_rss_bytes"] > gguf_size
        assert process_uid(pid) == pwd.getpwnam("nobody").pw_uid  # the default engine user
        print(memory_line(name, report[name]))  # noqa: T201  the figures, for the record
    MEMORY_REPORT.parent.mkdir(exist_ok=True)
    MEMORY_REPORT.write_text(json.dumps(report, indent=2) + "\n")

    for model, inference in ((chat, chat_inference), (embedder, embed_inference)):
        await stop(app, model, inference["id"])
    for name in report:
        assert not Path(f"/proc/{report[name]['pid']}").exists(), f"{name} engine still runs"
    async with AsyncOpenAI(base_url=f"{app.base_url}/v1", api_key=api_key, max_retries=0) as client:
        assert not {"tiny-chat", "minilm"} & {m.id for m in (await client.models.list()).data}


@pytest.mark.parametrize(
    ("repo", "flags", "message_words", "log_words"),
    [
        pytest.param(
            TRUNCATED_REPO,
            ("--model_alias", "truncated"),
            "Failed to load model from file",
            "error loading model",
            id="truncated-weights",
        ),
        pytest.param(
            CHAT_REPO,
            ("--served-model-name", "tiny-chat"),
            "unrecognized arguments: --served-model-name tiny-chat",
            "usage:",
            id="vllm-served-name-flag",
        ),
    ],
)
async def test_engine_failure_is_reported_with_its_own_error_line(
    engine_app: RunningApp,
    engine: Engine,
    repo: str,
    flags: tuple[str, ...],
    message_words: str,
    log_words: str,
) -> None:
    app = engine_app
    model = await downloaded(app, repo, "broken")
    inference, port = await start_engine(app, model, engine, *flags)
    failed = await wait_inference(
        app, inference["id"], {"CRASH_LOOP_BACK_OFF", "FAILED", "RUNNING"}
    )
    # The engine exits (1: the load failed; 2: argparse refused the flag), is restarted, and
    # after three exits without ever answering its health check the phase says so.
    assert failed["phase"] == "CRASH_LOOP_BACK_OFF", failed
    assert failed["reason"] == "CrashLoopBackOff"
    assert message_words in (failed["message"] or ""), failed
    lines = await logs(app, inference["id"])
    assert any(log_words in line for line in lines), lines[-20:]
    assert any(message_words in line for line in lines), lines[-20:]
    await stop(app, model, inference["id"])
    assert engine_pids(port) == []
