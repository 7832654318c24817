"""Inference input checks: the request as the resolver hands it over, its scalar and placement
bounds, and a user's manifest policed into objects we may apply.

Pure functions (no I/O): :class:`~services.inference.InferenceService` calls them before
anything is written, so bad input is a ValidationError naming the field and nothing is stored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from controllers.inference.commands import EnginePlanError, check_served_name
from services import validation as v
from services.errors import InvalidInput
from services.manifests import ManifestPolicy, check_document, parse_documents
from storage.documents import (
    AutoscalingSpec,
    EnvVarSpec,
    InferenceEngine,
    InferenceSpec,
    LiteLLMSpec,
    Resources,
    Toleration,
)

MAX_REPLICAS = 64
MAX_PAGE = 100
MAX_LOG_LINES = 5000
MAX_CONTEXT = 10_000_000
MAX_MANIFEST_BYTES = 256 * 1024
MAX_SCALE_DOWN_DELAY = 3600
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
TOLERATION_OPERATORS = ("Equal", "Exists")
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
LITELLM_MODES = ("WILDCARD", "SINGLE", "CONFIG")
_IMAGE = re.compile(r"^[a-z0-9]([a-z0-9._/:@-]*[a-zA-Z0-9_.-])?$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class Described:
    """createInferenceFromManifest's ``displayName``, ``description`` and ``tags`` (the
    organisation API's YAML endpoint keeps them); None: not given."""

    display_name: str | None = None
    description: str | None = None
    tags: Sequence[str] | None = None

    def checked(self) -> dict[str, Any]:
        """The document's fields, checked as a model's are (errors name the argument)."""
        return {
            "display_name": v.check_text(
                "displayName", self.display_name, limit=v.MAX_DISPLAY_NAME
            ),
            "description": v.check_text(
                "description", self.description, limit=v.MAX_DESCRIPTION_BYTES, in_bytes=True
            ),
            "tags": None if self.tags is None else v.check_tags("tags", self.tags),
        }


@dataclass(slots=True)
class InferenceRequest:
    """``InferenceInput`` as the resolver hands it over; None means "the default"."""

    engine: InferenceEngine | None = None
    image: str | None = None
    image_pull_policy: str | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    engine_args: list[str] | None = None
    replicas: int | None = None
    cpu: str | None = None
    memory: str | None = None
    gpu: int | None = None
    gpu_type: str | None = None
    node_selector: dict[str, str] | None = None
    tolerations: list[Toleration] | None = None
    port: int | None = None
    health_path: str | None = None
    initial_delay_seconds: int | None = None
    env: list[EnvVarSpec] = field(default_factory=list)
    autoscaling: AutoscalingSpec | None = None
    litellm: LiteLLMSpec | None = None
    ollama_model: str | None = None
    upstream_timeout_seconds: float | None = None
    context_length: int | None = None
    service_monitor: bool | None = None


DEFAULT_CPU = "1"
DEFAULT_MEMORY = "2Gi"
DEFAULT_GPU = 1
RESOURCE_FIELDS = ("cpu", "memory", "gpu")


@dataclass(frozen=True, slots=True)
class ChosenResources:
    """Compute per replica for one start, and which fields the request gave."""

    cpu: str
    memory: str
    gpu: int
    given: list[str]


def choose_resources(
    request: InferenceRequest, model: Resources, engine: InferenceEngine | None
) -> ChosenResources:
    """Per field: the request's value, else the model's ``resources`` (the Playground API:
    they are the inference service's requirements), else the organisation API's default (cpu
    1, memory 2Gi, 1 GPU; no GPU for Ollama, which runs on the CPU unless asked). Per field,
    not the whole object, because each is optional on both sides: ``resources: {gpu: 0}`` to
    try a model on CPU keeps the model's memory. A proxy or a route serves no weights, so the
    model's GPUs are not its requirement (0 unless given)."""
    cpu = v.check_cpu("input.resources.cpu", request.cpu)
    memory = v.check_memory("input.resources.memory", request.memory)
    gpu = v.check_gpu("input.resources.gpu", request.gpu)
    serves_weights = engine not in {None, InferenceEngine.LITELLM_PROXY}
    on_gpu = serves_weights and engine is not InferenceEngine.OLLAMA  # Ollama: the CPU unless asked
    if gpu is None:
        model_gpu = model.gpu if serves_weights else None
        gpu = model_gpu if model_gpu is not None else (DEFAULT_GPU if on_gpu else 0)
    asked = (request.cpu, request.memory, request.gpu)
    given = [name for name, value in zip(RESOURCE_FIELDS, asked, strict=True) if value is not None]
    return ChosenResources(
        cpu=cpu or model.cpu or DEFAULT_CPU,
        memory=memory or model.memory or DEFAULT_MEMORY,
        gpu=gpu,
        given=given,
    )


def check_scalars(request: InferenceRequest) -> None:
    """Replicas, port, delay, image, pull policy, health path and timeout."""
    if request.replicas is not None and not 1 <= request.replicas <= MAX_REPLICAS:
        raise InvalidInput("input.replicas", f"replicas must be between 1 and {MAX_REPLICAS}")
    if request.port is not None and not 1 <= request.port <= 65535:
        raise InvalidInput("input.port", "port must be between 1 and 65535")
    if request.initial_delay_seconds is not None and not 0 <= request.initial_delay_seconds <= 3600:
        raise InvalidInput("input.initialDelaySeconds", "initialDelaySeconds must be 0 to 3600")
    if request.image is not None and not _IMAGE.match(request.image):
        raise InvalidInput("input.image", f"{request.image!r} is not an image reference")
    if request.image_pull_policy is not None and request.image_pull_policy not in PULL_POLICIES:
        raise InvalidInput(
            "input.imagePullPolicy",
            f"imagePullPolicy must be one of {', '.join(PULL_POLICIES)}",
        )
    if request.health_path is not None and not request.health_path.startswith("/"):
        raise InvalidInput("input.healthPath", "healthPath must start with /")
    if request.context_length is not None and not 1 <= request.context_length <= MAX_CONTEXT:
        raise InvalidInput(
            "input.contextLength", f"contextLength must be between 1 and {MAX_CONTEXT:,}"
        )
    if (
        request.upstream_timeout_seconds is not None
        and not 0 < request.upstream_timeout_seconds <= 3600
    ):
        raise InvalidInput(
            "input.upstreamTimeoutSeconds",
            "upstreamTimeoutSeconds must be over 0 and at most 3600",
        )


def check_placement(request: InferenceRequest) -> None:
    """Node selector, tolerations, autoscaling bounds and the LiteLLM mode."""
    for key in request.node_selector or {}:
        if not _LABEL_KEY.match(key):
            raise InvalidInput("input.nodeSelector", f"{key!r} is not a label key")
    for index, toleration in enumerate(request.tolerations or []):
        if toleration.operator not in TOLERATION_OPERATORS:
            raise InvalidInput(
                f"input.tolerations[{index}].operator", "operator must be Equal or Exists"
            )
        if toleration.effect is not None and toleration.effect not in TOLERATION_EFFECTS:
            raise InvalidInput(
                f"input.tolerations[{index}].effect",
                f"effect must be one of {', '.join(TOLERATION_EFFECTS)}",
            )
    scaling = request.autoscaling
    if scaling is not None:
        if (
            scaling.min_replicas < 1
            or scaling.max_replicas > MAX_REPLICAS
            or scaling.min_replicas > scaling.max_replicas
        ):
            raise InvalidInput(
                "input.autoscaling", f"need 1 <= minReplicas <= maxReplicas <= {MAX_REPLICAS}"
            )
        if not scaling.target_metric or scaling.target_value <= 0:
            raise InvalidInput(
                "input.autoscaling.targetValue",
                "targetMetric and a positive targetValue are required",
            )
        if not 0 <= scaling.scale_down_delay_seconds <= MAX_SCALE_DOWN_DELAY:
            raise InvalidInput(
                "input.autoscaling.scaleDownDelaySeconds",
                f"scaleDownDelaySeconds must be between 0 and {MAX_SCALE_DOWN_DELAY}",
            )
    if request.litellm is not None and request.litellm.mode not in LITELLM_MODES:
        raise InvalidInput("input.litellm.mode", f"mode must be one of {', '.join(LITELLM_MODES)}")


def request_from(spec: InferenceSpec) -> InferenceRequest:
    """The request that reproduces a stored spec (toggling back on), except the resources it
    took from the model: those are the model's again (:func:`choose_resources`)."""
    given = set(spec.resources_given)
    return InferenceRequest(
        engine=spec.engine,
        image=spec.image,
        image_pull_policy=spec.image_pull_policy,
        command=spec.command,
        args=spec.args,
        engine_args=spec.engine_args or None,
        replicas=spec.replicas,
        cpu=spec.cpu if "cpu" in given else None,
        memory=spec.memory if "memory" in given else None,
        gpu=spec.gpu if "gpu" in given else None,
        gpu_type=spec.gpu_type,
        node_selector=spec.node_selector,
        tolerations=spec.tolerations,
        port=spec.port,
        health_path=spec.health_path,
        initial_delay_seconds=spec.initial_delay_seconds,
        env=spec.env,
        autoscaling=spec.autoscaling,
        litellm=spec.litellm,
        ollama_model=spec.ollama_model,
        upstream_timeout_seconds=spec.upstream_timeout_seconds,
        context_length=spec.context_length,
        service_monitor=spec.service_monitor,
    )


def gpus_of(objects: list[dict[str, Any]]) -> int:
    total = 0
    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        for container in obj["spec"]["template"]["spec"].get("containers") or []:
            limits = (container.get("resources") or {}).get("limits") or {}
            total += int(str(limits.get("nvidia.com/gpu", 0)) or 0)
    return total


def check_manifest(
    text: str, *, namespace: str, name: str, policy: ManifestPolicy | None = None
) -> tuple[list[dict[str, Any]], str, int]:
    """Parse and police a user's manifest (:mod:`services.manifests`): one Deployment, at most
    one Service, only allow-listed fields. Objects are renamed to ``name``, forced into
    ``namespace`` and never mount a service account token. Returns the objects, the served
    model's name (annotation ``modelplane.io/model-name``, else the Deployment's name) and
    the port."""
    policy = policy or ManifestPolicy()
    deployments: list[dict[str, Any]] = []
    services: list[dict[str, Any]] = []
    position = 0
    for index, doc in enumerate(parse_documents(text)):
        kind = check_document(doc, index, policy)
        (deployments if kind == "Deployment" else services).append(doc)
        position = index if kind == "Deployment" else position
    if len(deployments) != 1:
        raise InvalidInput(
            "manifest", f"exactly one Deployment is needed; found {len(deployments)}"
        )
    if len(services) > 1:
        raise InvalidInput("manifest", f"at most one Service is allowed; found {len(services)}")
    deployment = deployments[0]
    pod = deployment["spec"]["template"]["spec"]
    pod["automountServiceAccountToken"] = False
    original = str(deployment["metadata"].get("name") or "")
    annotations = deployment["metadata"].get("annotations") or {}
    model_name = str(annotations.get("modelplane.io/model-name") or original)
    if not model_name:
        raise InvalidInput("manifest.metadata.name", "the Deployment needs a name")
    _check_served_names(pod, model_name, f"manifest[{position}]")
    for obj in (deployment, *services):
        obj["metadata"]["name"] = name
        obj["metadata"]["namespace"] = namespace
        obj["metadata"].pop("resourceVersion", None)
        obj["metadata"].pop("uid", None)
        obj.pop("status", None)
    port = _port_of(pod, services)
    return [deployment, *services], model_name, port


def _check_served_names(pod: dict[str, Any], model_name: str, where: str) -> None:
    """A container that runs vLLM serves the model's name (the gateway routes on it)."""
    for index, container in enumerate(pod["containers"]):
        try:
            check_served_name(
                [str(word) for word in container.get("command") or []],
                [str(word) for word in container.get("args") or []],
                model_name,
                image=container.get("image"),
                always=False,
            )
        except EnginePlanError as exc:
            key = exc.field.removeprefix("input.")
            raise InvalidInput(
                f"{where}.spec.template.spec.containers[{index}].{key}", exc.message
            ) from None


def _port_of(pod: dict[str, Any], services: list[dict[str, Any]]) -> int:
    """The Service's first port, else the first container port, else 8000."""
    port = 8000
    if services:
        ports = (services[0].get("spec") or {}).get("ports") or []
        if ports and isinstance(ports[0], dict) and isinstance(ports[0].get("port"), int):
            port = int(ports[0]["port"])
    else:
        container_ports = pod["containers"][0].get("ports") or []
        if container_ports and isinstance(container_ports[0].get("containerPort"), int):
            port = int(container_ports[0]["containerPort"])
    return port
