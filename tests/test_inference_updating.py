"""The pure parts of ``updateInference`` (:mod:`services.inference_updating`), as tables: what
an update writes on the stored document, and which port it keeps."""

from __future__ import annotations

import pytest

from controllers.inference.deciding import failed_for_good
from services.errors import Conflict
from services.inference_inputs import InferenceRequest
from services.inference_updating import keep_port, update_changes
from storage.documents import InferenceDocument, InferenceEngine, InferencePhase, InferenceSpec


def inference(phase: InferencePhase, **fields: object) -> InferenceDocument:
    return InferenceDocument.model_validate(
        {
            "id": "inf-aaaaa",
            "organization_id": "org-a",
            "model_id": "model-a",
            "model_name": "tiny",
            "name": "tiny",
            "active_key": "model-a",
            "phase": phase,
            "generation": 3,
            "observed_generation": 2,
            "spec": InferenceSpec(engine=InferenceEngine.VLLM, port=8000, image="a:1"),
            **fields,
        }
    )


NEW = inference(InferencePhase.PENDING, spec=InferenceSpec(engine=InferenceEngine.VLLM, image="b"))


@pytest.mark.parametrize(
    ("phase", "reason", "phase_after"),
    [
        (InferencePhase.RUNNING, "Ready", None),  # kept: RUNNING while the Deployment rolls
        (InferencePhase.PENDING, "InsufficientGPU", None),
        (InferencePhase.CREATING, "Starting", None),
        (InferencePhase.FAILED, "Invalid", InferencePhase.PENDING),  # tried again
        (InferencePhase.FAILED, "CrashLoopBackOff", InferencePhase.PENDING),
    ],
)
def test_update_writes_the_spec_and_the_next_generation(
    phase: InferencePhase, reason: str, phase_after: InferencePhase | None
) -> None:
    current = inference(phase, reason=reason)
    changes = update_changes(current, NEW)
    assert changes["generation"] == 4
    assert changes["spec"]["image"] == "b"
    assert changes["reason"] == "Updating"
    assert changes.get("phase") == phase_after
    after = current.model_copy(update={k: v for k, v in changes.items() if k != "spec"})
    assert not failed_for_good(after), "the controller applies the new generation"


@pytest.mark.parametrize("fields", [{"enabled": False}, {"is_deleted": True}])
def test_a_stopped_inference_is_not_updated(fields: dict[str, object]) -> None:
    with pytest.raises(Conflict) as caught:
        update_changes(inference(InferencePhase.RUNNING, **fields), NEW)
    assert caught.value.field == "modelId"


@pytest.mark.parametrize(
    ("request_", "port"),
    [
        (InferenceRequest(), 8000),  # left out: kept
        (InferenceRequest(engine=InferenceEngine.VLLM), 8000),  # same engine: kept
        (InferenceRequest(port=9000), 9000),  # given: the new one
        (InferenceRequest(engine=InferenceEngine.OLLAMA), None),  # another engine: its default
    ],
)
def test_keep_port(request_: InferenceRequest, port: int | None) -> None:
    assert keep_port(request_, inference(InferencePhase.RUNNING)).port == port
