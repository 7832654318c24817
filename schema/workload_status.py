"""The observed side of an inference's workload, as GraphQL shows it.

What the runtime reports (the Deployment's replica counts and conditions, the autoscaler's
replicas and metric) is status, written by the inference controller into the inference's
document; these types read only that document, so every replica answers alike. They live
apart from :mod:`schema.inference` (the spec, the input and the results) because they change
with what the runtimes observe, not with what a user may ask for.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum

import strawberry

from storage.documents import InferenceDocument


@strawberry.type(description="A condition of an inference's workload, as the runtime reports it.")
class WorkloadCondition:
    """A Deployment condition (type, status, reason, message)."""

    type: str = strawberry.field(description="e.g. `Available`, `Progressing`.")
    status: str = strawberry.field(description="`True`, `False` or `Unknown`.")
    reason: str | None = strawberry.field(description="e.g. `MinimumReplicasAvailable`.")
    message: str | None = strawberry.field(description="What the runtime says.")


@strawberry.type(
    description=(
        "The workload's replicas as the runtime reports them: the Deployment's status on "
        "Kubernetes (the organisation API's deployment status), the one engine process on the "
        "local runtime. A field is null where the runtime does not know it."
    )
)
class DeploymentStatus:
    """Replica counts and conditions."""

    desired_replicas: int = strawberry.field(
        description="Replicas wanted (`spec.replicas`, which an autoscaler moves)."
    )
    current_replicas: int | None = strawberry.field(
        description="Replicas that exist now (`status.replicas`; local: 1 while the process runs)."
    )
    ready_replicas: int = strawberry.field(description="Replicas passing their readiness check.")
    available_replicas: int | None = strawberry.field(
        description="Ready for at least minReadySeconds (`status.availableReplicas`; local: ready)."
    )
    updated_replicas: int | None = strawberry.field(
        description="Replicas running the current spec (`status.updatedReplicas`)."
    )
    conditions: list[WorkloadCondition] | None = strawberry.field(
        description="The Deployment's conditions; null on the local runtime (a process has none)."
    )


@strawberry.enum(name="AutoscalerKind", description="The object that scales an inference.")
class AutoscalerKindEnum(Enum):
    """Autoscaler kinds."""

    HORIZONTAL_POD_AUTOSCALER = strawberry.enum_value(
        "HORIZONTAL_POD_AUTOSCALER", description="An autoscaling/v2 HorizontalPodAutoscaler."
    )
    AIBRIX_POD_AUTOSCALER = strawberry.enum_value(
        "AIBRIX_POD_AUTOSCALER", description="An AIBrix PodAutoscaler (KPA)."
    )


@strawberry.type(description="Where an autoscaled inference stands against its bounds and metric.")
class AutoscalingStatus:
    """Autoscaling, observed: replicas from the Deployment (fresher than the autoscaler's own
    copy), the metric and the last scale from the autoscaler's status."""

    autoscaler: AutoscalerKindEnum | None = strawberry.field(
        description="The autoscaler whose status is shown; null until one is observed."
    )
    current_replicas: int | None = strawberry.field(
        description="Replicas that exist now; null until the workload is observed."
    )
    desired_replicas: int | None = strawberry.field(
        description="Replicas the autoscaler asks for (the Deployment's `spec.replicas`, which "
        "it sets); null until observed."
    )
    min_replicas: int = strawberry.field(description="Lower bound.")
    max_replicas: int = strawberry.field(description="Upper bound.")
    target_metric: str = strawberry.field(description="The metric it scales on.")
    target_value: int = strawberry.field(description="The metric's target.")
    current_value: float | None = strawberry.field(
        description=(
            "The metric's current value as the HorizontalPodAutoscaler last read it "
            "(`status.currentMetrics`: a percent for cpu/memory, else the average per pod); "
            "null when it is not known, and `currentValueMessage` says why."
        )
    )
    current_value_message: str | None = strawberry.field(
        description="Why `currentValue` is null, for a person (e.g. the HPA's "
        "`FailedGetResourceMetric`, or AIBrix reporting no metric value); null when it is known."
    )
    last_scale_time: datetime | None = strawberry.field(
        description="When the autoscaler last changed the replicas (UTC); null: never, or "
        "not known."
    )


def deployment_view(doc: InferenceDocument) -> DeploymentStatus | None:
    """The workload's replicas and conditions; None when nothing was observed."""
    if doc.current_replicas is None and doc.available_replicas is None:
        return None
    return DeploymentStatus(
        desired_replicas=doc.replicas,
        current_replicas=doc.current_replicas,
        ready_replicas=doc.ready_replicas,
        available_replicas=doc.available_replicas,
        updated_replicas=doc.updated_replicas,
        conditions=None
        if doc.conditions is None
        else [
            WorkloadCondition(type=c.type, status=c.status, reason=c.reason, message=c.message)
            for c in doc.conditions
        ],
    )


def autoscaling_view(doc: InferenceDocument) -> AutoscalingStatus | None:
    """Where autoscaling stands; None without autoscaling."""
    scaling = doc.spec.autoscaling
    if scaling is None:
        return None
    found = doc.autoscaler
    observed = doc.current_replicas is not None
    return AutoscalingStatus(
        autoscaler=AutoscalerKindEnum(found.kind.value) if found else None,
        current_replicas=doc.current_replicas,
        desired_replicas=doc.replicas if observed else None,
        min_replicas=scaling.min_replicas,
        max_replicas=scaling.max_replicas,
        target_metric=scaling.target_metric,
        target_value=scaling.target_value,
        current_value=found.current_value if found else None,
        current_value_message=_why_no_value(doc),
        last_scale_time=found.last_scale_time if found else None,
    )


def _why_no_value(doc: InferenceDocument) -> str | None:
    found = doc.autoscaler
    if found is not None:
        return None if found.current_value is not None else found.value_message
    return "the autoscaler has not been observed yet"
