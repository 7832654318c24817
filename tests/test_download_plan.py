"""Table tests of every decision of the download controller (controllers/downloads/plan.py),
and of the pure parts of the services and boundaries around it: the removal verdict
deleteWeights waits for, and the classification of hub failures."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from controllers.downloads.executions import Execution
from controllers.downloads.plan import (
    Action,
    WeightsAction,
    hub_failure,
    model_status,
    plan,
    plan_weights,
    restarts_on_attach,
    weights_id_of,
    weights_key,
)
from controllers.downloads.reconciler import event_keys
from controllers.errors import PermanentError, TemporaryError
from integrations.huggingface import (
    HubAccessDenied,
    HubError,
    HubRepoNotFound,
    HubRevisionNotFound,
)
from live import Event, EventType, ResourceKind
from services.weights import RemovalVerdict, removal_verdict
from storage.documents import (
    AccessMode,
    LocalTarget,
    ModelDocument,
    ModelPhase,
    ModelSource,
    PvcTarget,
    WeightsDeletion,
    WeightsDocument,
    WeightsState,
)


def model_doc(**overrides: Any) -> ModelDocument:
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


def _weights(
    state: WeightsState, *model_ids: str, deletion: WeightsDeletion | None = None
) -> WeightsDocument:
    return WeightsDocument(
        model_ids=list(model_ids),
        deletion=deletion,
        id="weights-a",
        organization_id="org",
        repo_id="org/a",
        commit_sha="c" * 40,
        target=LocalTarget(local_path="/models/a"),
        location="/models/a",
        state=state,
    )


ASKED = WeightsDeletion(request="removal-1")
REFUSED = WeightsDeletion(request="removal-1", refused="/models/a: permission denied")
GONE = model_doc(is_deleted=True)
IDLE = Execution()
STALE = Execution(stale=True)
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
            model_doc(source=ModelSource(url="https://x/v1", access_mode=AccessMode.REMOTE_API)),
            None,
            IDLE,
            Action.FORGET,
        ),
        (model_doc(download_target=None), None, IDLE, Action.NOTHING),
        (
            model_doc(download_target=PvcTarget(claim_name="c")),
            None,
            IDLE,
            Action.CREATE_WEIGHTS,
        ),
        (model_doc(), None, IDLE, Action.CREATE_WEIGHTS),
        (model_doc(phase=ModelPhase.FAILED), None, IDLE, Action.NOTHING),
        (model_doc(), _weights(WeightsState.PENDING), IDLE, Action.START),
        (model_doc(), _weights(WeightsState.PULLING), IDLE, Action.START),
        (model_doc(), _weights(WeightsState.PULLING), ACTIVE, Action.MIRROR),
        (model_doc(), _weights(WeightsState.PULLING), BROKEN, Action.FAIL),
        (model_doc(), _weights(WeightsState.PENDING), ENDED, Action.FAIL),
        (model_doc(), _weights(WeightsState.READY), IDLE, Action.MIRROR),
        (model_doc(), _weights(WeightsState.READY), ACTIVE, Action.MIRROR),
        (model_doc(), _weights(WeightsState.READY), ENDED, Action.MIRROR),
        (model_doc(), _weights(WeightsState.CANCELLED), IDLE, Action.MIRROR),
        # cancelDownload wrote CANCELLED; the leader halts the worker, drops its partials
        (model_doc(), _weights(WeightsState.CANCELLED), ACTIVE, Action.CANCEL),
        (model_doc(), _weights(WeightsState.CANCELLED), STALE, Action.CANCEL),  # older Job
        (model_doc(), _weights(WeightsState.PULLING), STALE, Action.START),  # launch cleans
        (model_doc(), _weights(WeightsState.FAILED), STALE, Action.MIRROR),
        (model_doc(), _weights(WeightsState.FAILED), ACTIVE, Action.HALT),
        (model_doc(), _weights(WeightsState.FAILED), IDLE, Action.MIRROR),
        # deleteWeights asked: the weights' own reconcile removes them; the model waits
        (model_doc(), _weights(WeightsState.PULLING, deletion=ASKED), IDLE, Action.NOTHING),
        (model_doc(), _weights(WeightsState.PULLING, deletion=ASKED), ACTIVE, Action.NOTHING),
        (model_doc(), _weights(WeightsState.READY, deletion=ASKED), IDLE, Action.NOTHING),
        # ... and once the target refused, the download goes on as before
        (model_doc(), _weights(WeightsState.PULLING, deletion=REFUSED), IDLE, Action.START),
        (GONE, _weights(WeightsState.PULLING, "model-a", deletion=ASKED), ACTIVE, Action.FORGET),
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
        (WeightsState.READY, ModelPhase.READY, "downloaded and verified"),
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


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        (None, WeightsAction.NOTHING),
        (_weights(WeightsState.READY), WeightsAction.NOTHING),
        (_weights(WeightsState.READY, deletion=ASKED), WeightsAction.REMOVE),
        (_weights(WeightsState.PULLING, "model-a", deletion=ASKED), WeightsAction.REMOVE),
        (_weights(WeightsState.CANCELLED, deletion=ASKED), WeightsAction.REMOVE),
        (_weights(WeightsState.READY, deletion=REFUSED), WeightsAction.NOTHING),
    ],
)
def test_plan_weights(weights: WeightsDocument | None, expected: WeightsAction) -> None:
    assert plan_weights(weights) is expected


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        (None, (RemovalVerdict.REMOVED, None)),
        (_weights(WeightsState.READY, deletion=ASKED), (RemovalVerdict.WAITING, None)),
        (_weights(WeightsState.READY), (RemovalVerdict.WAITING, None)),
        (
            _weights(WeightsState.READY, deletion=REFUSED),
            (RemovalVerdict.REFUSED, "/models/a: permission denied"),
        ),
    ],
)
def test_removal_verdict(
    weights: WeightsDocument | None, expected: tuple[RemovalVerdict, str | None]
) -> None:
    assert removal_verdict(weights) == expected


@pytest.mark.parametrize(
    ("error", "phase", "message", "kind"),
    [
        (
            HubError("the hub answered 503 for org/a", status=503),
            ModelPhase.PENDING,
            "hub: the hub answered 503 for org/a; retrying in 8 s",
            TemporaryError,
        ),
        (
            HubError("the hub answered 429 for org/a", status=429),
            ModelPhase.PENDING,
            "hub: the hub answered 429 for org/a; retrying in 8 s",
            TemporaryError,
        ),
        (
            HubError("the hub could not be reached for org/a (ConnectTimeout)"),
            ModelPhase.PENDING,
            "hub: the hub could not be reached for org/a (ConnectTimeout); retrying in 8 s",
            TemporaryError,
        ),
        (
            HubError("the hub answered 400 for org/a", status=400),
            ModelPhase.FAILED,
            "hub: the hub answered 400 for org/a",
            PermanentError,
        ),
        (
            HubRepoNotFound("org/a was not found on the hub", status=404),
            ModelPhase.FAILED,
            "hub: org/a was not found on the hub",
            PermanentError,
        ),
        (
            HubRevisionNotFound("org/a has no revision 'x'", status=404),
            ModelPhase.FAILED,
            "hub: org/a has no revision 'x'",
            PermanentError,
        ),
        (
            HubAccessDenied("the hub refused the token for org/a (HTTP 401)", status=401),
            ModelPhase.FAILED,
            "hub: the hub refused the token for org/a (HTTP 401)",
            PermanentError,
        ),
    ],
)
def test_hub_failure(
    error: HubError, phase: ModelPhase, message: str, kind: type[Exception]
) -> None:
    got_phase, got_message, raised = hub_failure(error, next_delay=8.2)
    assert (got_phase, got_message) == (phase, message)
    assert isinstance(raised, kind)
    assert raised.message == message
    if isinstance(raised, TemporaryError):
        assert raised.delay == 8.2
    if isinstance(raised, PermanentError):
        assert raised.reason == error.reason


def _event(kind: ResourceKind, type_: EventType, *model_ids: str) -> Event:
    return Event(
        cursor=1,
        organization_id="org",
        resource_kind=kind,
        resource_id="weights-a" if kind is ResourceKind.WEIGHTS else "x-1",
        type=type_,
        at=datetime.now(UTC),
        model_ids=model_ids,
    )


@pytest.mark.parametrize(
    ("event", "keys"),
    [
        (_event(ResourceKind.MODEL, EventType.CREATED, "x-1"), ["x-1"]),
        (_event(ResourceKind.MODEL, EventType.UPDATED, "x-1"), []),  # catalogue, mirror
        (_event(ResourceKind.MODEL, EventType.PHASE_CHANGED, "x-1"), ["x-1"]),
        (_event(ResourceKind.MODEL, EventType.DELETED, "x-1"), ["x-1"]),
        (
            _event(ResourceKind.WEIGHTS, EventType.PHASE_CHANGED, "m-1", "m-2"),
            ["weights/weights-a", "m-1", "m-2"],
        ),
        (_event(ResourceKind.WEIGHTS, EventType.UPDATED), ["weights/weights-a"]),
        (_event(ResourceKind.WEIGHTS, EventType.DELETED, "m-1"), ["weights/weights-a", "m-1"]),
        (_event(ResourceKind.WEIGHTS, EventType.PROGRESS, "m-1"), []),
        (_event(ResourceKind.INFERENCE, EventType.PHASE_CHANGED, "m-1"), []),
        (_event(ResourceKind.API_KEY, EventType.UPDATED), []),
    ],
)
def test_event_keys(event: Event, keys: list[str]) -> None:
    assert event_keys(event) == keys


def test_weights_keys_round_trip() -> None:
    assert weights_id_of(weights_key("weights-a")) == "weights-a"
    assert weights_id_of("model-a") is None
