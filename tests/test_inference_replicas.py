"""Inference through a replica that runs no controllers (issue 16, "controllers fed by the
event log"): two app instances on one database and one state directory, the first leading, the
second with ``run_controllers: false``.

The follower's services write the document and append the event; the leader's controller
hears it through its broker and acts at once (not at its 60 s resync). The follower answers
what the API reads from the runtime -- dry runs and logs -- as the leader would, from its own
:class:`~controllers.inference.workloads.InferenceRuntime`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from modelplane.embedded import free_port
from storage.client import Client
from testbed.hub import RunningHub
from tests import helpers
from tests.conftest import RunningApp, make_settings, serve_app
from tests.graphql_client import run
from tests.test_inference_local import editor, fake_engines, ready_model, start

__all__ = ["fake_engines"]  # the fixture, used by name

LEADER_BOUND_SECONDS = 1.0


@asynccontextmanager
async def two_replicas(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> AsyncIterator[tuple[RunningApp, RunningApp]]:
    leader_settings = make_settings(
        tmp_path, mongo_uri, hf_endpoint=hub.endpoint, allow_host_commands=True, engine_user=""
    )
    follower_settings = leader_settings.model_copy(update={"run_controllers": False})
    async with (
        serve_app(leader_settings, mongo_client) as leader,
        serve_app(follower_settings, mongo_client, keep_database=True) as follower,
    ):
        controller = leader.resources.inference_controller
        assert controller is not None
        deadline = time.monotonic() + 20
        while not controller.leading:
            assert time.monotonic() < deadline, "the leader never took the lease"
            await asyncio.sleep(0.05)
        assert follower.resources.inference_controller is None
        yield leader, follower


async def test_start_on_the_follower_is_acted_on_by_the_leader_at_once(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub, fake_engines: Path
) -> None:
    del fake_engines
    async with two_replicas(tmp_path, mongo_uri, mongo_client, hub) as (leader, follower):
        model = await ready_model(leader)
        dry = await start(follower, model["id"], dryRun=True)
        assert dry["__typename"] == "InferencePayload", dry
        assert dry["manifests"], "the follower renders the dry run itself"

        began = time.monotonic()
        result = await start(follower, model["id"])
        assert result["__typename"] == "InferencePayload", result
        inference_id = result["inference"]["id"]
        while True:
            data = await run(
                follower.graphql_url, "Inference", {"id": inference_id}, token=editor(follower)
            )
            if data["inference"]["reason"] != "Accepted":  # the leader's first status write
                break
            assert time.monotonic() - began < 10, data
            await asyncio.sleep(0.01)
        acted = time.monotonic() - began
        print(f"startInference on the follower -> the leader's first write: {acted:.3f} s")  # noqa: T201
        assert acted < LEADER_BOUND_SECONDS

        running = await helpers.wait_inference(
            follower.graphql_url, editor(follower), inference_id, {"RUNNING"}, timeout=30
        )
        assert running["phase"] == "RUNNING"
        logs = await run(
            follower.graphql_url,
            "InferenceLogs",
            {"id": inference_id, "tail": 20},
            token=editor(follower),
        )
        lines = logs["inferenceLogs"]["lines"]
        assert any(line.startswith("loaded ") for line in lines), lines

        began = time.monotonic()
        await run(
            follower.graphql_url, "StopInference", {"modelId": model["id"]}, token=editor(follower)
        )
        await helpers.wait_inference(
            follower.graphql_url, editor(follower), inference_id, {"STOPPED"}, timeout=10
        )
        stopped = time.monotonic() - began
        print(f"stopInference on the follower -> STOPPED: {stopped:.3f} s")  # noqa: T201
        assert stopped < 5


async def test_update_on_the_follower_restarts_the_engine_with_the_new_spec(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub, fake_engines: Path
) -> None:
    """updateInference sent to the replica that does not lead: the leader's controller hears
    the UPDATED event and restarts the local process with the new spec (here a new port, which
    is what a client sees move); same inference id."""
    del fake_engines
    async with two_replicas(tmp_path, mongo_uri, mongo_client, hub) as (leader, follower):
        model = await ready_model(leader)
        result = await start(follower, model["id"])
        inference_id = result["inference"]["id"]
        running = await helpers.wait_inference(
            follower.graphql_url, editor(follower), inference_id, {"RUNNING"}, timeout=30
        )
        old_port = running["spec"]["port"]
        new_port = free_port()

        began = time.monotonic()
        data = await run(
            follower.graphql_url,
            "UpdateInference",
            {"modelId": model["id"], "input": {"port": new_port}},
            token=editor(follower),
        )
        payload = data["updateInference"]
        assert payload["__typename"] == "InferencePayload", payload
        assert payload["inference"]["id"] == inference_id
        assert payload["inference"]["generation"] == running["generation"] + 1
        deadline = time.monotonic() + 30
        while True:
            now = await helpers.wait_inference(
                follower.graphql_url, editor(follower), inference_id, {"RUNNING"}, timeout=30
            )
            if now["observedGeneration"] == now["generation"] and now["endpoint"] == (
                f"http://127.0.0.1:{new_port}/v1"
            ):
                break
            assert time.monotonic() < deadline, now
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(timeout=5) as http:
            answer = await http.get(f"http://127.0.0.1:{new_port}/v1/models")
            assert answer.json()["data"][0]["id"] == model["name"]
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://127.0.0.1:{old_port}/v1/models")
        took = time.monotonic() - began
        print(f"updateInference on the follower -> RUNNING on the new port: {took:.3f} s")  # noqa: T201

        # Leaving the port out keeps the current one (the endpoint does not move).
        data = await run(
            follower.graphql_url,
            "UpdateInference",
            {"modelId": model["id"], "input": {"env": [{"name": "X", "value": "1"}]}},
            token=editor(follower),
        )
        assert data["updateInference"]["inference"]["spec"]["port"] == new_port
