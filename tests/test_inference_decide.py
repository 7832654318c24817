"""Table tests of the inference controller's pure decision (:mod:`controllers.inference.deciding`),
and of how a refused Kubernetes apply is typed
(:func:`controllers.runtimes.kubernetes.errors.refused`).

One row per line of the table in that module's docstring: the facts a reconcile read, and the
action, phase and reason it must come to. No servers: ``decide`` does no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from controllers.errors import PermanentError, TemporaryError
from controllers.inference.deciding import (
    ROUTE_RECHECK_SECONDS,
    STOPPING_RECHECK_SECONDS,
    Action,
    Facts,
    decide,
)
from controllers.inference.workloads import Observed, WorkloadPlan
from controllers.runtimes.kubernetes.errors import refused
from storage.documents import (
    AccessMode,
    InferenceDocument,
    InferenceEngine,
    InferencePhase,
    InferenceSpec,
    ModelDocument,
    ModelPhase,
    ModelSource,
)

RUNNING = Observed(InferencePhase.RUNNING, None, "1/1 ready", 1, 1)
CRASHING = Observed(InferencePhase.CRASH_LOOP_BACK_OFF, "CrashLoopBackOff", "exit 1", 1, 0)
IMAGE_FAILED = Observed(InferencePhase.FAILED, "ImagePullBackOff", "no such image", 1, 0)
UNSCHEDULABLE = Observed(
    InferencePhase.PENDING, "InsufficientGPU", "insufficient nvidia.com/gpu (needs 2)", 1, 0
)
PLAN = WorkloadPlan(engine=None, port=8000)
ROUTE_UP = Observed(InferencePhase.RUNNING, None, "routing to https://api.example", 1, 1)
ROUTE_DOWN = Observed(InferencePhase.PENDING, "RemoteError", "answered 503", 0, 0)


def inference(**changes: Any) -> InferenceDocument:
    base = InferenceDocument(
        id="inf-1",
        organization_id="org",
        model_id="model-1",
        model_name="m",
        name="inf-1",
        active_key="model-1",
        spec=InferenceSpec(engine=InferenceEngine.VLLM),
        generation=2,
        observed_generation=1,
    )
    return base.model_copy(update=changes)


def model(**changes: Any) -> ModelDocument:
    base = ModelDocument(
        id="model-1",
        organization_id="org",
        name="m",
        name_key="m",
        display_name="m",
        source=ModelSource(url="org/m", access_mode=AccessMode.LOCAL),
        weights_id="weights-1",
        phase=ModelPhase.READY,
    )
    return base.model_copy(update=changes)


REMOTE = model(
    source=ModelSource(url="https://api.example/v1", access_mode=AccessMode.REMOTE_API),
    weights_id=None,
)


@dataclass(frozen=True)
class Row:
    name: str
    facts: Facts
    action: Action
    phase: InferencePhase | None
    reason: str | None = None
    requeue: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


ROWS = [
    Row(
        "deleted, workload left: remove, write nothing",
        Facts(inference(is_deleted=True), model(), leftover=True),
        Action.REMOVE,
        None,
        requeue=STOPPING_RECHECK_SECONDS,
    ),
    Row(
        "deleted, nothing left, never stopped: remove once more (Services, ConfigMaps)",
        Facts(inference(is_deleted=True, phase=InferencePhase.RUNNING), model()),
        Action.REMOVE,
        None,
    ),
    Row(
        "deleted, nothing left, stopped: nothing",
        Facts(inference(is_deleted=True, phase=InferencePhase.STOPPED), model()),
        Action.NOTHING,
        None,
    ),
    Row(
        "stopped, workload left: remove, phase kept, Stopping",
        Facts(inference(enabled=False, phase=InferencePhase.RUNNING), model(), leftover=True),
        Action.REMOVE,
        InferencePhase.RUNNING,
        "Stopping",
        STOPPING_RECHECK_SECONDS,
    ),
    Row(
        "stopped, nothing left: STOPPED (after one more idempotent remove), then retired",
        Facts(inference(enabled=False, phase=InferencePhase.RUNNING), model()),
        Action.REMOVE,
        InferencePhase.STOPPED,
        "Stopped",
        extra={"retire": True},
    ),
    Row(
        "stopped and STOPPED already: status unchanged, retired (unlinked from its model)",
        Facts(inference(enabled=False, phase=InferencePhase.STOPPED), model()),
        Action.NOTHING,
        InferencePhase.STOPPED,
        "Stopped",
        extra={"retire": True},
    ),
    Row(
        "model deleted, workload left: remove, FAILED ModelDeleted",
        Facts(inference(), model(is_deleted=True), leftover=True),
        Action.REMOVE,
        InferencePhase.FAILED,
        "ModelDeleted",
    ),
    Row(
        "model document gone: FAILED ModelDeleted",
        Facts(inference(), None),
        Action.NOTHING,
        InferencePhase.FAILED,
        "ModelDeleted",
    ),
    Row(
        "a route answering: RUNNING",
        Facts(inference(spec=InferenceSpec(engine=None)), REMOTE, route=ROUTE_UP),
        Action.NOTHING,
        InferencePhase.RUNNING,
    ),
    Row(
        "a route not answering: PENDING, look again later",
        Facts(inference(spec=InferenceSpec(engine=None)), REMOTE, route=ROUTE_DOWN),
        Action.NOTHING,
        InferencePhase.PENDING,
        "RemoteError",
        ROUTE_RECHECK_SECONDS,
    ),
    Row(
        "model not READY: PENDING WaitingForWeights",
        Facts(inference(), model(phase=ModelPhase.PULLING)),
        Action.NOTHING,
        InferencePhase.PENDING,
        "WaitingForWeights",
    ),
    Row(
        "model's download FAILED: FAILED WeightsFailed",
        Facts(inference(), model(phase=ModelPhase.FAILED, message="hub answered 404")),
        Action.NOTHING,
        InferencePhase.FAILED,
        "WeightsFailed",
    ),
    Row(
        "weights document gone: FAILED WeightsMissing",
        Facts(inference(), model(), weights_missing=True),
        Action.NOTHING,
        InferencePhase.FAILED,
        "WeightsMissing",
    ),
    Row(
        "plan refused: FAILED InvalidSpec",
        Facts(inference(), model(), plan_error="args: --served-model-name is required"),
        Action.NOTHING,
        InferencePhase.FAILED,
        "InvalidSpec",
    ),
    Row(
        "new inference (nothing applied): apply",
        Facts(inference(generation=1, observed_generation=0), model(), plan=PLAN),
        Action.APPLY,
        None,
    ),
    Row(
        "generation moved past the applied one: apply",
        Facts(inference(phase=InferencePhase.RUNNING), model(), leftover=True, plan=PLAN),
        Action.APPLY,
        None,
    ),
    Row(
        "workload missing at the applied generation: apply again",
        Facts(inference(generation=1, observed_generation=1), model(), plan=PLAN),
        Action.APPLY,
        None,
    ),
    Row(
        "unmanaged (no model): apply its manifest",
        Facts(inference(managed=False, model_id=None), None, plan=PLAN),
        Action.APPLY,
        None,
    ),
    Row(
        "observed RUNNING: write it, with the endpoint",
        Facts(inference(), model(), True, True, RUNNING, "http://e/v1"),
        Action.NOTHING,
        InferencePhase.RUNNING,
        extra={"endpoint": "http://e/v1"},
    ),
    Row(
        "observed crash loop",
        Facts(inference(), model(), True, True, CRASHING, "http://e/v1"),
        Action.NOTHING,
        InferencePhase.CRASH_LOOP_BACK_OFF,
        "CrashLoopBackOff",
    ),
    Row(
        "observed FAILED (image): write it",
        Facts(inference(), model(), True, True, IMAGE_FAILED, "http://e/v1"),
        Action.NOTHING,
        InferencePhase.FAILED,
        "ImagePullBackOff",
    ),
    Row(
        "observed PENDING, unschedulable",
        Facts(inference(), model(), True, True, UNSCHEDULABLE, "http://e/v1"),
        Action.NOTHING,
        InferencePhase.PENDING,
        "InsufficientGPU",
    ),
    Row(
        "apply refused by RBAC recorded for this generation: left alone, no write",
        Facts(inference(phase=InferencePhase.FAILED, reason="Forbidden"), model(), plan=PLAN),
        Action.NOTHING,
        None,
    ),
    Row(
        "admission denial recorded: left alone",
        Facts(inference(phase=InferencePhase.FAILED, reason="AdmissionDenied"), model(), plan=PLAN),
        Action.NOTHING,
        None,
    ),
    Row(
        "program not found recorded (local): left alone",
        Facts(inference(phase=InferencePhase.FAILED, reason="ProgramNotFound"), model(), plan=PLAN),
        Action.NOTHING,
        None,
    ),
    Row(
        "the user's retry (PENDING, new generation) after a refusal: apply",
        Facts(inference(phase=InferencePhase.PENDING, reason="Started"), model(), plan=PLAN),
        Action.APPLY,
        None,
    ),
    Row(
        "a FAILED that is not permanent (weights failed before, now READY): apply",
        Facts(inference(phase=InferencePhase.FAILED, reason="WeightsFailed"), model(), plan=PLAN),
        Action.APPLY,
        None,
    ),
    Row(
        "model not READY wins over a recorded refusal (the weights come first)",
        Facts(
            inference(phase=InferencePhase.FAILED, reason="Forbidden"),
            model(phase=ModelPhase.PULLING),
        ),
        Action.NOTHING,
        InferencePhase.PENDING,
        "WaitingForWeights",
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_decide(row: Row) -> None:
    decision = decide(row.facts)
    assert decision.action is row.action
    if row.phase is None:
        assert decision.status is None
    else:
        assert decision.status is not None
        assert decision.status.phase is row.phase
        assert decision.status.reason == row.reason
    assert decision.requeue == row.requeue
    for name, value in row.extra.items():
        assert getattr(decision, name) == value


def test_phases_are_the_enum() -> None:
    """Every status the table writes carries an InferencePhase, never a string."""
    for row in ROWS:
        status = decide(row.facts).status
        assert status is None or isinstance(status.phase, InferencePhase)


def _api_error(status: int, message: str, headers: dict[str, str] | None = None) -> ApiException:
    exc = ApiException(status=status, reason="Reason")
    exc.body = json.dumps({"kind": "Status", "message": message}).encode()
    exc.headers = headers or {}  # type: ignore[assignment]  # a plain mapping serves
    return exc


@pytest.mark.parametrize(
    ("exc", "kind", "reason", "delay"),
    [
        (
            _api_error(403, 'deployments.apps "x" is forbidden: cannot patch'),
            "P",
            "Forbidden",
            None,
        ),
        (_api_error(422, 'Deployment.apps "x" is invalid: spec.template'), "P", "Invalid", None),
        (_api_error(400, "the body is not a Deployment"), "P", "BadRequest", None),
        (
            _api_error(422, "ValidatingAdmissionPolicy 'p' with binding 'b' denied request"),
            "P",
            "AdmissionDenied",
            None,
        ),
        (
            _api_error(400, 'admission webhook "v.example" denied the request'),
            "P",
            "AdmissionDenied",
            None,
        ),
        (_api_error(409, "the object has been modified"), "T", None, None),
        (_api_error(429, "too many requests", {"Retry-After": "7"}), "T", None, 7.0),
        (_api_error(500, "etcdserver: request timed out"), "T", None, None),
        (_api_error(503, "the server is shutting down"), "T", None, None),
        (TimeoutError(), "T", None, None),
        (aiohttp.ClientConnectionError("connection reset"), "T", None, None),
    ],
    ids=lambda value: (
        str(getattr(value, "status", value)) if isinstance(value, Exception) else None
    ),
)
def test_refused_apply_is_typed(
    exc: Exception, kind: str, reason: str | None, delay: float | None
) -> None:
    """A refused apply as the controller sees it: permanent with the API server's own words,
    or temporary (with the server's Retry-After when it sent one)."""
    error = refused(exc, "Deployment inf-1")
    if kind == "P":
        assert isinstance(error, PermanentError)
        assert error.reason == reason
        assert json.loads(exc.body)["message"] in error.message  # type: ignore[attr-defined]
    else:
        assert isinstance(error, TemporaryError)
        assert error.delay == delay
        assert "Deployment inf-1" in error.message
