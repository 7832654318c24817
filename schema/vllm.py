"""vLLM compatibility in GraphQL: the architectures table, and per model the flags per GPU type."""

from __future__ import annotations

from datetime import date
from enum import Enum
from typing import Annotated

import strawberry

from schema.cluster import GpuFit
from schema.errors import NotFoundError, ValidationError
from services.vllm import VllmCompatibility as Compatibility
from services.vllm_flags import VllmFlags as Flags
from services.vllm_support import ArchitectureSupport, SupportTable


@strawberry.enum(name="VllmTask", description="What vLLM does with an architecture.")
class VllmTaskEnum(Enum):
    """GENERATE or EMBED."""

    GENERATE = strawberry.enum_value("GENERATE", description="Text generation (chat, completion).")
    EMBED = strawberry.enum_value("EMBED", description="Pooling: embeddings from hidden states.")


@strawberry.type(
    description="A model architecture vLLM serves (a `config.json` architectures name)."
)
class VllmArchitecture:
    """One row of modelplane's table of vLLM architectures."""

    name: str = strawberry.field(description="Class name, e.g. `Qwen2ForCausalLM`.")
    family: str = strawberry.field(description="Model families that use it, for a person.")
    task: VllmTaskEnum = strawberry.field(description="Generation or embeddings.")
    since: str = strawberry.field(
        description="First vLLM release known to serve it, e.g. `0.3.0` (an upper bound where "
        "`evidence` says so)."
    )
    versions: str = strawberry.field(description="The releases that serve it: `>=0.3.0`.")
    evidence: str = strawberry.field(description="Where `since` comes from.")

    @classmethod
    def from_support(cls, row: ArchitectureSupport) -> VllmArchitecture:
        """The API view of a table row."""
        return cls(
            name=row.name,
            family=row.family,
            task=VllmTaskEnum(row.task.value),
            since=row.since,
            versions=row.versions,
            evidence=row.evidence,
        )


@strawberry.type(description="modelplane's table of the architectures vLLM serves, and its source.")
class VllmArchitectureTable:
    """The table kept in the repository (`services/vllm_architectures.toml`)."""

    architectures: list[VllmArchitecture] = strawberry.field(description="By name.")
    documentation: str = strawberry.field(description="vLLM's supported-models page.")
    snapshots: list[str] = strawberry.field(description="The documentation versions read.")
    checked_on: date = strawberry.field(description="When the table was last checked.")
    latest_checked_version: str = strawberry.field(
        description="The newest vLLM release whose documentation was read; architectures added "
        "after it are missing from the table."
    )

    @classmethod
    def from_table(cls, table: SupportTable) -> VllmArchitectureTable:
        """The API view of the table."""
        return cls(
            architectures=[VllmArchitecture.from_support(r) for r in table.architectures.values()],
            documentation=table.documentation,
            snapshots=list(table.snapshots),
            checked_on=table.checked,
            latest_checked_version=table.latest_checked,
        )


@strawberry.type(description="How to start vLLM for a model on one GPU type.")
class VllmFlags:
    """Flags read off the GPU fit's row for this type."""

    gpu_type: str = strawberry.field(description="The GPU type, as in `gpuFit`'s rows.")
    servable: bool = strawberry.field(
        description="vLLM can serve the model on GPUs of this type (it fits, and they run its "
        "number format)."
    )
    reason: str | None = strawberry.field(description="Why not, when not servable.")
    tensor_parallel_size: int | None = strawberry.field(
        description="`--tensor-parallel-size`: `gpuFit`'s `gpusNeeded` for this type."
    )
    max_model_len: int | None = strawberry.field(
        description="`--max-model-len`: `contextLength` when given, else the longest context up "
        "to the model's maximum that still fits that many GPUs by the same estimate."
    )
    dtype: str | None = strawberry.field(
        description="`--dtype` (`bfloat16`, `float16`); null for a quantized checkpoint."
    )
    quantization: str | None = strawberry.field(
        description="`--quantization`: the checkpoint's `quantization_config.quant_method`."
    )
    gpu_memory_utilization: float = strawberry.field(
        description="`--gpu-memory-utilization`: the fraction the fit lets vLLM use."
    )
    args: list[str] = strawberry.field(
        description="The flags as command-line arguments; empty when not servable."
    )
    engine_args: list[str] = strawberry.field(
        description="The flags to pass as `startInference`'s `engineArgs`: `args` without "
        "`--tensor-parallel-size` (give it as `resources.gpu`) and `--max-model-len` (give it "
        "as `contextLength`); empty when not servable."
    )

    @classmethod
    def from_flags(cls, flags: Flags) -> VllmFlags:
        """The API view of one GPU type's flags."""
        return cls(
            gpu_type=flags.gpu_type,
            servable=flags.servable,
            reason=flags.reason,
            tensor_parallel_size=flags.tensor_parallel_size,
            max_model_len=flags.max_model_len,
            dtype=flags.dtype,
            quantization=flags.quantization,
            gpu_memory_utilization=flags.gpu_memory_utilization,
            args=list(flags.args),
            engine_args=list(flags.engine_args),
        )


@strawberry.type(
    description="Whether vLLM serves a model's architecture, since which release, and the flags "
    "to start it with per GPU type (read off the GPU fit, which is included)."
)
class VllmCompatibility:
    """The outcome of vllmCompatibility."""

    architectures: list[str] = strawberry.field(
        description="The `architectures` of the model's `config.json`, in order."
    )
    supported: bool = strawberry.field(
        description="One of them is in modelplane's table of architectures vLLM serves."
    )
    architecture: VllmArchitecture | None = strawberry.field(
        description="The first architecture vLLM serves; null when none is in the table."
    )
    versions: str | None = strawberry.field(
        description="vLLM releases that serve it, e.g. `>=0.3.0`; null when not supported."
    )
    quantization: str | None = strawberry.field(
        description="The checkpoint's quantization method, when it is quantized."
    )
    fit: GpuFit = strawberry.field(
        description="The GPU fit the flags come from: what `gpuFit` answers for VLLM."
    )
    flags: list[VllmFlags] = strawberry.field(
        description="One entry per row of `fit` (empty when not supported)."
    )
    notes: list[str] = strawberry.field(description="What the flags assumed or left unchecked.")
    table_checked_on: date = strawberry.field(
        description="When the architectures table was last checked."
    )

    @classmethod
    def from_compatibility(cls, found: Compatibility) -> VllmCompatibility:
        """The API view of a compatibility answer."""
        return cls(
            architectures=list(found.architectures),
            supported=found.supported,
            architecture=VllmArchitecture.from_support(found.support) if found.support else None,
            versions=found.support.versions if found.support else None,
            quantization=found.quantization,
            fit=GpuFit.from_estimate(found.fit),
            flags=[VllmFlags.from_flags(f) for f in found.flags],
            notes=list(found.notes),
            table_checked_on=found.table.checked,
        )


VllmCompatibilityResult = Annotated[
    VllmCompatibility | ValidationError | NotFoundError,
    strawberry.union("VllmCompatibilityResult", description="The compatibility, or why not."),
]
