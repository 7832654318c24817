"""Resolvers of weights without a model: download, cancel and retry them by their id."""

from __future__ import annotations

from typing import Annotated

import strawberry

from resolvers.context import Info
from resolvers.errors import answers
from resolvers.models import _target as download_target
from schema.prefetching import DownloadWeightsInput, DownloadWeightsResult
from schema.weights import DownloadResult, Weights
from services.prefetching import PrefetchSpec


@answers
async def download_weights(
    info: Info,
    input: Annotated[DownloadWeightsInput, strawberry.argument(description="What to fetch.")],
) -> DownloadWeightsResult:
    """Fetch weights on their own."""
    principal = info.context.require_principal()
    spec = PrefetchSpec(
        repo=input.repo,
        target=download_target(input.download_target),
        revision=input.revision,
        token=input.token,
        allow_patterns=input.allow_patterns,
        ignore_patterns=input.ignore_patterns,
    )
    return Weights.from_document(await info.context.services.prefetch.download(principal, spec))


@answers
async def cancel_weights_download(
    info: Info, id: Annotated[strawberry.ID, strawberry.argument(description="Weights id.")]
) -> DownloadResult:
    """Stop a download by the weights' id."""
    principal = info.context.require_principal()
    doc = await info.context.services.weights.cancel_weights(principal, str(id))
    return Weights.from_document(doc)


@answers
async def retry_weights_download(
    info: Info, id: Annotated[strawberry.ID, strawberry.argument(description="Weights id.")]
) -> DownloadResult:
    """Resume a download by the weights' id."""
    principal = info.context.require_principal()
    doc = await info.context.services.weights.retry_weights(principal, str(id))
    return Weights.from_document(doc)
