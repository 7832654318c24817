"""The download controller: its pure plan (table tests) and leader election between replicas."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from controllers.downloading import DownloadOptions
from controllers.executions import Execution
from controllers.leading import Leadership
from controllers.secrets import EncryptedSecretStore, fernet_for
from controllers.weights import (
    Action,
    DownloadController,
    WeightsRuntimeConfig,
    model_status,
    plan,
)
from integrations.huggingface import HubClient
from storage.client import Database
from storage.documents import (
    AccessMode,
    DownloadTarget,
    ModelDocument,
    ModelPhase,
    ModelSource,
    TargetKind,
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
        "download_target": DownloadTarget(kind=TargetKind.LOCAL, local_path="/models/a"),
        "phase": ModelPhase.PENDING,
    }
    values.update(overrides)
    return ModelDocument(**values)


def _weights(state: WeightsState) -> WeightsDocument:
    return WeightsDocument(
        id="weights-a",
        organization_id="org",
        repo_id="org/a",
        commit_sha="c" * 40,
        target=DownloadTarget(kind=TargetKind.LOCAL, local_path="/models/a"),
        location="/models/a",
        state=state,
    )


IDLE = Execution()
ACTIVE = Execution(active=True)
BROKEN = Execution(active=True, failure="download pod cannot start: ImagePullBackOff")
ENDED = Execution(active=False, failure="download Job failed: BackoffLimitExceeded")


@pytest.mark.parametrize(
    ("model", "weights", "execution", "expected"),
    [
        (None, None, IDLE, Action.FORGET),
        (_model(is_deleted=True), _weights(WeightsState.PULLING), ACTIVE, Action.FORGET),
        (
            _model(source=ModelSource(url="https://x/v1", access_mode=AccessMode.REMOTE_API)),
            None,
            IDLE,
            Action.FORGET,
        ),
        (_model(download_target=None), None, IDLE, Action.NOTHING),
        (
            _model(download_target=DownloadTarget(kind=TargetKind.PVC, claim_name="c")),
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
