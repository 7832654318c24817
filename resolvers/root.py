"""The root Query and Subscription types.

Resolvers are plain module functions attached with ``strawberry.field(resolver=...)``: they
stay fully typed under ``mypy --strict`` (decorator factories with arguments do not), and each
can be called directly in a test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Annotated

import strawberry

from controllers.runtimes.base import RuntimeUnavailable
from resolvers import api_keys as api_key_resolvers
from resolvers import catalogue as catalogue_resolvers
from resolvers import cluster as cluster_resolvers
from resolvers import deploying as deploying_resolvers
from resolvers import events as event_resolvers
from resolvers import history as history_resolvers
from resolvers import inference as inference_resolvers
from resolvers import models as model_resolvers
from resolvers import prefetching
from resolvers import vllm as vllm_resolvers
from resolvers import weights as weights_resolvers
from resolvers.context import Info
from schema.api_keys import ApiKeyPage, CreateApiKeyResult, RevokeApiKeyResult
from schema.catalogue import (
    Catalog,
    ConfigureCatalogResult,
    GenerateCatalogEntryResult,
    InstallCatalogEntryResult,
    PreviewCatalogEntryResult,
    ProposeCatalogEntryResult,
    RefreshCatalogResult,
)
from schema.cluster import ClusterStatus, GpuFitResult
from schema.deploying import DeployModelResult
from schema.enums import RoleEnum
from schema.events import Event
from schema.history import SystemInfo, TimelineEntry
from schema.inference import (
    Inference,
    InferenceLogs,
    InferencePage,
    StartInferenceResult,
    StopInferenceResult,
)
from schema.limits import cost
from schema.models import (
    CreateModelResult,
    DeleteModelResult,
    HuggingFaceModelResult,
    HuggingFaceSearchResult,
    Model,
    ModelPage,
    UpdateModelResult,
)
from schema.objects import Heartbeat, ServerInfo, Viewer
from schema.prefetching import DownloadWeightsResult
from schema.vllm import VllmArchitectureTable, VllmCompatibilityResult
from schema.weights import DeleteWeightsResult, DownloadResult, StorageUsage, Weights, WeightsPage
from services.validation import weights_areas
from storage.documents import utcnow

MIN_HEARTBEAT_SECONDS = 0.1
MAX_HEARTBEAT_SECONDS = 300.0


async def resolve_server_info(info: Info) -> ServerInfo:
    """Answers without authentication: clients use it to check they reached modelplane."""
    services = info.context.services
    kubernetes_version: str | None = None
    namespace: str | None = None
    if services.runtime.kind == "kubernetes":
        try:
            described = await services.runtime.describe()
        except RuntimeUnavailable:
            described = None
        if described is not None:
            kubernetes_version, namespace = described.version, described.namespace
    return ServerInfo(
        version=services.version,
        runtime=services.runtime.kind,
        namespace=namespace,
        kubernetes_version=kubernetes_version,
        hub_endpoint=services.hub.endpoint,
        started_at=services.started_at,
        local_roots=(
            [
                str(area)
                for area in weights_areas(
                    services.local_roots, info.context.principal.organization_id
                )
            ]
            if info.context.principal is not None
            else None
        ),
    )


def resolve_viewer(info: Info) -> Viewer:
    """Who the bearer token identifies."""
    principal = info.context.require_principal()
    return Viewer(
        subject=principal.subject,
        organization_id=principal.organization_id,
        role=RoleEnum(principal.role.value),
        expires_at=principal.expires_at,
    )


async def stream_heartbeat(
    info: Info,
    interval_seconds: Annotated[
        float, strawberry.argument(description="Seconds between beats, 0.1 to 300.")
    ] = 5.0,
    count: Annotated[
        int | None,
        strawberry.argument(description="Stop after this many beats; null streams until closed."),
    ] = None,
) -> AsyncGenerator[Heartbeat, None]:
    """Yields :class:`Heartbeat` objects until ``count`` is reached or the client leaves."""
    info.context.require_principal()
    interval = min(max(interval_seconds, MIN_HEARTBEAT_SECONDS), MAX_HEARTBEAT_SECONDS)
    sequence = 0
    while count is None or sequence < count:
        sequence += 1
        yield Heartbeat(sequence=sequence, server_time=utcnow())
        if count is None or sequence < count:
            await asyncio.sleep(interval)


@strawberry.type(description="Read the catalogue, the weights, the inference services.")
class Query:
    """Root query type."""

    server_info: ServerInfo = strawberry.field(
        resolver=resolve_server_info,
        description="Version and runtime of this modelplane deployment (no token needed).",
    )
    viewer: Viewer = strawberry.field(
        resolver=resolve_viewer,
        description="The authenticated caller; an error without a valid token.",
    )
    models: ModelPage = strawberry.field(
        resolver=model_resolvers.resolve_models,
        description="Your organisation's models, newest first, a page at a time.",
    )
    model: Model | None = strawberry.field(
        resolver=model_resolvers.resolve_model,
        description="One model; null when it does not exist or is not in your organisation.",
    )
    hugging_face_model: HuggingFaceModelResult = strawberry.field(
        resolver=model_resolvers.resolve_hugging_face_model,
        description="Hub metadata (size, files, license...) for a repo, before creating a model.",
        metadata=cost(50),  # calls the hub
    )
    hugging_face_search: HuggingFaceSearchResult = strawberry.field(
        resolver=model_resolvers.resolve_hugging_face_search,
        description="Search the Hugging Face Hub for model repositories.",
        metadata=cost(50),  # calls the hub
    )
    weights: Weights | None = strawberry.field(
        resolver=weights_resolvers.resolve_weights,
        description="One weights entry (a repo at a commit in one place) with live progress.",
    )
    weights_list: WeightsPage = strawberry.field(
        resolver=weights_resolvers.resolve_weights_list,
        description="The weight cache: every download of your organisation, newest first.",
    )
    weights_usage: list[StorageUsage] = strawberry.field(
        resolver=weights_resolvers.resolve_weights_usage,
        description="used / free / total bytes of each weights location (allowed local "
        "roots, PVCs holding your weights, S3 prefixes with a quota), its alert threshold and "
        "whether it is alerting.",
        metadata=cost(20),  # reads the disks
    )
    inference: Inference | None = strawberry.field(
        resolver=inference_resolvers.resolve_inference,
        description=(
            "One inference service, a stopped one too (kept as history, no longer its "
            "model's); null when absent or in another organisation."
        ),
    )
    inferences: InferencePage = strawberry.field(
        resolver=inference_resolvers.resolve_inferences,
        description=(
            "Inference services, managed and unmanaged (manifests, and Deployments found in the "
            "namespace with modelplane's labels but no record), newest first."
        ),
        metadata=cost(10),  # lists the namespace's Deployments
    )
    inference_logs: InferenceLogs | None = strawberry.field(
        resolver=inference_resolvers.resolve_inference_logs,
        description="The engine's last log lines (newest pod, or the local process).",
        metadata=cost(20),  # reads log files or the pod's log
    )
    cluster_status: ClusterStatus = cluster_resolvers.CLUSTER_STATUS
    gpu_fit: GpuFitResult = cluster_resolvers.GPU_FIT
    vllm_architectures: VllmArchitectureTable = vllm_resolvers.VLLM_ARCHITECTURES
    vllm_compatibility: VllmCompatibilityResult = vllm_resolvers.VLLM_COMPATIBILITY
    catalog: Catalog | None = strawberry.field(
        resolver=catalogue_resolvers.resolve_catalog,
        description="Your organisation's git-synced catalogue of model configurations (source, "
        "sync state, the last good snapshot of its entries); null when none is configured.",
    )
    model_timeline: list[TimelineEntry] | None = history_resolvers.MODEL_TIMELINE
    system_info: SystemInfo = history_resolvers.SYSTEM_INFO
    api_keys: ApiKeyPage = strawberry.field(
        resolver=api_key_resolvers.resolve_api_keys,
        description="Your organisation's API keys, newest first (prefixes only; admin role).",
    )


@strawberry.type(description="Change the catalogue, the weights, the inference services.")
class Mutation:
    """Root mutation type; expected failures are members of each result union."""

    create_model: CreateModelResult = strawberry.field(
        resolver=model_resolvers.create_model,
        description="Add a model: a Hugging Face repo (LOCAL) or a remote OpenAI-compatible API.",
    )
    update_model: UpdateModelResult = strawberry.field(
        resolver=model_resolvers.update_model,
        description="Change a model's name, description, icon, label, tags or resources.",
    )
    cancel_download: DownloadResult = strawberry.field(
        resolver=weights_resolvers.cancel_download,
        description="Stop a model's download: verified files stay, in-flight parts are removed.",
    )
    retry_download: DownloadResult = strawberry.field(
        resolver=weights_resolvers.retry_download,
        description="Resume a FAILED or CANCELLED download from where it stopped; a FAILED model "
        "whose download was never created (the hub refused its first look) asks the hub again.",
    )
    download_weights: DownloadWeightsResult = strawberry.field(
        resolver=prefetching.download_weights,
        description="Download a repo's weights (or a subset of its files) without a model; "
        "attach them later with createModel's `weightsId`.",
    )
    cancel_weights_download: DownloadResult = strawberry.field(
        resolver=prefetching.cancel_weights_download,
        description="cancelDownload by the weights' id (prefetched weights have no model).",
    )
    retry_weights_download: DownloadResult = strawberry.field(
        resolver=prefetching.retry_weights_download,
        description="retryDownload by the weights' id.",
    )
    delete_weights: DeleteWeightsResult = strawberry.field(
        resolver=weights_resolvers.delete_weights,
        description="Remove downloaded files; refused while an inference uses them unless forced.",
    )
    delete_model: DeleteModelResult = strawberry.field(
        resolver=model_resolvers.delete_model,
        description=(
            "Soft-delete a model: hide it, remove its credentials and every object it owns; "
            "its inference is deleted with it. Deleting twice is not an error."
        ),
    )
    deploy_model: DeployModelResult = strawberry.field(
        resolver=deploying_resolvers.deploy_model,
        description=(
            "One call: create a model and start its inference from an image and a command (or "
            "an Ollama model), for engines that fetch the model themselves; nothing is "
            "downloaded first. A hub token is stored as the model's Secret and reaches the "
            "engine as `HF_TOKEN`. Refused input names its field and writes nothing; `dryRun` "
            "returns the planned objects."
        ),
    )
    start_inference: StartInferenceResult = strawberry.field(
        resolver=inference_resolvers.start_inference,
        description=(
            "Serve a model. One active inference per model: starting it again returns the "
            "existing one with a message. `dryRun` returns the planned objects and creates "
            "nothing. REMOTE_API models become a gateway route (no workload)."
        ),
    )
    update_inference: StartInferenceResult = strawberry.field(
        resolver=inference_resolvers.update_inference,
        description=(
            "Change the model's live (running or pending) inference in place: image, "
            "command, env, resources, replicas, autoscaling, port... Checked exactly as "
            "startInference (refused input names its `input.*` field and changes nothing); "
            "then the spec is written with a new `generation` and the controller re-applies "
            "it: the Deployment rolls (kubernetes), the process restarts (local). The "
            "inference keeps its id. `dryRun` returns the planned objects."
        ),
    )
    stop_inference: StopInferenceResult = strawberry.field(
        resolver=inference_resolvers.stop_inference,
        description=(
            "Stop a model's inference: its objects are removed, then it is STOPPED and no "
            "longer the model's (`Model.inference` and `inferencePhase` null, an INFERENCE "
            "DELETED event); the next start is a new inference. Model and weights are kept."
        ),
    )
    stop_inference_by_id: StopInferenceResult = strawberry.field(
        resolver=inference_resolvers.stop_inference_by_id,
        description="Stop an inference by its id (for unmanaged ones, which have no model).",
    )
    toggle_inference: StartInferenceResult = strawberry.field(
        resolver=inference_resolvers.toggle_inference,
        description=(
            "The one-switch form of start/stop: on reuses the last spec (resources it did not "
            "give are the model's) or the defaults; off is stopInference."
        ),
    )
    create_inference_from_manifest: StartInferenceResult = strawberry.field(
        resolver=inference_resolvers.create_inference_from_manifest,
        description=(
            "Apply your own Deployment (+ Service) as an unmanaged inference after checks: "
            "only those kinds, our namespace, nothing privileged, hostPath only under the "
            "allowed roots."
        ),
    )
    configure_catalog: ConfigureCatalogResult = strawberry.field(
        resolver=catalogue_resolvers.configure_catalog,
        description="Set the catalogue's git remote (admin role): URL, branch, folder and "
        "credential, proven against the remote before anything is stored; then sync once.",
        metadata=cost(50),  # talks to the git remote
    )
    refresh_catalog: RefreshCatalogResult = strawberry.field(
        resolver=catalogue_resolvers.refresh_catalog,
        description="Pull the catalogue now (editor role). A remote that is down or refuses, "
        "or a rewritten branch, keeps the last snapshot; `sync.lastError` says why.",
        metadata=cost(50),  # talks to the git remote
    )
    preview_catalog_entry: PreviewCatalogEntryResult = strawberry.field(
        resolver=catalogue_resolvers.preview_catalog_entry,
        description="Parse and validate an entry file without writing anything: its problems "
        "come back in `issues` with line and field.",
    )
    install_catalog_entry: InstallCatalogEntryResult = strawberry.field(
        resolver=catalogue_resolvers.install_catalog_entry,
        description="Create a valid entry's model (as createModel) and optionally start its "
        "inference with the entry's engine, flags and resources.",
    )
    generate_catalog_entry: GenerateCatalogEntryResult = strawberry.field(
        resolver=catalogue_resolvers.generate_catalog_entry,
        description="Draft an entry from a hub repo: its metadata, the GPU fit, and vLLM flags "
        "that agree with the fit (nothing written).",
        metadata=cost(100),  # the hub and the cluster, as gpuFit
    )
    propose_catalog_entry: ProposeCatalogEntryResult = strawberry.field(
        resolver=catalogue_resolvers.propose_catalog_entry,
        description="Validate an entry, commit it on a new branch of the catalogue's remote "
        "and push it (editor role); open the pull request on the forge.",
        metadata=cost(50),  # talks to the git remote
    )
    create_api_key: CreateApiKeyResult = strawberry.field(
        resolver=api_key_resolvers.create_api_key,
        description=(
            "Create an organisation API key for `/v1` and this API (admin role; the key's role "
            "at most yours). The key is in the result once and is never shown again."
        ),
    )
    revoke_api_key: RevokeApiKeyResult = strawberry.field(
        resolver=api_key_resolvers.revoke_api_key,
        description="Revoke an API key at once (admin role). Revoking twice is not an error.",
    )


@strawberry.type(description="Live streams over the `graphql-transport-ws` WebSocket protocol.")
class Subscription:
    """Root subscription type."""

    heartbeat: AsyncGenerator[Heartbeat, None] = strawberry.subscription(
        resolver=stream_heartbeat,
        description=(
            "A beat every `intervalSeconds` (0.1 to 300), so a client can tell a quiet stream "
            "from a dead one. Needs authentication in `connection_init`."
        ),
    )
    model_events: AsyncGenerator[Event, None] = strawberry.subscription(
        resolver=event_resolvers.stream_model_events,
        description=(
            "Every change of your organisation's models and their downloads (phase changes, "
            "progress at most once per second per download), live. With `after`, first what "
            "the log still holds after that cursor, then live, with no gap: a RESYNC_REQUIRED "
            "event says events were trimmed from the log before they reached you (the cursor "
            "is older than the log, or a burst outran this server), so re-read with queries; "
            "OVERFLOW ends a stream that fell behind (resubscribe with its cursor). The socket "
            "closes with 4401 when the token expires."
        ),
    )
    inference_events: AsyncGenerator[Event, None] = strawberry.subscription(
        resolver=event_resolvers.stream_inference_events,
        description=(
            "Every change of your organisation's inference services, with the same `after`, "
            "RESYNC_REQUIRED and OVERFLOW rules as `modelEvents`."
        ),
    )
    storage_alerts: AsyncGenerator[Event, None] = strawberry.subscription(
        resolver=event_resolvers.stream_storage_alerts,
        description=(
            "ALERT events: a storage location crossed its usage threshold, up (phase "
            "ALERTING) or back down (CLEAR), recorded once by the leading replica; server-wide "
            "(every organisation sees them). The same `after`, RESYNC_REQUIRED and OVERFLOW "
            "rules as `modelEvents`."
        ),
    )
    download_progress: AsyncGenerator[Weights, None] = strawberry.subscription(
        resolver=event_resolvers.stream_download_progress,
        description=(
            "A LOCAL model's download: its current state and progress at once, then each "
            "change (at most once per second), ending after READY, FAILED or CANCELLED."
        ),
    )
