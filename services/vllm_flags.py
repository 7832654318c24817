"""The vLLM flags to serve a model on each GPU type, derived from the GPU fit (pure, no I/O).

The flags never disagree with ``gpuFit`` because they are read off the same estimate
(:func:`services.fitting.estimate`, engine VLLM, the same shape, offers and context):

* ``--tensor-parallel-size`` is the fit row's ``gpus_needed`` for that GPU type;
* ``--max-model-len`` is the caller's context when given, else the largest context, up to the
  model's maximum, for which the estimate still fits on that many GPUs (bisection over the same
  estimator: vLLM refuses to start when one full-length sequence's KV cache does not fit);
* ``--gpu-memory-utilization`` is the fraction the estimate lets vLLM use
  (``ENGINE_COSTS[VLLM].utilization``, vLLM's own default 0.9);
* ``--quantization`` is the checkpoint's ``quantization_config.quant_method``; otherwise
  ``--dtype`` is the dtype the estimate counted (2 bytes: float32 checkpoints are served in
  half precision), ``float16`` on GPUs older than Ampere, which have no bfloat16.

A GPU type that fits but cannot run the checkpoint's number format (bfloat16 is replaced, FP8
needs Ampere, AWQ Turing) has no flags and a reason. Compute capabilities are those NVIDIA
publishes for the GPU catalogue's products (``controllers/runtimes/inventory.py``); for another
product the check is skipped and noted.

Cost: one estimate for the fit, then per GPU type one more, and a bisection (at most
log2(model maximum) estimates) only where the model's maximum context does not fit. Measured
on the 14 catalogue GPUs: 0.8 ms for a 7B model at 4k (15 estimates), 10 ms for a 70B at 128k
(183 estimates).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controllers.runtimes.inventory import gpu_product
from services.fitting import (
    ENGINE_COSTS,
    TENSOR_PARALLEL_SIZES,
    FitEstimate,
    FitRow,
    GpuOffer,
    ModelShape,
    estimate,
)
from storage.documents import InferenceEngine

VLLM = InferenceEngine.VLLM

COMPUTE_CAPABILITY: Mapping[str, tuple[int, int]] = {
    "H200": (9, 0),
    "H100-NVL": (9, 0),
    "H100-80GB": (9, 0),
    "A100-80GB": (8, 0),
    "A100-40GB": (8, 0),
    "L40S": (8, 9),
    "L40": (8, 9),
    "V100-32GB": (7, 0),
    "RTX-4090": (8, 9),
    "L4": (8, 9),
    "A10G": (8, 6),
    "A10": (8, 6),
    "V100-16GB": (7, 0),
    "T4": (7, 5),
}
"""CUDA compute capability of each product of the GPU catalogue."""

BFLOAT16_CAPABILITY = (8, 0)
QUANTIZATION_CAPABILITY: Mapping[str, tuple[int, int]] = {
    "awq": (7, 5),
    "awq_marlin": (8, 0),
    "gptq": (7, 0),
    "gptq_marlin": (8, 0),
    "marlin": (8, 0),
    "fp8": (8, 0),
    "fbgemm_fp8": (8, 0),
    "bitsandbytes": (7, 0),
    "compressed-tensors": (7, 0),
    "gguf": (7, 0),
}
"""Lowest compute capability vLLM's kernels for each method need (vLLM's quantization hardware
table: FP8 runs weight-only through Marlin on Ampere, natively from Ada)."""

DTYPE_FLAGS: Mapping[str, str] = {
    "BF16": "bfloat16",
    "F16": "float16",
    "F32": "bfloat16",
    "F64": "bfloat16",
}
"""The estimate's dtype -> ``--dtype`` (wide floats are served in half precision)."""


@dataclass(frozen=True, slots=True)
class VllmFlags:
    """How to start vLLM for one GPU type; ``tensor_parallel_size`` None when it cannot."""

    gpu_type: str
    tensor_parallel_size: int | None
    max_model_len: int | None
    dtype: str | None
    quantization: str | None
    gpu_memory_utilization: float
    reason: str | None
    """Why there are no flags (does not fit, number format unsupported); None when servable."""

    @property
    def servable(self) -> bool:
        """True when vLLM can serve the model on this GPU type."""
        return self.tensor_parallel_size is not None

    @property
    def args(self) -> tuple[str, ...]:
        """The command-line arguments, in vLLM's spelling; empty when not servable."""
        if self.tensor_parallel_size is None:
            return ()
        args = ["--tensor-parallel-size", str(self.tensor_parallel_size)]
        if self.max_model_len is not None:
            args += ["--max-model-len", str(self.max_model_len)]
        if self.quantization is not None:
            args += ["--quantization", self.quantization]
        if self.dtype is not None:
            args += ["--dtype", self.dtype]
        args += ["--gpu-memory-utilization", f"{self.gpu_memory_utilization:g}"]
        return tuple(args)

    @property
    def engine_args(self) -> tuple[str, ...]:
        """What ``startInference`` takes as ``engineArgs``: :attr:`args` without the two flags
        the inference owns (``--tensor-parallel-size`` is ``resources.gpu``,
        ``--max-model-len`` is ``contextLength``)."""
        return self.args[4:] if self.max_model_len is not None else self.args[2:]


@dataclass(frozen=True, slots=True)
class VllmPlan:
    """The fit the flags were read from, one flags row per fit row, and the notes."""

    fit: FitEstimate
    flags: tuple[VllmFlags, ...]
    notes: tuple[str, ...]


def quantization_method(config: Mapping[str, Any] | None) -> str | None:
    """``quantization_config.quant_method`` of a ``config.json`` (lower case), if any."""
    found = (config or {}).get("quantization_config")
    if not isinstance(found, Mapping):
        return None
    method = found.get("quant_method")
    return method.lower() if isinstance(method, str) and method.strip() else None


def capability(gpu_type: str) -> tuple[int, int] | None:
    """The compute capability of a product label or catalogue name; None when unknown."""
    product = gpu_product(gpu_type)
    return None if product is None else COMPUTE_CAPABILITY.get(product.name)


def _format(
    dtype: str | None, quantization: str | None, cap: tuple[int, int] | None
) -> tuple[str | None, str | None]:
    """(``--dtype`` value, refusal reason) for the number format on a GPU of ``cap``."""
    if quantization is not None:
        needed = QUANTIZATION_CAPABILITY.get(quantization)
        if cap is not None and needed is not None and cap < needed:
            return None, (
                f"{quantization} needs compute capability {needed[0]}.{needed[1]}; "
                f"this GPU has {cap[0]}.{cap[1]}"
            )
        return None, None
    flag = DTYPE_FLAGS.get(dtype or "")
    if flag == "bfloat16" and cap is not None and cap < BFLOAT16_CAPABILITY:
        flag = "float16"  # vLLM refuses bfloat16 below Ampere and says to use half
    return flag, None


def _fits_on(
    shape: ModelShape, offer: GpuOffer, *, gpus: int, context: int, batch: int | None
) -> bool:
    row = estimate(shape, engine=VLLM, offers=[offer], context_length=context, batch_size=batch)
    needed = row.rows[0].gpus_needed
    return needed is not None and needed <= gpus


def longest_context(
    shape: ModelShape, offer: GpuOffer, *, gpus: int, start: int, batch: int | None = None
) -> int:
    """The largest context in ``[start, model maximum]`` that still fits ``gpus`` GPUs of
    ``offer`` by the estimate (``start`` fits: it is the context the fit was made for)."""
    top = max(shape.max_context or start, start)
    if _fits_on(shape, offer, gpus=gpus, context=top, batch=batch):
        return top
    low, high = start, top  # low fits, high does not
    while high - low > 1:
        middle = (low + high) // 2
        if _fits_on(shape, offer, gpus=gpus, context=middle, batch=batch):
            low = middle
        else:
            high = middle
    return low


def _flags_for(
    row: FitRow,
    offer: GpuOffer,
    shape: ModelShape,
    *,
    fit: FitEstimate,
    quantization: str | None,
    context_length: int | None,
) -> VllmFlags:
    utilization = ENGINE_COSTS[VLLM].utilization
    if row.gpus_needed is None:
        largest = TENSOR_PARALLEL_SIZES[-1]
        why = f"does not fit on {largest} x {row.gpu_type} (gpuFit)"
        return VllmFlags(row.gpu_type, None, None, None, quantization, utilization, why)
    dtype, reason = _format(fit.dtype, quantization, capability(row.gpu_type))
    if reason is not None:
        return VllmFlags(row.gpu_type, None, None, None, quantization, utilization, reason)
    length = context_length or longest_context(
        shape, offer, gpus=row.gpus_needed, start=fit.context_length
    )
    return VllmFlags(
        gpu_type=row.gpu_type,
        tensor_parallel_size=row.gpus_needed,
        max_model_len=length,
        dtype=dtype,
        quantization=quantization,
        gpu_memory_utilization=utilization,
        reason=None,
    )


def plan_flags(
    shape: ModelShape,
    *,
    offers: Sequence[GpuOffer],
    config: Mapping[str, Any] | None = None,
    context_length: int | None = None,
    requested_type: str | None = None,
) -> VllmPlan:
    """The vLLM flags for each offered GPU type: the same estimate ``gpuFit`` makes for
    VLLM (batch 1), then per row the flags above. ``context_length`` pins ``--max-model-len``.
    Raises :class:`services.fitting.ShapeUnknown` as the estimate does."""
    fit = estimate(
        shape,
        engine=VLLM,
        offers=offers,
        context_length=context_length,
        requested_type=requested_type,
    )
    quantization = quantization_method(config)
    notes: list[str] = []
    if shape.layers is None:
        notes.append("the KV cache is not counted: --max-model-len is the model's maximum")
    unknown = sorted({r.gpu_type for r in fit.rows if capability(r.gpu_type) is None})
    if unknown:
        notes.append(f"compute capability unknown for {', '.join(unknown)}: formats not checked")
    if quantization is not None and quantization not in QUANTIZATION_CAPABILITY:
        notes.append(f"quantization {quantization!r}: GPU requirements not known to modelplane")
    by_type = {offer.gpu_type: offer for offer in offers}
    flags = tuple(
        _flags_for(
            row,
            by_type[row.gpu_type],
            shape,
            fit=fit,
            quantization=quantization,
            context_length=context_length,
        )
        for row in fit.rows
    )
    return VllmPlan(fit=fit, flags=flags, notes=tuple(notes))
