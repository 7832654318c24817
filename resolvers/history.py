"""Resolvers of history: a model's timeline and the system summary."""

from __future__ import annotations

from typing import Annotated

import strawberry

from resolvers.context import Info
from schema.history import (
    InferenceTimelineEntry,
    ModelTimelineEntry,
    SystemInfo,
    TimelineEntry,
    WeightsTimelineEntry,
    timeline_view,
)
from schema.limits import cost
from services.errors import Missing


async def resolve_model_timeline(
    info: Info,
    model_id: Annotated[strawberry.ID, strawberry.argument(description="The model.")],
) -> list[TimelineEntry] | None:
    """The model's phases, its weights' states and its inferences' phases, oldest first
    (viewer role); null when the model is not in your organisation."""
    principal = info.context.require_principal()
    try:
        items = await info.context.services.history.timeline(principal, str(model_id))
    except Missing:
        return None
    return [timeline_view(item) for item in items]


async def resolve_system_info(info: Info) -> SystemInfo:
    """Versions, runtime, cluster, storage, catalogue and leases (viewer role)."""
    principal = info.context.require_principal()
    return SystemInfo.from_summary(await info.context.services.history.system_info(principal))


TIMELINE_TYPES = (ModelTimelineEntry, WeightsTimelineEntry, InferenceTimelineEntry)
"""The implementations of ``TimelineEntry`` (the schema must know them)."""

MODEL_TIMELINE: list[TimelineEntry] | None = strawberry.field(
    resolver=resolve_model_timeline,
    description="A model's timeline across its own phases, its weights' states and its "
    "inferences' phases, each with how long it lasted (stored history, not the capped event "
    "log); null when the model is not in your organisation.",
    metadata=cost(5),
)
SYSTEM_INFO: SystemInfo = strawberry.field(
    resolver=resolve_system_info,
    description="This deployment in one answer: versions (modelplane, Python, the database "
    "server), runtime, the cluster in brief, your weights per location kind, the catalogue's "
    "sync state and which replica holds each controller lease.",
    metadata=cost(30),  # the node list and API discovery on Kubernetes
)
