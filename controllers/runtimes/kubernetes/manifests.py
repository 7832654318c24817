"""The Kubernetes objects of a managed inference, rendered from an engine plan (pure).

One Deployment (named after the model, :mod:`services.naming`; GPUs as ``nvidia.com/gpu``
limits, the weights volume, init steps, a readiness probe on the engine's health path), one
ClusterIP Service on the engine's port, a ConfigMap when the engine reads a config file, and --
only when the cluster has their CRDs -- a ServiceMonitor and an autoscaler (AIBrix
PodAutoscaler if installed, else an HPA). Every object carries our labels
(docs/architecture.md decision 2) with the inference id as owner, plus AIBrix's
``model.aibrix.ai/name`` (and, on the Deployment and its pods, ``model.aibrix.ai/port``), and is
written with server-side apply, so rendering the same inference twice applies nothing
new. With an autoscaler the Deployment leaves ``replicas`` to it instead of fighting it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from controllers.inference.engines import CONFIG_MOUNT, OLLAMA_HOME, EnginePlan
from controllers.runtimes.kubernetes.labels import OWNER_ID, owned_labels
from storage.documents import AutoscalingSpec, EnvVarSpec, InferenceDocument, TargetKind

COMPONENT = "inference"
MODEL_ID = "modelplane.io/model-id"
GENERATION = "modelplane.io/generation"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
ENGINE_CONTAINER = "engine"
AIBRIX_MODEL = "model.aibrix.ai/name"
"""The label AIBrix's gateway and autoscaler find a model's pods by (the served model name)."""
AIBRIX_PORT = "model.aibrix.ai/port"
"""The label telling AIBrix which port the engine serves (and exports metrics) on."""
AIBRIX_COOLDOWN = "autoscaling.aibrix.ai/scale-down-cooldown-window"
AIBRIX_KPA_DELAY = "kpa.autoscaling.aibrix.ai/scale-down-delay"
"""The scale-down delay under its current name and under the name AIBrix releases before the
layered autoscaler read (and the organisation API wrote); each release ignores the other."""
_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class Integrations:
    """Optional CRDs found in the cluster; objects for missing ones are not rendered."""

    service_monitor: bool = False
    aibrix: bool = False


def endpoint_for(inference: InferenceDocument, *, namespace: str, port: int) -> str:
    """The in-cluster OpenAI base URL of the inference's Service."""
    return f"http://{inference.name}.{namespace}.svc.cluster.local:{port}/v1"


def label_value(text: str) -> str:
    """``text`` as a label value: at most 63 of ``[A-Za-z0-9._-]``, alphanumeric at both ends."""
    cleaned = _LABEL_VALUE_BAD.sub("-", text)[:63]
    return cleaned.strip("-._")


def labels_for(inference: InferenceDocument) -> dict[str, str]:
    """Our labels, with the inference as owner, its model alongside, and the served model name
    as AIBrix reads it."""
    labels = owned_labels(inference.id, inference.organization_id, component=COMPONENT)
    if inference.model_id:
        labels[MODEL_ID] = inference.model_id
    served = label_value(inference.model_name)
    if served:
        labels[AIBRIX_MODEL] = served
    return labels


def _env(env: list[EnvVarSpec]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for var in env:
        if var.secret_name:
            out.append(
                {
                    "name": var.name,
                    "valueFrom": {"secretKeyRef": {"name": var.secret_name, "key": var.secret_key}},
                }
            )
        else:
            out.append({"name": var.name, "value": var.value or ""})
    return out


def _volumes(
    inference: InferenceDocument, plan: EnginePlan
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes, the engine's mounts and the init steps' mounts."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    init_mounts: list[dict[str, Any]] = []
    weights = plan.weights
    if weights is not None and weights.kind is TargetKind.PVC:
        volumes.append(
            {
                "name": "weights",
                "persistentVolumeClaim": {"claimName": weights.claim_name, "readOnly": True},
            }
        )
        mounts.append(
            {"name": "weights", "mountPath": weights.mount_path or weights.path, "readOnly": True}
        )
    elif weights is not None and weights.kind is TargetKind.LOCAL:
        volumes.append(
            {"name": "weights", "hostPath": {"path": weights.host_path, "type": "Directory"}}
        )
        mounts.append({"name": "weights", "mountPath": weights.path, "readOnly": True})
    elif weights is not None and weights.kind is TargetKind.S3:
        volumes.append({"name": "weights", "emptyDir": {}})
        mounts.append({"name": "weights", "mountPath": weights.path, "readOnly": True})
        init_mounts.append({"name": "weights", "mountPath": weights.path})
    if plan.engine.value == "OLLAMA":
        volumes.append({"name": "ollama", "emptyDir": {}})
        mounts.append({"name": "ollama", "mountPath": OLLAMA_HOME})
        init_mounts.append({"name": "ollama", "mountPath": OLLAMA_HOME})
    if plan.config_files:
        volumes.append({"name": "config", "configMap": {"name": f"{inference.name}-config"}})
        mounts.append({"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True})
    if plan.gpu > 0:
        # vLLM and NCCL need more shared memory than a container's default 64 MiB.
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})  # noqa: S108  a mount point in the pod
    return volumes, mounts, init_mounts


def _security() -> dict[str, Any]:
    """A container's security context (a fresh copy each: YAML would alias a shared one)."""
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }


def _placement(
    inference: InferenceDocument, plan: EnginePlan
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], dict[str, str]]:
    """Resource requests and limits, tolerations and node selector (GPUs add their own)."""
    spec = inference.spec
    requests: dict[str, Any] = {"cpu": spec.cpu, "memory": spec.memory}
    limits: dict[str, Any] = {"memory": spec.memory}
    tolerations = [t.model_dump(exclude_none=True) for t in spec.tolerations]
    node_selector = dict(spec.node_selector)
    if plan.gpu > 0:
        requests[GPU_RESOURCE] = str(plan.gpu)
        limits[GPU_RESOURCE] = str(plan.gpu)
        if not any(t.get("key") == GPU_RESOURCE for t in tolerations):
            tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
        if spec.gpu_type:
            node_selector.setdefault(GPU_PRODUCT_LABEL, spec.gpu_type)
    return requests, limits, tolerations, node_selector


def _engine_container(
    inference: InferenceDocument,
    plan: EnginePlan,
    resources: dict[str, Any],
    mounts: list[dict[str, Any]],
) -> dict[str, Any]:
    """The engine's container: image, port, env, probes, mounts."""
    spec = inference.spec
    container: dict[str, Any] = {
        "name": ENGINE_CONTAINER,
        "image": plan.image,
        "imagePullPolicy": spec.image_pull_policy,
        "ports": [{"name": "http", "containerPort": plan.port, "protocol": "TCP"}],
        "env": _env(plan.env),
        "resources": resources,
        "readinessProbe": {
            "httpGet": {"path": plan.health_path, "port": plan.port},
            "initialDelaySeconds": spec.initial_delay_seconds,
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": plan.health_path, "port": plan.port},
            "initialDelaySeconds": spec.initial_delay_seconds + 120,
            "periodSeconds": 20,
            "failureThreshold": 6,
        },
        "volumeMounts": mounts,
        "securityContext": _security(),
    }
    if plan.command:
        container["command"] = plan.command
    if plan.args:
        container["args"] = plan.args
    return container


def _init_containers(
    inference: InferenceDocument, plan: EnginePlan, mounts: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The prepare steps (model pull, S3 sync) as init containers."""
    return [
        {
            "name": step.name,
            "image": step.image,
            "imagePullPolicy": inference.spec.image_pull_policy,
            "command": step.command,
            "env": _env(step.env),
            "volumeMounts": mounts,
            "securityContext": _security(),
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
        }
        for step in plan.prepare
    ]


def render_deployment(
    inference: InferenceDocument, plan: EnginePlan, *, namespace: str, autoscaled: bool
) -> dict[str, Any]:
    """The engine's Deployment."""
    labels = {**labels_for(inference), AIBRIX_PORT: str(plan.port)}
    volumes, mounts, init_mounts = _volumes(inference, plan)
    requests, limits, tolerations, node_selector = _placement(inference, plan)
    container = _engine_container(inference, plan, {"requests": requests, "limits": limits}, mounts)
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 30,
    }
    init_containers = _init_containers(inference, plan, init_mounts)
    if init_containers:
        pod_spec["initContainers"] = init_containers
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    generation = {GENERATION: str(inference.generation)}
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": {OWNER_ID: inference.id}},
        "strategy": {"type": "Recreate"} if plan.gpu > 0 else {"type": "RollingUpdate"},
        "template": {"metadata": {"labels": labels, "annotations": generation}, "spec": pod_spec},
    }
    if not autoscaled:
        deployment_spec["replicas"] = inference.spec.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": inference.name,
            "namespace": namespace,
            "labels": labels,
            "annotations": dict(generation),
        },
        "spec": deployment_spec,
    }


def render_service(inference: InferenceDocument, *, namespace: str, port: int) -> dict[str, Any]:
    """A ClusterIP Service in front of the engine's pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": inference.name,
            "namespace": namespace,
            "labels": labels_for(inference),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": {OWNER_ID: inference.id},
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def render_config(
    inference: InferenceDocument, plan: EnginePlan, *, namespace: str
) -> dict[str, Any] | None:
    """The ConfigMap of the engine's config files, if it reads any."""
    if not plan.config_files:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{inference.name}-config",
            "namespace": namespace,
            "labels": labels_for(inference),
        },
        "data": dict(plan.config_files),
    }


def render_service_monitor(inference: InferenceDocument, *, namespace: str) -> dict[str, Any]:
    """Prometheus Operator scraping of the engine's ``/metrics``."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {
            "name": inference.name,
            "namespace": namespace,
            "labels": labels_for(inference),
        },
        "spec": {
            "selector": {"matchLabels": {OWNER_ID: inference.id}},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}],
        },
    }


def render_autoscaler(
    inference: InferenceDocument, *, namespace: str, aibrix: bool
) -> dict[str, Any] | None:
    """An AIBrix PodAutoscaler (KPA, as the organisation API made it) when installed, else an
    autoscaling/v2 HPA, the scale-down delay as its stabilisation window; None without
    autoscaling."""
    scaling = inference.spec.autoscaling
    if scaling is None:
        return None
    metadata: dict[str, Any] = {
        "name": inference.name,
        "namespace": namespace,
        "labels": labels_for(inference),
    }
    if aibrix:
        return _pod_autoscaler(inference, scaling, metadata)
    return _horizontal_autoscaler(inference, scaling, metadata)


def _target(inference: InferenceDocument) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": inference.name}


def _pod_autoscaler(
    inference: InferenceDocument, scaling: AutoscalingSpec, metadata: dict[str, Any]
) -> dict[str, Any]:
    delay = f"{scaling.scale_down_delay_seconds}s"
    metadata["annotations"] = {AIBRIX_COOLDOWN: delay, AIBRIX_KPA_DELAY: delay}
    return {
        "apiVersion": "autoscaling.aibrix.ai/v1alpha1",
        "kind": "PodAutoscaler",
        "metadata": metadata,
        "spec": {
            "scaleTargetRef": _target(inference),
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "scalingStrategy": "KPA",
            "metricsSources": [
                {
                    "metricSourceType": "pod",
                    "protocolType": "http",
                    "port": str(inference.spec.port),
                    "path": "/metrics",
                    "targetMetric": scaling.target_metric,
                    "targetValue": str(scaling.target_value),
                }
            ],
        },
    }


def _horizontal_autoscaler(
    inference: InferenceDocument, scaling: AutoscalingSpec, metadata: dict[str, Any]
) -> dict[str, Any]:
    if scaling.target_metric in {"cpu", "memory"}:
        metric: dict[str, Any] = {
            "type": "Resource",
            "resource": {
                "name": scaling.target_metric,
                "target": {"type": "Utilization", "averageUtilization": scaling.target_value},
            },
        }
    else:
        metric = {
            "type": "Pods",
            "pods": {
                "metric": {"name": scaling.target_metric},
                "target": {"type": "AverageValue", "averageValue": str(scaling.target_value)},
            },
        }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata,
        "spec": {
            "scaleTargetRef": _target(inference),
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [metric],
            "behavior": {
                "scaleDown": {"stabilizationWindowSeconds": scaling.scale_down_delay_seconds}
            },
        },
    }


def render_all(
    inference: InferenceDocument,
    plan: EnginePlan,
    *,
    namespace: str,
    integrations: Integrations,
) -> list[dict[str, Any]]:
    """Every object of the inference, in apply order (config before the pods that read it)."""
    autoscaler = render_autoscaler(inference, namespace=namespace, aibrix=integrations.aibrix)
    objects: list[dict[str, Any]] = []
    config = render_config(inference, plan, namespace=namespace)
    if config is not None:
        objects.append(config)
    objects.append(
        render_deployment(inference, plan, namespace=namespace, autoscaled=autoscaler is not None)
    )
    objects.append(render_service(inference, namespace=namespace, port=plan.port))
    if integrations.service_monitor and inference.spec.service_monitor is not False:
        objects.append(render_service_monitor(inference, namespace=namespace))
    if autoscaler is not None:
        objects.append(autoscaler)
    return objects
