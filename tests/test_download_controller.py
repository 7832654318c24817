"""The download controller: leader election between replicas and real reconciles (its pure
decisions are table-tested in ``test_download_plan.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from controllers.downloads.reconciler import DownloadController
from controllers.downloads.running import WeightsRuntimeConfig
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
from tests.test_download_plan import model_doc as _model


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
