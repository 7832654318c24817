"""A REMOTE_API model end to end: startInference makes a route (no workload) that goes RUNNING
once the remote ``/models`` answers with the stored key, the gateway serves it, stopping it
closes the route. The upstream is the tests' OpenAI-compatible server on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from storage.client import Client
from storage.documents import Role
from testbed.hub import RunningHub
from testbed.openai_upstream import FakeUpstream
from tests import helpers
from tests.conftest import RunningApp, make_settings, serve_app
from tests.graphql_client import run
from tests.test_gateway import Upstream, serve_upstream

CANARY = "sk-canary-route-0123456789abcdef"


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with serve_upstream(FakeUpstream()) as running:
        yield running


@pytest.fixture
async def app(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> AsyncIterator[RunningApp]:
    settings = make_settings(tmp_path, mongo_uri, hf_endpoint=hub.endpoint)
    async with serve_app(settings, mongo_client) as running:
        yield running


def editor(app: RunningApp) -> str:
    return app.token(role=Role.EDITOR, organization="org-r")


async def test_remote_model_route_runs_serves_and_stops(
    app: RunningApp, upstream: Upstream
) -> None:
    created = await run(
        app.graphql_url,
        "CreateModel",
        {
            "input": {
                "name": "remote-chat",
                "displayName": "Remote chat",
                "source": {
                    "url": upstream.endpoint("tenant-r"),
                    "accessMode": "REMOTE_API",
                    "token": CANARY,
                },
            }
        },
        token=editor(app),
    )
    model = created["createModel"]
    assert model["__typename"] == "Model", model

    started = await run(
        app.graphql_url, "StartInference", {"modelId": model["id"]}, token=editor(app)
    )
    payload = started["startInference"]
    assert payload["__typename"] == "InferencePayload", payload
    assert payload["inference"]["spec"]["engine"] is None
    assert payload["inference"]["spec"]["gpu"] == 0
    running = await helpers.wait_inference(
        app.graphql_url, editor(app), payload["inference"]["id"], {"RUNNING", "FAILED"}
    )
    assert running["phase"] == "RUNNING", running
    assert running["endpoint"] == upstream.endpoint("tenant-r")
    probes = [s for s in upstream.fake.seen if s.path.endswith("/models")]
    assert probes
    assert probes[-1].authorization == f"Bearer {CANARY}"

    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.post(
            f"{app.base_url}/v1/chat/completions",
            json={"model": "remote-chat", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {editor(app)}"},
        )
        assert answer.status_code == 200, answer.text
        assert CANARY not in answer.text
        assert upstream.fake.seen[-1].authorization == f"Bearer {CANARY}"

        await run(app.graphql_url, "StopInference", {"modelId": model["id"]}, token=editor(app))
        await helpers.wait_inference(
            app.graphql_url, editor(app), payload["inference"]["id"], {"STOPPED"}
        )
        deadline = time.monotonic() + 10
        refused: Any = None
        while time.monotonic() < deadline:  # the gateway caches a RUNNING route for 2 s
            refused = await client.post(
                f"{app.base_url}/v1/chat/completions",
                json={"model": "remote-chat", "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {editor(app)}"},
            )
            if refused.status_code == 409:
                break
            await asyncio.sleep(0.2)
        assert refused.status_code == 409, refused.text
        # Once stopped the model has no inference (issue 17): not running, nothing to route to.
        assert refused.json()["error"]["reason"] == "NoInference", refused.text
