"""Resolvers of the cluster: its status and whether a model fits its GPUs."""

from __future__ import annotations

from typing import Annotated

import strawberry

from resolvers.arguments import ModelIdArgument, RepoIdArgument, RevisionArgument
from resolvers.context import Info
from resolvers.errors import answers
from schema.cluster import ClusterStatus, GpuFit, GpuFitResult
from schema.enums import InferenceEngineEnum
from schema.limits import cost
from storage.documents import InferenceEngine


async def resolve_cluster_status(info: Info) -> ClusterStatus:
    """Runtime, version, namespace, integrations and GPU nodes, read now (viewer role)."""
    principal = info.context.require_principal()
    inventory = await info.context.services.cluster.status(principal)
    return ClusterStatus.from_inventory(inventory)


@answers
async def resolve_gpu_fit(
    info: Info,
    *,
    model_id: ModelIdArgument = None,
    repo_id: RepoIdArgument = None,
    revision: RevisionArgument = None,
    engine: Annotated[
        InferenceEngineEnum, strawberry.argument(description="Engine to estimate for.")
    ] = InferenceEngineEnum.VLLM,
    gpu_type: Annotated[
        str | None,
        strawberry.argument(
            description="Only this GPU type: a node's product label or a known name "
            "(`A100-80GB`, `L4`); default: every type in the cluster."
        ),
    ] = None,
    context_length: Annotated[
        int | None,
        strawberry.argument(description="Tokens per sequence; default min(model max, 4096)."),
    ] = None,
    batch_size: Annotated[
        int | None, strawberry.argument(description="Concurrent sequences; default 1.")
    ] = None,
) -> GpuFitResult:
    """Estimate the GPU memory to serve a model and compare it with the cluster's GPUs."""
    principal = info.context.require_principal()
    fit = await info.context.services.cluster.fit(
        principal,
        model_id=None if model_id is None else str(model_id),
        repo_id=repo_id,
        revision=revision,
        engine=InferenceEngine(engine.name),
        gpu_type=gpu_type,
        context_length=context_length,
        batch_size=batch_size,
    )
    return GpuFit.from_estimate(fit)


CLUSTER_STATUS: ClusterStatus = strawberry.field(
    resolver=resolve_cluster_status,
    description="Runtime, Kubernetes version, namespace, optional integrations and GPU nodes "
    "with their free GPUs, read now.",
    metadata=cost(50),  # reads the cluster's nodes, pods and CRDs
)
GPU_FIT: GpuFitResult = strawberry.field(
    resolver=resolve_gpu_fit,
    description="Whether a model (`modelId`) or hub repo (`repoId`) fits the cluster's GPUs: "
    "weights + KV cache + engine overhead against each GPU type, and the GPUs it needs.",
    metadata=cost(100),  # hub metadata and config reads plus the cluster's inventory
)
