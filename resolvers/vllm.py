"""Resolvers of vLLM compatibility: the architectures table, and one model's flags per GPU type."""

from __future__ import annotations

from typing import Annotated

import strawberry

from resolvers.arguments import ModelIdArgument, RepoIdArgument, RevisionArgument
from resolvers.context import Info
from resolvers.errors import answers
from schema.limits import cost
from schema.vllm import VllmArchitectureTable, VllmCompatibility, VllmCompatibilityResult


def resolve_vllm_architectures(info: Info) -> VllmArchitectureTable:
    """The table kept in the repository (viewer role)."""
    info.context.require_principal()
    return VllmArchitectureTable.from_table(info.context.services.vllm.table)


@answers
async def resolve_vllm_compatibility(
    info: Info,
    *,
    model_id: ModelIdArgument = None,
    repo_id: RepoIdArgument = None,
    revision: RevisionArgument = None,
    gpu_type: Annotated[
        str | None,
        strawberry.argument(
            description="Only this GPU type (as in `gpuFit`); default: every type in the "
            "cluster, or common GPUs when it has none."
        ),
    ] = None,
    context_length: Annotated[
        int | None,
        strawberry.argument(
            description="Pin `--max-model-len` (and the fit) to this many tokens; default: "
            "the longest that fits, up to the model's maximum."
        ),
    ] = None,
) -> VllmCompatibilityResult:
    """Whether vLLM serves the model and the flags per GPU type."""
    principal = info.context.require_principal()
    found = await info.context.services.vllm.compatibility(
        principal,
        model_id=None if model_id is None else str(model_id),
        repo_id=repo_id,
        revision=revision,
        gpu_type=gpu_type,
        context_length=context_length,
    )
    return VllmCompatibility.from_compatibility(found)


VLLM_ARCHITECTURES: VllmArchitectureTable = strawberry.field(
    resolver=resolve_vllm_architectures,
    description="The model architectures vLLM serves, with the first release of each, as "
    "modelplane's table records them (source and date included).",
)
VLLM_COMPATIBILITY: VllmCompatibilityResult = strawberry.field(
    resolver=resolve_vllm_compatibility,
    description="Whether vLLM serves a model (`modelId`) or hub repo (`repoId`): its "
    "architecture, the vLLM releases that serve it, and per GPU type the flags "
    "(`--tensor-parallel-size`, `--max-model-len`, `--dtype` or `--quantization`, "
    "`--gpu-memory-utilization`) read off the same estimate `gpuFit` makes.",
    metadata=cost(100),  # hub metadata and config reads plus the cluster's inventory
)
