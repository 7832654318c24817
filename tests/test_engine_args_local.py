"""``engineArgs`` on the local runtime, through the API against real servers (FerretDB, the local
hub, the loopback git server): the engine process's argv carries them, a dry run shows them,
``updateInference`` restarts the process with the new ones, bad input is refused naming the
field with nothing written, and a catalogue entry's ``--dtype`` and
``--gpu-memory-utilization`` reach the process of a one-call install.

The stand-in ``vllm`` is tests/test_inference_local.py's, printing its argv (JSON) first, so the
inference's logs show the command line the supervisor ran.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from storage.client import Client
from storage.documents import Role
from testbed.git import Author, GitServer
from testbed.hub import RunningHub
from tests import helpers
from tests.conftest import RunningApp, make_settings, serve_app
from tests.git_fixtures import GIT_PASSWORD
from tests.graphql_client import run
from tests.helpers import weights_area
from tests.test_inference_local import STAND_IN_SERVER, ready_model

ORG = "org-a"
ARGV_VLLM = (
    '''#!{python}
"""A stand-in vLLM that prints its command line, then serves like vLLM."""
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = sys.argv[1:]
print("argv: " + json.dumps(args), flush=True)
def flag(name):
    return args[args.index(name) + 1]
name, host, port = flag("--served-model-name"), flag("--host"), int(flag("--port"))
'''
    + STAND_IN_SERVER
)
FLAGS = ["--dtype=float16", "--gpu-memory-utilization=0.8"]


@pytest.fixture
async def app(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub, monkeypatch: Any
) -> AsyncIterator[RunningApp]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    vllm = bin_dir / "vllm"
    vllm.write_text(ARGV_VLLM.format(python=sys.executable))
    vllm.chmod(vllm.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    settings = make_settings(
        tmp_path, mongo_uri, hf_endpoint=hub.endpoint, allow_host_commands=True, engine_user=""
    )
    async with serve_app(settings, mongo_client) as running:
        yield running


def token(app: RunningApp, role: Role = Role.EDITOR) -> str:
    return app.token(role=role, organization=ORG)


async def call(app: RunningApp, operation: str, role: Role = Role.EDITOR, **variables: Any) -> Any:
    data = await run(app.graphql_url, operation, variables, token=token(app, role))
    return next(iter(data.values()))


async def argv_of(app: RunningApp, inference_id: str, *, after: int = 0) -> list[str]:
    """The command line the engine printed last (waiting for a line past the ``after``-th)."""
    deadline = time.monotonic() + 30
    while True:
        logs = await call(app, "InferenceLogs", id=inference_id, tail=200)
        printed = [line for line in logs["lines"] if line.startswith("argv: ")]
        if len(printed) > after:
            found: list[str] = json.loads(printed[-1].removeprefix("argv: "))
            return found
        assert time.monotonic() < deadline, logs
        await asyncio.sleep(0.1)


async def test_the_process_argv_carries_them_and_an_update_restarts_with_new_ones(
    app: RunningApp,
) -> None:
    model = await ready_model(app)
    started = await call(app, "StartInference", modelId=model["id"], input={"engineArgs": FLAGS})
    assert started["__typename"] == "InferencePayload", started
    inference = started["inference"]
    assert inference["spec"]["engineArgs"] == FLAGS
    running = await helpers.wait_inference(
        app.graphql_url, token(app), inference["id"], {"RUNNING", "FAILED"}, timeout=30
    )
    assert running["phase"] == "RUNNING", running
    argv = await argv_of(app, inference["id"])
    assert argv[:4] == ["serve", argv[1], "--served-model-name", model["name"]]
    assert argv[-2:] == FLAGS

    updated = await call(
        app, "UpdateInference", modelId=model["id"], input={"engineArgs": ["--dtype=bfloat16"]}
    )
    assert updated["__typename"] == "InferencePayload", updated
    assert updated["inference"]["spec"]["engineArgs"] == ["--dtype=bfloat16"]
    argv = await argv_of(app, inference["id"], after=1)
    assert argv[-1] == "--dtype=bfloat16"
    assert "--gpu-memory-utilization=0.8" not in argv
    again = await helpers.wait_inference(
        app.graphql_url, token(app), inference["id"], {"RUNNING"}, timeout=30
    )
    assert again["observedGeneration"] == again["generation"]
    await call(app, "StopInference", modelId=model["id"])
    await helpers.wait_inference(app.graphql_url, token(app), inference["id"], {"STOPPED"})


async def test_a_dry_run_shows_them_and_writes_nothing(app: RunningApp) -> None:
    model = await ready_model(app)
    planned = await call(
        app, "StartInference", modelId=model["id"], input={"engineArgs": FLAGS}, dryRun=True
    )
    assert planned["__typename"] == "InferencePayload", planned
    assert planned["dryRun"] is True
    assert all(flag in planned["manifests"][0] for flag in FLAGS), planned["manifests"][0]
    assert planned["inference"]["spec"]["engineArgs"] == FLAGS
    assert await app.resources.database["inferences"].count_documents({}) == 0


REFUSED: list[tuple[str, dict[str, Any], str, str]] = [
    ("port", {"engineArgs": ["--port", "9000"]}, "input.engineArgs[0]", "input.port"),
    ("served-name", {"engineArgs": ["--served-model-name=x"]}, "input.engineArgs[0]", "name"),
    ("model", {"engineArgs": ["--model=/etc"]}, "input.engineArgs[0]", "weights"),
    (
        "tensor-parallel",
        {"engineArgs": ["--dtype=half", "--tensor-parallel-size=2"]},
        "input.engineArgs[1]",
        "input.resources.gpu",
    ),
    (
        "max-model-len",
        {"engineArgs": ["--max-model-len=8"]},
        "input.engineArgs[0]",
        "contextLength",
    ),
    ("bare-value", {"engineArgs": ["float16"]}, "input.engineArgs[0]", "following a --flag"),
    ("short", {"engineArgs": ["-tp", "2"]}, "input.engineArgs[0]", "long form"),
    ("too-many", {"engineArgs": ["--enforce-eager"] * 65}, "input.engineArgs", "at most 64"),
    ("too-large", {"engineArgs": ["--x=" + "y" * 4096]}, "input.engineArgs", "4096"),
    (
        "with-args",
        {"engineArgs": ["--dtype=half"], "args": ["serve", "/w"]},
        "input.engineArgs",
        "input.args",
    ),
    ("ollama", {"engineArgs": ["--dtype=half"], "engine": "OLLAMA"}, "input.engineArgs", "OLLAMA"),
]


@pytest.mark.parametrize(
    ("value", "field", "words"), [row[1:] for row in REFUSED], ids=[row[0] for row in REFUSED]
)
async def test_bad_engine_args_are_refused_naming_the_field_and_nothing_is_written(
    app: RunningApp, value: dict[str, Any], field: str, words: str
) -> None:
    model = await ready_model(app)
    engines = app.resources.settings.state_dir / "engines"
    before = sorted(engines.rglob("*")) if engines.exists() else []
    database = app.resources.database
    events = await database["events"].count_documents({"resource_kind": "INFERENCE"})
    for operation in ("StartInference", "UpdateInference"):
        role = Role.ADMIN if "args" in value else Role.EDITOR
        refused = await call(app, operation, role, modelId=model["id"], input=value)
        if operation == "UpdateInference":  # nothing to update: the model has no inference
            assert refused["__typename"] == "NotFoundError", refused
            continue
        assert refused["__typename"] == "ValidationError", refused
        assert refused["field"] == field
        assert words in refused["errorMessage"]
    assert await database["inferences"].count_documents({}) == 0
    assert await database["events"].count_documents({"resource_kind": "INFERENCE"}) == events
    assert (sorted(engines.rglob("*")) if engines.exists() else []) == before


async def test_a_running_inference_keeps_its_spec_when_an_update_is_refused(
    app: RunningApp,
) -> None:
    model = await ready_model(app)
    started = await call(app, "StartInference", modelId=model["id"], input={"engineArgs": FLAGS})
    inference_id = started["inference"]["id"]
    stored = await app.resources.database["inferences"].find_one({"_id": inference_id})
    refused = await call(
        app, "UpdateInference", modelId=model["id"], input={"engineArgs": ["--port=1"]}
    )
    assert refused["__typename"] == "ValidationError", refused
    assert refused["field"] == "input.engineArgs[0]"
    after = await app.resources.database["inferences"].find_one({"_id": inference_id})
    assert after is not None
    assert stored is not None
    assert (after["spec"], after["generation"]) == (stored["spec"], stored["generation"])
    # A flag that reads files of the host is a program of the user's here: ADMIN only.
    forbidden = await call(
        app,
        "UpdateInference",
        modelId=model["id"],
        input={"engineArgs": ["--trust-remote-code"]},
    )
    assert forbidden["__typename"] == "ForbiddenError", forbidden
    assert "input.engineArgs[0]" in forbidden["errorMessage"]
    await call(app, "StopInference", modelId=model["id"])
    await helpers.wait_inference(app.graphql_url, token(app), inference_id, {"STOPPED"})


ENTRY = """\
name: tiny-flags
source:
  repo: tiny-org/tiny-model
engine: VLLM
flags:
  max-model-len: 2048
  dtype: float16
  gpu-memory-utilization: 0.8
resources: {cpu: "1", memory: 2Gi, gpu: 1}
"""


async def test_a_catalogue_install_starts_with_the_entrys_flags(
    app: RunningApp, git_remote: GitServer, tmp_path: Path
) -> None:
    name = f"cat-{uuid.uuid4().hex[:8]}"
    author = Author(git_remote.create(name), tmp_path / f"author-{name}")
    author.commit("one", {"models/tiny-flags.yaml": ENTRY})
    source = {
        "url": git_remote.url(name),
        "branch": "main",
        "folder": "models",
        "username": git_remote.username,
        "password": GIT_PASSWORD,
    }
    configured = await call(app, "ConfigureCatalog", Role.ADMIN, source=source)
    assert configured["__typename"] != "ValidationError", configured
    area = weights_area(app.resources.settings.local_roots, ORG)
    installed = await call(
        app,
        "InstallCatalogEntry",
        input={
            "name": "tiny-flags",
            "downloadTarget": {"local": {"localPath": str(area / "tiny-flags")}},
            "startInference": True,
        },
    )
    assert installed["__typename"] == "InstalledCatalogEntry", installed
    inference = installed["inference"]["inference"]
    assert inference["spec"]["engineArgs"] == FLAGS
    running = await helpers.wait_inference(
        app.graphql_url, token(app), inference["id"], {"RUNNING", "FAILED"}, timeout=60
    )
    assert running["phase"] == "RUNNING", running
    argv = await argv_of(app, inference["id"])
    assert argv[argv.index("--max-model-len") + 1] == "2048"
    assert argv[-2:] == FLAGS
    await call(app, "StopInference", modelId=installed["model"]["id"])
    await helpers.wait_inference(app.graphql_url, token(app), inference["id"], {"STOPPED"})
