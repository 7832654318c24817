"""Resolvers of inference services: start, stop, toggle, manifests, list, one, logs."""

from __future__ import annotations

from typing import Annotated, TypeVar

import strawberry
import yaml

from resolvers.context import Info
from resolvers.errors import answers, query_errors
from schema.cluster import GpuFit
from schema.inference import (
    Inference,
    InferenceFilterInput,
    InferenceInput,
    InferenceLogs,
    InferencePage,
    InferencePayload,
    StartInferenceResult,
    StopInferenceResult,
)
from services.errors import Missing
from services.inference import InferenceRequest, StartOutcome
from services.inference_inputs import Described
from storage.documents import (
    AutoscalingSpec,
    EnvVarSpec,
    InferenceEngine,
    InferencePhase,
    LiteLLMSpec,
    Toleration,
)
from storage.repositories import InferenceFilter

T = TypeVar("T")

ModelIdArg = Annotated[strawberry.ID, strawberry.argument(description="Model id.")]


def request_from_input(data: InferenceInput | None) -> InferenceRequest:
    """The service's request from the GraphQL input (None: every default)."""
    if data is None:
        return InferenceRequest()
    resources = data.resources
    scaling = data.autoscaling
    litellm = data.litellm
    return InferenceRequest(
        engine=InferenceEngine(data.engine.name) if data.engine else None,
        image=data.image,
        image_pull_policy=data.image_pull_policy,
        command=data.command,
        args=data.args,
        engine_args=data.engine_args,
        replicas=data.replicas,
        cpu=resources.cpu if resources else None,
        memory=resources.memory if resources else None,
        gpu=resources.gpu if resources else None,
        gpu_type=data.gpu_type,
        node_selector={s.key: s.value for s in data.node_selector or []} or None,
        tolerations=[
            Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect)
            for t in data.tolerations or []
        ]
        or None,
        port=data.port,
        health_path=data.health_path,
        initial_delay_seconds=data.initial_delay_seconds,
        env=[
            EnvVarSpec(
                name=e.name, value=e.value, secret_name=e.secret_name, secret_key=e.secret_key
            )
            for e in data.env or []
        ],
        autoscaling=None
        if scaling is None
        else AutoscalingSpec(
            min_replicas=scaling.min_replicas,
            max_replicas=scaling.max_replicas,
            target_metric=scaling.target_metric,
            target_value=scaling.target_value,
            scale_down_delay_seconds=scaling.scale_down_delay_seconds,
        ),
        litellm=None
        if litellm is None
        else LiteLLMSpec(
            mode=litellm.mode.name,
            model=litellm.model,
            config_yaml=litellm.config_yaml,
            api_key_secret_name=litellm.master_key_secret_name,
            api_key_secret_key=litellm.master_key_secret_key,
        ),
        ollama_model=data.ollama_model,
        upstream_timeout_seconds=data.upstream_timeout_seconds,
        context_length=data.context_length,
        service_monitor=data.service_monitor,
    )


def _payload(outcome: StartOutcome) -> InferencePayload:
    return InferencePayload(
        inference=Inference.from_document(outcome.inference),
        started=outcome.started,
        message=outcome.message,
        dry_run=outcome.dry_run,
        manifests=[yaml.safe_dump(obj, sort_keys=False) for obj in outcome.manifests],
        fit=GpuFit.from_estimate(outcome.fit) if outcome.fit is not None else None,
    )


@answers
async def start_inference(
    info: Info,
    model_id: ModelIdArg,
    input: Annotated[
        InferenceInput | None, strawberry.argument(description="What to run; null: defaults.")
    ] = None,
    dry_run: Annotated[
        bool,
        strawberry.argument(description="Validate and render the objects; create nothing."),
    ] = False,
) -> StartInferenceResult:
    """Start serving a model (one active inference per model)."""
    principal = info.context.require_principal()
    service = info.context.services.inference
    request = request_from_input(input)
    return _payload(await service.start(principal, str(model_id), request, dry_run=dry_run))


@answers
async def update_inference(
    info: Info,
    model_id: ModelIdArg,
    input: Annotated[
        InferenceInput,
        strawberry.argument(
            description="The whole new configuration, as startInference takes it (a port left "
            "out keeps the current one)."
        ),
    ],
    dry_run: Annotated[
        bool,
        strawberry.argument(description="Validate and render the objects; change nothing."),
    ] = False,
) -> StartInferenceResult:
    """Change a live inference's configuration in place (same id; the workload rolls)."""
    principal = info.context.require_principal()
    service = info.context.services.inference
    request = request_from_input(input)
    return _payload(await service.update(principal, str(model_id), request, dry_run=dry_run))


@answers
async def stop_inference(info: Info, model_id: ModelIdArg) -> StopInferenceResult:
    """Stop a model's inference: its objects go; the model and its weights stay."""
    principal = info.context.require_principal()
    service = info.context.services.inference
    return Inference.from_document(await service.stop(principal, str(model_id)))


@answers
async def stop_inference_by_id(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="Inference id.")],
) -> StopInferenceResult:
    """Stop an inference by its id (unmanaged ones from manifests have no model)."""
    principal = info.context.require_principal()
    service = info.context.services.inference
    return Inference.from_document(await service.stop_inference(principal, str(id)))


@answers
async def toggle_inference(
    info: Info,
    model_id: ModelIdArg,
    enabled: Annotated[bool, strawberry.argument(description="On (start) or off (stop).")],
) -> StartInferenceResult:
    """The one-switch form: on starts with the last spec (or defaults), off stops."""
    principal = info.context.require_principal()
    service = info.context.services.inference
    return _payload(await service.toggle(principal, str(model_id), enabled=enabled))


@answers
async def create_inference_from_manifest(
    info: Info,
    *,
    yaml_text: Annotated[
        str,
        strawberry.argument(
            name="yaml",
            description="A Deployment and optionally a Service (apps/v1, v1), YAML documents.",
        ),
    ],
    dry_run: Annotated[
        bool, strawberry.argument(description="Validate and show the result; apply nothing.")
    ] = False,
    display_name: Annotated[
        str | None,
        strawberry.argument(description="A human-readable name, at most 256 characters."),
    ] = None,
    description: Annotated[
        str | None, strawberry.argument(description="A description, at most 4096 bytes.")
    ] = None,
    tags: Annotated[
        list[str] | None,
        strawberry.argument(description="At most 32 tags of at most 64 characters."),
    ] = None,
) -> StartInferenceResult:
    """Apply your own Deployment as an unmanaged inference (kubernetes runtime)."""
    principal = info.context.require_principal()
    service = info.context.services.inference
    described = Described(display_name=display_name, description=description, tags=tags)
    outcome = await service.create_from_manifest(
        principal, yaml_text, dry_run=dry_run, described=described
    )
    return _payload(outcome)


async def resolve_inference(
    info: Info, id: Annotated[strawberry.ID, strawberry.argument(description="Inference id.")]
) -> Inference | None:
    """One inference, a stopped one too (history); null when absent or in another
    organisation."""
    principal = info.context.require_principal()
    doc = await info.context.services.inference.get(principal, str(id), history=True)
    return None if doc is None else Inference.from_document(doc)


async def resolve_inferences(
    info: Info,
    filter: Annotated[
        InferenceFilterInput | None, strawberry.argument(description="Conditions (AND).")
    ] = None,
    limit: Annotated[int, strawberry.argument(description="Page size, 0 to 100.")] = 20,
    offset: Annotated[int, strawberry.argument(description="Matches to skip.")] = 0,
) -> InferencePage:
    """Managed and unmanaged inferences, including labelled Deployments without a record."""
    principal = info.context.require_principal()
    f = filter or InferenceFilterInput()
    with query_errors():
        page = await info.context.services.inference.page(
            principal,
            InferenceFilter(
                managed=f.managed,
                phase=InferencePhase(f.phase.name) if f.phase else None,
                model_id=str(f.model_id) if f.model_id else None,
            ),
            limit=limit,
            offset=offset,
        )
    return InferencePage(
        total=page.total, items=[Inference.from_document(doc) for doc in page.items]
    )


async def resolve_inference_logs(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="Inference id.")],
    tail: Annotated[int, strawberry.argument(description="Last lines, 1 to 5000.")] = 200,
) -> InferenceLogs | None:
    """The engine's last log lines; null when the inference is absent."""
    principal = info.context.require_principal()
    with query_errors():
        try:
            lines = await info.context.services.inference.logs(principal, str(id), tail)
        except Missing:
            return None
    return InferenceLogs(inference_id=id, lines=lines)


async def resolve_model_inference(info: Info, model_id: str) -> Inference | None:
    """The live inference of a model (for ``Model.inference``)."""
    principal = info.context.require_principal()
    doc = await info.context.services.inference.for_model(principal, model_id)
    return None if doc is None else Inference.from_document(doc)
