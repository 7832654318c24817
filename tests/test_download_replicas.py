"""Downloads with two replicas on one database: the API on one that runs no controllers, the
download controller on the other. Every mutation sent to the first is acted on by the second
through the event log, at once (not at its 15 s resync): createModel starts the download,
cancelDownload halts it and discards its partials, deleteWeights removes the files and the
record and answers with the outcome.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from storage.client import Client
from storage.documents import LocalTarget, WeightsDocument, WeightsState
from storage.repositories import WeightsRepository
from testbed.hub import RunningHub
from tests.conftest import RunningApp, make_settings, serve_app
from tests.graphql_client import run
from tests.test_weights_api import MiB, create_local, editor, until_gone, wait_model

LEADER_BOUND = 5.0
"""Generous: the log is polled every 20 ms; the resync this replaces comes after 15 s."""


@pytest.fixture
async def replicas(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> AsyncIterator[tuple[RunningApp, RunningApp]]:
    """(api, leader): the first runs no controllers; both share the database and roots."""
    leading = make_settings(tmp_path, mongo_uri, hf_endpoint=hub.endpoint)
    serving = leading.model_copy(update={"run_controllers": False})
    async with (
        serve_app(leading, mongo_client) as leader,
        serve_app(serving, mongo_client, keep_database=True) as api,
    ):
        yield api, leader


async def _mutate(app: RunningApp, operation: str, variables: dict[str, Any]) -> dict[str, Any]:
    data = await run(app.graphql_url, operation, variables, token=editor(app))
    result: dict[str, Any] = next(iter(data.values()))
    return result


async def test_mutations_on_a_replica_without_controllers_are_acted_on_by_the_leader(
    replicas: tuple[RunningApp, RunningApp], hub: RunningHub
) -> None:
    api, leader = replicas
    assert api.resources.downloads is None
    hub.hub.faults.throttle("*.safetensors", 1 * MiB)

    started = time.monotonic()
    created = await create_local(api, "tiny-org/sharded-model")
    pulling = await wait_model(
        api, created["id"], lambda m: m["phase"] == "PULLING", timeout=LEADER_BOUND
    )
    print(f"createModel -> PULLING: {time.monotonic() - started:.2f} s")  # noqa: T201
    weights = await wait_model(
        api,
        created["id"],
        lambda m: (m["weights"]["progress"] or {}).get("bytesDone", 0) > 0,
    )
    location = Path(weights["weights"]["location"])

    started = time.monotonic()
    cancelled = await _mutate(api, "CancelDownload", {"modelId": created["id"]})
    assert cancelled["state"] == "CANCELLED", cancelled
    await until_gone(location / ".modelplane-partial", timeout=LEADER_BOUND)
    print(f"cancelDownload -> partials gone: {time.monotonic() - started:.2f} s")  # noqa: T201
    controller = leader.resources.downloads
    assert controller is not None
    raw = await api.resources.database["weights"].find_one({"_id": pulling["weights"]["id"]})
    assert raw is not None
    stored = WeightsDocument.from_mongo(raw)
    assert not await controller.running(stored)

    hub.hub.faults.clear()
    started = time.monotonic()
    deleted = await _mutate(api, "DeleteWeights", {"id": stored.id})
    print(f"deleteWeights answered: {time.monotonic() - started:.2f} s")  # noqa: T201
    assert deleted == {
        "__typename": "DeletedWeights",
        "id": stored.id,
        "detachedModelIds": [created["id"]],
    }
    assert not location.exists()
    assert await api.resources.database["weights"].find_one({"_id": stored.id}) is None


async def test_delete_weights_says_so_when_no_controller_answers(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> None:
    """No replica runs controllers: deleteWeights marks the weights, waits its bounded time
    and says the removal goes on when one runs; the files and the record are still there."""
    settings = make_settings(
        tmp_path,
        mongo_uri,
        hf_endpoint=hub.endpoint,
        run_controllers=False,
        weights_removal_wait_seconds=0.5,
    )
    async with serve_app(settings, mongo_client) as app:
        location = tmp_path / "state" / "models" / "org-a" / "w"
        location.mkdir(parents=True)
        weights = WeightsDocument(
            id="weights-lone1",
            organization_id="org-a",
            repo_id="tiny-org/tiny-model",
            commit_sha="c" * 40,
            target=LocalTarget(local_path=str(location)),
            location=str(location),
            state=WeightsState.READY,
        )
        await WeightsRepository(app.resources.database).insert(weights)

        started = time.monotonic()
        answer = await _mutate(app, "DeleteWeights", {"id": weights.id})
        waited = time.monotonic() - started

        print(f"deleteWeights gave up after {waited:.2f} s")  # noqa: T201
        assert answer["__typename"] == "ConflictError", answer
        assert "no controller finished it within 0.5 s" in answer["errorMessage"]
        assert 0.5 <= waited < 10
        kept = await WeightsRepository(app.resources.database).require(weights.id)
        assert kept.deletion is not None
        assert kept.deletion.refused is None  # still asked for: a leader does it when it runs
        assert location.is_dir()
