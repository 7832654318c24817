"""The observed side of an inference's workload, as GraphQL shows it.

What the runtime reports (the Deployment's replica counts and conditions, the autoscaler's
replicas and metric) is status, written by the inference controller into the inference's
document; these types read only that document, so every replica answers alike. They live
apart from :mod:`schema.inference` (the spec, the input and the results) because they change
with what the runtimes observe, not with what a user may ask for.
"""

from __future__ import annotations

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


@strawberry.type(description="Where an autoscaled inference stands against its bounds and metric.")
class AutoscalingStatus:
    """Autoscaling, observed."""

    current_replicas: int | None = strawberry.field(
        description="Replicas that exist now; null until the workload is observed."
    )
    desired_replicas: int | None = strawberry.field(
        description="Replicas the autoscaler asks for (the Deployment's `spec.replicas`); null "
        "until observed."
    )
    min_replicas: int = strawberry.field(description="Lower bound.")
    max_replicas: int = strawberry.field(description="Upper bound.")
    target_metric: str = strawberry.field(description="The metric it scales on.")
    target_value: int = strawberry.field(description="The metric's target.")
    current_value: float | None = strawberry.field(
        description=(
            "The metric's current value; null where modelplane does not know it (it does not "
            "read the autoscaler's metrics yet, on either runtime)."
        )
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
    observed = doc.current_replicas is not None
    return AutoscalingStatus(
        current_replicas=doc.current_replicas,
        desired_replicas=doc.replicas if observed else None,
        min_replicas=scaling.min_replicas,
        max_replicas=scaling.max_replicas,
        target_metric=scaling.target_metric,
        target_value=scaling.target_value,
        current_value=None,
    )
