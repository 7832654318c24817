"""Resolvers of the model catalogue: convert inputs, call ModelService, map outcomes.

Expected failures come back from the service as exceptions and leave here as union members;
the only errors raised to GraphQL are "not authenticated" and bad arguments of plain queries.
"""

from __future__ import annotations

from typing import Annotated

import strawberry

from integrations.huggingface import HubModel
from resolvers.context import Info
from resolvers.errors import answers, query_errors
from schema.models import (
    CreateModelInput,
    CreateModelResult,
    DeletedModel,
    DeleteModelResult,
    DownloadTargetInput,
    HuggingFaceFile,
    HuggingFaceModel,
    HuggingFaceModelResult,
    HuggingFaceSearch,
    HuggingFaceSearchResult,
    Model,
    ModelFilterInput,
    ModelOrderEnum,
    ModelPage,
    RemovedObject,
    ResourcesInput,
    UpdateModelInput,
    UpdateModelResult,
)
from schema.scalars import BigInt, big
from services.models import (
    CreateModelSpec,
    ResourcesSpec,
    SourceSpec,
    UpdateModelSpec,
)
from services.targets import LocalTargetSpec, PvcTargetSpec, S3TargetSpec, TargetSpec
from storage.documents import AccessMode, InferencePhase, ModelPhase
from storage.repositories import ModelFilter, ModelOrder


def _resources(value: ResourcesInput | None) -> ResourcesSpec | None:
    if value is None:
        return None
    return ResourcesSpec(cpu=value.cpu, memory=value.memory, gpu=value.gpu)


def _target(value: DownloadTargetInput | None) -> TargetSpec | None:
    if value is None:
        return None
    if value.local:
        return LocalTargetSpec(local_path=value.local.local_path)
    if value.pvc:
        return PvcTargetSpec(
            claim_name=value.pvc.claim_name,
            sub_path=value.pvc.sub_path,
            storage_class=value.pvc.storage_class,
            size_gi=value.pvc.size_gi,
        )
    if value.s3:
        return S3TargetSpec(
            endpoint=value.s3.endpoint,
            bucket=value.s3.bucket,
            region=value.s3.region,
            prefix=value.s3.prefix,
            access_key_id=value.s3.access_key_id,
            secret_access_key=value.s3.secret_access_key,
        )
    return None


def _hub_model(model: HubModel, vllm_compatible: bool) -> HuggingFaceModel:
    return HuggingFaceModel(
        repo_id=model.repo_id,
        sha=model.sha,
        author=model.author,
        display_name=model.repo_id.split("/", 1)[-1],
        description=model.summary,
        avatar_url=model.avatar_url,
        tags=list(model.tags),
        pipeline_tag=model.pipeline_tag,
        library_name=model.library_name,
        license=model.license,
        gated=model.gated,
        private=model.private,
        parameters=big(model.parameters),
        architecture=model.architectures[0] if model.architectures else None,
        vllm_compatible=vllm_compatible,
        weight_bytes=BigInt(model.total_bytes),
        files=[
            HuggingFaceFile(path=f.path, size=big(f.size), sha256=f.sha256) for f in model.files
        ],
    )


async def resolve_models(
    info: Info,
    filter: Annotated[
        ModelFilterInput | None, strawberry.argument(description="Conditions, combined with AND.")
    ] = None,
    limit: Annotated[int, strawberry.argument(description="Page size, 0 to 100.")] = 10,
    offset: Annotated[int, strawberry.argument(description="Matches to skip.")] = 0,
    order_by: Annotated[
        ModelOrderEnum, strawberry.argument(description="How the pages are sorted.")
    ] = ModelOrderEnum.NEWEST,
) -> ModelPage:
    """A page of the caller's organisation's models."""
    principal = info.context.require_principal()
    f = filter or ModelFilterInput()
    with query_errors():
        model_filter = ModelFilter(
            access_mode=AccessMode(f.access_mode.name) if f.access_mode else None,
            phase=ModelPhase(f.phase.name) if f.phase else None,
            inference_phase=InferencePhase(f.inference_phase.name) if f.inference_phase else None,
            has_inference=f.has_inference,
            managed=f.managed,
            tag=f.tag,
            search=f.search,
            include_deleted=f.include_deleted,
            name=f.name,
            order=ModelOrder[order_by.name],
        )
        page = await info.context.services.models.page(
            principal, model_filter, limit=limit, offset=offset
        )
    return ModelPage(
        total=page.total,
        items=[Model.from_document(doc) for doc in page.items],
        limit=limit,
        offset=offset,
    )


async def resolve_model(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="Model id.")],
) -> Model | None:
    """One model; null when absent or in another organisation."""
    principal = info.context.require_principal()
    doc = await info.context.services.models.get(principal, str(id))
    return None if doc is None else Model.from_document(doc)


@answers
async def resolve_hugging_face_model(
    info: Info,
    repo_id: Annotated[str, strawberry.argument(description="`org/name` or a hub URL.")],
    revision: Annotated[
        str | None, strawberry.argument(description="Branch, tag or commit.")
    ] = None,
) -> HuggingFaceModelResult:
    """Hub metadata for a repository (public or gated metadata; no token needed)."""
    principal = info.context.require_principal()
    found = await info.context.services.models.hub_preview(principal, repo_id, revision=revision)
    return _hub_model(found, info.context.services.vllm.serves(found))


@answers
async def resolve_hugging_face_search(
    info: Info,
    query: Annotated[str, strawberry.argument(description="Text to search for in repo ids.")],
    limit: Annotated[int, strawberry.argument(description="At most this many, 1 to 50.")] = 10,
    vllm_compatible: Annotated[
        bool | None,
        strawberry.argument(
            description="true: only repos whose `config.json` architectures vLLM serves "
            "(modelplane's table, see `vllmArchitectures`); false: only the others (no "
            "`config.json` included); null: no filter. Decided from the config summary the hub "
            "returns with each result: one hub request for up to `MODELPLANE_VLLM_SEARCH_SCAN` "
            "results, filtered, then the first `limit`."
        ),
    ] = None,
) -> HuggingFaceSearchResult:
    """Search the hub."""
    principal = info.context.require_principal()
    services = info.context.services
    if vllm_compatible is None:
        found = await services.models.hub_search(principal, query, limit=limit)
    else:
        found = await services.vllm.search(
            principal, query, limit=limit, compatible=vllm_compatible
        )
    return HuggingFaceSearch(items=[_hub_model(m, services.vllm.serves(m)) for m in found])


@answers
async def create_model(
    info: Info,
    input: Annotated[CreateModelInput, strawberry.argument(description="The model.")],
) -> CreateModelResult:
    """Add a model to the catalogue."""
    principal = info.context.require_principal()
    spec = CreateModelSpec(
        source=SourceSpec(
            url=input.source.url,
            access_mode=AccessMode(input.source.access_mode.name),
            token=input.source.token,
            revision=input.source.revision,
            allow_patterns=input.source.allow_patterns,
            ignore_patterns=input.source.ignore_patterns,
        ),
        name=input.name,
        display_name=input.display_name,
        description=input.description,
        icon=input.icon,
        label=input.label,
        tags=input.tags,
        download_target=_target(input.download_target),
        resources=_resources(input.resources),
        weights_id=str(input.weights_id) if input.weights_id is not None else None,
    )
    return Model.from_document(await info.context.services.models.create(principal, spec))


@answers
async def update_model(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="Model id.")],
    input: Annotated[UpdateModelInput, strawberry.argument(description="Changes.")],
) -> UpdateModelResult:
    """Change a model's catalogue fields."""
    principal = info.context.require_principal()
    spec = UpdateModelSpec(
        display_name=input.display_name,
        description=input.description,
        icon=input.icon,
        label=input.label,
        tags=input.tags,
        resources=_resources(input.resources),
    )
    doc = await info.context.services.models.update(principal, str(id), spec)
    return Model.from_document(doc)


@answers
async def delete_model(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="Model id.")],
) -> DeleteModelResult:
    """Soft-delete a model and remove what it owns."""
    principal = info.context.require_principal()
    outcome = await info.context.services.models.delete(principal, str(id))
    return DeletedModel(
        model=Model.from_document(outcome.model),
        removed=[RemovedObject(kind=o.kind, name=o.name) for o in outcome.removed],
        already_deleted=outcome.already_deleted,
    )
