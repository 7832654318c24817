"""Hub failures during a model's first reconcile, through the public API and the local hub.

A temporary one (503) keeps the model PENDING, says in its message that it retries, and the
download goes on by itself once the hub answers; a permanent one (404) fails the model once,
with the hub's words, and is not asked again until retryDownload, which asks the hub again
for a model whose download was never created.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from testbed.hub import INFO_FAULTS, RunningHub
from tests.conftest import RunningApp
from tests.graphql_client import run
from tests.test_weights_api import create_local, editor, wait_model

REPO = "tiny-org/tiny-model"


@pytest.fixture(autouse=True)
def clean_hub(hub: RunningHub) -> Iterator[None]:
    hub.hub.faults.clear()
    hub.hub.log.clear()
    yield
    hub.hub.faults.clear()


def _controller_look(hub: RunningHub) -> str:
    """The fault pattern of the controller's model-info call (at the commit, not the branch
    the API's createModel asks for)."""
    return f"{REPO}/{INFO_FAULTS}/{hub.hub.repos[REPO].sha}"


async def _model_events(app: RunningApp, model_id: str) -> list[tuple[str, str | None]]:
    found = app.resources.database["events"].find(
        {"resource_id": model_id, "resource_kind": "MODEL"}, sort=[("_id", 1)]
    )
    return [(e["phase"], e["message"]) async for e in found]


async def test_a_hub_503_on_the_first_look_is_retried_until_the_model_is_ready(
    running_app: RunningApp, hub: RunningHub
) -> None:
    hub.hub.faults.fail_next(_controller_look(hub), 3, status=503)
    started = time.monotonic()
    created = await create_local(running_app, REPO)

    done = await wait_model(running_app, created["id"], lambda m: m["phase"] == "READY")

    elapsed = time.monotonic() - started
    print(f"READY {elapsed:.2f} s after createModel, three 503s on the way")  # noqa: T201
    assert done["weights"]["state"] == "READY"
    events = await _model_events(running_app, created["id"])
    retrying = [m for p, m in events if p == "PENDING" and m and "503" in m]
    assert retrying, events
    assert all("retrying" in m for m in retrying), retrying
    print("messages meanwhile:", retrying)  # noqa: T201  the figure, for the record
    phases = [p for p, _ in events]
    assert "FAILED" not in phases, events
    assert phases.index("PULLING") > phases.index("PENDING")
    assert phases[-1] == "READY", events
    looks = hub.hub.log.records(path=f"/api/models/{REPO}/revision/*")
    assert [r.status for r in looks][:3] == [503, 503, 503]


async def test_a_hub_404_on_the_first_look_fails_once_and_retry_download_asks_again(
    running_app: RunningApp, hub: RunningHub
) -> None:
    hub.hub.faults.fail_next(_controller_look(hub), 1, status=404)
    created = await create_local(running_app, REPO)

    failed = await wait_model(running_app, created["id"], lambda m: m["phase"] == "FAILED")

    assert failed["weights"] is None
    assert "404" in failed["message"], failed
    await asyncio.sleep(2)  # a retry would come within the queue's first backoffs
    looks = hub.hub.log.records(path=f"/api/models/{REPO}/revision/*")
    assert [r.status for r in looks] == [404], "a permanent failure is not retried"
    assert [p for p, _ in await _model_events(running_app, created["id"])].count("FAILED") == 1

    retried: dict[str, Any] = (
        await run(
            running_app.graphql_url,
            "RetryDownload",
            {"modelId": created["id"]},
            token=editor(running_app),
        )
    )["retryDownload"]
    assert retried["__typename"] == "Model", retried
    assert retried["phase"] == "PENDING"
    done = await wait_model(running_app, created["id"], lambda m: m["phase"] == "READY")
    assert done["weights"]["state"] == "READY"
