"""Inferences found, not recorded: labelled Deployments in the namespace without a document.

The ``inferences`` listing shows them after the stored ones, as unmanaged inferences (a
manifest applied by hand with our labels, or objects whose document was lost), so nothing
modelplane labelled is invisible. One query asks which owners have a document.
"""

from __future__ import annotations

from typing import Any

from controllers.inference.workloads import InferenceRuntime
from controllers.runtimes.kubernetes.labels import ORGANIZATION_ID, OWNER_ID
from controllers.runtimes.kubernetes.manifests import MODEL_ID
from controllers.runtimes.kubernetes.status import workload_counts
from services.principals import Principal
from storage.documents import InferenceDocument, InferencePhase
from storage.repositories import InferenceFilter, InferenceRepository


async def discovered(
    runtime: InferenceRuntime,
    inferences: InferenceRepository,
    principal: Principal,
    inference_filter: InferenceFilter,
    runtime_kind: str,
) -> list[InferenceDocument]:
    """Deployments in the namespace with our labels whose owner has no document."""
    if inference_filter.managed is True:
        return []
    if inference_filter.model_id is not None:
        return []
    found: list[InferenceDocument] = []
    mine = [
        deployment
        for deployment in await runtime.unmanaged()
        if (deployment.get("metadata", {}).get("labels") or {}).get(ORGANIZATION_ID)
        == principal.organization_id
    ]
    owners = [_owner_of(deployment) for deployment in mine]
    recorded = await inferences.existing_ids(owners)  # one query, not one per object
    for deployment, owner in zip(mine, owners, strict=True):
        if owner in recorded:
            continue
        meta = deployment.get("metadata", {})
        labels = meta.get("labels") or {}
        wanted = int(deployment.get("spec", {}).get("replicas") or 0)
        ready = int(deployment.get("status", {}).get("readyReplicas") or 0)
        phase = InferencePhase.RUNNING if wanted and ready >= wanted else InferencePhase.CREATING
        if inference_filter.phase is not None and inference_filter.phase is not phase:
            continue
        counts = workload_counts(deployment)
        found.append(
            InferenceDocument(
                id=str(owner),
                organization_id=principal.organization_id,
                model_id=labels.get(MODEL_ID),
                model_name=str(meta.get("name")),
                name=str(meta.get("name")),
                active_key=str(owner),
                managed=False,
                runtime=runtime_kind,
                phase=phase,
                reason="NoDocument",
                message="found in the namespace with modelplane's labels but no document",
                replicas=wanted,
                ready_replicas=ready,
                current_replicas=counts.current if counts else None,
                available_replicas=counts.available if counts else None,
                updated_replicas=counts.updated if counts else None,
                conditions=list(counts.conditions or []) if counts else None,
            )
        )
    return found


def _owner_of(deployment: dict[str, Any]) -> str:
    """The inference id a labelled Deployment belongs to (its owner label, else its name)."""
    meta = deployment.get("metadata", {})
    return str((meta.get("labels") or {}).get(OWNER_ID) or meta.get("name"))
