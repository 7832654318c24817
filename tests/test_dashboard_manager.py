"""The dashboard's model-manager pages in headless Chromium (``dashboard/tests/manager.mjs``,
driven by playwright-core like tests/test_dashboard_pages.py), against real servers:

* Catalogue, against the loopback git server (tests/git_fixtures.py): the source configured
  through the page (the password never shown), the entries with the invalid one's problems as
  file:line field message, the valid/invalid filter in the address, an install refused next to
  the local path then done (the model exists and its page opens), an entry generated from the
  local hub, checked, refused on ``main`` next to the branch field, then proposed: the branch is
  on the remote.
* Storage alerts: an S3 prefix on MinIO with a quota and a 50 % threshold
  (``storage_alert_thresholds`` / ``storage_alert_s3_quotas``, checked every 0.2 s): weights
  pre-fetched into it through the page's form (its S3 fields) reach READY live, the ALERT
  badge appears live through ``storageAlerts``, and clears live once the weights are deleted.
* Catalogue, a force-pushed branch: the last good snapshot shown with FORCE_PUSHED; adopting it
  asks first (dismissed: nothing sent), then the rewritten commit is synced.
* Pre-fetch: a pattern matching nothing refused next to the patterns field (nothing stored);
  the form with patterns, the weights appearing with progress (the hub throttled), cancelled,
  retried and READY, live; the stored weights carry the patterns; History lists the cancelled
  attempt and the one that finished.
* System: versions, runtime, the leases this replica holds.

Screenshots: tests/artifacts/dashboard-{catalogue,catalogue-draft,storage-alerts,prefetch,
prefetch-ready,system}.png.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from storage.client import Client
from storage.documents import Role
from testbed.git import Author, GitServer
from testbed.hub import RunningHub
from testbed.servers import S3Server
from tests.conftest import RunningApp, make_settings, serve_app
from tests.git_fixtures import GIT_PASSWORD
from tests.graphql_client import run
from tests.helpers import bucket_on
from tests.test_catalogue import GOOD, MALFORMED, OTHER
from tests.test_dashboard import REPO_ROOT, _browser_prerequisites

SCRIPT = REPO_ROOT / "dashboard" / "tests" / "manager.mjs"
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
ORG = "org-a"
KiB = 1024


def admin(app: RunningApp) -> str:
    return app.token(role=Role.ADMIN, organization=ORG)


async def browse(
    app: RunningApp, case: str, expect: dict[str, Any], timeout: int = 150
) -> dict[str, Any]:
    """Runs one case of manager.mjs; returns its summary line."""
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
        "--timeout",
        str(timeout),
        cwd=REPO_ROOT,
        env={**os.environ, "MODELPLANE_TOKEN": admin(app), "MANAGER_EXPECT": json.dumps(expect)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    print(text)  # noqa: T201 - the script's log, with its measured figures
    assert process.returncode == 0, f"manager.mjs --case {case} failed:\n{text}"
    summary: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    assert summary["ok"] is True
    assert summary["pageErrors"] == []
    assert summary["loads"] == 1, "the page was reloaded"
    return summary


@pytest.fixture
async def app(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> AsyncIterator[RunningApp]:
    settings = make_settings(tmp_path, mongo_uri, hf_endpoint=hub.endpoint)
    async with serve_app(settings, mongo_client) as running:
        yield running


# ---- Catalogue --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_catalogue_page_configures_lists_installs_and_proposes(
    app: RunningApp, git_remote: GitServer, tmp_path: Path
) -> None:
    name = f"dash-{uuid.uuid4().hex[:8]}"
    author = Author(git_remote.create(name), tmp_path / "author")
    commit = author.commit("entries", {"models/tiny.yaml": GOOD, "models/broken.yaml": MALFORMED})
    summary = await browse(
        app,
        "catalogue",
        {
            "url": git_remote.url(name),
            "username": git_remote.username,
            "password": GIT_PASSWORD,
            "commit": commit,
        },
    )
    assert summary["refusal"].startswith("ValidationError:")
    assert summary["branchRefusal"].startswith("ValidationError:")
    data = await run(app.graphql_url, "Model", {"id": summary["modelId"]}, token=admin(app))
    model = data["model"]
    assert model["name"] == "tiny-from-catalogue"
    assert model["source"]["url"] == "tiny-org/tiny-model"
    branches = author.remote_branches()
    assert branches["main"] == commit
    proposed = summary["branch"]
    assert proposed in branches
    assert (
        author.show(branches[proposed], "models/generated/tiny-model.yaml") == summary["generated"]
    )
    assert (ARTIFACTS / "dashboard-catalogue.png").is_file()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_catalogue_page_adopts_a_force_pushed_branch_after_asking(
    app: RunningApp, git_remote: GitServer, tmp_path: Path
) -> None:
    name = f"dash-{uuid.uuid4().hex[:8]}"
    author = Author(git_remote.create(name), tmp_path / "author")
    author.commit("base", {"models/tiny.yaml": GOOD})
    second = author.commit("two", {"models/other.yaml": OTHER})
    source = {
        "url": git_remote.url(name),
        "branch": "main",
        "folder": "models",
        "username": git_remote.username,
        "password": GIT_PASSWORD,
    }
    data = await run(app.graphql_url, "ConfigureCatalog", {"source": source}, token=admin(app))
    assert data["configureCatalog"]["sync"]["commit"] == second
    rewritten = author.rewrite("history rewritten", {"models/other.yaml": None})
    held = await run(app.graphql_url, "RefreshCatalog", {}, token=admin(app))
    assert held["refreshCatalog"]["sync"]["lastErrorKind"] == "FORCE_PUSHED"
    await browse(app, "adopt", {"rewritten": rewritten})
    data = await run(app.graphql_url, "Catalog", {}, token=admin(app))
    assert data["catalog"]["sync"]["commit"] == rewritten
    assert [e["name"] for e in data["catalog"]["entries"]["items"]] == ["tiny"]


# ---- Storage alerts ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_storage_alert_appears_and_clears_live(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub, s3_server: S3Server
) -> None:
    bucket = (await bucket_on(s3_server)).location.bucket
    location = f"s3://{bucket}/cache"
    repo = "tiny-org/tiny-model"
    size = sum(len(f.content) for f in hub.hub.repos[repo].files)
    settings = make_settings(
        tmp_path,
        mongo_uri,
        hf_endpoint=hub.endpoint,
        storage_alert_threshold=1.0,  # the local root's real disk never alerts here
        storage_alert_thresholds={location: 0.5},
        storage_alert_s3_quotas={location: size * 3 // 2},  # the weights fill 2/3 of it
        storage_alert_interval_seconds=0.2,
    )
    async with serve_app(settings, mongo_client) as running:
        summary = await browse(
            running,
            "alerts",
            {
                "location": location,
                "repo": repo,
                "s3": {
                    "endpoint": s3_server.endpoint,
                    "bucket": bucket,
                    "region": s3_server.region,
                    "prefix": "cache",
                    "key-id": s3_server.access_key_id,
                    "secret": s3_server.secret_access_key,
                },
            },
        )
        data = await run(running.graphql_url, "WeightsList", {}, token=admin(running))
    (usage,) = [u for u in data["weightsUsage"] if u["root"] == location]
    assert usage["alerting"] is False
    assert data["weightsList"]["total"] == 0
    print(f"alert shown {summary['raisedSeconds']:.1f} s after the pre-fetch was submitted")  # noqa: T201
    assert (ARTIFACTS / "dashboard-storage-alerts.png").is_file()


# ---- Pre-fetch --------------------------------------------------------------------------


@pytest.fixture
def throttled_hub(hub: RunningHub) -> Iterator[None]:
    """tiny-model's weights at 128 KiB/s: long enough to see progress and cancel."""
    hub.hub.faults.clear()
    hub.hub.faults.throttle("*.safetensors", 128 * KiB)
    yield
    hub.hub.faults.clear()


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_prefetch_form_downloads_with_patterns_cancels_and_retries_live(
    app: RunningApp, throttled_hub: None
) -> None:
    summary = await browse(app, "prefetch", {"repo": "tiny-org/tiny-model"}, timeout=200)
    assert "allowPatterns" in summary["refused"] or "matches no file" in summary["refused"]
    data = await run(app.graphql_url, "WeightsList", {}, token=admin(app))
    (weights,) = data["weightsList"]["items"]
    assert weights["id"] == summary["weightsId"]
    assert weights["state"] == "READY"
    assert weights["prefetched"] is True
    assert weights["allowPatterns"] == ["*.json", "*.safetensors"]
    assert summary["outcomes"][-1] == "READY"
    assert (ARTIFACTS / "dashboard-prefetch.png").is_file()


# ---- System -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_system_page_shows_versions_runtime_and_leases(app: RunningApp) -> None:
    data = await run(app.graphql_url, "SystemInfo", {}, token=admin(app))
    info = data["systemInfo"]
    summary = await browse(app, "system", {"version": info["version"]})
    assert summary["runtime"] == "local"
    assert summary["leasesHere"], summary
    assert (ARTIFACTS / "dashboard-system.png").is_file()
