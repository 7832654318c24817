"""Resolvers of the weight cache: list, inspect, cancel, retry, delete, usage."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

import strawberry

from resolvers.context import Info
from resolvers.errors import answers, query_errors
from schema.enums import StorageKindEnum
from schema.models import Model
from schema.scalars import BigInt
from schema.weights import (
    DeletedWeights,
    DeleteWeightsResult,
    DownloadResult,
    StorageUsage,
    Weights,
    WeightsPage,
)
from storage.documents import ModelDocument, WeightsDocument


async def resolve_weights(
    info: Info, id: Annotated[strawberry.ID, strawberry.argument(description="Weights id.")]
) -> Weights | None:
    """One entry; null when absent or in another organisation."""
    principal = info.context.require_principal()
    doc = await info.context.services.weights.get(principal, str(id))
    return None if doc is None else Weights.from_document(doc)


async def resolve_weights_list(
    info: Info,
    limit: Annotated[int, strawberry.argument(description="Page size, 0 to 100.")] = 10,
    offset: Annotated[int, strawberry.argument(description="Entries to skip.")] = 0,
) -> WeightsPage:
    """The organisation's weights, newest first."""
    principal = info.context.require_principal()
    with query_errors():
        page = await info.context.services.weights.page(principal, limit=limit, offset=offset)
    return WeightsPage(total=page.total, items=[Weights.from_document(d) for d in page.items])


async def resolve_weights_usage(info: Info) -> list[StorageUsage]:
    """Usage and alert state of every weights location."""
    principal = info.context.require_principal()
    return [
        StorageUsage(
            root=s.usage.root,
            kind=StorageKindEnum(s.usage.kind.value),
            measured_at=s.usage.measured_at,
            used=BigInt(s.usage.used),
            free=BigInt(s.usage.free),
            total=BigInt(s.usage.total),
            weights_bytes=BigInt(s.usage.weights_bytes),
            alert_threshold=s.threshold,
            alerting=s.alerting,
        )
        for s in await info.context.services.weights.usage(principal)
    ]


async def _change_download(
    info: Info,
    model_id: strawberry.ID,
    *,
    action: Callable[..., Awaitable[WeightsDocument | ModelDocument]],
) -> DownloadResult:
    principal = info.context.require_principal()
    doc = await action(principal, str(model_id))
    if isinstance(doc, ModelDocument):
        return Model.from_document(doc)  # retryDownload asked the hub again for the model
    return Weights.from_document(doc)


@answers
async def cancel_download(
    info: Info, model_id: Annotated[strawberry.ID, strawberry.argument(description="Model id.")]
) -> DownloadResult:
    """Stop a model's download; verified files are kept, in-flight parts removed."""
    return await _change_download(info, model_id, action=info.context.services.weights.cancel)


@answers
async def retry_download(
    info: Info, model_id: Annotated[strawberry.ID, strawberry.argument(description="Model id.")]
) -> DownloadResult:
    """Resume a FAILED or CANCELLED download where it stopped."""
    return await _change_download(info, model_id, action=info.context.services.weights.retry)


@answers
async def delete_weights(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="Weights id.")],
    force: Annotated[
        bool, strawberry.argument(description="Delete even while an inference uses them.")
    ] = False,
) -> DeleteWeightsResult:
    """Remove the files and the entry."""
    principal = info.context.require_principal()
    detached = await info.context.services.weights.delete(principal, str(id), force=force)
    return DeletedWeights(id=id, detached_model_ids=[strawberry.ID(m) for m in detached])
