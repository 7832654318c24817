"""A deleted model's inference goes with it.

Both REST APIs this service replaces delete a model's deployment with the model (the
organisation API's model *is* its deployment), so ``deleteModel`` deletes the model's inference
in the same request: the document is marked deleted and STOPPED (in no listing, its active key
freed, the stop kept in its phase history) and a DELETED event is recorded, like every service
write; the leading replica's inference controller, fed by that event, removes whatever still
runs (``deciding.decide``: a deleted inference with leftovers is REMOVE) and the gateway stops
routing the name. Deleting the model again finds the inference still live if this step
failed, and retries it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from live import EventType, Recorder
from storage.documents import InferenceDocument, InferencePhase, PhaseEntry
from storage.errors import NotFound
from storage.repositories import InferenceRepository

RETIRED_REASON = "ModelDeleted"


async def retire_inference(
    inferences: InferenceRepository, record: Recorder, model_id: str
) -> InferenceDocument | None:
    """Mark the model's live inference deleted and record it; the inference as written, or
    None when the model had none (or another request retired it first)."""
    live = await inferences.for_model(model_id)
    if live is None:
        return None
    wrote = [False]

    def retire(current: InferenceDocument) -> dict[str, object] | None:
        wrote[0] = not current.is_deleted
        if current.is_deleted:
            return None
        entry = PhaseEntry(phase=InferencePhase.STOPPED, reason=RETIRED_REASON)
        return {
            "is_deleted": True,
            "enabled": False,
            "active_key": f"{current.active_key}#{current.id}",
            "phase": InferencePhase.STOPPED,
            "reason": RETIRED_REASON,
            "message": "the model was deleted; its objects are removed",
            "phase_history": [e.model_dump() for e in [*current.phase_history, entry][-50:]],
        }

    with contextlib.suppress(NotFound):
        written = await inferences.modify(live.id, retire, current=live, event=EventType.DELETED)
        if wrote[0]:
            await record.inference(written, EventType.DELETED)
            return written
    return None


@dataclass(frozen=True, slots=True)
class InferenceRetirement:
    """What :class:`~services.models.ModelService` calls when it deletes a model."""

    inferences: InferenceRepository
    record: Recorder

    async def __call__(self, model_id: str) -> InferenceDocument | None:
        """Retire the model's live inference (:func:`retire_inference`)."""
        return await retire_inference(self.inferences, self.record, model_id)
