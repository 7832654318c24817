"""The operator dashboard: served at ``/`` (503 with a hint until it is built), its assets under
``/static/``, and the real page in headless Chromium: adding a model on ``#/add``, following
each file's download on the model's page, then the models table live across a cut WebSocket,
then a refused start, a dry run, starting, watching and stopping the model's inference on its
page on the local runtime (``dashboard/tests/e2e.mjs``, driven by playwright-core; the engine is
the stand-in ``vllm`` of tests/test_inference_local.py, first on PATH)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from modelplane.app import create_app
from modelplane.dashboard import DEFAULT_DIR, NOT_BUILT
from modelplane.logs import redact
from modelplane.settings import load_settings
from storage.client import Client
from storage.documents import Role
from testbed.hub import RunningHub
from tests.conftest import RunningApp, make_settings, serve_app
from tests.graphql_client import execute
from tests.test_inference_local import FAKE_VLLM

REPO_ROOT = Path(__file__).resolve().parent.parent
E2E_SCRIPT = REPO_ROOT / "dashboard" / "tests" / "e2e.mjs"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
SCREENSHOTS = (
    "dashboard-model-progress.png",
    "dashboard-models-resumed.png",
    "dashboard-model.png",
)
KiB = 1024


def _client(dashboard_dir: Path) -> httpx.AsyncClient:
    """The app over ASGI without its lifespan: the dashboard routes need no resources."""
    app = create_app(load_settings(dashboard_dir=dashboard_dir))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_root_says_how_to_build_the_dashboard_when_it_is_missing(tmp_path: Path) -> None:
    async with _client(tmp_path / "not-built") as http:
        page = await http.get("/")
        asset = await http.get("/static/app.js")
    assert page.status_code == 503
    assert page.text == NOT_BUILT
    assert "make dashboard" in page.text
    assert asset.status_code == 404


async def test_root_serves_the_page_and_static_serves_its_assets(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>modelplane</title>")
    (tmp_path / "app-ABC123.js").write_text("console.log('hi');")
    (tmp_path.parent / "secret.txt").write_text("outside")
    async with _client(tmp_path) as http:
        page = await http.get("/")
        asset = await http.get("/static/app-ABC123.js")
        escape = await http.get("/static/..%2Fsecret.txt")
        missing = await http.get("/static/nope.js")
        index_as_asset = await http.get("/static/index.html")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache"
    assert "<title>modelplane</title>" in page.text
    assert asset.status_code == 200
    assert "javascript" in asset.headers["content-type"]
    assert "immutable" in asset.headers["cache-control"]
    assert escape.status_code == 404
    assert missing.status_code == 404
    assert index_as_asset.status_code == 404


async def test_server_info_names_local_roots_only_to_authenticated_callers(
    running_app: RunningApp,
) -> None:
    query = {"query": "{ serverInfo { localRoots } }"}
    token = running_app.token(role=Role.VIEWER)
    async with httpx.AsyncClient() as http:
        anonymous = (await http.post(running_app.graphql_url, json=query)).json()
        signed_in = (
            await http.post(
                running_app.graphql_url,
                json=query,
                headers={"Authorization": f"Bearer {token}"},
            )
        ).json()
    assert anonymous == {"data": {"serverInfo": {"localRoots": None}}}
    roots = [  # the caller's organisation's area under each root
        str(root.resolve() / "default") for root in running_app.resources.settings.local_roots
    ]
    assert signed_in == {"data": {"serverInfo": {"localRoots": roots}}}


@pytest.fixture
async def running_app(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> AsyncIterator[RunningApp]:
    """conftest's app, but local engines run as this process's user (``engine_user=""``): the
    stand-in ``vllm`` and the Python it runs live under pytest's 0700 temporary directory and
    /root, which the default engine user ``nobody`` cannot reach."""
    settings = make_settings(tmp_path, mongo_uri, hf_endpoint=hub.endpoint, engine_user="")
    async with serve_app(settings, mongo_client) as running:
        yield running


@pytest.fixture
def throttled_hub(hub: RunningHub) -> Iterator[None]:
    """Weights at 256 KiB/s: the 2 MB download lasts about 8 s, long enough to cut a socket."""
    hub.hub.faults.clear()
    hub.hub.faults.throttle("*.safetensors", 256 * KiB)
    yield
    hub.hub.faults.clear()


@pytest.fixture
def fake_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in ``vllm`` first on PATH: the in-process modelplane's local runtime runs it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    vllm = bin_dir / "vllm"
    vllm.write_text(FAKE_VLLM.format(python=sys.executable))
    vllm.chmod(vllm.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return bin_dir


def _browser_prerequisites() -> str:
    """The node binary; fails the test (never skips it) naming what is missing and the fix."""
    problems: list[str] = []
    node = shutil.which("node")
    if node is None:
        problems.append("node is not on PATH")
    if not CHROMIUM.exists():
        problems.append(f"Chromium is missing at {CHROMIUM}: run `make browser`")
    if not (DEFAULT_DIR / "index.html").is_file():
        problems.append("the dashboard is not built: run `make dashboard`")
    if not (REPO_ROOT / "dashboard" / "node_modules" / "playwright-core").is_dir():
        problems.append("playwright-core is not installed: run `make dashboard`")
    if problems or node is None:
        pytest.fail("browser test cannot run: " + "; ".join(problems))
    return node


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.usefixtures("throttled_hub", "fake_vllm")
async def test_dashboard_follows_a_download_across_a_cut_websocket_then_serves_it(
    running_app: RunningApp,
) -> None:
    node = _browser_prerequisites()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name in SCREENSHOTS:
        (ARTIFACTS / name).unlink(missing_ok=True)
    process = await asyncio.create_subprocess_exec(
        node,
        str(E2E_SCRIPT),
        "--url",
        running_app.base_url,
        "--artifacts",
        str(ARTIFACTS),
        "--timeout",
        "180",
        cwd=REPO_ROOT,
        env={**os.environ, "MODELPLANE_TOKEN": running_app.token(role=Role.EDITOR)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    assert process.returncode == 0, f"e2e.mjs failed:\n{text}"
    summary = json.loads(text.strip().splitlines()[-1])
    assert summary["ok"] is True
    assert len(summary["progress"]) >= 1  # the row's bar before the cut
    assert int(summary["resumedAfterCursor"]) > 0
    files = summary["files"]  # [path, bytes done, bytes total] of a file being written
    assert len(files) >= 2
    assert files[0][0] != files[1][0] or files[0][1] < files[1][1]
    phases = summary["inferencePhases"]
    assert phases.index("RUNNING") < phases.index("STOPPED"), phases
    assert summary["timeline"][0] == "PENDING"
    assert summary["timeline"][-2:] == ["RUNNING", "STOPPED"]
    assert summary["logLines"] >= 1
    assert "INFERENCE:STOPPED" not in summary["modelTimeline"]  # read while it was RUNNING
    for name in SCREENSHOTS:
        assert (ARTIFACTS / name).is_file(), name

    body = await execute(
        running_app.graphql_url,
        f'{{ model(id: "{summary["modelId"]}") {{ phase weights {{ state }} '
        "inferencePhase inference { phase enabled } } }",
        token=running_app.token(role=Role.VIEWER),
    )
    assert body["data"]["model"] == {  # a completed stop leaves the model without an inference
        "phase": "READY",
        "weights": {"state": "READY"},
        "inferencePhase": None,
        "inference": None,
    }


def test_the_token_in_the_dashboard_url_never_reaches_the_logs() -> None:
    """`make run` prints `/?token=...`; uvicorn's access log line for it is redacted."""
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    line = f'127.0.0.1:5000 - "GET /?token={token} HTTP/1.1" 200'
    assert token not in redact(line)
    assert "eyJzdWIiOiJhZG1pbiJ9" not in redact(line)
