"""What the inference controller does about one inference: a pure function of what it read.

The reconcile (:mod:`controllers.inference.reconciler`) reads the inference, its model, its
weights and the observed workload into :class:`Facts`; :func:`decide` answers with one
:class:`Decision` -- an :class:`Action` on the workload (apply, remove, nothing), the status to
write afterwards (written only when it differs from the stored one) and when to look again. No
I/O here, so every row of the table is a unit test (``tests/test_inference_decide.py``).

Rows, first match wins:

=====================================================  =======  ==================================
facts                                                  action   status
=====================================================  =======  ==================================
deleted, workload left / not                           REMOVE   none (the document is gone)
stopped, workload left                                 REMOVE   phase kept, Stopping (look in 2 s)
stopped, nothing left                                  REMOVE*  STOPPED, then retired
managed, model missing or deleted                      REMOVE   FAILED ModelDeleted
a route (REMOTE_API, no engine)                        --       the probe's answer (30 s if PENDING)
model's weights FAILED                                 --       FAILED WeightsFailed
model's weights not READY yet                          --       PENDING WaitingForWeights
a permanent failure recorded for this generation       --       (left alone until a person acts)
applied at this generation                             --       what the runtime observes
weights document gone, nothing applied                 --       FAILED WeightsMissing
the plan is refused                                    --       FAILED InvalidSpec
otherwise (new, generation moved, workload missing)    APPLY    then observed
=====================================================  =======  ==================================

``REMOVE*``: a stopped inference whose phase is not STOPPED yet is removed once more (idempotent)
so that objects outside the executor's view (a Service, a ConfigMap) go too.

*Retired* (the Playground API: toggling off deletes the inference and empties the model's
inference id and status): once STOPPED is written, the model's ``inference_phase`` is cleared
and the document leaves the live set (``is_deleted``, its ``active_key`` freed), so
``Model.inference`` is null and the next start creates a new inference. The document stays,
readable by its id, as the record of how that inference ended.

A permanent failure (:class:`~controllers.errors.PermanentError` from an apply: RBAC, validation,
admission; a program that cannot be spawned) is written once as FAILED with its reason; the row
"permanent failure recorded" keeps the controller from applying again on every event or resync.
The user's retry (``stopInference`` then ``startInference``) is a new inference once the stop
completed, or (while it completes) a new generation and phase PENDING of the same one, which
makes the row no longer match.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from controllers.inference.workloads import Observed, WorkloadPlan
from storage.documents import (
    AccessMode,
    InferenceDocument,
    InferencePhase,
    ModelDocument,
    ModelPhase,
)

STOPPING_RECHECK_SECONDS = 2.0
ROUTE_RECHECK_SECONDS = 30.0
PERMANENT_REASONS = frozenset(
    {
        # the API server refused the apply (controllers.runtimes.kubernetes.inference.refused)
        "Forbidden",
        "Invalid",
        "BadRequest",
        "AdmissionDenied",
        # the local supervisor cannot spawn the program
        "ProgramNotFound",
        "StartError",
        "InvalidSpec",
    }
)
"""Reasons of a FAILED status written from a permanent error: not retried by the controller."""


class Action(StrEnum):
    """What to do to the workload before writing status."""

    NOTHING = "NOTHING"
    APPLY = "APPLY"
    REMOVE = "REMOVE"


@dataclass(frozen=True, slots=True)
class Facts:
    """What one reconcile read. ``observed`` is set when ``applied``; ``plan`` or
    ``plan_error`` when not; ``route`` for a REMOTE_API route."""

    inference: InferenceDocument
    model: ModelDocument | None = None
    leftover: bool = False
    """Something of the workload exists (any generation)."""
    applied: bool = False
    """The workload exists at the document's generation (or was applied by this reconcile)."""
    observed: Observed | None = None
    endpoint: str | None = None
    plan: WorkloadPlan | None = None
    plan_error: str | None = None
    weights_missing: bool = False
    route: Observed | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """What :func:`decide` answers."""

    action: Action = Action.NOTHING
    status: Observed | None = None
    """Written (when changed) after the action succeeded; None: write nothing."""
    endpoint: str | None = None
    requeue: float | None = None
    retire: bool = False
    """After the status write: unlink the stopped inference from its model (see above)."""


def decide(facts: Facts) -> Decision:  # noqa: PLR0911  one return per table row
    """The decision for ``facts`` (see the table in the module docstring)."""
    inference = facts.inference
    if inference.is_deleted or not inference.enabled:
        return _stopped(facts)
    model = facts.model
    if inference.managed and (model is None or model.is_deleted):
        failed = Observed(InferencePhase.FAILED, "ModelDeleted", "the model was deleted")
        action = Action.REMOVE if facts.leftover else Action.NOTHING
        return Decision(action, failed)
    if facts.route is not None:
        requeue = ROUTE_RECHECK_SECONDS if facts.route.phase is InferencePhase.PENDING else None
        return Decision(status=facts.route, endpoint=facts.endpoint, requeue=requeue)
    waiting = _waiting_for_weights(inference, model)
    if waiting is not None:
        return Decision(status=waiting)
    if failed_for_good(inference):
        return Decision()
    if facts.applied and facts.observed is not None:
        return Decision(status=facts.observed, endpoint=facts.endpoint)
    if facts.weights_missing:
        return Decision(status=_WEIGHTS_MISSING)
    if facts.plan_error is not None or facts.plan is None:
        message = facts.plan_error or "the engine could not be planned"
        return Decision(status=Observed(InferencePhase.FAILED, "InvalidSpec", message))
    return Decision(Action.APPLY)


def failed_for_good(inference: InferenceDocument) -> bool:
    """A permanent failure is recorded for the document's current generation."""
    return (
        inference.phase is InferencePhase.FAILED
        and inference.reason in PERMANENT_REASONS
        and inference.observed_generation != inference.generation
    )


def _stopped(facts: Facts) -> Decision:
    inference = facts.inference
    requeue = STOPPING_RECHECK_SECONDS if facts.leftover else None
    if inference.is_deleted:
        left = facts.leftover or inference.phase is not InferencePhase.STOPPED
        return Decision(Action.REMOVE if left else Action.NOTHING, requeue=requeue)
    if facts.leftover:
        stopping = Observed(inference.phase, "Stopping", "waiting for the engine to end")
        return Decision(Action.REMOVE, stopping, requeue=requeue)
    stopped = Observed(InferencePhase.STOPPED, "Stopped", "stopped; its objects are removed")
    if inference.phase is InferencePhase.STOPPED:
        return Decision(status=stopped, retire=True)
    return Decision(Action.REMOVE, stopped, retire=True)


_WEIGHTS_MISSING = Observed(
    InferencePhase.FAILED,
    "WeightsMissing",
    "the model's weights are gone; retryDownload, and this inference starts when they are READY",
)


def _waiting_for_weights(
    inference: InferenceDocument, model: ModelDocument | None
) -> Observed | None:
    if (
        not inference.managed
        or model is None
        or model.source.access_mode is AccessMode.REMOTE_API
        or model.phase is ModelPhase.READY
    ):
        return None
    if model.phase is ModelPhase.FAILED:
        return Observed(
            InferencePhase.FAILED,
            "WeightsFailed",
            f"the weights download failed: {model.message or 'see the model'}; "
            "retryDownload, and this inference starts when they are READY",
        )
    return Observed(
        InferencePhase.PENDING,
        "WaitingForWeights",
        f"weights are {model.phase.value}; the engine starts when they are READY",
    )
