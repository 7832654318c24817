"""The download controller: its pure plan (table tests) and leader election between replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from controllers.downloads.executions import Execution
from controllers.downloads.reconciler import (
    Action,
    DownloadController,
    WeightsRuntimeConfig,
    model_status,
    plan,
    restarts_on_attach,
)
from controllers.leading import Leadership
from controllers.runtimes.secrets import EncryptedSecretStore, fernet_for
from controllers.transfer.downloader import DownloadOptions
from integrations.huggingface import HubClient
from storage.client import Database
from storage.documents import (
    AccessMode,
    HubFacts,
    LocalTarget,
    ModelDocument,
    ModelPhase,
    ModelSource,
    PvcTarget,
    WeightsDocument,
    WeightsState,
)
from storage.repositories import (
    LeaseRepository,
    LedgerRepository,
    ModelRepository,
    SecretRepository,
    WeightsRepository,
    ensure_indexes,
)
from testbed.hub import RunningHub
from tests.helpers import LOOPBACK_ALLOWED


def controller(database: Database, holder: str) -> DownloadController:
    return DownloadController(
        models=ModelRepository(database),
        weights=WeightsRepository(database),
        ledgers=LedgerRepository(database),
        secrets=EncryptedSecretStore(SecretRepository(database), cipher=fernet_for("k" * 40)),
        hub=HubClient(endpoint="http://127.0.0.1:9"),
        config=WeightsRuntimeConfig(
            hub_endpoint="http://127.0.0.1:9", options=DownloadOptions(), outbound=LOOPBACK_ALLOWED
        ),
        leases=LeaseRepository(database),
        holder=holder,
        lease_seconds=0.6,
    )


async def test_exactly_one_replica_leads_and_the_other_takes_over(database: Database) -> None:
    await ensure_indexes(database)
    first, second = controller(database, "replica-a"), controller(database, "replica-b")
    first.start()
    await asyncio.sleep(0.3)
    second.start()
    try:
        await asyncio.sleep(0.8)
        assert [first.leading, second.leading] == [True, False]
        assert await LeaseRepository(database).holder_of("download-controller") == "replica-a"
        await first.stop()  # releases the lease
        for _ in range(30):
            if second.leading:
                break
            await asyncio.sleep(0.1)
        assert second.leading
        assert await LeaseRepository(database).holder_of("download-controller") == "replica-b"
    finally:
        await first.stop()
        await second.stop()


async def test_resync_soon_resyncs_at_once_instead_of_at_the_period() -> None:
    """The event log lost events (trimmed before they were read): a controller asks its
    leadership to resync now, not an hour later."""
    resynced = asyncio.Event()

    async def resync() -> None:
        resynced.set()

    async def nothing() -> None:
        return None

    leadership = Leadership(
        None, name="t", holder="h", seconds=15, resync=resync, resync_seconds=3600, on_loss=nothing
    )
    leadership.start()
    try:
        await asyncio.sleep(0.1)
        assert not resynced.is_set()
        leadership.resync_soon()
        await asyncio.wait_for(resynced.wait(), timeout=5)
        resynced.clear()
        await asyncio.sleep(0.1)
        assert not resynced.is_set(), "one request, one resync"
    finally:
        await leadership.stop()


def _model(**overrides: Any) -> ModelDocument:
    values: dict[str, Any] = {
        "id": "model-a",
        "organization_id": "org",
        "name": "a",
        "name_key": "a",
        "display_name": "A",
        "source": ModelSource(url="org/a", access_mode=AccessMode.LOCAL),
        "download_target": LocalTarget(local_path="/models/a"),
        "phase": ModelPhase.PENDING,
    }
    values.update(overrides)
    return ModelDocument(**values)


def _weights(state: WeightsState, *model_ids: str) -> WeightsDocument:
    return WeightsDocument(
        model_ids=list(model_ids),
        id="weights-a",
        organization_id="org",
        repo_id="org/a",
        commit_sha="c" * 40,
        target=LocalTarget(local_path="/models/a"),
        location="/models/a",
        state=state,
    )


GONE = _model(is_deleted=True)
IDLE = Execution()
ACTIVE = Execution(active=True)
BROKEN = Execution(active=True, failure="download pod cannot start: ImagePullBackOff")
ENDED = Execution(active=False, failure="download Job failed: BackoffLimitExceeded")


@pytest.mark.parametrize(
    ("model", "weights", "execution", "expected"),
    [
        (None, None, IDLE, Action.FORGET),
        # a deleted model: its download stops unless another model uses it
        (GONE, _weights(WeightsState.PULLING, "model-a"), ACTIVE, Action.STOP),
        (GONE, _weights(WeightsState.PENDING, "model-a"), IDLE, Action.STOP),
        (GONE, _weights(WeightsState.PULLING), IDLE, Action.STOP),  # left by an older version
        (GONE, _weights(WeightsState.PULLING, "model-a", "model-b"), ACTIVE, Action.RELEASE),
        (GONE, _weights(WeightsState.PULLING, "model-b"), ACTIVE, Action.FORGET),
        (GONE, _weights(WeightsState.READY, "model-a"), IDLE, Action.RELEASE),
        (GONE, _weights(WeightsState.READY), IDLE, Action.FORGET),
        (GONE, _weights(WeightsState.CANCELLED), IDLE, Action.FORGET),  # stopped already
        (GONE, _weights(WeightsState.CANCELLED), ACTIVE, Action.STOP),  # a worker lingers
        (GONE, _weights(WeightsState.FAILED, "model-a"), IDLE, Action.RELEASE),
        (GONE, None, IDLE, Action.FORGET),
        (
            _model(source=ModelSource(url="https://x/v1", access_mode=AccessMode.REMOTE_API)),
            None,
            IDLE,
            Action.FORGET,
        ),
        (_model(download_target=None), None, IDLE, Action.NOTHING),
        (
            _model(download_target=PvcTarget(claim_name="c")),
            None,
            IDLE,
            Action.CREATE_WEIGHTS,
        ),
        (_model(), None, IDLE, Action.CREATE_WEIGHTS),
        (_model(phase=ModelPhase.FAILED), None, IDLE, Action.NOTHING),
        (_model(), _weights(WeightsState.PENDING), IDLE, Action.START),
        (_model(), _weights(WeightsState.PULLING), IDLE, Action.START),
        (_model(), _weights(WeightsState.PULLING), ACTIVE, Action.MIRROR),
        (_model(), _weights(WeightsState.PULLING), BROKEN, Action.FAIL),
        (_model(), _weights(WeightsState.PENDING), ENDED, Action.FAIL),
        (_model(), _weights(WeightsState.READY), IDLE, Action.MIRROR),
        (_model(), _weights(WeightsState.READY), ACTIVE, Action.MIRROR),
        (_model(), _weights(WeightsState.READY), ENDED, Action.MIRROR),
        (_model(), _weights(WeightsState.CANCELLED), IDLE, Action.MIRROR),
        (_model(), _weights(WeightsState.CANCELLED), ACTIVE, Action.HALT),
        (_model(), _weights(WeightsState.FAILED), ACTIVE, Action.HALT),
    ],
)
def test_plan(
    model: ModelDocument | None,
    weights: WeightsDocument | None,
    execution: Execution,
    expected: Action,
) -> None:
    assert plan(model, weights, execution) is expected


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        (_weights(WeightsState.CANCELLED), True),  # stopped when its model was deleted
        (_weights(WeightsState.FAILED), True),
        (_weights(WeightsState.CANCELLED, "model-b"), False),  # another model's user cancelled
        (_weights(WeightsState.FAILED, "model-b"), False),
        (_weights(WeightsState.PULLING), False),
        (_weights(WeightsState.READY), False),
    ],
)
def test_restarts_on_attach(weights: WeightsDocument, expected: bool) -> None:
    assert restarts_on_attach(weights) is expected


@pytest.mark.parametrize(
    ("state", "phase", "message_part"),
    [
        (WeightsState.READY, ModelPhase.READY, None),
        (WeightsState.PULLING, ModelPhase.PULLING, None),
        (WeightsState.PENDING, ModelPhase.PENDING, "waiting"),
        (WeightsState.CANCELLED, ModelPhase.FAILED, "cancelled"),
    ],
)
def test_model_status_mirrors_weights(
    state: WeightsState, phase: ModelPhase, message_part: str | None
) -> None:
    got_phase, message = model_status(_weights(state))
    assert got_phase is phase
    if message_part is None:
        assert message is None
    else:
        assert message_part in (message or "")


# -- one model through real reconciles (FerretDB, the local hub) ------------------------------

MiB = 1024 * 1024


@pytest.fixture
def slow_hub(hub: RunningHub) -> Iterator[RunningHub]:
    """The local hub serving weights at 1 MiB/s: a download stays PULLING for seconds."""
    hub.hub.faults.clear()
    hub.hub.faults.throttle("*.safetensors", 1 * MiB)
    yield hub
    hub.hub.faults.clear()


@pytest.fixture
async def leader(database: Database, slow_hub: RunningHub) -> AsyncIterator[DownloadController]:
    """A download controller without leases (it leads), not started: the test calls reconcile."""
    await ensure_indexes(database)
    running = DownloadController(
        models=ModelRepository(database),
        weights=WeightsRepository(database),
        ledgers=LedgerRepository(database),
        secrets=EncryptedSecretStore(SecretRepository(database), cipher=fernet_for("k" * 40)),
        hub=HubClient(endpoint=slow_hub.endpoint),
        config=WeightsRuntimeConfig(
            hub_endpoint=slow_hub.endpoint, options=DownloadOptions(), outbound=LOOPBACK_ALLOWED
        ),
    )
    try:
        yield running
    finally:
        await running.stop()


async def _new_model(
    database: Database, hub: RunningHub, tmp_path: Path, model_id: str = "model-a"
) -> ModelDocument:
    repo = "tiny-org/sharded-model"
    return await ModelRepository(database).insert(
        _model(
            id=model_id,
            name=model_id,
            name_key=model_id,
            source=ModelSource(url=repo, access_mode=AccessMode.LOCAL),
            hub=HubFacts(commit_sha=hub.hub.repos[repo].sha),
            download_target=LocalTarget(local_path=str(tmp_path / "w")),
        )
    )


async def test_a_new_model_is_attached_started_and_mirrored_in_one_reconcile(
    database: Database, slow_hub: RunningHub, leader: DownloadController, tmp_path: Path
) -> None:
    """Attaching weights writes the model; the rest of the reconcile goes on with what that
    write returned, so the model does not conflict with itself and need a second reconcile."""
    created = await _new_model(database, slow_hub, tmp_path)
    assert created.revision == 1

    await leader.reconcile(created.id)

    model = await ModelRepository(database).require(created.id)
    assert model.weights_id is not None
    assert (model.phase, model.message) == (ModelPhase.PULLING, None)
    assert model.revision == 3  # created, weights attached, phase mirrored: nothing else
    weights = await WeightsRepository(database).require(model.weights_id)
    assert weights.state is WeightsState.PULLING
    assert await leader.running(weights)


async def test_deleting_a_model_cancels_the_download_no_other_model_uses(
    database: Database, slow_hub: RunningHub, leader: DownloadController, tmp_path: Path
) -> None:
    models, weights_repo = ModelRepository(database), WeightsRepository(database)
    created = await _new_model(database, slow_hub, tmp_path)
    await leader.reconcile(created.id)
    model = await models.require(created.id)
    assert model.weights_id is not None
    await models.update(model.id, expected_revision=model.revision, changes={"is_deleted": True})

    await leader.reconcile(model.id)

    weights = await weights_repo.require(model.weights_id)
    assert weights.state is WeightsState.CANCELLED
    assert weights.message == "download stopped: its model was deleted"
    assert weights.model_ids == []
    assert weights.attempt == 1  # a runner of the old attempt can no longer write an outcome
    assert not await leader.running(weights)
    assert not (tmp_path / "w" / ".modelplane-partial").exists()
    await leader.reconcile(model.id)  # idempotent: a second look changes nothing
    assert (await weights_repo.require(weights.id)).revision == weights.revision


async def test_a_download_shared_with_a_live_model_goes_on_when_one_model_is_deleted(
    database: Database, slow_hub: RunningHub, leader: DownloadController, tmp_path: Path
) -> None:
    models, weights_repo = ModelRepository(database), WeightsRepository(database)
    first = await _new_model(database, slow_hub, tmp_path, "model-a")
    second = await _new_model(database, slow_hub, tmp_path, "model-b")
    await leader.reconcile(first.id)
    await leader.reconcile(second.id)
    gone = await models.require(first.id)
    await models.update(gone.id, expected_revision=gone.revision, changes={"is_deleted": True})

    await leader.reconcile(gone.id)

    assert gone.weights_id is not None
    weights = await weights_repo.require(gone.weights_id)
    assert (weights.state, weights.model_ids) == (WeightsState.PULLING, [second.id])
    assert await leader.running(weights)


async def test_resync_stops_the_download_of_a_model_deleted_out_of_its_sight(
    database: Database, slow_hub: RunningHub, leader: DownloadController, tmp_path: Path
) -> None:
    """The deletion never reached this controller (another replica took the request, or the
    weights were left PULLING with no model by an older version): the resync finds them."""
    models, weights_repo = ModelRepository(database), WeightsRepository(database)
    created = await _new_model(database, slow_hub, tmp_path)
    await leader.reconcile(created.id)
    model = await models.require(created.id)
    assert model.weights_id is not None
    await models.update(model.id, expected_revision=model.revision, changes={"is_deleted": True})
    weights = await weights_repo.require(model.weights_id)
    await weights_repo.update(
        weights.id, expected_revision=weights.revision, changes={"model_ids": []}
    )

    leader.start()
    await leader.resync()
    await leader.wait_idle()

    weights = await weights_repo.require(weights.id)
    assert weights.state is WeightsState.CANCELLED
    assert not await leader.running(weights)
