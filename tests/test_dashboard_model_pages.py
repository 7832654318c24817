"""The model pages in headless Chromium against a real modelplane (dashboard/tests/
model-pages.mjs, one case per test): the models table with 1,000 models (the true total,
paging, search, a filter and a sort kept in the address across Back and a reload, a model
created elsewhere appearing live, a delete confirmed with the keyboard); the add form used with
the keyboard only (labels, focus order, a union error next to the field it names, the API key
never shown again); a model's page cancelling, retrying and deleting a download."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from storage.client import Client
from storage.documents import Role
from testbed.hub import RunningHub
from testbed.seed_models import seed_models
from tests.conftest import RunningApp, make_settings, serve_app
from tests.graphql_client import run
from tests.test_dashboard import REPO_ROOT, _browser_prerequisites

SCRIPT = REPO_ROOT / "dashboard" / "tests" / "model-pages.mjs"
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
KiB = 1024


@pytest.fixture
async def running_app(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> AsyncIterator[RunningApp]:
    settings = make_settings(tmp_path, mongo_uri, hf_endpoint=hub.endpoint, engine_user="")
    async with serve_app(settings, mongo_client) as running:
        yield running


@pytest.fixture
def throttled_hub(hub: RunningHub) -> Iterator[None]:
    """Weights at 128 KiB/s: the 1.7 MB download lasts long enough to cancel and retry."""
    hub.hub.faults.clear()
    hub.hub.faults.throttle("*.safetensors", 128 * KiB)
    yield
    hub.hub.faults.clear()


async def browse(app: RunningApp, case: str, *extra: str) -> dict[str, Any]:
    """Runs one case of model-pages.mjs; returns its summary line."""
    node = _browser_prerequisites()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        node,
        str(SCRIPT),
        "--url",
        app.base_url,
        "--case",
        case,
        "--artifacts",
        str(ARTIFACTS),
        *extra,
        cwd=REPO_ROOT,
        env={**os.environ, "MODELPLANE_TOKEN": app.token(role=Role.EDITOR)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    assert process.returncode == 0, f"model-pages.mjs {case} failed:\n{text}"
    summary: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    assert summary["ok"] is True
    return summary


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_the_models_page_pages_searches_and_follows_1000_models(
    running_app: RunningApp,
) -> None:
    await seed_models(running_app.resources.database, organization_id="default", count=1000)
    summary = await browse(running_app, "models")
    drawn = summary["firstRenderMs"]
    print(f"first page of 1,000 models drawn {drawn} ms after navigation")  # noqa: T201
    assert (ARTIFACTS / "dashboard-models.png").is_file()
    stored = await running_app.resources.database["models"].find_one({"_id": summary["createdId"]})
    assert stored is not None
    assert stored["is_deleted"] is True
    assert (
        await running_app.resources.database["models"].count_documents({"is_deleted": False})
        == 1000
    )


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_the_add_form_works_with_the_keyboard_alone(running_app: RunningApp) -> None:
    summary = await browse(running_app, "add")
    print(summary["patternError"])  # noqa: T201  the refusal as the page showed it
    assert "*.gguf" in summary["patternError"]
    assert "kubernetes" in summary["pvcError"]
    assert (ARTIFACTS / "dashboard-add.png").is_file()
    models = running_app.resources.database["models"]
    assert await models.count_documents({}) == 1  # the refused ones left nothing behind
    stored = await models.find_one({"_id": summary["modelId"]})
    assert stored is not None
    assert stored["source"]["access_mode"] == "REMOTE_API"
    assert "sk-never-shown-again-4242" not in json.dumps(stored, default=str)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.usefixtures("throttled_hub")
async def test_the_model_page_cancels_retries_and_deletes(running_app: RunningApp) -> None:
    root = running_app.resources.settings.local_roots[0].resolve() / "default"
    data = await run(
        running_app.graphql_url,
        "CreateModel",
        {
            "input": {
                "source": {"url": "tiny-org/tiny-model", "accessMode": "LOCAL"},
                "downloadTarget": {"local": {"localPath": str(root / "tiny-org/tiny-model")}},
            }
        },
        token=running_app.token(role=Role.EDITOR),
    )
    model_id = data["createModel"]["id"]
    await browse(running_app, "model", "--model-id", model_id)
    assert (ARTIFACTS / "dashboard-model-retry.png").is_file()
    stored = await running_app.resources.database["models"].find_one({"_id": model_id})
    assert stored is not None
    assert stored["is_deleted"] is True
