"""History (#18 item 5): download attempts, a model's timeline and ``systemInfo``.

The pure parts are table-tested (how a state change opens and closes an attempt, how the
timeline merges and times the histories); the rest runs against the real servers: FerretDB,
the local hub (throttled so a cancel lands mid-download), the stand-in vLLM of
``tests/test_inference_local.py`` on the local runtime, and two ``modelplane serve`` replicas
(``tests/test_replicas.py``) for ``systemInfo`` answered by the one that does not lead.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from live import ResourceKind
from services.history import timeline
from storage.catalogues import (
    CatalogueDocument,
    CatalogueRepository,
    SyncErrorKind,
    SyncState,
    catalogue_id,
)
from storage.client import Database
from storage.documents import (
    AccessMode,
    DownloadAttempt,
    InferenceDocument,
    InferencePhase,
    LocalTarget,
    ModelDocument,
    ModelPhase,
    ModelPhaseEntry,
    ModelSource,
    PhaseEntry,
    Progress,
    WeightsDocument,
    WeightsStage,
    WeightsState,
    WeightsStateEntry,
)
from storage.history import HISTORY_LIMIT, weights_history
from storage.repositories import ModelRepository, WeightsRepository
from testbed.hub import RunningHub
from tests.conftest import RunningApp
from tests.graphql_client import run
from tests.test_inference_local import (  # noqa: F401  fixtures used by name
    clean_hub,
    fake_engines,
    local_app,
    ready_model,
    start,
    wait_inference,
)
from tests.test_replicas import DOWNLOADS, Replicas, replicas  # noqa: F401  fixture used by name
from tests.test_weights_api import create_local, editor, wait_model

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MiB = 1024 * 1024


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def weights_doc(state: WeightsState, **fields: Any) -> WeightsDocument:
    return WeightsDocument(
        id="weights-a",
        organization_id="org-a",
        repo_id="tiny-org/tiny-model",
        commit_sha="abc",
        target=LocalTarget(local_path="/data/w"),
        location="/data/w",
        state=state,
        state_history=[WeightsStateEntry(state=state, entered_at=T0)],
        **fields,
    )


def progress(done: int, resumed: int) -> Progress:
    return Progress(stage=WeightsStage.DOWNLOADING, bytes_done=done, bytes_resumed=resumed)


OPEN = DownloadAttempt(attempt=0, started_at=at(1))


@pytest.mark.parametrize(
    ("current", "changes", "expected"),
    [
        # entering PULLING opens an attempt under the attempt counter it runs with
        (weights_doc(WeightsState.PENDING, attempt=2), {"state": "PULLING"}, [(2, "PULLING", 0)]),
        # READY closes it with the bytes of its own progress, resumed bytes not counted
        (
            weights_doc(
                WeightsState.PULLING,
                attempts=[OPEN],
                progress=progress(900, 300),
                progress_attempt=0,
            ),
            {"state": "READY", "message": None},
            [(0, "READY", 600)],
        ),
        # a runner that took the attempt over resumed from 600: counted from the attempt's start
        (
            weights_doc(
                WeightsState.PULLING,
                attempts=[OPEN],
                progress=progress(900, 600),
                progress_attempt=0,
                progress_baseline=300,
            ),
            {"state": "READY", "message": None},
            [(0, "READY", 600)],
        ),
        # a cancel (which bumps the counter) closes it as CANCELLED
        (
            weights_doc(
                WeightsState.PULLING, attempts=[OPEN], progress=progress(50, 0), progress_attempt=0
            ),
            {"state": "CANCELLED", "attempt": 1},
            [(0, "CANCELLED", 50)],
        ),
        # progress written by an older attempt is not this one's
        (
            weights_doc(
                WeightsState.PULLING, attempts=[OPEN], progress=progress(50, 0), progress_attempt=7
            ),
            {"state": "FAILED", "message": "hub said 404"},
            [(0, "FAILED", 0)],
        ),
        # a cancel before any worker started opens no attempt
        (weights_doc(WeightsState.PENDING), {"state": "CANCELLED", "attempt": 1}, []),
        # a write that keeps the state records nothing
        (weights_doc(WeightsState.PULLING, attempts=[OPEN]), {"state": "PULLING"}, None),
    ],
)
def test_state_changes_open_and_close_attempts(
    current: WeightsDocument, changes: dict[str, Any], expected: list[tuple[int, str, int]] | None
) -> None:
    derived = weights_history(current, changes, at(10))
    if expected is None:
        assert derived == {}
        return
    attempts = [DownloadAttempt.model_validate(raw) for raw in derived["attempts"]]
    assert [(a.attempt, a.outcome.value, a.bytes_fetched) for a in attempts] == expected
    assert derived["state_history"][-1]["state"] == changes["state"]
    for attempt in attempts:
        assert (attempt.ended_at is None) == (attempt.outcome is WeightsState.PULLING)


def test_timeline_merges_histories_and_times_each_until_its_next_phase() -> None:
    model = ModelDocument(
        id="model-a",
        organization_id="org-a",
        name="m",
        name_key="m",
        display_name="m",
        source=ModelSource(url="tiny-org/tiny-model", access_mode=AccessMode.LOCAL),
        phase=ModelPhase.READY,
        phase_history=[
            ModelPhaseEntry(phase=ModelPhase.PENDING, entered_at=at(0)),
            ModelPhaseEntry(phase=ModelPhase.PULLING, entered_at=at(2)),
            ModelPhaseEntry(phase=ModelPhase.READY, entered_at=at(5)),
        ],
    )
    weights = weights_doc(WeightsState.READY)
    weights.state_history = [
        WeightsStateEntry(state=WeightsState.PENDING, entered_at=at(1)),
        WeightsStateEntry(state=WeightsState.PULLING, entered_at=at(2)),
        WeightsStateEntry(state=WeightsState.READY, entered_at=at(5)),
    ]
    inference = InferenceDocument(
        id="inf-a",
        organization_id="org-a",
        model_id="model-a",
        model_name="m",
        name="m",
        active_key="model-a",
        phase=InferencePhase.STOPPED,
        phase_history=[
            PhaseEntry(phase=InferencePhase.PENDING, entered_at=at(6), reason="Accepted"),
            PhaseEntry(phase=InferencePhase.RUNNING, entered_at=at(8)),
            PhaseEntry(phase=InferencePhase.STOPPED, entered_at=at(20), reason="Stopped"),
        ],
    )
    items = timeline(model, weights, [inference], at(30))
    assert [(i.kind, i.phase.value, i.seconds) for i in items] == [
        (ResourceKind.MODEL, "PENDING", 2.0),
        (ResourceKind.WEIGHTS, "PENDING", 1.0),
        (ResourceKind.MODEL, "PULLING", 3.0),
        (ResourceKind.WEIGHTS, "PULLING", 3.0),
        (ResourceKind.MODEL, "READY", 25.0),
        (ResourceKind.WEIGHTS, "READY", 25.0),
        (ResourceKind.INFERENCE, "PENDING", 2.0),
        (ResourceKind.INFERENCE, "RUNNING", 12.0),
        (ResourceKind.INFERENCE, "STOPPED", 10.0),
    ]
    assert [i.until for i in items if i.until is None] == [None, None, None]
    assert items[6].reason == "Accepted"


# -- against the real servers ------------------------------------------------------------


async def attempts_of(app: RunningApp, weights_id: str) -> list[dict[str, Any]]:
    data = await run(app.graphql_url, "DownloadAttempts", {"id": weights_id}, token=editor(app))
    found: list[dict[str, Any]] = data["weights"]["downloadAttempts"]
    return found


async def test_cancelled_then_resumed_download_shows_two_attempts_with_their_bytes(
    running_app: RunningApp, hub: RunningHub
) -> None:
    hub.hub.faults.clear()
    hub.hub.faults.throttle("*.safetensors", 1 * MiB)
    created = await create_local(running_app, "tiny-org/sharded-model", name="attempts")
    pulling = await wait_model(
        running_app,
        created["id"],
        lambda m: m["weights"] and (m["weights"]["progress"] or {}).get("bytesDone", 0) > 0,
    )
    weights_id = pulling["weights"]["id"]
    live = await attempts_of(running_app, weights_id)
    assert [a["outcome"] for a in live] == ["PULLING"], live
    assert live[0]["endedAt"] is None
    assert live[0]["bytesFetched"] > 0, live

    cancelled = await run(
        running_app.graphql_url,
        "CancelDownload",
        {"modelId": created["id"]},
        token=editor(running_app),
    )
    assert cancelled["cancelDownload"]["state"] == "CANCELLED"
    await wait_model(running_app, created["id"], lambda m: m["phase"] == "FAILED")
    hub.hub.faults.clear()
    retried = await run(
        running_app.graphql_url,
        "RetryDownload",
        {"modelId": created["id"]},
        token=editor(running_app),
    )
    assert retried["retryDownload"]["state"] == "PENDING"
    done = await wait_model(running_app, created["id"], lambda m: m["phase"] == "READY", timeout=60)
    size = done["weights"]["sizeBytes"]

    first, second = await attempts_of(running_app, weights_id)
    print(f"attempts: {first} / {second}")  # noqa: T201  the figures
    assert first["outcome"] == "CANCELLED"
    assert first["reason"] == "cancelled"
    assert first["endedAt"] is not None
    assert 0 < first["bytesFetched"] < size
    assert second["outcome"] == "READY"
    assert second["attempt"] > first["attempt"]
    assert second["startedAt"] >= first["endedAt"]
    # The resumed attempt fetched only what the first had not kept.
    assert second["bytesResumed"] > 0
    assert second["bytesFetched"] + second["bytesResumed"] == size
    assert second["bytesFetched"] < size

    info = (await run(running_app.graphql_url, "SystemInfo", {}, token=editor(running_app)))[
        "systemInfo"
    ]
    (local,) = [usage for usage in info["storage"] if usage["kind"] == "LOCAL"]
    assert local["ready"] >= 1
    assert local["bytes"] >= size


async def test_timeline_lists_model_weights_and_inference_phases_in_order(
    local_app: RunningApp,  # noqa: F811  the fixture
) -> None:
    model = await ready_model(local_app)
    started = await start(local_app, model["id"])
    inference_id = started["inference"]["id"]
    await wait_inference(local_app, inference_id, {"RUNNING"})
    await run(
        local_app.graphql_url, "StopInference", {"modelId": model["id"]}, token=editor(local_app)
    )
    await wait_inference(local_app, inference_id, {"STOPPED"})

    data = await run(
        local_app.graphql_url, "ModelTimeline", {"modelId": model["id"]}, token=editor(local_app)
    )
    entries = data["modelTimeline"]
    for entry in entries:
        print(entry["resourceKind"], phase_of(entry), entry["durationSeconds"])  # noqa: T201
    times = [entry["at"] for entry in entries]
    assert times == sorted(times)
    by_kind = {
        kind: [phase_of(e) for e in entries if e["resourceKind"] == kind]
        for kind in ("MODEL", "WEIGHTS", "INFERENCE")
    }
    assert by_kind["MODEL"] == ["PENDING", "PULLING", "READY"], by_kind
    assert by_kind["WEIGHTS"] == ["PENDING", "PULLING", "READY"], by_kind
    inference = by_kind["INFERENCE"]
    assert inference[0] == "PENDING", inference
    assert inference[-1] == "STOPPED", inference
    assert "RUNNING" in inference
    assert inference.index("RUNNING") < inference.index("STOPPED")
    for entry in entries:
        assert entry["durationSeconds"] >= 0
        if entry["until"] is not None:
            assert entry["until"] >= entry["at"]
    # The inference was RUNNING until it was stopped: a closed entry with its duration.
    running = next(e for e in entries if phase_of(e) == "RUNNING")
    assert running["until"] is not None
    # The model is still READY: its last entry runs until now.
    assert [e["until"] for e in entries if e["resourceKind"] == "MODEL"][-1] is None

    other = await run(
        local_app.graphql_url,
        "ModelTimeline",
        {"modelId": model["id"]},
        token=local_app.token(organization="org-b"),
    )
    assert other["modelTimeline"] is None


def phase_of(entry: dict[str, Any]) -> str:
    return str(entry.get("modelPhase") or entry.get("weightsState") or entry.get("inferencePhase"))


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_system_info_answers_on_the_replica_that_does_not_lead(
    replicas: Replicas,  # noqa: F811  the fixture
) -> None:
    await replicas.start()
    leader, follower = await replicas.roles(DOWNLOADS)
    info = await replicas.call(follower, "SystemInfo")
    print(info)  # noqa: T201
    assert info["runtime"] == "local"
    assert info["stateDir"] == str(replicas.state_dir.resolve())
    assert info["databaseKind"] == "FerretDB"
    assert info["databaseVersion"]
    assert info["pythonVersion"].count(".") == 2
    assert info["replica"].endswith(f"-{follower.process.pid}")
    leases = {lease["name"]: lease for lease in info["leases"]}
    held = leases[DOWNLOADS]
    assert leader.holds(held["holder"]), held
    assert held["heldHere"] is False
    assert info["catalogUrl"] is None
    assert info["catalogSync"] is None
    assert info["storage"] == []


async def test_phase_history_is_written_with_each_phase_change_and_bounded(
    database: Database,
) -> None:
    models = ModelRepository(database)
    model = ModelDocument(
        id="model-h",
        organization_id="org-a",
        name="h",
        name_key="h",
        display_name="h",
        source=ModelSource(url="tiny-org/tiny-model", access_mode=AccessMode.LOCAL),
    )
    inserted = await models.insert(model)
    assert [e.phase for e in inserted.phase_history] == [ModelPhase.PENDING]
    # update without the document read: the repository reads the revision it replaces
    pulling = await models.update(
        model.id, expected_revision=1, changes={"phase": ModelPhase.PULLING, "message": "go"}
    )
    assert [(e.phase, e.reason) for e in pulling.phase_history][-1] == (ModelPhase.PULLING, "go")
    # a write that leaves the phase alone adds nothing
    same = await models.modify(model.id, lambda _m: {"phase": ModelPhase.PULLING, "label": "x"})
    assert len(same.phase_history) == 2
    current = same
    for index in range(HISTORY_LIMIT + 5):
        phase = ModelPhase.READY if index % 2 == 0 else ModelPhase.PULLING
        current = await models.update(
            model.id, expected_revision=current.revision, changes={"phase": phase}, current=current
        )
    stored = await models.require(model.id)
    assert len(stored.phase_history) == HISTORY_LIMIT
    assert stored.phase_history[-1].phase is stored.phase
    at = [entry.entered_at for entry in stored.phase_history]
    assert at == sorted(at)


async def test_system_info_on_kubernetes_names_the_namespace_and_cluster(
    kube_app: RunningApp, kube_namespace: str
) -> None:
    data = await run(kube_app.graphql_url, "SystemInfo", {}, token=editor(kube_app))
    info = data["systemInfo"]
    print(info)  # noqa: T201
    assert info["runtime"] == "kubernetes"
    assert info["namespace"] == kube_namespace
    assert info["stateDir"] is None
    cluster = info["cluster"]
    assert cluster["kubernetesVersion"]
    assert cluster["problems"] == []
    assert cluster["gpuNodes"] is not None
    assert cluster["allocatableGpus"] is not None
    leases = {lease["name"]: lease for lease in info["leases"]}
    assert leases, info  # the one replica leads every controller it runs
    assert all(lease["heldHere"] for lease in leases.values()), leases


async def test_system_info_reports_the_stored_catalogue_sync_state(running_app: RunningApp) -> None:
    failed_at = datetime.now(UTC).replace(microsecond=0)
    document = CatalogueDocument(
        id=catalogue_id("org-a"),
        organization_id="org-a",
        url="https://git.example/catalogue.git",
        branch="main",
        configured_by="tester",
        sync=SyncState(
            commit="0123abcd",
            last_success_at=failed_at - timedelta(minutes=5),
            last_error="the remote did not answer",
            last_error_kind=SyncErrorKind.UNREACHABLE,
            last_error_at=failed_at,
        ),
    )
    await CatalogueRepository(running_app.resources.database).insert(document)
    info = (await run(running_app.graphql_url, "SystemInfo", {}, token=editor(running_app)))[
        "systemInfo"
    ]
    assert info["catalogUrl"] == "https://git.example/catalogue.git"
    sync = info["catalogSync"]
    assert sync["commit"] == "0123abcd"
    assert sync["lastError"] == "the remote did not answer"
    assert sync["lastErrorKind"] == "UNREACHABLE"
    assert sync["lastSuccessAt"] is not None
    other = await run(
        running_app.graphql_url, "SystemInfo", {}, token=running_app.token(organization="org-b")
    )
    assert other["systemInfo"]["catalogUrl"] is None


async def test_an_attempts_baseline_is_its_first_runners_resumed_bytes(database: Database) -> None:
    weights = WeightsRepository(database)
    doc = await weights.insert(weights_doc(WeightsState.PULLING, attempt=3))

    def record(done: int, resumed: int) -> dict[str, Any]:
        stage = WeightsStage.PREFLIGHT
        made = Progress(stage=stage, bytes_done=done, bytes_resumed=resumed)
        return made.model_dump(mode="python")

    assert await weights.set_progress(doc.id, progress=record(100, 100), attempt=3)
    # the leader died; the next one's runner resumes the same attempt from 700
    assert await weights.set_progress(doc.id, progress=record(700, 700), attempt=3)
    # a stale runner of an older attempt writes nothing
    assert not await weights.set_progress(doc.id, progress=record(5, 5), attempt=2)
    stored = await weights.require(doc.id)
    assert stored.progress_baseline == 100
    finished = await weights.modify(
        doc.id,
        lambda _w: {"state": WeightsState.READY, "message": None},
    )
    assert finished.attempts == []  # no attempt was opened through a state change here
    opened = await weights.insert(
        weights_doc(WeightsState.PENDING, attempt=0).model_copy(update={"id": "weights-b"})
    )
    running = await weights.update(opened.id, expected_revision=1, changes={"state": "PULLING"})
    assert [a.outcome for a in running.attempts] == [WeightsState.PULLING]
    await weights.set_progress(opened.id, progress=record(100, 100), attempt=0)
    await weights.set_progress(opened.id, progress=record(700, 700), attempt=0)
    ended = await weights.modify(
        opened.id, lambda _w: {"state": WeightsState.FAILED, "message": "x"}
    )
    (attempt,) = ended.attempts
    assert (attempt.bytes_resumed, attempt.bytes_fetched) == (100, 600)
    assert attempt.reason == "x"
