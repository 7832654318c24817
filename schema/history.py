"""History and the system summary in GraphQL: a model's timeline and ``systemInfo``.

A timeline entry is an interface with one type per resource kind, because each kind has its
own phase enum (``ModelPhase``, ``WeightsState``, ``InferencePhase``): the phase fields are
named apart (``modelPhase``, ``weightsState``, ``inferencePhase``) so one selection may ask for
all three without a conflict of types.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

import strawberry

from live import ResourceKind
from schema.catalogue import CatalogSync
from schema.enums import InferencePhaseEnum, ModelPhaseEnum, WeightsStateEnum
from schema.events import ResourceKindEnum
from schema.scalars import BigInt
from services.history import (
    ClusterSummary,
    LeaseHolding,
    StorageKindUsage,
    SystemSummary,
    TimelineItem,
)
from storage.documents import InferencePhase, ModelPhase, WeightsState


@strawberry.interface(
    description="One phase of a model, its weights or one of its inferences, with how long it "
    "lasted (from the stored phase histories, not the event log)."
)
class TimelineEntry:
    """What every entry has; the phase is on each kind's own type."""

    resource_kind: ResourceKindEnum = strawberry.field(description="Whose phase this is.")
    resource_id: strawberry.ID = strawberry.field(description="The model, weights or inference.")
    reason: str | None = strawberry.field(description="Why it entered the phase, if known.")
    at: datetime = strawberry.field(description="When it entered the phase (UTC).")
    until: datetime | None = strawberry.field(
        description="When the same resource entered its next phase; null while still in it."
    )
    duration_seconds: float = strawberry.field(description="Until `until`, or until now.")


@strawberry.type(description="A phase of the model itself.")
class ModelTimelineEntry(TimelineEntry):
    """A model phase."""

    model_phase: ModelPhaseEnum = strawberry.field(description="The phase entered.")


@strawberry.type(description="A state of the model's weights (its download).")
class WeightsTimelineEntry(TimelineEntry):
    """A weights state."""

    weights_state: WeightsStateEnum = strawberry.field(description="The state entered.")


@strawberry.type(description="A phase of one of the model's inference services.")
class InferenceTimelineEntry(TimelineEntry):
    """An inference phase."""

    inference_phase: InferencePhaseEnum = strawberry.field(description="The phase entered.")


def timeline_view(item: TimelineItem) -> TimelineEntry:
    """The API view of one timeline item."""
    common: dict[str, Any] = {
        "resource_kind": ResourceKindEnum(item.kind.value),
        "resource_id": strawberry.ID(item.resource_id),
        "reason": item.reason,
        "at": item.at,
        "until": item.until,
        "duration_seconds": round(item.seconds, 3),
    }
    if item.kind is ResourceKind.WEIGHTS:
        state = WeightsStateEnum(WeightsState(item.phase).value)
        return WeightsTimelineEntry(**common, weights_state=state)
    if item.kind is ResourceKind.INFERENCE:
        phase = InferencePhaseEnum(InferencePhase(item.phase).value)
        return InferenceTimelineEntry(**common, inference_phase=phase)
    return ModelTimelineEntry(**common, model_phase=ModelPhaseEnum(ModelPhase(item.phase).value))


@strawberry.enum(name="WeightsLocationKind", description="Where weights are stored.")
class WeightsLocationKindEnum(Enum):
    """Kinds of download target."""

    LOCAL = strawberry.enum_value("LOCAL", description="A directory under an allowed root.")
    PVC = strawberry.enum_value("PVC", description="A PersistentVolumeClaim.")
    S3 = strawberry.enum_value("S3", description="An S3 bucket prefix.")


@strawberry.type(description="The organisation's weights in one kind of location.")
class WeightsLocationUsage:
    """Counts and bytes per location kind."""

    kind: WeightsLocationKindEnum = strawberry.field(description="The kind of location.")
    weights: int = strawberry.field(description="Weights entries there, in any state.")
    ready: int = strawberry.field(description="Of those, READY.")
    bytes: BigInt = strawberry.field(description="Bytes of the READY ones.")

    @classmethod
    def from_usage(cls, usage: StorageKindUsage) -> WeightsLocationUsage:
        """API view."""
        return cls(
            kind=WeightsLocationKindEnum(usage.kind.value),
            weights=usage.weights,
            ready=usage.ready,
            bytes=BigInt(usage.bytes),
        )


@strawberry.type(description="Who leads one controller (a lease in the leases collection).")
class ControllerLease:
    """A lease and its holder."""

    name: str = strawberry.field(
        description="The lease: `download-controller`, `inference-controller`, `catalogue`..."
    )
    holder: str | None = strawberry.field(
        description="The replica holding it (`<host>-<pid>-<suffix>`); null once it expired."
    )
    expires_at: datetime = strawberry.field(description="When it lapses unless renewed.")
    held_here: bool = strawberry.field(description="The replica that answered holds it.")

    @classmethod
    def from_holding(cls, lease: LeaseHolding) -> ControllerLease:
        """API view."""
        return cls(
            name=lease.name,
            holder=lease.holder,
            expires_at=lease.expires_at,
            held_here=lease.held_here,
        )


@strawberry.type(description="The cluster in brief (node list and discovery, no pod list).")
class ClusterSummaryInfo:
    """The cheap half of `clusterStatus`."""

    kubernetes_version: str | None = strawberry.field(
        description="API server version (kubernetes runtime only)."
    )
    gpu_nodes: int | None = strawberry.field(
        description="Nodes with GPUs (on the local runtime: this machine's GPUs, by type); "
        "null when they could not be listed."
    )
    allocatable_gpus: int | None = strawberry.field(
        description="GPUs allocatable on them; `clusterStatus` tells how many are free."
    )
    problems: list[str] = strawberry.field(description="What could not be read.")

    @classmethod
    def from_summary(cls, summary: ClusterSummary) -> ClusterSummaryInfo:
        """API view."""
        return cls(
            kubernetes_version=summary.version,
            gpu_nodes=summary.gpu_nodes,
            allocatable_gpus=summary.allocatable_gpus,
            problems=list(summary.problems),
        )


@strawberry.type(
    description="This deployment in one answer: versions, runtime, cluster, storage, catalogue "
    "and controller leadership."
)
class SystemInfo:
    """What `systemInfo` gathers (viewer role)."""

    version: str = strawberry.field(description="modelplane's version.")
    python_version: str = strawberry.field(description="The Python running it.")
    database_kind: str = strawberry.field(description="`MongoDB` or `FerretDB`.")
    database_version: str | None = strawberry.field(
        description="The database server's version (FerretDB's own version for FerretDB)."
    )
    runtime: str = strawberry.field(description="`kubernetes` or `local`.")
    namespace: str | None = strawberry.field(
        description="The namespace modelplane manages (kubernetes runtime only)."
    )
    state_dir: str | None = strawberry.field(
        description="The local runtime's state directory (local runtime only)."
    )
    replica: str = strawberry.field(description="The replica that answered (`<host>-<pid>`).")
    cluster: ClusterSummaryInfo = strawberry.field(description="The cluster in brief.")
    storage: list[WeightsLocationUsage] = strawberry.field(
        description="Your organisation's weights per location kind."
    )
    catalog_url: str | None = strawberry.field(
        description="Your organisation's catalogue remote; null when none is configured."
    )
    catalog_sync: CatalogSync | None = strawberry.field(
        description="The catalogue's last commit, last success and last error."
    )
    leases: list[ControllerLease] = strawberry.field(
        description="Each controller lease and the replica holding it, by name."
    )

    @classmethod
    def from_summary(cls, summary: SystemSummary) -> SystemInfo:
        """API view."""
        return cls(
            version=summary.version,
            python_version=summary.python_version,
            database_kind=summary.database_kind,
            database_version=summary.database_version,
            runtime=summary.runtime,
            namespace=summary.namespace,
            state_dir=summary.state_dir,
            replica=summary.replica,
            cluster=ClusterSummaryInfo.from_summary(summary.cluster),
            storage=[WeightsLocationUsage.from_usage(usage) for usage in summary.storage],
            catalog_url=summary.catalogue_url,
            catalog_sync=None
            if summary.catalogue_sync is None
            else CatalogSync.from_state(summary.catalogue_sync),
            leases=[ControllerLease.from_holding(lease) for lease in summary.leases],
        )
