"""History and the system summary: what happened to a model, and what this deployment is.

Answers come from stored history, never from the capped event log (which forgets): a model's
``phase_history`` and its weights' ``state_history`` and download ``attempts``
(:mod:`storage.history`, written in the same write as each change), and its inferences'
``phase_history`` (the inference controller's). :func:`timeline` merges them (pure, table-
tested): each entry lasts until the same resource's next one, the last until now.

:meth:`HistoryService.system_info` gathers in one read what a person checks first: versions,
the runtime, a cheap cluster summary (the node list and API discovery, no pod list: the
``read_offer`` half of ``clusterStatus``), the organisation's weights per location kind, the
catalogue's sync state (the stored snapshot, as every replica serves it) and who holds each
controller lease (the leases collection, so any replica answers the same).
"""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from controllers.runtimes.base import Runtime, RuntimeUnavailable
from controllers.runtimes.inventory import read_offer
from live import ResourceKind
from services.errors import Missing
from services.principals import Principal
from storage.catalogues import CatalogueRepository, SyncState, catalogue_id
from storage.client import Database, server_version
from storage.documents import (
    InferenceDocument,
    InferencePhase,
    ModelDocument,
    ModelPhase,
    Role,
    TargetKind,
    WeightsDocument,
    WeightsState,
    utcnow,
)
from storage.repositories import (
    InferenceRepository,
    LeaseRepository,
    ModelRepository,
    WeightsRepository,
)

Phase = ModelPhase | WeightsState | InferencePhase
Entries = list[tuple[Phase, str | None, datetime]]


@dataclass(frozen=True, slots=True)
class TimelineItem:
    """One phase of one resource of a model's timeline."""

    kind: ResourceKind
    resource_id: str
    phase: Phase
    reason: str | None
    at: datetime
    until: datetime | None
    """When the resource's next phase began; None while it is still in this one."""
    seconds: float
    """Until ``until``, or until now."""


def timeline(
    model: ModelDocument,
    weights: WeightsDocument | None,
    inferences: list[InferenceDocument],
    now: datetime,
) -> list[TimelineItem]:
    """The phases of a model, its weights and its inferences, oldest first (ties: model,
    weights, inference), each lasting until its own resource's next phase."""
    own: Entries = [(e.phase, e.reason, e.entered_at) for e in model.phase_history]
    runs: list[tuple[ResourceKind, str, Entries]] = [(ResourceKind.MODEL, model.id, own)]
    if weights is not None:
        states: Entries = [(e.state, e.reason, e.entered_at) for e in weights.state_history]
        runs.append((ResourceKind.WEIGHTS, weights.id, states))
    for inference in inferences:
        phases: Entries = [
            (e.phase, e.reason or e.message, e.entered_at) for e in inference.phase_history
        ]
        runs.append((ResourceKind.INFERENCE, inference.id, phases))
    items: list[tuple[int, int, TimelineItem]] = []
    for rank, (kind, resource_id, entries) in enumerate(runs):
        for index, (phase, reason, at) in enumerate(entries):
            until = entries[index + 1][2] if index + 1 < len(entries) else None
            seconds = max(0.0, ((until or now) - at).total_seconds())
            item = TimelineItem(kind, resource_id, phase, reason, at, until, seconds)
            items.append((rank, index, item))
    items.sort(key=lambda entry: (entry[2].at, min(entry[0], 2), entry[1]))
    return [item for _, _, item in items]


@dataclass(frozen=True, slots=True)
class StorageKindUsage:
    """The organisation's weights stored in one kind of location."""

    kind: TargetKind
    weights: int
    ready: int
    bytes: int
    """Bytes of the READY ones (their files' sizes)."""


@dataclass(frozen=True, slots=True)
class LeaseHolding:
    """Who holds a controller lease."""

    name: str
    holder: str | None
    """None when it expired (nobody leads until a replica takes it)."""
    expires_at: datetime
    held_here: bool
    """The replica answering holds it."""


@dataclass(frozen=True, slots=True)
class ClusterSummary:
    """The cheap half of ``clusterStatus``: no pod list."""

    version: str | None
    gpu_nodes: int | None
    allocatable_gpus: int | None
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SystemSummary:
    """What :meth:`HistoryService.system_info` gathers."""

    version: str
    python_version: str
    database_kind: str
    database_version: str | None
    runtime: str
    namespace: str | None
    state_dir: str | None
    replica: str
    cluster: ClusterSummary
    storage: list[StorageKindUsage]
    catalogue_url: str | None
    catalogue_sync: SyncState | None
    leases: list[LeaseHolding]


@dataclass(frozen=True, slots=True)
class Deployment:
    """What the composition root tells this service about the process it runs in."""

    version: str
    runtime: Runtime
    namespace: str | None
    state_dir: Path | None
    """The local runtime's state directory (None on Kubernetes)."""


def replica_name() -> str:
    """This process's prefix of its lease holder names (host and pid)."""
    return f"{socket.gethostname()}-{os.getpid()}"


class HistoryService:
    """Model timelines and the system summary (viewer role)."""

    def __init__(self, *, database: Database, deployment: Deployment) -> None:
        self._database = database
        self._deployment = deployment
        self._models = ModelRepository(database)
        self._weights = WeightsRepository(database)
        self._inferences = InferenceRepository(database)
        self._leases = LeaseRepository(database)
        self._catalogues = CatalogueRepository(database)

    async def timeline(self, principal: Principal, model_id: str) -> list[TimelineItem]:
        """The model's timeline; :class:`Missing` when it is not in the organisation."""
        principal.require(Role.VIEWER)
        model = await self._models.get(model_id, scope=principal.scope)
        if model is None:
            raise Missing(model_id, f"model {model_id} not found")
        weights = None
        if model.weights_id is not None:
            weights = await self._weights.get(model.weights_id, scope=principal.scope)
        found = await self._inferences.find(
            where={**principal.scope, "model_id": model.id}, limit=100
        )
        return timeline(model, weights, found.items, utcnow())

    async def system_info(self, principal: Principal) -> SystemSummary:
        """Versions, runtime, cluster, storage, catalogue and leases, read now."""
        principal.require(Role.VIEWER)
        deployment = self._deployment
        database_kind, database_version = await server_version(self._database)
        catalogue = await self._catalogues.get(catalogue_id(principal.organization_id))
        return SystemSummary(
            version=deployment.version,
            python_version=platform.python_version(),
            database_kind=database_kind,
            database_version=database_version,
            runtime=deployment.runtime.kind,
            namespace=deployment.namespace,
            state_dir=None if deployment.state_dir is None else str(deployment.state_dir),
            replica=replica_name(),
            cluster=await self._cluster(),
            storage=await self._storage(principal),
            catalogue_url=None if catalogue is None else catalogue.url,
            catalogue_sync=None if catalogue is None else catalogue.sync,
            leases=await self._holdings(),
        )

    async def _cluster(self) -> ClusterSummary:
        runtime = self._deployment.runtime
        problems: list[str] = []
        version = None
        if runtime.kind == "kubernetes":
            try:
                version = (await runtime.describe()).version
            except RuntimeUnavailable as exc:
                problems.append(f"the runtime could not be asked: {exc}")
        offer = await read_offer(runtime)
        nodes = offer.gpu_nodes
        if nodes is None and runtime.kind == "kubernetes":
            problems.append("GPU nodes could not be listed")
        return ClusterSummary(
            version=version,
            gpu_nodes=None if nodes is None else len(nodes),
            allocatable_gpus=None if nodes is None else sum(n.allocatable for n in nodes),
            problems=tuple(problems),
        )

    async def _storage(self, principal: Principal) -> list[StorageKindUsage]:
        page = await self._weights.find(where=dict(principal.scope), limit=10_000)
        usage: dict[TargetKind, StorageKindUsage] = {}
        for weights in page.items:
            kind = weights.target.kind
            seen = usage.get(kind, StorageKindUsage(kind, 0, 0, 0))
            ready = weights.state is WeightsState.READY
            size = sum(f.size for f in weights.files) if ready else 0
            usage[kind] = StorageKindUsage(
                kind, seen.weights + 1, seen.ready + int(ready), seen.bytes + size
            )
        return [usage[kind] for kind in TargetKind if kind in usage]

    async def _holdings(self) -> list[LeaseHolding]:
        page = await self._leases.find(where={}, limit=100, sort=(("_id", 1),))
        now, here = utcnow(), replica_name() + "-"
        return [
            LeaseHolding(
                name=lease.id,
                holder=lease.holder if lease.expires_at >= now else None,
                expires_at=lease.expires_at,
                held_here=lease.expires_at >= now and lease.holder.startswith(here),
            )
            for lease in page.items
        ]
