"""The download controller's decisions, as pure functions of what a reconcile read.

Every choice the reconciler makes is here and table-tested (``tests/test_download_plan.py``):
what to do for a model (:func:`plan`, :func:`plan_release`), for a weights document on its own
(:func:`plan_weights`: a removal asked for by ``deleteWeights``, and the download of weights
asked for by ``downloadWeights`` while no model uses them), the model phase that mirrors
a download (:func:`model_status`), whether attaching restarts stopped weights
(:func:`restarts_on_attach`), and how a hub failure is reported (:func:`hub_failure`). The
reconciler (:mod:`controllers.downloads.reconciler`) only reads, calls these, and applies.

Queue keys: a model id (the model's download), or :func:`weights_key` of a weights id (work
on the weights that no model may be listed for, such as a removal).
"""

from __future__ import annotations

import enum

from controllers.downloads.executions import Execution
from controllers.errors import PermanentError, TemporaryError, retry_message
from integrations.huggingface import HubError
from storage.documents import AccessMode, ModelDocument, ModelPhase, WeightsDocument, WeightsState

STOPPED_BY_DELETE = "download stopped: its model was deleted"
"""Why the download of weights that no model uses any more was cancelled."""
DOWNLOADING = (WeightsState.PENDING, WeightsState.PULLING)
WEIGHTS_KEY_PREFIX = "weights/"


def weights_key(weights_id: str) -> str:
    """The queue key of work on one weights document (a model's key is its id)."""
    return WEIGHTS_KEY_PREFIX + weights_id


def weights_id_of(key: str) -> str | None:
    """The weights id of a :func:`weights_key`, None for a model key."""
    return key.removeprefix(WEIGHTS_KEY_PREFIX) if key.startswith(WEIGHTS_KEY_PREFIX) else None


class Action(enum.Enum):
    """What a reconcile decides for one model."""

    NOTHING = "nothing"
    FORGET = "forget"  # gone, deleted or not LOCAL, and nothing of it left to undo
    RELEASE = "release"  # deleted, still listed by weights that go on: unlist it
    STOP = "stop"  # deleted, its download used by no other model: cancel it, unlist it
    CREATE_WEIGHTS = "create-weights"
    START = "start"  # no worker for the current attempt: launch one
    FAIL = "fail"  # the worker failed without recording why: record the runtime's reason
    CANCEL = "cancel"  # cancelDownload wrote CANCELLED: halt the worker, discard its partials
    HALT = "halt"  # the download ended (failed) but a worker lingers
    MIRROR = "mirror"  # copy the weights' state onto the model


def plan(  # noqa: PLR0911  a decision table reads best as one return per row
    model: ModelDocument | None, weights: WeightsDocument | None, execution: Execution
) -> Action:
    """The pure decision of a model's reconcile."""
    if model is None or model.is_deleted or model.source.access_mode is not AccessMode.LOCAL:
        return plan_release(model, weights, execution)
    if model.download_target is None:
        return Action.NOTHING
    if weights is None:
        return Action.CREATE_WEIGHTS if model.phase is ModelPhase.PENDING else Action.NOTHING
    if removing(weights):
        return Action.NOTHING  # the weights' own reconcile removes them (plan_weights)
    if weights.state in DOWNLOADING:
        if execution.failure is not None:
            return Action.FAIL
        if not execution.active:
            return Action.START
        return Action.MIRROR
    if weights.state is WeightsState.CANCELLED and (execution.active or execution.stale):
        return Action.CANCEL
    if execution.active and weights.state is not WeightsState.READY:
        return Action.HALT
    return Action.MIRROR


def plan_release(
    model: ModelDocument | None, weights: WeightsDocument | None, execution: Execution
) -> Action:
    """A model that no longer wants its weights (deleted): a download that no other model
    uses stops (CANCELLED, :data:`STOPPED_BY_DELETE`), whether or not the model is still
    listed (weights left PULLING with no model by an older version stop too); weights that
    other models use, or that are settled, only lose the model from their list."""
    if model is None or weights is None or removing(weights):
        return Action.FORGET
    others = [owner for owner in weights.model_ids if owner != model.id]
    downloading = weights.state in DOWNLOADING or execution.active
    if not others and downloading and not weights.prefetched:
        return Action.STOP  # prefetched weights were wanted on their own: they go on
    return Action.RELEASE if model.id in weights.model_ids else Action.FORGET


class WeightsAction(enum.Enum):
    """What a reconcile decides for one weights document on its own."""

    NOTHING = "nothing"
    REMOVE = "remove"  # deleteWeights asked: halt, remove files, detach models, delete record


def removing(weights: WeightsDocument) -> bool:
    """deleteWeights asked for a removal that is neither done nor refused."""
    return weights.deletion is not None and weights.deletion.refused is None


def plan_weights(  # noqa: PLR0911  a decision table reads best as one return per row
    weights: WeightsDocument | None, execution: Execution | None = None
) -> WeightsAction | Action:
    """The pure decision of a weights reconcile: a removal; else, for prefetched weights that
    no model uses (while one does, its model's reconcile drives the download), what
    :func:`plan` would do for their download (START, FAIL, CANCEL, HALT; mirroring onto a
    model is nothing here)."""
    if weights is None:
        return WeightsAction.NOTHING
    if removing(weights):
        return WeightsAction.REMOVE
    if weights.model_ids or not weights.prefetched or execution is None:
        return WeightsAction.NOTHING
    if weights.state in DOWNLOADING:
        if execution.failure is not None:
            return Action.FAIL
        return WeightsAction.NOTHING if execution.active else Action.START
    if weights.state is WeightsState.CANCELLED and (execution.active or execution.stale):
        return Action.CANCEL
    if execution.active and weights.state is not WeightsState.READY:
        return Action.HALT
    return WeightsAction.NOTHING


def drives_itself(weights: WeightsDocument) -> bool:
    """Prefetched weights no model uses: their own reconcile drives the download."""
    return weights.prefetched and not weights.model_ids


def restarts_on_attach(weights: WeightsDocument) -> bool:
    """A new model asking for stopped weights that no model uses (their model was deleted)
    restarts them: creating the model again downloads, resuming from the verified files."""
    return not weights.model_ids and weights.state in (WeightsState.CANCELLED, WeightsState.FAILED)


def model_status(weights: WeightsDocument) -> tuple[ModelPhase, str | None]:
    """The model phase and message that mirror a Weights' state."""
    if weights.state is WeightsState.READY:
        return ModelPhase.READY, "downloaded and verified"
    if weights.state is WeightsState.FAILED:
        return ModelPhase.FAILED, weights.message
    if weights.state is WeightsState.CANCELLED:
        return ModelPhase.FAILED, "download cancelled; retryDownload resumes it"
    if weights.state is WeightsState.PULLING:
        return ModelPhase.PULLING, weights.message
    return ModelPhase.PENDING, "waiting for the download to start"


def hub_failure(
    exc: HubError, *, next_delay: float
) -> tuple[ModelPhase, str, TemporaryError | PermanentError]:
    """How a hub failure during a model's first reconcile is reported: the model's phase and
    message, and the typed error the reconcile raises. A temporary one (5xx, 429, timeout,
    connection) keeps the model PENDING and says when it is tried again; a permanent one
    (404, 401/403, gated, no such revision) fails it with the hub's words, once."""
    words = f"hub: {exc}"
    if exc.temporary:
        message = retry_message(words, next_delay)
        return ModelPhase.PENDING, message, TemporaryError(message, delay=next_delay)
    return ModelPhase.FAILED, words, PermanentError(exc.reason, words)
