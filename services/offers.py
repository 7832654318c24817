"""Refusals up front: what the runtime can never give an inference is refused at the mutation.

The organisation API checked "GPU node availability and capacity" and "required CRDs
presence" before deploying; without it a request no node can hold sat PENDING for ever, and a
feature whose custom resource is not served failed at the apply. :func:`refusal` is the pure
decision (table-tested in ``tests/test_fidelity_k8s.py``), fed by
:func:`~controllers.runtimes.inventory.read_offer` (one node list and API discovery; no pod
list, so it stays cheap per start). It answers the first refusal as an :class:`InvalidInput`
naming the field, before anything is written: the service then stores nothing and the
controller creates nothing.

*Can ever offer* means, on Kubernetes, the ``nvidia.com/gpu`` **allocatable** of one node (what
it has, used or not, cordoned or not: a busy node frees up, a cordoned one is uncordoned, so
neither is refused; the inference waits PENDING with the reason instead), among the nodes whose
``nvidia.com/gpu.product`` is the asked ``gpuType``. A cluster whose node autoscaler adds GPU
nodes on demand has none until it does: ``MODELPLANE_REFUSE_UNFIT_GPUS=false`` turns the GPU
refusal off there. On the **local** runtime the host is the one node: it can offer the GPUs
``nvidia-smi`` lists; on a host without ``nvidia-smi`` nothing is known (engines such as llama.cpp
run on the CPU, and the count only shapes vLLM's tensor parallelism), so GPU counts are not
refused there. What could not be read (a forbidden node list, failed discovery) is unknown and
refuses nothing.

Features: a pod-metric autoscaler (anything but ``cpu`` and ``memory``; the default
``num_requests_running`` included) needs AIBrix's PodAutoscaler CRD or a custom metrics API;
``serviceMonitor: true`` needs the Prometheus Operator's CRD; the local runtime has neither, and
runs one process per inference, so autoscaling there is refused too.
"""

from __future__ import annotations

from controllers.runtimes.inventory import ClusterOffer
from services.errors import InvalidInput
from storage.documents import InferenceSpec

RESOURCE_METRICS = frozenset({"cpu", "memory"})


def check_offer(spec: InferenceSpec, offer: ClusterOffer, *, refuse_gpus: bool = True) -> None:
    """Raise the :func:`refusal` of ``spec``, if any."""
    refused = refusal(spec, offer, refuse_gpus=refuse_gpus)
    if refused is not None:
        raise refused


def refusal(
    spec: InferenceSpec, offer: ClusterOffer, *, refuse_gpus: bool = True
) -> InvalidInput | None:
    """The first thing in ``spec`` the runtime can never give, or None."""
    if spec.engine is None:
        return None  # a gateway route: no workload
    if refuse_gpus:
        found = _gpu_refusal(spec, offer)
        if found is not None:
            return found
    return _feature_refusal(spec, offer)


def _gpu_refusal(spec: InferenceSpec, offer: ClusterOffer) -> InvalidInput | None:
    if spec.gpu <= 0 or offer.gpu_nodes is None:
        return None
    where = "this host" if offer.kind == "local" else "the cluster"
    nodes = offer.gpu_nodes
    kind = ""
    if spec.gpu_type:
        nodes = tuple(node for node in nodes if node.gpu_type == spec.gpu_type)
        if not nodes:
            present = sorted({node.gpu_type for node in offer.gpu_nodes})
            return InvalidInput(
                "input.gpuType",
                f"no node of {where} has GPU type {spec.gpu_type!r} (label "
                f"nvidia.com/gpu.product); present: {', '.join(present) or 'no GPU nodes'}",
            )
        kind = f" {spec.gpu_type}"
    most = max((node.allocatable for node in nodes), default=0)
    if spec.gpu > most:
        return InvalidInput(
            "input.resources.gpu",
            f"{spec.gpu}{kind} GPUs per replica, but the largest node of {where} has {most} "
            "allocatable: no node can ever hold one replica",
        )
    return None


def _local_refusal(spec: InferenceSpec) -> InvalidInput | None:
    if spec.autoscaling is not None:
        return InvalidInput(
            "input.autoscaling",
            "the local runtime runs one process per inference: autoscaling needs the "
            "kubernetes runtime",
        )
    if spec.service_monitor:
        return InvalidInput(
            "input.serviceMonitor",
            "the local runtime has no Prometheus Operator: a ServiceMonitor needs the "
            "kubernetes runtime with CRD servicemonitors.monitoring.coreos.com",
        )
    return None


def _feature_refusal(spec: InferenceSpec, offer: ClusterOffer) -> InvalidInput | None:
    if offer.kind == "local":
        return _local_refusal(spec)
    scaling = spec.autoscaling
    found = offer.integrations
    if found is None:
        return None
    if (
        scaling is not None
        and scaling.target_metric not in RESOURCE_METRICS
        and not (found.pod_autoscaler or found.custom_metrics)
    ):
        return InvalidInput(
            "input.autoscaling.targetMetric",
            f"autoscaling on the pod metric {scaling.target_metric!r} needs AIBrix (CRD "
            "podautoscalers.autoscaling.aibrix.ai) or a custom metrics API "
            "(custom.metrics.k8s.io), and the cluster serves neither; install one, or scale on "
            "cpu or memory",
        )
    if spec.service_monitor and not found.service_monitor:
        return InvalidInput(
            "input.serviceMonitor",
            "the Prometheus Operator's CRD servicemonitors.monitoring.coreos.com is not "
            "installed; install it, or leave serviceMonitor null",
        )
    return None
