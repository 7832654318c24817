"""The model catalogue in GraphQL: Model, its parts, inputs, pages and result unions."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Annotated

import strawberry

from schema.enums import AccessModeEnum, InferencePhaseEnum, ModelPhaseEnum
from schema.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from schema.scalars import BigInt, big
from storage import targets as stored
from storage.documents import DownloadTarget as TargetDocument
from storage.documents import ModelDocument

if TYPE_CHECKING:
    from schema.inference import Inference
    from schema.weights import Weights


@strawberry.type(description="Where a model comes from. The token is never returned.")
class ModelSource:
    """Source of a model."""

    url: str = strawberry.field(
        description="LOCAL: the Hugging Face repo id. REMOTE_API: the OpenAI-compatible base URL."
    )
    access_mode: AccessModeEnum = strawberry.field(description="LOCAL or REMOTE_API.")
    revision: str | None = strawberry.field(
        description="Requested branch, tag or commit (LOCAL); null means the default branch."
    )
    has_token: bool = strawberry.field(
        description="True when a hub token or API key is stored for this model."
    )
    allow_patterns: list[str] = strawberry.field(
        description="LOCAL: the download takes only files matching one of these globs "
        "(huggingface_hub's allow_patterns); empty: every file."
    )
    ignore_patterns: list[str] = strawberry.field(
        description="LOCAL: files matching one of these globs are not downloaded "
        "(huggingface_hub's ignore_patterns)."
    )


@strawberry.type(description="Weights are written under a local path (inside an allowed root).")
class LocalTarget:
    """LOCAL download target."""

    local_path: str = strawberry.field(description="Absolute, resolved directory.")


@strawberry.type(description="Weights are written to a PersistentVolumeClaim.")
class PvcTarget:
    """PVC download target."""

    claim_name: str = strawberry.field(description="PersistentVolumeClaim name.")
    sub_path: str | None = strawberry.field(description="Directory inside the volume.")
    storage_class: str | None = strawberry.field(
        description="StorageClass used when modelplane creates the claim."
    )
    size_gi: int | None = strawberry.field(
        description="Requested size in GiB; null: the server's default for a claim it creates."
    )


@strawberry.type(
    description="Weights are streamed to an S3 bucket. The secret key is never returned."
)
class S3Target:
    """S3 download target."""

    endpoint: str | None = strawberry.field(description="S3 endpoint URL; null means AWS.")
    bucket: str = strawberry.field(description="Bucket name.")
    region: str = strawberry.field(description="Bucket region.")
    prefix: str | None = strawberry.field(description="Key prefix under which files are written.")
    access_key_id: str = strawberry.field(description="Access key id used to write.")
    has_secret_access_key: bool = strawberry.field(
        description="True when the secret access key is stored (it is never returned)."
    )


DownloadTarget = Annotated[
    LocalTarget | PvcTarget | S3Target,
    strawberry.union("DownloadTarget", description="Where a LOCAL model's weights are written."),
]


@strawberry.type(description="Compute requested for serving the model (Kubernetes quantities).")
class ResourceRequirements:
    """cpu, memory, gpu."""

    cpu: str | None = strawberry.field(description='CPU quantity, e.g. "16" or "500m".')
    memory: str | None = strawberry.field(description='Memory quantity, e.g. "64Gi".')
    gpu: int | None = strawberry.field(description="Number of GPUs.")


@strawberry.type(
    description="What the Hugging Face Hub said about a LOCAL model when it was added."
)
class ModelHubInfo:
    """Hub facts recorded at creation."""

    commit_sha: str | None = strawberry.field(description="Commit the revision resolved to.")
    parameters: BigInt | None = strawberry.field(description="Parameter count (safetensors).")
    weight_bytes: BigInt | None = strawberry.field(description="Total size of the repo's files.")
    architecture: str | None = strawberry.field(description="e.g. LlamaForCausalLM.")
    license: str | None = strawberry.field(description="License from the model card.")
    gated: bool = strawberry.field(description="True when the repo needs an access grant.")
    pipeline_tag: str | None = strawberry.field(description="e.g. text-generation.")
    library_name: str | None = strawberry.field(description="e.g. transformers.")


async def resolve_model_weights(
    root: strawberry.Parent[Model], info: strawberry.Info
) -> Annotated[Weights, strawberry.lazy("schema.weights")] | None:
    """The weights entry of a model, read through the request's organisation scope."""
    if root.weights_id is None:
        return None
    document = await info.context.load_weights(root.weights_id)
    if document is None:
        return None
    from schema.weights import Weights as WeightsView  # noqa: PLC0415  circular at import time

    return WeightsView.from_document(document)


async def resolve_model_inference(
    root: strawberry.Parent[Model], info: strawberry.Info
) -> Annotated[Inference, strawberry.lazy("schema.inference")] | None:
    """The model's live inference, read through the request's organisation scope."""
    document = await info.context.load_model_inference(str(root.id))
    if document is None:
        return None
    from schema.inference import Inference as InferenceView  # noqa: PLC0415  circular at import

    return InferenceView.from_document(document)


@strawberry.type(description="A model in your organisation's catalogue.")
class Model:
    """Catalogue entry: desired state and observed status."""

    id: strawberry.ID = strawberry.field(description="Short random id, e.g. `model-a3k9x`.")
    name: str = strawberry.field(
        description="DNS-1123 label, unique in the organisation; Kubernetes objects use it."
    )
    display_name: str = strawberry.field(description="Human-readable name.")
    description: str | None = strawberry.field(description="Free text (card summary for LOCAL).")
    icon: str | None = strawberry.field(description="Icon URL (author avatar for LOCAL).")
    label: str | None = strawberry.field(description="Author or organisation shown beside it.")
    tags: list[str] = strawberry.field(description="Tags for filtering.")
    source: ModelSource = strawberry.field(description="Where the model comes from.")
    download_target: DownloadTarget | None = strawberry.field(
        description="Where weights go (LOCAL only); secret keys are never returned."
    )
    resources: ResourceRequirements = strawberry.field(description="Requested compute.")
    hub: ModelHubInfo | None = strawberry.field(description="Hub facts (LOCAL only).")
    phase: ModelPhaseEnum = strawberry.field(description="Lifecycle phase.")
    message: str | None = strawberry.field(description="Why the model is in its phase.")
    inference_phase: InferencePhaseEnum | None = strawberry.field(
        description=(
            "Phase of the model's inference service; null when it has none (never started, "
            "or the last one finished stopping)."
        )
    )
    managed: bool = strawberry.field(description="True when modelplane created and owns it.")
    organization_id: str = strawberry.field(description="Owning organisation.")
    created_at: datetime = strawberry.field(description="Creation time (UTC).")
    updated_at: datetime = strawberry.field(description="Last change (UTC).")
    is_deleted: bool = strawberry.field(description="Soft-deleted (only admins see these).")
    deletion_time: datetime | None = strawberry.field(description="When it was deleted (UTC).")
    weights_id: strawberry.Private[str | None] = None
    weights: Annotated[Weights, strawberry.lazy("schema.weights")] | None = strawberry.field(
        resolver=resolve_model_weights,
        description="The model's downloaded weights and live progress (LOCAL models).",
    )
    inference: Annotated[Inference, strawberry.lazy("schema.inference")] | None = strawberry.field(
        resolver=resolve_model_inference,
        description=(
            "The model's inference service (pending, running, failed, or stopping), if any; "
            "null when none was started or the last one finished stopping."
        ),
    )

    @classmethod
    def from_document(cls, doc: ModelDocument) -> Model:
        """The API view of a stored model (no secret can reach it: none is on the document)."""
        hub = doc.hub
        return cls(
            id=strawberry.ID(doc.id),
            name=doc.name,
            display_name=doc.display_name,
            description=doc.description,
            icon=doc.icon,
            label=doc.label,
            tags=list(doc.tags),
            source=ModelSource(
                url=doc.source.url,
                access_mode=AccessModeEnum(doc.source.access_mode.value),
                revision=doc.source.revision,
                has_token=doc.source.has_token,
                allow_patterns=list(doc.source.selection.allow),
                ignore_patterns=list(doc.source.selection.ignore),
            ),
            download_target=_target(doc.download_target),
            resources=ResourceRequirements(
                cpu=doc.resources.cpu, memory=doc.resources.memory, gpu=doc.resources.gpu
            ),
            hub=None
            if hub is None
            else ModelHubInfo(
                commit_sha=hub.commit_sha,
                parameters=big(hub.parameters),
                weight_bytes=big(hub.weight_bytes),
                architecture=hub.architecture,
                license=hub.license,
                gated=hub.gated,
                pipeline_tag=hub.pipeline_tag,
                library_name=hub.library_name,
            ),
            phase=ModelPhaseEnum(doc.phase.value),
            message=doc.message,
            inference_phase=InferencePhaseEnum(doc.inference_phase.value)
            if doc.inference_phase
            else None,
            managed=doc.managed,
            organization_id=doc.organization_id,
            created_at=doc.created_at,
            updated_at=doc.updated_at,
            is_deleted=doc.is_deleted,
            deletion_time=doc.deletion_time,
            weights_id=doc.weights_id,
        )


def _target(target: TargetDocument | None) -> LocalTarget | PvcTarget | S3Target | None:
    return None if target is None else target_view(target)


def target_view(target: TargetDocument) -> LocalTarget | PvcTarget | S3Target:
    """API view of a stored download target (no secret key on it)."""
    match target:
        case stored.LocalTarget():
            return LocalTarget(local_path=target.local_path)
        case stored.PvcTarget():
            return PvcTarget(
                claim_name=target.claim_name,
                sub_path=target.sub_path,
                storage_class=target.storage_class,
                size_gi=target.size_gi,
            )
        case stored.S3Target():
            return S3Target(
                endpoint=target.endpoint,
                bucket=target.bucket,
                region=target.region_name,
                prefix=target.prefix,
                access_key_id=target.access_key_id,
                has_secret_access_key=target.has_secret_access_key,
            )


@strawberry.type(description="One page of models and the number of all matches.")
class ModelPage:
    """A `limit`/`offset` page."""

    total: int = strawberry.field(description="Matches across all pages.")
    items: list[Model] = strawberry.field(
        description="This page, in the order asked for (newest first by default)."
    )
    limit: int = strawberry.field(description="Page size asked for.")
    offset: int = strawberry.field(description="Matches skipped before this page.")


@strawberry.type(description="An object removed while deleting a model.")
class RemovedObject:
    """Kind and name of what was removed."""

    kind: str = strawberry.field(description="e.g. Secret, Deployment, EncryptedSecret.")
    name: str = strawberry.field(description="Object name.")


@strawberry.type(description="The outcome of deleteModel.")
class DeletedModel:
    """The soft-deleted model and what went with it."""

    model: Model = strawberry.field(description="The model, now marked deleted.")
    removed: list[RemovedObject] = strawberry.field(
        description="Credentials and Kubernetes objects removed by this call."
    )
    already_deleted: bool = strawberry.field(
        description="True when the model had been deleted before (deleting twice is fine)."
    )


@strawberry.type(description="A file in a Hugging Face repository.")
class HuggingFaceFile:
    """Path, size, hash."""

    path: str = strawberry.field(description="Path in the repository.")
    size: BigInt | None = strawberry.field(description="Size in bytes.")
    sha256: str | None = strawberry.field(description="LFS sha256 (null for small git files).")


@strawberry.type(description="Hub metadata for a repository, previewed before creating a model.")
class HuggingFaceModel:
    """What createModel would fill in from the hub."""

    repo_id: str = strawberry.field(description="`org/name`.")
    sha: str = strawberry.field(description="Commit the revision resolves to.")
    author: str | None = strawberry.field(description="Owner of the repository.")
    display_name: str = strawberry.field(description="Repository name.")
    description: str | None = strawberry.field(description="First paragraph of the model card.")
    avatar_url: str | None = strawberry.field(description="Author avatar URL.")
    tags: list[str] = strawberry.field(description="Hub tags.")
    pipeline_tag: str | None = strawberry.field(description="e.g. text-generation.")
    library_name: str | None = strawberry.field(description="e.g. transformers.")
    license: str | None = strawberry.field(description="License from the card.")
    gated: bool = strawberry.field(description="Needs an access grant to download.")
    private: bool = strawberry.field(description="Visible only with a token.")
    parameters: BigInt | None = strawberry.field(description="Parameter count (safetensors).")
    architecture: str | None = strawberry.field(description="First listed architecture.")
    vllm_compatible: bool = strawberry.field(
        description="An architecture of its `config.json` is one vLLM serves (modelplane's "
        "table; `vllmCompatibility` says since which release and with which flags)."
    )
    weight_bytes: BigInt = strawberry.field(description="Estimated download size in bytes.")
    files: list[HuggingFaceFile] = strawberry.field(description="Files at that commit.")


@strawberry.type(description="Hub search results.")
class HuggingFaceSearch:
    """Search results."""

    items: list[HuggingFaceModel] = strawberry.field(description="Matching repositories.")


@strawberry.enum(name="ModelOrder", description="How `models` sorts its pages.")
class ModelOrderEnum(Enum):
    """Listing order; ties are broken by id, so pages never overlap."""

    NEWEST = strawberry.enum_value("newest", description="Newest first (the default).")
    OLDEST = strawberry.enum_value("oldest", description="Oldest first.")
    NAME = strawberry.enum_value("name", description="By name, a to z.")
    NAME_DESC = strawberry.enum_value("name_desc", description="By name, z to a.")


@strawberry.input(description="Filters for `models`; all optional, combined with AND.")
class ModelFilterInput:
    """Model listing filter."""

    access_mode: AccessModeEnum | None = strawberry.field(
        default=None, description="LOCAL or REMOTE_API."
    )
    phase: ModelPhaseEnum | None = strawberry.field(default=None, description="Lifecycle phase.")
    inference_phase: InferencePhaseEnum | None = strawberry.field(
        default=None,
        description=(
            "Models whose inference is in this phase (the Playground API's `inferenceStatus`; "
            "an unknown value is refused)."
        ),
    )
    has_inference: bool | None = strawberry.field(
        default=None,
        description=(
            "false: models with no inference (never started, or the last one finished "
            "stopping); true: models with one, in any phase; null: either."
        ),
    )
    managed: bool | None = strawberry.field(default=None, description="Created by modelplane.")
    tag: str | None = strawberry.field(default=None, description="Has this tag.")
    search: str | None = strawberry.field(
        default=None, description="Case-insensitive substring of display name, name or repo/URL."
    )
    name: str | None = strawberry.field(
        default=None, description="Exactly this name (a DNS-1123 label): the model, if any."
    )
    include_deleted: bool = strawberry.field(
        default=False, description="Also soft-deleted models (admins only)."
    )


@strawberry.input(description="Where the model comes from.")
class ModelSourceInput:
    """createModel source."""

    url: str = strawberry.field(
        description=(
            "LOCAL: repo id (`Qwen/Qwen2.5-7B-Instruct`) or hub URL. "
            "REMOTE_API: OpenAI-compatible base URL (`https://api.deepseek.com/v1`)."
        )
    )
    access_mode: AccessModeEnum = strawberry.field(description="LOCAL or REMOTE_API.")
    token: str | None = strawberry.field(
        default=None,
        description="Hub token (LOCAL, for gated/private repos) or API key (REMOTE_API). "
        "Stored as a secret; never returned.",
    )
    revision: str | None = strawberry.field(
        default=None, description="Branch, tag or commit (LOCAL); default branch when null."
    )
    allow_patterns: list[str] | None = strawberry.field(
        default=None,
        description="LOCAL: download only the files matching at least one of these "
        "`fnmatch` globs over the repo path (`*.safetensors`, `config.json`, `onnx/`: a "
        "trailing `/` means the folder); null or empty: every file. Each must match a file of "
        "the repo at the revision; relative, no `..`, at most 64.",
    )
    ignore_patterns: list[str] | None = strawberry.field(
        default=None,
        description="LOCAL: do not download files matching one of these globs (`*.bin`, "
        "`original/`); applied after allowPatterns. At least one file must remain.",
    )


@strawberry.input(description="Write weights under a local directory.")
class LocalTargetInput:
    """LOCAL target."""

    local_path: str = strawberry.field(
        description=(
            "Absolute path of a directory strictly inside your organisation's area under one "
            "of the allowed roots (`serverInfo.localRoots`); no `..`. It must not be, contain "
            "or lie inside another download's directory. Deleting the weights removes only "
            "the files the download wrote there."
        )
    )


@strawberry.input(description="Write weights to a PersistentVolumeClaim (kubernetes runtime).")
class PvcTargetInput:
    """PVC target."""

    claim_name: str = strawberry.field(
        description=(
            "Claim name (created if absent). A claim holding another organisation's weights "
            "is refused."
        )
    )
    sub_path: str | None = strawberry.field(
        default=None,
        description=(
            "Directory in the volume; it must not be, contain or lie inside another "
            "download's directory on the claim. Deleting the weights removes only the files "
            "the download wrote there."
        ),
    )
    storage_class: str | None = strawberry.field(
        default=None, description="StorageClass for a new claim."
    )
    size_gi: int | None = strawberry.field(
        default=None,
        description="Size of a new claim in GiB (default: the server's "
        "`MODELPLANE_PVC_DEFAULT_SIZE_GI`, 20); an existing claim is used as it is.",
    )


@strawberry.input(description="Stream weights to an S3 bucket.")
class S3TargetInput:
    """S3 target."""

    endpoint: str | None = strawberry.field(
        default=None, description="Endpoint URL for S3-compatible stores; null means AWS."
    )
    bucket: str | None = strawberry.field(default=None, description="Bucket name (required).")
    region: str | None = strawberry.field(default=None, description="Region (default us-east-1).")
    prefix: str | None = strawberry.field(default=None, description="Key prefix.")
    access_key_id: str | None = strawberry.field(
        default=None, description="Access key id (required)."
    )
    secret_access_key: str | None = strawberry.field(
        default=None,
        description="Secret access key (required); stored as a secret, never returned.",
    )


@strawberry.input(one_of=True, description="Exactly one of `local`, `pvc`, `s3`.")
class DownloadTargetInput:
    """Download target (oneOf)."""

    local: LocalTargetInput | None = strawberry.field(
        default=strawberry.UNSET, description="A local directory."
    )
    pvc: PvcTargetInput | None = strawberry.field(default=strawberry.UNSET, description="A PVC.")
    s3: S3TargetInput | None = strawberry.field(
        default=strawberry.UNSET, description="An S3 bucket."
    )


@strawberry.input(description='Kubernetes quantities: cpu "16", memory "64Gi", gpu 2.')
class ResourcesInput:
    """Requested compute."""

    cpu: str | None = strawberry.field(default=None, description='e.g. "16", "0.5", "500m".')
    memory: str | None = strawberry.field(default=None, description='e.g. "64Gi", "512Mi".')
    gpu: int | None = strawberry.field(default=None, description="Whole GPUs, 0 to 64.")


@strawberry.input(
    description="A new model. LOCAL needs downloadTarget; REMOTE_API needs displayName."
)
class CreateModelInput:
    """createModel input."""

    source: ModelSourceInput = strawberry.field(description="Where the model comes from.")
    name: str | None = strawberry.field(
        default=None, description="DNS-1123 label; derived from the repo or displayName if null."
    )
    display_name: str | None = strawberry.field(
        default=None, description="Required for REMOTE_API; the repo name for LOCAL if null."
    )
    description: str | None = strawberry.field(default=None, description="At most 4 KiB.")
    icon: str | None = strawberry.field(default=None, description="Icon URL (http/https).")
    label: str | None = strawberry.field(default=None, description="Author or organisation.")
    tags: list[str] | None = strawberry.field(
        default=None, description="At most 32 tags of at most 64 characters."
    )
    download_target: DownloadTargetInput | None = strawberry.field(
        default=None, description="Where weights go (LOCAL only)."
    )
    resources: ResourcesInput | None = strawberry.field(default=None, description="Compute.")
    weights_id: strawberry.ID | None = strawberry.field(
        default=None,
        description="LOCAL: use existing weights (from downloadWeights) instead of downloading: "
        "downloadTarget may be omitted (it is theirs); source.url, and source.revision and "
        "the patterns when given, must be what they hold.",
    )


@strawberry.input(description="Fields to change; null leaves a field as it is.")
class UpdateModelInput:
    """updateModel input."""

    display_name: str | None = strawberry.field(default=None, description="Human-readable name.")
    description: str | None = strawberry.field(
        default=None, description="Free text; empty string clears it."
    )
    icon: str | None = strawberry.field(default=None, description="Icon URL; empty clears it.")
    label: str | None = strawberry.field(default=None, description="Author; empty clears it.")
    tags: list[str] | None = strawberry.field(default=None, description="Replaces all tags.")
    resources: ResourcesInput | None = strawberry.field(
        default=None, description="Replaces the requested compute."
    )


CreateModelResult = Annotated[
    Model | ValidationError | ConflictError | ForbiddenError,
    strawberry.union("CreateModelResult", description="The new model, or why not."),
]
UpdateModelResult = Annotated[
    Model | ValidationError | NotFoundError | ConflictError | ForbiddenError,
    strawberry.union("UpdateModelResult", description="The updated model, or why not."),
]
DeleteModelResult = Annotated[
    DeletedModel | NotFoundError | ForbiddenError,
    strawberry.union("DeleteModelResult", description="What was deleted, or why not."),
]
HuggingFaceModelResult = Annotated[
    HuggingFaceModel | ValidationError | ForbiddenError,
    strawberry.union("HuggingFaceModelResult", description="Hub metadata, or why not."),
]
HuggingFaceSearchResult = Annotated[
    HuggingFaceSearch | ValidationError | ForbiddenError,
    strawberry.union("HuggingFaceSearchResult", description="Search results, or why not."),
]
