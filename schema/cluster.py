"""The cluster in GraphQL: its status (GPU nodes, integrations) and model fit estimates."""

from __future__ import annotations

from typing import Annotated

import strawberry

from controllers.runtimes.inventory import ClusterInventory
from controllers.runtimes.inventory import GpuNode as GpuNodeFacts
from schema.enums import InferenceEngineEnum
from schema.errors import NotFoundError, ValidationError
from schema.scalars import BigInt, big
from services.fitting import FitEstimate, FitRow


@strawberry.type(description="A node with NVIDIA GPUs (or this machine on the local runtime).")
class GpuNode:
    """One GPU node and how many of its GPUs are free."""

    name: str = strawberry.field(description="Node name (the host name on the local runtime).")
    gpu_type: str = strawberry.field(
        description="The `nvidia.com/gpu.product` label, e.g. `NVIDIA-A100-SXM4-80GB`; "
        "`unknown` without GPU feature discovery."
    )
    memory_bytes_per_gpu: BigInt | None = strawberry.field(
        description="Memory of each GPU: the `nvidia.com/gpu.memory` label, else known for the "
        "product; null when neither says."
    )
    allocatable_gpus: int = strawberry.field(description="`nvidia.com/gpu` allocatable.")
    requested_gpus: int = strawberry.field(
        description="GPUs requested by the pods bound to the node that have not finished."
    )
    free_gpus: int = strawberry.field(
        description="Allocatable minus requested; 0 when the node is cordoned or not Ready."
    )
    ready: bool = strawberry.field(description="The node's Ready condition is True.")
    schedulable: bool = strawberry.field(description="False when the node is cordoned.")

    @classmethod
    def from_facts(cls, node: GpuNodeFacts) -> GpuNode:
        """The API view of an inventory entry."""
        return cls(
            name=node.name,
            gpu_type=node.gpu_type,
            memory_bytes_per_gpu=big(node.memory_bytes_per_gpu),
            allocatable_gpus=node.allocatable,
            requested_gpus=node.requested,
            free_gpus=node.free,
            ready=node.ready,
            schedulable=node.schedulable,
        )


@strawberry.type(description="Optional components found installed in the cluster.")
class ClusterIntegrations:
    """Each flag is true when the cluster serves the component's custom resource."""

    service_monitor: bool = strawberry.field(
        description="Prometheus Operator (`servicemonitors.monitoring.coreos.com`)."
    )
    pod_autoscaler: bool = strawberry.field(
        description="AIBrix autoscaling (`podautoscalers.autoscaling.aibrix.ai`)."
    )
    kserve: bool = strawberry.field(description="KServe (`inferenceservices.serving.kserve.io`).")
    gpu_operator: bool = strawberry.field(
        description="NVIDIA GPU operator (`clusterpolicies.nvidia.com`)."
    )
    kuberay: bool = strawberry.field(description="KubeRay (`rayclusters.ray.io`).")
    envoy_gateway: bool = strawberry.field(
        description="Envoy Gateway (`envoyproxies.gateway.envoyproxy.io`)."
    )
    custom_metrics: bool = strawberry.field(
        description="A custom metrics API (`custom.metrics.k8s.io`, e.g. prometheus-adapter): "
        "HorizontalPodAutoscalers can scale on pod metrics."
    )


@strawberry.type(description="Where modelplane runs models, and the GPUs it has right now.")
class ClusterStatus:
    """Runtime, Kubernetes version, namespace, integrations and GPU nodes, read now."""

    runtime: str = strawberry.field(description="`kubernetes` or `local`.")
    kubernetes_version: str | None = strawberry.field(
        description="API server version (kubernetes runtime only)."
    )
    namespace: str | None = strawberry.field(
        description="Namespace modelplane manages (kubernetes runtime only)."
    )
    integrations: ClusterIntegrations = strawberry.field(
        description="Optional components installed (all false on the local runtime)."
    )
    gpu_nodes: list[GpuNode] = strawberry.field(
        description="Nodes with `nvidia.com/gpu` allocatable, by GPU type and name."
    )
    total_gpus: int = strawberry.field(description="GPUs allocatable on all GPU nodes.")
    free_gpus: int = strawberry.field(description="GPUs free on all GPU nodes.")
    problems: list[str] = strawberry.field(
        description="Parts that could not be read (no permission, server unreachable)."
    )

    @classmethod
    def from_inventory(cls, inventory: ClusterInventory) -> ClusterStatus:
        """The API view of an inventory."""
        found = inventory.integrations
        return cls(
            runtime=inventory.kind,
            kubernetes_version=inventory.version,
            namespace=inventory.namespace,
            integrations=ClusterIntegrations(
                service_monitor=found.service_monitor,
                pod_autoscaler=found.pod_autoscaler,
                kserve=found.kserve,
                gpu_operator=found.gpu_operator,
                kuberay=found.kuberay,
                envoy_gateway=found.envoy_gateway,
                custom_metrics=found.custom_metrics,
            ),
            gpu_nodes=[GpuNode.from_facts(node) for node in inventory.nodes],
            total_gpus=sum(node.allocatable for node in inventory.nodes),
            free_gpus=sum(node.free for node in inventory.nodes),
            problems=list(inventory.problems),
        )


@strawberry.type(description="Bytes a model needs in all, for the chosen GPU count.")
class MemoryBreakdown:
    """Weights + KV cache + engine overhead."""

    weights_bytes: BigInt = strawberry.field(description="The weights as the engine holds them.")
    kv_cache_bytes: BigInt = strawberry.field(
        description="KV cache for `contextLength` x `batchSize` tokens, over all GPUs."
    )
    overhead_bytes: BigInt = strawberry.field(
        description="The engine's fixed cost per GPU (CUDA context, graphs, activations) "
        "times the GPU count."
    )
    total_bytes: BigInt = strawberry.field(description="The sum of the three.")


@strawberry.type(description="How a model fits one GPU type.")
class GpuFitRow:
    """One GPU type of the estimate."""

    gpu_type: str = strawberry.field(
        description="Product label of the cluster's nodes, or a catalogue name (`A100-80GB`)."
    )
    memory_bytes_per_gpu: BigInt = strawberry.field(description="Memory of each GPU.")
    usable_bytes_per_gpu: BigInt = strawberry.field(
        description="What the engine may use of it (vLLM: 90 %, `gpu_memory_utilization`)."
    )
    gpus_needed: int | None = strawberry.field(
        description="Smallest tensor parallel size (1, 2, 4, 8) that fits; null if 8 do not."
    )
    free_gpus: int = strawberry.field(
        description="Most GPUs of this type free on one schedulable, Ready node."
    )
    in_cluster: bool = strawberry.field(
        description="False for a catalogue type the cluster does not have."
    )
    fits_now: bool = strawberry.field(
        description="It fits and `gpusNeeded` GPUs are free on one node right now."
    )

    @classmethod
    def from_row(cls, row: FitRow) -> GpuFitRow:
        """The API view of an estimate row."""
        return cls(
            gpu_type=row.gpu_type,
            memory_bytes_per_gpu=BigInt(row.memory_bytes_per_gpu),
            usable_bytes_per_gpu=BigInt(row.usable_bytes_per_gpu),
            gpus_needed=row.gpus_needed,
            free_gpus=row.free_gpus,
            in_cluster=row.in_cluster,
            fits_now=row.fits_now,
        )


@strawberry.type(
    description=(
        "Estimated GPU memory to serve a model (weights + KV cache + engine overhead) "
        "against the GPU types of the cluster, or a catalogue of common GPUs when it has none."
    )
)
class GpuFit:
    """The outcome of gpuFit."""

    engine: InferenceEngineEnum = strawberry.field(description="The engine estimated for.")
    fits: bool = strawberry.field(
        description="The requested GPU type (or the best one) can hold the model on at most "
        "8 GPUs; always true for LITELLM_PROXY."
    )
    fits_now: bool = strawberry.field(
        description="It fits and enough GPUs of that type are free on one node right now."
    )
    gpu_type: str | None = strawberry.field(
        description="The requested GPU type, else the best: fits now, then fewest GPUs, then "
        "the smallest GPU; null for LITELLM_PROXY."
    )
    gpus_needed: int | None = strawberry.field(
        description="GPUs of `gpuType` needed (0 for LITELLM_PROXY); null when 8 do not fit."
    )
    context_length: int = strawberry.field(
        description="Tokens per sequence counted in the KV cache (default: min(model max, 4096))."
    )
    batch_size: int = strawberry.field(description="Concurrent sequences counted (default 1).")
    dtype: str | None = strawberry.field(
        description="Safetensors dtype the model is served in, e.g. BF16; null when unknown."
    )
    parameters: BigInt | None = strawberry.field(description="Parameter count, when known.")
    required_bytes: MemoryBreakdown = strawberry.field(
        description="What is needed for `gpusNeeded` GPUs (one when nothing fits)."
    )
    rows: list[GpuFitRow] = strawberry.field(description="One row per GPU type considered.")
    summary: str = strawberry.field(
        description='For a person, e.g. "needs 2 x A100-80GB (136.7 GiB); 1 free on the '
        'largest node".'
    )
    notes: list[str] = strawberry.field(
        description="Assumptions made where the model's facts were missing."
    )

    @classmethod
    def from_estimate(cls, fit: FitEstimate) -> GpuFit:
        """The API view of an estimate."""
        return cls(
            engine=InferenceEngineEnum(fit.engine.value),
            fits=fit.fits,
            fits_now=fit.fits_now,
            gpu_type=fit.chosen.gpu_type if fit.chosen else None,
            gpus_needed=fit.gpus_needed,
            context_length=fit.context_length,
            batch_size=fit.batch_size,
            dtype=fit.dtype,
            parameters=big(fit.parameters),
            required_bytes=MemoryBreakdown(
                weights_bytes=BigInt(fit.need.weights),
                kv_cache_bytes=BigInt(fit.need.kv_cache),
                overhead_bytes=BigInt(fit.need.overhead),
                total_bytes=BigInt(fit.need.total),
            ),
            rows=[GpuFitRow.from_row(row) for row in fit.rows],
            summary=fit.summary,
            notes=list(fit.notes),
        )


GpuFitResult = Annotated[
    GpuFit | ValidationError | NotFoundError,
    strawberry.union("GpuFitResult", description="The fit estimate, or why not."),
]
