"""``updateInference``: change a live inference's configuration in place.

The organisation API's ``PUT /models/{id}`` changes a running deployment (image, GPUs,
autoscaling...) without deleting it. Here the request is checked exactly as a start is
(:meth:`services.inference.InferenceService.prepare`: the same union errors naming
``input.*``, the same refusals up front, nothing written when refused); then the new spec is
written with the document's ``generation`` bumped and an UPDATED event recorded. The service
never calls the controller: the leader's inference controller, fed by the event, sees
``observed_generation != generation`` and applies the spec again -- on Kubernetes a
server-side apply of the Deployment, which rolls its pods; on the local runtime the supervisor
restarts the process with the new spec. The inference keeps its id, name and endpoint.

The input is the whole configuration, as ``startInference`` takes it (a PUT, not a patch):
fields left out take startInference's defaults (the model's resources, one replica...). One
exception: a port left out keeps the current one, so the endpoint clients use does not move.

Phase: kept (RUNNING stays RUNNING while the Deployment rolls, reason ``Updating``), except a
FAILED inference goes back to PENDING, so the controller's "permanent failure recorded" row
(:mod:`controllers.inference.deciding`) no longer holds and the new spec is tried.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from live import EventType, Recorder
from services.errors import Conflict, Missing
from services.inference_inputs import InferenceRequest
from storage.documents import InferenceDocument, InferencePhase, PhaseEntry
from storage.errors import Contended, NotFound
from storage.repositories import InferenceRepository

UPDATING_REASON = "Updating"


def keep_port(request: InferenceRequest, existing: InferenceDocument) -> InferenceRequest:
    """The request with the current port when it gives none and the engine stays the same."""
    if request.port is not None or request.engine not in {None, existing.spec.engine}:
        return request
    return replace(request, port=existing.spec.port)


def update_changes(current: InferenceDocument, doc: InferenceDocument) -> dict[str, Any]:
    """The fields an update writes on ``current`` (the stored document) from the checked
    draft ``doc``: the new spec, the next generation, and the status noting it."""
    if current.is_deleted or not current.enabled:
        raise Conflict("modelId", "the inference was stopped meanwhile; start it instead")
    changes: dict[str, Any] = {
        "spec": doc.spec.model_dump(),
        "generation": current.generation + 1,
        "reason": UPDATING_REASON,
        "message": "updating: the controller applies the new configuration",
    }
    if current.phase is InferencePhase.FAILED:
        entry = PhaseEntry(phase=InferencePhase.PENDING, reason=UPDATING_REASON)
        history = [*current.phase_history, entry][-50:]
        changes["phase"] = InferencePhase.PENDING
        changes["phase_history"] = [item.model_dump() for item in history]
    return changes


async def write_update(
    inferences: InferenceRepository,
    recorder: Recorder,
    existing: InferenceDocument,
    doc: InferenceDocument,
) -> InferenceDocument:
    """Write the update (compare-and-set against the controller's status writes) and record
    the UPDATED event the leader's controller acts on."""
    try:
        written = await inferences.modify(
            existing.id,
            lambda current: update_changes(current, doc),
            current=existing,
            event=EventType.UPDATED,
        )
    except NotFound:
        raise Missing(existing.id) from None
    except Contended:
        raise Conflict("modelId", "the inference changed meanwhile; try again") from None
    await recorder.inference(written, EventType.UPDATED)
    return written
