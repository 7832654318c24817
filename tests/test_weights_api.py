"""Weights through the API: a LOCAL model downloads itself, reuse, cancel, retry, delete."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storage.documents import Role, WeightsDocument
from testbed.hub import RunningHub
from tests.conftest import RunningApp
from tests.graphql_client import run
from tests.helpers import weights_area

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def clean_hub(hub: RunningHub) -> Iterator[None]:
    hub.hub.faults.clear()
    hub.hub.log.clear()
    yield
    hub.hub.faults.clear()


def editor(app: RunningApp, organization: str = "org-a") -> str:
    return app.token(role=Role.EDITOR, organization=organization)


async def create_local(
    app: RunningApp, repo: str, *, name: str | None = None, path: Path | None = None
) -> dict[str, Any]:
    root = weights_area(app.resources.settings.local_roots)
    value: dict[str, Any] = {
        "source": {"url": repo, "accessMode": "LOCAL"},
        "downloadTarget": {"local": {"localPath": str(path or root / repo.replace("/", "--"))}},
    }
    if name:
        value["name"] = name
    data = await run(app.graphql_url, "CreateModel", {"input": value}, token=editor(app))
    result: dict[str, Any] = data["createModel"]
    assert result["__typename"] == "Model", result
    return result


async def wait_model(
    app: RunningApp, model_id: str, predicate: Any, *, timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data = await run(app.graphql_url, "ModelDownload", {"id": model_id}, token=editor(app))
        model: dict[str, Any] = data["model"]
        if predicate(model):
            return model
        assert time.monotonic() < deadline, f"timed out; last seen {model}"
        await asyncio.sleep(0.1)


async def until_gone(path: Path, *, timeout: float = 10) -> None:
    started = time.monotonic()
    while path.exists():
        assert time.monotonic() - started < timeout, f"{path} still there after {timeout} s"
        await asyncio.sleep(0.05)
    print(f"{path.name} gone {time.monotonic() - started:.2f} s after the answer")  # noqa: T201


def ready(model: dict[str, Any]) -> bool:
    return model["phase"] in ("READY", "FAILED")


async def test_local_model_downloads_to_ready_with_progress(
    running_app: RunningApp, hub: RunningHub
) -> None:
    created = await create_local(running_app, "tiny-org/tiny-model")
    assert created["phase"] == "PENDING"
    model = await wait_model(running_app, created["id"], ready)
    assert model["phase"] == "READY", model
    weights = model["weights"]
    source = hub.hub.repos["tiny-org/tiny-model"]
    assert weights["state"] == "READY"
    assert weights["commitSha"] == source.sha
    assert weights["sizeBytes"] == sum(f.size for f in source.files)
    progress = weights["progress"]
    assert progress["bytesDone"] == progress["bytesTotal"] == weights["sizeBytes"]
    assert progress["filesDone"] == progress["filesTotal"] == len(source.files)
    assert {f["state"] for f in progress["files"]} == {"DONE"}
    location = Path(weights["location"])
    for f in source.files:
        on_disk = (location / f.path).read_bytes()
        assert hashlib.sha256(on_disk).digest() == hashlib.sha256(f.content).digest()
    assert not (location / ".modelplane-partial").exists()
    assert await running_app.resources.database["ledger"].count_documents({}) == 0


async def test_same_repo_and_target_is_reused_not_downloaded_twice(
    running_app: RunningApp, hub: RunningHub
) -> None:
    first = await create_local(running_app, "tiny-org/tiny-model", name="first")
    first_done = await wait_model(running_app, first["id"], ready)
    weights_gets = len(
        [r for r in hub.hub.log.records(method="GET") if r.path.endswith(".safetensors")]
    )
    second = await create_local(running_app, "tiny-org/tiny-model", name="second")
    second_done = await wait_model(running_app, second["id"], ready)
    assert second_done["phase"] == "READY"
    assert second_done["weights"]["id"] == first_done["weights"]["id"]
    assert sorted(second_done["weights"]["modelIds"]) == sorted([first["id"], second["id"]])
    again = [r for r in hub.hub.log.records(method="GET") if r.path.endswith(".safetensors")]
    assert len(again) == weights_gets


async def test_cancel_keeps_nothing_in_flight_and_retry_resumes(
    running_app: RunningApp, hub: RunningHub
) -> None:
    hub.hub.faults.throttle("*.safetensors", 1 * MiB)
    created = await create_local(running_app, "tiny-org/sharded-model")
    pulling = await wait_model(
        running_app,
        created["id"],
        lambda m: m["weights"] and (m["weights"]["progress"] or {}).get("bytesDone", 0) > 0,
    )
    assert pulling["phase"] == "PULLING"
    cancelled = (
        await run(
            running_app.graphql_url,
            "CancelDownload",
            {"modelId": created["id"]},
            token=editor(running_app),
        )
    )["cancelDownload"]
    assert cancelled["__typename"] == "Weights"
    assert cancelled["state"] == "CANCELLED"
    # The leading controller halts the worker and discards in-flight parts on the event.
    await until_gone(Path(cancelled["location"]) / ".modelplane-partial")
    model = await wait_model(running_app, created["id"], lambda m: m["phase"] == "FAILED")
    assert "cancelled" in model["message"]

    again = (
        await run(
            running_app.graphql_url,
            "CancelDownload",
            {"modelId": created["id"]},
            token=editor(running_app),
        )
    )["cancelDownload"]
    assert again["__typename"] == "ConflictError"

    hub.hub.faults.clear()
    retried = (
        await run(
            running_app.graphql_url,
            "RetryDownload",
            {"modelId": created["id"]},
            token=editor(running_app),
        )
    )["retryDownload"]
    assert retried["state"] == "PENDING"
    done = await wait_model(running_app, created["id"], lambda m: m["phase"] == "READY")
    assert done["weights"]["state"] == "READY"


async def test_deleting_a_model_mid_download_stops_its_weights(
    running_app: RunningApp, hub: RunningHub
) -> None:
    """The download of a deleted model, used by no other model, ends CANCELLED and says why;
    verified files stay (a new model and retryDownload resume from them), in-flight parts go."""
    hub.hub.faults.throttle("*.safetensors", 1 * MiB)
    created = await create_local(running_app, "tiny-org/sharded-model")
    pulling = await wait_model(
        running_app,
        created["id"],
        lambda m: m["weights"] and (m["weights"]["progress"] or {}).get("bytesDone", 0) > 0,
    )
    weights_id = pulling["weights"]["id"]
    deleted = (
        await run(
            running_app.graphql_url,
            "DeleteModel",
            {"id": created["id"]},
            token=editor(running_app),
        )
    )["deleteModel"]
    assert deleted["__typename"] == "DeletedModel"

    deadline = time.monotonic() + 30
    while True:
        weights = (
            await run(
                running_app.graphql_url, "Weights", {"id": weights_id}, token=editor(running_app)
            )
        )["weights"]
        if weights["state"] != "PULLING":
            break
        assert time.monotonic() < deadline, f"still PULLING: {weights}"
        await asyncio.sleep(0.1)
    assert weights["state"] == "CANCELLED", weights
    assert weights["message"] == "download stopped: its model was deleted"
    assert weights["modelIds"] == []
    await until_gone(Path(weights["location"]) / ".modelplane-partial")  # right after the halt
    controller = running_app.resources.downloads
    assert controller is not None
    stored = await running_app.resources.database["weights"].find_one({"_id": weights_id})
    assert stored is not None
    assert not await controller.running(WeightsDocument.from_mongo(stored))

    hub.hub.faults.clear()
    again = await create_local(running_app, "tiny-org/sharded-model")  # the same place
    done = await wait_model(running_app, again["id"], ready)
    assert done["phase"] == "READY", done
    assert (done["weights"]["id"], done["weights"]["modelIds"]) == (weights_id, [again["id"]])


async def test_preflight_failure_is_reported_on_the_model(
    running_app: RunningApp, tmp_path: Path
) -> None:
    small = weights_area(running_app.resources.settings.local_roots) / "small"
    small.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0 or not os.path.ismount(small):
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        created = await create_local(running_app, "tiny-org/sharded-model", path=small / "w")
        model = await wait_model(running_app, created["id"], ready)
        assert model["phase"] == "FAILED"
        # 1 MiB, less the page of the directory's marker.
        assert re.match(
            r"needs 5\.9 MiB, (1\.0 MiB|10[0-9]{2}\.[0-9] KiB) free at ", model["message"]
        )
        assert f"free at {small / 'w'}" in model["message"]
        # Only the marker of what the download created (so that deleting it removes them).
        assert [p.name for p in (small / "w").iterdir()] == [".modelplane-weights"]
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


async def test_delete_weights_removes_files_and_detaches_models(
    running_app: RunningApp,
) -> None:
    created = await create_local(running_app, "tiny-org/tiny-model")
    model = await wait_model(running_app, created["id"], ready)
    weights_id = model["weights"]["id"]
    location = Path(model["weights"]["location"])
    assert location.is_dir()

    viewer = running_app.token(role=Role.VIEWER, organization="org-a")
    refused = (
        await run(running_app.graphql_url, "DeleteWeights", {"id": weights_id}, token=viewer)
    )["deleteWeights"]
    assert refused["__typename"] == "ForbiddenError"
    intruder = running_app.token(role=Role.ADMIN, organization="org-b")
    hidden = (
        await run(running_app.graphql_url, "DeleteWeights", {"id": weights_id}, token=intruder)
    )["deleteWeights"]
    assert hidden["__typename"] == "NotFoundError"
    assert (await run(running_app.graphql_url, "Weights", {"id": weights_id}, token=intruder))[
        "weights"
    ] is None
    assert location.is_dir()

    deleted = (
        await run(
            running_app.graphql_url, "DeleteWeights", {"id": weights_id}, token=editor(running_app)
        )
    )["deleteWeights"]
    assert deleted == {
        "__typename": "DeletedWeights",
        "id": weights_id,
        "detachedModelIds": [created["id"]],
    }
    assert not location.exists()
    after = await wait_model(running_app, created["id"], lambda m: m["phase"] == "FAILED")
    assert after["weights"] is None
    listing = await run(running_app.graphql_url, "WeightsList", {}, token=editor(running_app))
    assert listing["weightsList"]["total"] == 0
    usage = listing["weightsUsage"]
    assert len(usage) == 1
    assert usage[0]["total"] >= usage[0]["free"] > 0


async def test_s3_target_streams_through_the_controller(
    running_app: RunningApp, hub: RunningHub, s3_server: Any
) -> None:
    from tests.helpers import bucket_on

    client = await bucket_on(s3_server)
    value = {
        "source": {"url": "tiny-org/sharded-model", "accessMode": "LOCAL"},
        "downloadTarget": {
            "s3": {
                "endpoint": s3_server.endpoint,
                "bucket": client.location.bucket,
                "region": s3_server.region,
                "prefix": "cache",
                "accessKeyId": s3_server.access_key_id,
                "secretAccessKey": s3_server.secret_access_key,
            }
        },
    }
    data = await run(
        running_app.graphql_url, "CreateModel", {"input": value}, token=editor(running_app)
    )
    created = data["createModel"]
    assert created["__typename"] == "Model", created
    model = await wait_model(running_app, created["id"], ready)
    assert model["phase"] == "READY", model
    source = hub.hub.repos["tiny-org/sharded-model"]
    assert model["weights"]["location"] == (
        f"s3://{client.location.bucket}/cache/tiny-org/sharded-model/{source.sha}"
    )
    for f in source.files:
        stored = await client.get_bytes(f"cache/tiny-org/sharded-model/{source.sha}/{f.path}")
        assert hashlib.sha256(stored).digest() == hashlib.sha256(f.content).digest()

    deleted = (
        await run(
            running_app.graphql_url,
            "DeleteWeights",
            {"id": model["weights"]["id"]},
            token=editor(running_app),
        )
    )["deleteWeights"]
    assert deleted["__typename"] == "DeletedWeights"
    assert await client.head(f"cache/tiny-org/sharded-model/{source.sha}/config.json") is None
