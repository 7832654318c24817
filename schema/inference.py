"""GraphQL types of inference services: the Inference view, its input, and result unions."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated

import strawberry

from schema.cluster import GpuFit
from schema.enums import InferenceEngineEnum, InferencePhaseEnum
from schema.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from schema.workload_status import (
    AutoscalingStatus,
    DeploymentStatus,
    autoscaling_view,
    deployment_view,
)
from storage.documents import AutoscalingSpec, InferenceDocument, InferencePhase


@strawberry.type(description="One entry of an inference's phase timeline.")
class PhaseEntry:
    """A phase and when it was entered."""

    phase: InferencePhaseEnum = strawberry.field(description="The phase entered.")
    entered_at: datetime = strawberry.field(description="When (UTC).")
    reason: str | None = strawberry.field(description="Short machine-readable cause.")
    message: str | None = strawberry.field(description="What a person needs to know.")


@strawberry.type(description="An environment variable of the engine: a value or a Secret key.")
class EnvVar:
    """Env entry (secret values are never shown: only the reference)."""

    name: str = strawberry.field(description="Variable name.")
    value: str | None = strawberry.field(description="Literal value, if not from a Secret.")
    secret_name: str | None = strawberry.field(description="Secret holding the value.")
    secret_key: str | None = strawberry.field(description="Key inside that Secret.")


@strawberry.type(description="Replica bounds and the metric that moves between them.")
class Autoscaling:
    """Autoscaling as asked for."""

    min_replicas: int = strawberry.field(description="Lower bound.")
    max_replicas: int = strawberry.field(description="Upper bound.")
    target_metric: str = strawberry.field(description="`cpu`, `memory`, or a pod metric name.")
    target_value: int = strawberry.field(
        description="Target utilisation percent (cpu/memory) or average value."
    )
    scale_down_delay_seconds: int = strawberry.field(
        description="Seconds the load must stay low before a replica is removed."
    )

    @classmethod
    def from_spec(cls, scaling: AutoscalingSpec | None) -> Autoscaling | None:
        """The API view of a stored autoscaling spec (None: no autoscaling)."""
        if scaling is None:
            return None
        return cls(
            min_replicas=scaling.min_replicas,
            max_replicas=scaling.max_replicas,
            target_metric=scaling.target_metric,
            target_value=scaling.target_value,
            scale_down_delay_seconds=scaling.scale_down_delay_seconds,
        )


@strawberry.type(description="What an inference runs, with the defaults filled in.")
class InferenceSpecView:
    """The stored spec."""

    engine: InferenceEngineEnum | None = strawberry.field(
        description="Engine; null for a REMOTE_API model's gateway route."
    )
    image: str | None = strawberry.field(description="Image; null: the engine's default.")
    command: list[str] | None = strawberry.field(description="Command override.")
    args: list[str] | None = strawberry.field(description="Arguments override.")
    engine_args: list[str] = strawberry.field(
        description="Flags appended to the VLLM command line modelplane builds (empty: none)."
    )
    replicas: int = strawberry.field(description="Replicas (without autoscaling).")
    cpu: str = strawberry.field(description="CPU request.")
    memory: str = strawberry.field(description="Memory request and limit.")
    gpu: int = strawberry.field(description="`nvidia.com/gpu` per replica.")
    gpu_type: str | None = strawberry.field(description="Required `nvidia.com/gpu.product`.")
    port: int = strawberry.field(description="Port the engine listens on.")
    initial_delay_seconds: int = strawberry.field(description="Delay before readiness checks.")
    env: list[EnvVar] = strawberry.field(description="Extra environment.")
    autoscaling: Autoscaling | None = strawberry.field(description="Autoscaling, if asked.")
    service_monitor: bool | None = strawberry.field(
        description="ServiceMonitor: true required, false never, null when installed."
    )


@strawberry.type(description="An inference service: a model served by an engine, or a route.")
class Inference:
    """Desired state and observed status of one inference."""

    id: strawberry.ID = strawberry.field(description="Short random id, e.g. `inf-a3k9x`.")
    model_id: strawberry.ID | None = strawberry.field(
        description="The served model; null for an unmanaged inference from a manifest."
    )
    model_name: str = strawberry.field(
        description="The name clients send as `model` (vLLM's `--served-model-name`)."
    )
    name: str = strawberry.field(description="Kubernetes object name / local process key.")
    managed: bool = strawberry.field(
        description="False for manifests applied as is, and for labelled objects without a record."
    )
    display_name: str | None = strawberry.field(
        description="Human-readable name given to createInferenceFromManifest; null when none."
    )
    description: str | None = strawberry.field(
        description="Description given to createInferenceFromManifest; null when none."
    )
    tags: list[str] | None = strawberry.field(
        description="Tags given to createInferenceFromManifest; null when none."
    )
    runtime: str = strawberry.field(description="`kubernetes` or `local`.")
    generation: int = strawberry.field(
        description="The spec's version: bumped by every start of it and every updateInference."
    )
    observed_generation: int = strawberry.field(
        description=(
            "The generation the controller last applied; equal to `generation` once an "
            "update reached the workload (0: nothing applied yet)."
        )
    )
    enabled: bool = strawberry.field(description="False after stopInference.")
    phase: InferencePhaseEnum = strawberry.field(description="Lifecycle phase.")
    reason: str | None = strawberry.field(
        description="Why, in one word: InsufficientGPU, ImagePullBackOff, OOMKilled, ..."
    )
    message: str | None = strawberry.field(
        description=(
            "Why, for a person: e.g. `insufficient nvidia.com/gpu (needs 2, largest free 1)`."
        )
    )
    replicas: int = strawberry.field(description="Replicas wanted.")
    ready_replicas: int = strawberry.field(description="Replicas answering their health check.")
    endpoint: str | None = strawberry.field(
        description="OpenAI-compatible base URL (cluster URL or loopback); null unless up."
    )
    ready: bool = strawberry.field(
        description=(
            "True when it answers requests: enabled and RUNNING (the ModelAPI's `status.ready`)."
        )
    )
    deployment: DeploymentStatus | None = strawberry.field(
        description=(
            "The workload's replicas and conditions; null when nothing was observed (a "
            "REMOTE_API route has no workload; a stopped inference none left)."
        )
    )
    autoscaling: AutoscalingStatus | None = strawberry.field(
        description="Current and desired replicas against the bounds; null without autoscaling."
    )
    phase_history: list[PhaseEntry] = strawberry.field(
        description="Phases entered, oldest first, with timestamps (time in each phase)."
    )
    spec: InferenceSpecView = strawberry.field(description="What it runs.")
    created_at: datetime = strawberry.field(description="Creation time (UTC).")
    updated_at: datetime = strawberry.field(description="Last change (UTC).")

    @classmethod
    def from_document(cls, doc: InferenceDocument) -> Inference:
        """The API view of a stored (or discovered) inference."""
        return cls(
            id=strawberry.ID(doc.id),
            model_id=strawberry.ID(doc.model_id) if doc.model_id else None,
            model_name=doc.model_name,
            name=doc.name,
            managed=doc.managed,
            display_name=doc.display_name,
            description=doc.description,
            tags=list(doc.tags) if doc.tags is not None else None,
            runtime=doc.runtime,
            generation=doc.generation,
            observed_generation=doc.observed_generation,
            enabled=doc.enabled,
            phase=InferencePhaseEnum(doc.phase.value),
            reason=doc.reason,
            message=doc.message,
            replicas=doc.replicas,
            ready_replicas=doc.ready_replicas,
            endpoint=doc.endpoint,
            ready=doc.enabled and doc.phase is InferencePhase.RUNNING,
            deployment=deployment_view(doc),
            autoscaling=autoscaling_view(doc),
            phase_history=[
                PhaseEntry(
                    phase=InferencePhaseEnum(entry.phase.value),
                    entered_at=entry.entered_at,
                    reason=entry.reason,
                    message=entry.message,
                )
                for entry in doc.phase_history
            ],
            spec=_spec_view(doc),
            created_at=doc.created_at,
            updated_at=doc.updated_at,
        )


def _spec_view(doc: InferenceDocument) -> InferenceSpecView:
    spec = doc.spec
    return InferenceSpecView(
        engine=InferenceEngineEnum(spec.engine.value) if spec.engine else None,
        image=spec.image,
        command=spec.command,
        args=spec.args,
        engine_args=list(spec.engine_args),
        replicas=spec.replicas,
        cpu=spec.cpu,
        memory=spec.memory,
        gpu=spec.gpu,
        gpu_type=spec.gpu_type,
        port=spec.port,
        initial_delay_seconds=spec.initial_delay_seconds,
        env=[
            EnvVar(
                name=var.name,
                value=var.value,
                secret_name=var.secret_name,
                secret_key=var.secret_key,
            )
            for var in spec.env
        ],
        autoscaling=Autoscaling.from_spec(spec.autoscaling),
        service_monitor=spec.service_monitor,
    )


@strawberry.type(description="One page of inferences and the number of all matches.")
class InferencePage:
    """A `limit`/`offset` page: stored inferences newest first, then discovered ones."""

    total: int = strawberry.field(description="Matches across all pages.")
    items: list[Inference] = strawberry.field(description="This page.")


@strawberry.input(description="An environment variable: give `value`, or `secretName`+`secretKey`.")
class EnvVarInput:
    """Env entry."""

    name: str = strawberry.field(
        description="Variable name (`[A-Za-z_][A-Za-z0-9_]*`, at most 128 characters)."
    )
    value: str | None = strawberry.field(
        default=None, description="Literal value (at most 16 KiB, no NUL)."
    )
    secret_name: str | None = strawberry.field(
        default=None,
        description="The model's own credentials Secret (`<modelId>-credentials`), the only "
        "Secret an inference may read.",
    )
    secret_key: str | None = strawberry.field(default=None, description="Key in that Secret.")


@strawberry.input(description="A Kubernetes toleration.")
class TolerationInput:
    """Toleration."""

    key: str | None = strawberry.field(default=None, description="Taint key; null matches all.")
    operator: str = strawberry.field(default="Equal", description="`Equal` or `Exists`.")
    value: str | None = strawberry.field(default=None, description="Taint value (Equal).")
    effect: str | None = strawberry.field(
        default=None, description="`NoSchedule`, `PreferNoSchedule` or `NoExecute`; null: all."
    )


@strawberry.input(
    description=(
        "Compute per replica. Each field left null is the model's `resources` (they are the "
        "inference's requirements), else the default: cpu `1`, memory `2Gi`, 1 GPU. Per field: "
        "`{gpu: 0}` keeps the model's cpu and memory."
    )
)
class InferenceResourcesInput:
    """Resources."""

    cpu: str | None = strawberry.field(
        default=None, description="CPU request; null: the model's, else `1`."
    )
    memory: str | None = strawberry.field(
        default=None, description="Memory request and limit; null: the model's, else `2Gi`."
    )
    gpu: int | None = strawberry.field(
        default=None,
        description=(
            "`nvidia.com/gpu` per replica; null: the model's, else 1 (0 for LITELLM_PROXY, "
            "OLLAMA and routes: a proxy or a route serves no weights, and Ollama runs on the CPU "
            "unless given)."
        ),
    )


@strawberry.input(
    description=(
        "Scale between bounds on a metric: an AIBrix PodAutoscaler when AIBrix is installed, "
        "else a HorizontalPodAutoscaler. The defaults are the organisation API's: "
        "`num_requests_running` at 40, 1 to 8 replicas, 180 s before scaling down (`{}` takes "
        "them all). A pod metric needs AIBrix or a custom metrics API in the cluster; without "
        "either it is refused (use `cpu` or `memory`)."
    )
)
class AutoscalingInput:
    """Autoscaling."""

    min_replicas: int = strawberry.field(default=1, description="Lower bound (>= 1).")
    max_replicas: int = strawberry.field(default=8, description="Upper bound (<= 64).")
    target_metric: str = strawberry.field(
        default="num_requests_running",
        description="`cpu`, `memory`, or a pod metric name (default `num_requests_running`).",
    )
    target_value: int = strawberry.field(
        default=40,
        description="Utilisation percent for cpu/memory, else the average value (default 40).",
    )
    scale_down_delay_seconds: int = strawberry.field(
        default=180,
        description="Seconds the load must stay low before a replica is removed (0 to 3600, "
        "default 180).",
    )


@strawberry.enum(name="LiteLLMMode", description="How a LITELLM_PROXY routes.")
class LiteLLMModeEnum(Enum):
    """Proxy modes."""

    WILDCARD = strawberry.enum_value(
        "WILDCARD",
        description="Every model name to the REMOTE_API model's upstream (`model`: `provider/*`).",
    )
    SINGLE = strawberry.enum_value(
        "SINGLE", description="Only this model's name, to one upstream model (`model`)."
    )
    CONFIG = strawberry.enum_value("CONFIG", description="Your own LiteLLM config YAML.")


@strawberry.input(description="LITELLM_PROXY settings.")
class LiteLLMInput:
    """Proxy settings."""

    mode: LiteLLMModeEnum = strawberry.field(
        default=LiteLLMModeEnum.WILDCARD, description="Routing mode (default WILDCARD)."
    )
    model: str | None = strawberry.field(
        default=None,
        description=(
            "LiteLLM's model, provider-prefixed. SINGLE: one model, e.g. `ollama/smollm2:135m` "
            "(default `openai/<name>`). WILDCARD: `provider/*`, e.g. `anthropic/*`, or `*` "
            "(the client names the provider; default `openai/*`). Not with CONFIG."
        ),
    )
    config_yaml: str | None = strawberry.field(
        default=None, description="CONFIG: the full config (needs a `model_list`)."
    )
    master_key_secret_name: str | None = strawberry.field(
        default=None, description="Secret holding the proxy's master key (clients' key)."
    )
    master_key_secret_key: str | None = strawberry.field(
        default=None, description="Key in that Secret (default `api-key`)."
    )


@strawberry.input(
    description=(
        "How to serve a model. Resources not given are the model's `resources`; other "
        "defaults follow the organisation API: engine VLLM (none for REMOTE_API models), 1 "
        "replica, cpu `1`, memory `2Gi`, 1 GPU, imagePullPolicy IfNotPresent, port 8000 (a "
        "free port on the local runtime), initialDelaySeconds 60."
    )
)
class InferenceInput:
    """startInference input."""

    engine: InferenceEngineEnum | None = strawberry.field(
        default=None,
        description=(
            "Engine; default VLLM (LOCAL models), CUSTOM (ENGINE models) or a route (REMOTE_API)."
        ),
    )
    image: str | None = strawberry.field(
        default=None, description="Image (required for CUSTOM); default: the engine's image."
    )
    image_pull_policy: str | None = strawberry.field(
        default=None, description="`Always`, `IfNotPresent` (default) or `Never`."
    )
    command: list[str] | None = strawberry.field(
        default=None,
        description="Command (CUSTOM; for VLLM it must carry `--served-model-name <name>`).",
    )
    args: list[str] | None = strawberry.field(default=None, description="Arguments.")
    engine_args: list[str] | None = strawberry.field(
        default=None,
        description=(
            "VLLM: flags appended to the command line modelplane builds, e.g. "
            '`["--dtype=bfloat16", "--gpu-memory-utilization=0.9"]`: `--flag`, '
            "`--flag=value` or a value after a `--flag`; at most 64 tokens, 4 KiB. Refused: "
            "flags modelplane sets (`--model`, `--served-model-name`, `--host`, `--port`, "
            "`--tensor-parallel-size`: `resources.gpu`, `--max-model-len`: `contextLength`), "
            "other engines, and with `command`/`args` (they replace the command line)."
        ),
    )
    replicas: int | None = strawberry.field(default=None, description="Replicas (default 1).")
    resources: InferenceResourcesInput | None = strawberry.field(
        default=None, description="Compute per replica; null: the model's `resources`."
    )
    gpu_type: str | None = strawberry.field(
        default=None, description="GPU product to run on (node label `nvidia.com/gpu.product`)."
    )
    node_selector: list[NodeSelectorInput] | None = strawberry.field(
        default=None, description="Extra node selector labels."
    )
    tolerations: list[TolerationInput] | None = strawberry.field(
        default=None, description="Tolerations (GPU taints are tolerated already)."
    )
    port: int | None = strawberry.field(
        default=None, description="Engine port (default 8000; OLLAMA 11434)."
    )
    health_path: str | None = strawberry.field(
        default=None, description="Readiness path; default the engine's (`/health` for vLLM)."
    )
    initial_delay_seconds: int | None = strawberry.field(
        default=None, description="Seconds before readiness checks (default 60)."
    )
    env: list[EnvVarInput] | None = strawberry.field(
        default=None,
        description="Environment: values or Secret references only; at most 100 variables, "
        "256 KiB of values in all.",
    )
    autoscaling: AutoscalingInput | None = strawberry.field(
        default=None, description="Autoscaling bounds (replaces `replicas`)."
    )
    litellm: LiteLLMInput | None = strawberry.field(
        default=None, description="LITELLM_PROXY settings."
    )
    ollama_model: str | None = strawberry.field(
        default=None,
        description=(
            "OLLAMA: what to pull, e.g. `smollm2:135m` (default for a LOCAL model: `hf.co/<repo>`)."
        ),
    )
    context_length: int | None = strawberry.field(
        default=None,
        description=(
            "VLLM: `--max-model-len`, the longest context served (default: the model's whole "
            "context); the dry run's GPU fit sizes the KV cache for it."
        ),
    )
    upstream_timeout_seconds: float | None = strawberry.field(
        default=None,
        description="The gateway's upstream timeout for this model (default server's).",
    )
    service_monitor: bool | None = strawberry.field(
        default=None,
        description="A Prometheus ServiceMonitor for the engine's `/metrics`: true requires "
        "one (refused when the Prometheus Operator's CRD is not installed), false never, null "
        "(default) when the CRD is installed.",
    )


@strawberry.input(description="One node selector label.")
class NodeSelectorInput:
    """Label key and value."""

    key: str = strawberry.field(description="Label key.")
    value: str = strawberry.field(description="Label value.")


@strawberry.type(description="The result of startInference / toggleInference / a manifest.")
class InferencePayload:
    """The inference, and a note when nothing new was started."""

    inference: Inference = strawberry.field(description="The (existing, new or planned) inference.")
    started: bool = strawberry.field(
        description="False when the model already had an active inference (see `message`)."
    )
    message: str | None = strawberry.field(description="A note, e.g. why nothing was started.")
    dry_run: bool = strawberry.field(description="True when nothing was written.")
    manifests: list[str] = strawberry.field(
        description="Dry run: the objects that would be applied, one YAML document each."
    )
    fit: GpuFit | None = strawberry.field(
        description="Dry run: the GPU memory estimate against the cluster's GPUs."
    )


StartInferenceResult = Annotated[
    InferencePayload | ValidationError | NotFoundError | ConflictError | ForbiddenError,
    strawberry.union("StartInferenceResult", description="startInference's outcome."),
]
StopInferenceResult = Annotated[
    Inference | ValidationError | NotFoundError | ConflictError | ForbiddenError,
    strawberry.union("StopInferenceResult", description="stopInference's outcome."),
]


@strawberry.type(description="The engine's recent log lines.")
class InferenceLogs:
    """Log tail of one inference."""

    inference_id: strawberry.ID = strawberry.field(description="The inference.")
    lines: list[str] = strawberry.field(
        description="Oldest first: the newest pod's engine container, or the local process."
    )


@strawberry.input(description="Filters for `inferences`; all optional, combined with AND.")
class InferenceFilterInput:
    """Inference listing filter."""

    managed: bool | None = strawberry.field(
        default=None, description="true: managed only; false: unmanaged (manifests, discovered)."
    )
    phase: InferencePhaseEnum | None = strawberry.field(default=None, description="Phase.")
    model_id: strawberry.ID | None = strawberry.field(default=None, description="Of this model.")
