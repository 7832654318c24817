"""Subscription resolvers: the event log streamed per model, per inference, as progress, and
the storage alerts.

Every stream is scoped to the caller's organisation before anything is queued (the broker's
filter), resumes with ``after`` (replay of what the capped log holds, then live). The
connection's credential (expiry, revocation) is watched for every operation of the socket
at once, in ``modelplane/sockets.py``: a stream here needs no timer of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Annotated

import strawberry

from live import EventFilter, InvalidCursor, Marker, MarkerKind, ResourceKind, parse_cursor
from resolvers.context import Info
from schema.building import ExpectedError
from schema.events import Event
from schema.sharing import direct_sink
from schema.weights import Weights
from services.principals import Principal
from storage.documents import AccessMode, Role, WeightsState

FINAL_STATES = frozenset({WeightsState.READY, WeightsState.FAILED, WeightsState.CANCELLED})


def _after(after: str | None) -> int | None:
    if after is None:
        return None
    try:
        return parse_cursor(after)
    except InvalidCursor as exc:
        raise ExpectedError(str(exc), code="BAD_USER_INPUT", field="after") from None


AfterArgument = Annotated[
    str | None,
    strawberry.argument(description="Resume after this cursor (from an earlier event)."),
]


def _subscriber(info: Info) -> Principal:
    principal = info.context.require_principal()
    principal.require(Role.VIEWER)
    return principal


async def stream_model_events(
    info: Info,
    model_id: Annotated[
        strawberry.ID | None,
        strawberry.argument(description="Only this model (and its downloads); null: every model."),
    ] = None,
    after: AfterArgument = None,
) -> AsyncGenerator[Event, None]:
    """Model and download events of the caller's organisation."""
    principal = _subscriber(info)
    position = _after(after)
    if model_id is not None and await info.context.services.models.get(principal, model_id) is None:
        raise ExpectedError(f"model {model_id} not found", code="NOT_FOUND", field="modelId")
    event_filter = EventFilter(
        organization_id=principal.organization_id,
        resource_kind=frozenset({ResourceKind.MODEL, ResourceKind.WEIGHTS}),
        model_id=str(model_id) if model_id is not None else None,
    )
    async with contextlib.aclosing(_events(info, event_filter, position)) as events:
        async for event in events:  # closed with this stream: the subscription goes too
            yield event


async def stream_inference_events(
    info: Info,
    inference_id: Annotated[
        strawberry.ID | None,
        strawberry.argument(description="Only this inference; null: every inference."),
    ] = None,
    after: AfterArgument = None,
) -> AsyncGenerator[Event, None]:
    """Inference events of the caller's organisation."""
    principal = _subscriber(info)
    position = _after(after)
    event_filter = EventFilter(
        organization_id=principal.organization_id,
        resource_kind=ResourceKind.INFERENCE,
        resource_id=str(inference_id) if inference_id is not None else None,
    )
    async with contextlib.aclosing(_events(info, event_filter, position)) as events:
        async for event in events:  # closed with this stream: the subscription goes too
            yield event


async def stream_storage_alerts(
    info: Info, after: AfterArgument = None
) -> AsyncGenerator[Event, None]:
    """ALERT events: storage locations crossing their usage threshold (server-wide)."""
    principal = _subscriber(info)
    position = _after(after)
    event_filter = EventFilter(
        organization_id=principal.organization_id, resource_kind=ResourceKind.ALERT
    )
    async with contextlib.aclosing(_events(info, event_filter, position)) as events:
        async for event in events:  # closed with this stream: the subscription goes too
            yield event


async def _events(
    info: Info, event_filter: EventFilter, position: int | None
) -> AsyncGenerator[Event, None]:
    """The broker's stream for a filter, as shared API views."""
    views = info.context.services.event_views
    async with info.context.services.broker.subscribe(event_filter, after=position) as stream:
        sink = direct_sink(views.batch)
        if sink is not None:  # the fast lane: the broker writes idle subscribers' events
            stream.deliver_directly(sink)
        async for item in stream:
            yield views.view(item)


async def stream_download_progress(
    info: Info,
    model_id: Annotated[strawberry.ID, strawberry.argument(description="A LOCAL model.")],
) -> AsyncGenerator[Weights, None]:
    """The model's download now, then every change, until it is READY, FAILED or CANCELLED."""
    principal = _subscriber(info)
    services = info.context.services
    model = await services.models.get(principal, model_id)
    if model is None:
        raise ExpectedError(f"model {model_id} not found", code="NOT_FOUND", field="modelId")
    if model.source.access_mode is not AccessMode.LOCAL:
        raise ExpectedError(
            f"model {model_id} is a {model.source.access_mode.value} model: it downloads nothing",
            code="BAD_USER_INPUT",
            field="modelId",
        )
    event_filter = EventFilter(organization_id=principal.organization_id, model_id=model.id)
    last: tuple[object, ...] | None = None
    while True:
        # Subscribe first, then read: a change between the read and the subscription is not
        # lost. Every event only means "read again", so a stream that ended with OVERFLOW is
        # simply opened again (the read that follows catches up); it never ends this one.
        async with services.broker.subscribe(event_filter) as stream:
            events = aiter(stream)
            while True:
                current = await services.models.get(principal, model.id)
                weights = (
                    await services.weights.get(principal, current.weights_id)
                    if current is not None and current.weights_id
                    else None
                )
                if weights is not None:
                    seen = (weights.revision, weights.progress)
                    if seen != last:
                        last = seen
                        yield Weights.from_document(weights)
                    if weights.state in FINAL_STATES:
                        return
                if current is None or current.is_deleted:
                    return
                try:
                    item = await anext(events)
                except StopAsyncIteration:
                    break  # the broker ended this stream (overflow, or it is closing)
                if isinstance(item, Marker) and item.kind is MarkerKind.OVERFLOW:
                    break
        if not services.broker.running:
            return
