"""Will a model fit on the GPUs? A pure estimate of the memory an engine needs to serve it.

No I/O here: :func:`estimate` takes what the hub said (:class:`ModelShape`), the engine, the
context and batch, and the GPUs on offer (:class:`GpuOffer`), and returns a :class:`FitEstimate`.
Table tests pin it (``tests/test_fit.py``).

Memory on each of ``n`` GPUs (tensor parallel size ``n`` in 1, 2, 4, 8)::

    weights / n  +  kv_cache_per_gpu(n)  +  overhead   <=   memory_per_gpu * utilization

* **weights** = sum over the checkpoint's tensors of parameters x bytes of their dtype (from the
  hub's safetensors summary), else parameters x bytes of ``torch_dtype``, else the size of the
  weight files. vLLM's default ``dtype="auto"`` serves float32 checkpoints in half precision,
  so for VLLM F32/F64 tensors count 2 bytes. A dtype we do not know counts 2 bytes (noted).
* **KV cache** = 2 (K and V) x layers x kv_heads x head_dim x context x batch x kv_bytes, with
  kv_bytes = 2 (vLLM's ``kv_cache_dtype="auto"`` for half models, Ollama's f16 cache) or 4 for a
  float32 model on an engine that keeps float32. Tensor parallelism splits the KV heads; when
  ``n`` exceeds them each GPU still holds one head, so ``kv_cache_per_gpu(n)`` uses
  ``ceil(kv_heads / n)``. Multi-head latent attention (DeepSeek's ``kv_lora_rank``) caches
  ``kv_lora_rank + qk_rope_head_dim`` values per token and layer, replicated on every GPU.
* **overhead** per GPU and the usable fraction of each GPU's memory (:data:`ENGINE_COSTS`):

  =============  ===========  ===========  ==================================================
  engine         overhead     usable       why
  =============  ===========  ===========  ==================================================
  VLLM           2 GiB        90 %         CUDA context + NCCL ~0.5 GiB, CUDA graphs ~0.5 GiB,
                                           activations of the profiling run ~1 GiB; vLLM's
                                           default ``gpu_memory_utilization=0.9`` caps the rest
  OLLAMA         0.5 GiB      100 %        CUDA context and llama.cpp compute buffers; Ollama
                                           reserves no fraction
  CUSTOM         1.5 GiB      90 %         assumed like a PyTorch server with some headroom
  LITELLM_PROXY  none         n/a          a proxy to a remote API needs no GPU: always fits
  =============  ===========  ===========  ==================================================

Tensor parallel sizes must divide the attention heads (vLLM refuses others); Ollama splits
layers instead, so any count works for it. The context defaults to ``min(model maximum,
4096)`` and the batch to 1: vLLM needs room for at least one full-length sequence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from storage.documents import InferenceEngine

GIB = 1024**3
DEFAULT_CONTEXT = 4096
DEFAULT_BATCH = 1
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8)
FALLBACK_DTYPE_BYTES = 2

DTYPE_BYTES: Mapping[str, float] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "F4": 0.5,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
"""Bytes per element of each safetensors dtype."""

TORCH_DTYPES: Mapping[str, str] = {
    "float64": "F64",
    "float32": "F32",
    "float": "F32",
    "float16": "F16",
    "half": "F16",
    "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "int8": "I8",
    "uint8": "U8",
}
"""``torch_dtype`` of a ``config.json`` -> safetensors dtype."""

_WIDE_FLOATS = frozenset({"F32", "F64"})


@dataclass(frozen=True, slots=True)
class EngineCost:
    """What an engine adds to the weights and KV cache on each GPU."""

    overhead_bytes: int
    utilization: float
    """Fraction of each GPU's memory the engine may use."""
    needs_gpu: bool = True
    tensor_parallel: bool = True
    """True when GPU counts must divide the attention heads."""
    keeps_float32: bool = True
    """False when float32 checkpoints are served in half precision."""


ENGINE_COSTS: Mapping[InferenceEngine, EngineCost] = {
    InferenceEngine.VLLM: EngineCost(overhead_bytes=2 * GIB, utilization=0.9, keeps_float32=False),
    InferenceEngine.OLLAMA: EngineCost(
        overhead_bytes=GIB // 2, utilization=1.0, tensor_parallel=False, keeps_float32=False
    ),
    InferenceEngine.CUSTOM: EngineCost(overhead_bytes=3 * GIB // 2, utilization=0.9),
    InferenceEngine.LITELLM_PROXY: EngineCost(overhead_bytes=0, utilization=1.0, needs_gpu=False),
}


def _first(config: Mapping[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What the estimate needs to know about a checkpoint; every part may be unknown."""

    parameters_by_dtype: Mapping[str, int] = field(default_factory=dict)
    """Safetensors dtype (``BF16``) -> number of parameters stored in it."""
    parameters: int | None = None
    weight_file_bytes: int | None = None
    """Size of the weight files, the last resort for the weights' size."""
    torch_dtype: str | None = None
    layers: int | None = None
    attention_heads: int | None = None
    kv_heads: int | None = None
    head_dim: int | None = None
    max_context: int | None = None
    kv_lora_rank: int | None = None
    """Multi-head latent attention: the compressed KV width (DeepSeek V2/V3)."""
    rope_head_dim: int | None = None

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any] | None,
        *,
        parameters_by_dtype: Mapping[str, int] | None = None,
        parameters: int | None = None,
        weight_file_bytes: int | None = None,
    ) -> ModelShape:
        """The shape a ``config.json`` declares (Llama, GPT-2 and DeepSeek spellings; the
        ``text_config`` of a multimodal model when the top level has no layers)."""
        config = config or {}
        text = config.get("text_config")
        if _first(config, "num_hidden_layers", "n_layer", "num_layers") is None and isinstance(
            text, Mapping
        ):
            config = {**text, **{k: v for k, v in config.items() if k == "torch_dtype"}}
        layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
        heads = _first(config, "num_attention_heads", "n_head")
        hidden = _first(config, "hidden_size", "n_embd", "d_model")
        head_dim = _first(config, "head_dim")
        if head_dim is None and hidden is not None and heads is not None:
            head_dim = hidden // heads
        dtype = config.get("torch_dtype") or config.get("dtype")
        return cls(
            parameters_by_dtype=dict(parameters_by_dtype or {}),
            parameters=parameters,
            weight_file_bytes=weight_file_bytes,
            torch_dtype=dtype if isinstance(dtype, str) else None,
            layers=layers,
            attention_heads=heads,
            kv_heads=_first(config, "num_key_value_heads", "num_kv_heads") or heads,
            head_dim=head_dim,
            max_context=_first(
                config, "max_position_embeddings", "n_positions", "max_seq_len", "seq_length"
            ),
            kv_lora_rank=_first(config, "kv_lora_rank"),
            rope_head_dim=_first(config, "qk_rope_head_dim"),
        )


@dataclass(frozen=True, slots=True)
class GpuOffer:
    """A GPU type to fit on: its memory and the most free GPUs of it on one node."""

    gpu_type: str
    memory_bytes: int
    free_on_one_node: int = 0
    in_cluster: bool = False


@dataclass(frozen=True, slots=True)
class MemoryNeed:
    """Bytes needed in all, for a given GPU count."""

    weights: int
    kv_cache: int
    overhead: int

    @property
    def total(self) -> int:
        """Everything."""
        return self.weights + self.kv_cache + self.overhead


@dataclass(frozen=True, slots=True)
class FitRow:
    """One GPU type: how many are needed and whether that many are free on a node now."""

    gpu_type: str
    memory_bytes_per_gpu: int
    usable_bytes_per_gpu: int
    gpus_needed: int | None
    """Smallest tensor parallel size that fits; None when even the largest does not."""
    free_gpus: int
    in_cluster: bool

    @property
    def fits_now(self) -> bool:
        """Fits, and enough GPUs of this type are free on one node."""
        return self.gpus_needed is not None and self.free_gpus >= self.gpus_needed


@dataclass(frozen=True, slots=True)
class FitEstimate:
    """The answer: the need, a row per GPU type, the best (or requested) row."""

    engine: InferenceEngine
    context_length: int
    batch_size: int
    dtype: str | None
    parameters: int | None
    need: MemoryNeed
    """For the chosen row's GPU count (one GPU when nothing fits)."""
    rows: tuple[FitRow, ...]
    chosen: FitRow | None
    notes: tuple[str, ...]
    """Assumptions made where the model's facts were missing."""

    @property
    def fits(self) -> bool:
        """True when the chosen GPU type can hold the model (always for a proxy)."""
        if not ENGINE_COSTS[self.engine].needs_gpu:
            return True
        return self.chosen is not None and self.chosen.gpus_needed is not None

    @property
    def fits_now(self) -> bool:
        """True when it also has enough free GPUs on one node right now."""
        if not ENGINE_COSTS[self.engine].needs_gpu:
            return True
        return self.chosen is not None and self.chosen.fits_now

    @property
    def gpus_needed(self) -> int | None:
        """GPUs of the chosen type (0 for a proxy; None when nothing fits)."""
        if not ENGINE_COSTS[self.engine].needs_gpu:
            return 0
        return None if self.chosen is None else self.chosen.gpus_needed

    @property
    def summary(self) -> str:
        """One line for a person."""
        if not ENGINE_COSTS[self.engine].needs_gpu:
            return f"{self.engine.value} proxies a remote API and needs no GPU"
        row = self.chosen
        total = f"{self.need.total / GIB:.1f} GiB"
        if row is None:
            return f"no GPU type to fit on; needs {total} on one GPU"
        if row.gpus_needed is None:
            largest = TENSOR_PARALLEL_SIZES[-1]
            return f"does not fit on {largest} x {row.gpu_type} ({total} on one GPU)"
        free = (
            f"{row.free_gpus} free on the largest node" if row.in_cluster else "none in the cluster"
        )
        return f"needs {row.gpus_needed} x {row.gpu_type} ({total}); {free}"


class ShapeUnknown(ValueError):
    """Nothing is known about the size of the model's weights."""


def _dtype_bytes(dtype: str, engine_cost: EngineCost) -> float | None:
    size = DTYPE_BYTES.get(dtype.upper())
    if size is not None and dtype.upper() in _WIDE_FLOATS and not engine_cost.keeps_float32:
        return 2
    return size


def _serving_dtype(shape: ModelShape, notes: list[str]) -> str | None:
    if shape.torch_dtype is None:
        if shape.parameters_by_dtype:
            return max(shape.parameters_by_dtype.items(), key=lambda item: item[1])[0]
        return None
    dtype = TORCH_DTYPES.get(shape.torch_dtype.lower())
    if dtype is None:
        notes.append(f"torch_dtype {shape.torch_dtype!r} is unknown; assumed 2 bytes per value")
    return dtype


def weight_bytes(shape: ModelShape, engine: InferenceEngine, notes: list[str]) -> int:
    """Bytes of the weights as the engine holds them (see the module docstring)."""
    cost = ENGINE_COSTS[engine]
    if shape.parameters_by_dtype:
        total = 0.0
        for dtype, count in shape.parameters_by_dtype.items():
            size = _dtype_bytes(dtype, cost)
            if size is None:
                notes.append(f"dtype {dtype!r} is unknown; assumed {FALLBACK_DTYPE_BYTES} bytes")
                size = FALLBACK_DTYPE_BYTES
            total += count * size
        return math.ceil(total)
    if shape.parameters:
        serving = _serving_dtype(shape, [])
        size = _dtype_bytes(serving, cost) if serving else None
        if size is None:
            notes.append(
                f"the weights' dtype is unknown; assumed {FALLBACK_DTYPE_BYTES} bytes per parameter"
            )
            size = FALLBACK_DTYPE_BYTES
        return math.ceil(shape.parameters * size)
    if shape.weight_file_bytes:
        notes.append("no parameter count: the weights' size is that of the weight files")
        return shape.weight_file_bytes
    raise ShapeUnknown("nothing is known about the size of the model's weights")


def _kv_bytes_per_value(shape: ModelShape, engine: InferenceEngine, notes: list[str]) -> int:
    dtype = _serving_dtype(shape, notes)
    if dtype in _WIDE_FLOATS and ENGINE_COSTS[engine].keeps_float32:
        return 4
    return 2


def kv_cache_per_gpu(
    shape: ModelShape,
    *,
    gpus: int,
    context: int,
    batch: int,
    bytes_per_value: int,
) -> int | None:
    """KV cache bytes on each of ``gpus`` GPUs; None when the config does not say."""
    if shape.layers is None:
        return None
    if shape.kv_lora_rank is not None:
        width = shape.kv_lora_rank + (shape.rope_head_dim or 0)
        return shape.layers * width * context * batch * bytes_per_value
    if shape.kv_heads is None or shape.head_dim is None:
        return None
    heads_per_gpu = math.ceil(shape.kv_heads / gpus)
    return 2 * shape.layers * heads_per_gpu * shape.head_dim * context * batch * bytes_per_value


def _allowed_sizes(shape: ModelShape, cost: EngineCost) -> tuple[int, ...]:
    if not cost.tensor_parallel or shape.attention_heads is None:
        return TENSOR_PARALLEL_SIZES
    return tuple(n for n in TENSOR_PARALLEL_SIZES if shape.attention_heads % n == 0)


def estimate(
    shape: ModelShape,
    *,
    engine: InferenceEngine,
    offers: Sequence[GpuOffer],
    context_length: int | None = None,
    batch_size: int | None = None,
    requested_type: str | None = None,
) -> FitEstimate:
    """The memory ``engine`` needs for the model and how it fits each offered GPU type.

    The chosen row is the one named ``requested_type`` when given, else the best: one that fits
    now, then the fewest GPUs, then the smallest GPU. Raises :class:`ShapeUnknown` when nothing
    tells the weights' size.
    """
    notes: list[str] = []
    cost = ENGINE_COSTS[engine]
    context = context_length or min(shape.max_context or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
    batch = batch_size or DEFAULT_BATCH
    if shape.max_context is not None and context > shape.max_context:
        notes.append(f"context {context} exceeds the model's maximum of {shape.max_context} tokens")
    if not cost.needs_gpu:
        return _without_gpu(shape, engine, context=context, batch=batch, notes=notes)
    weights = weight_bytes(shape, engine, notes)
    kv_value = _kv_bytes_per_value(shape, engine, notes)
    if kv_cache_per_gpu(shape, gpus=1, context=1, batch=1, bytes_per_value=1) is None:
        notes.append("layers and KV heads are unknown: the KV cache is not counted")

    def need(gpus: int) -> MemoryNeed:
        per_gpu = kv_cache_per_gpu(
            shape, gpus=gpus, context=context, batch=batch, bytes_per_value=kv_value
        )
        return MemoryNeed(
            weights=weights, kv_cache=(per_gpu or 0) * gpus, overhead=cost.overhead_bytes * gpus
        )

    sizes = _allowed_sizes(shape, cost)
    rows = _rows(offers, sizes, need, utilization=cost.utilization)
    chosen = _choose(rows, requested_type)
    return FitEstimate(
        engine=engine,
        context_length=context,
        batch_size=batch,
        dtype=_serving_dtype(shape, []),
        parameters=shape.parameters or (sum(shape.parameters_by_dtype.values()) or None),
        need=need(chosen.gpus_needed if chosen and chosen.gpus_needed else 1),
        rows=tuple(rows),
        chosen=chosen,
        notes=tuple(dict.fromkeys(notes)),
    )


def _without_gpu(
    shape: ModelShape, engine: InferenceEngine, *, context: int, batch: int, notes: list[str]
) -> FitEstimate:
    """The estimate of an engine that runs without a GPU: no memory need, no rows."""
    return FitEstimate(
        engine=engine,
        context_length=context,
        batch_size=batch,
        dtype=None,
        parameters=shape.parameters,
        need=MemoryNeed(weights=0, kv_cache=0, overhead=0),
        rows=(),
        chosen=None,
        notes=tuple(notes),
    )


def _rows(
    offers: Sequence[GpuOffer],
    sizes: Sequence[int],
    need: Callable[[int], MemoryNeed],
    *,
    utilization: float,
) -> list[FitRow]:
    """How each offered GPU type fits: the fewest of ``sizes`` GPUs whose share of the need
    fits one GPU's usable memory (None when none does)."""
    rows: list[FitRow] = []
    for offer in offers:
        usable = int(offer.memory_bytes * utilization)
        needed = next((n for n in sizes if math.ceil(need(n).total / n) <= usable), None)
        rows.append(
            FitRow(
                gpu_type=offer.gpu_type,
                memory_bytes_per_gpu=offer.memory_bytes,
                usable_bytes_per_gpu=usable,
                gpus_needed=needed,
                free_gpus=offer.free_on_one_node,
                in_cluster=offer.in_cluster,
            )
        )
    return rows


def _choose(rows: Sequence[FitRow], requested_type: str | None) -> FitRow | None:
    if requested_type is not None:
        return next((r for r in rows if r.gpu_type == requested_type), None)
    fitting = [r for r in rows if r.gpus_needed is not None]
    if not fitting:
        return max(rows, key=lambda r: r.memory_bytes_per_gpu, default=None)
    return min(
        fitting,
        key=lambda r: (not r.fits_now, r.gpus_needed or 0, r.memory_bytes_per_gpu, r.gpu_type),
    )
