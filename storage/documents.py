"""Typed documents stored in MongoDB: desired state and observed status in one document each.

Documents are pydantic models whose ``id`` maps to Mongo's ``_id``. ``revision`` starts at 1
and is bumped by every compare-and-set update. Timestamps are timezone-aware UTC.

``pending_events`` is the write-ahead half of the event log: a write that owes the log an event
names it here, in the same single-document write (``"<revision>:<TYPE>:<ms>"``, see
:func:`pending_marker`), and the recorder removes the mark once the event is stored. A crash in
between leaves the mark for the start-up and periodic recovery (``live/recovering.py``).
"""

from __future__ import annotations

import secrets
import string
from datetime import datetime
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field

from storage.clock import utcnow as utcnow  # noqa: PLC0414  re-exported
from storage.progress import FileProgress as FileProgress  # noqa: PLC0414  re-exported
from storage.progress import FileState as FileState  # noqa: PLC0414  re-exported
from storage.progress import Progress as Progress  # noqa: PLC0414  re-exported
from storage.progress import WeightsStage as WeightsStage  # noqa: PLC0414  re-exported
from storage.selection import FileSelection as FileSelection  # noqa: PLC0414  re-exported
from storage.targets import DownloadTarget as DownloadTarget  # noqa: PLC0414  re-exported
from storage.targets import LocalTarget as LocalTarget  # noqa: PLC0414  re-exported
from storage.targets import PvcTarget as PvcTarget  # noqa: PLC0414  re-exported
from storage.targets import S3Target as S3Target  # noqa: PLC0414  re-exported
from storage.targets import TargetKind as TargetKind  # noqa: PLC0414  re-exported

_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_id(prefix: str, length: int = 5) -> str:
    """Short, random, URL-safe ids such as ``model-a3k9x``."""
    return f"{prefix}-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def pending_marker(revision: int, event_type: str, at: datetime) -> str:
    """The mark a write leaves in ``pending_events`` for the event it owes the log: the
    revision written, the event type and when (milliseconds since the epoch, so that the
    recovery can leave young marks to their writer)."""
    return f"{revision}:{event_type}:{int(at.timestamp() * 1000)}"


class Document(BaseModel):
    """Fields every stored document has."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    id: str = Field(alias="_id")
    revision: int = 1
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    pending_events: list[str] = Field(default_factory=list)
    """Events the writes of this document owe the event log (:func:`pending_marker`)."""

    def to_mongo(self) -> dict[str, Any]:
        """The document as stored: ``_id`` instead of ``id``, enums as their values."""
        return self.model_dump(by_alias=True, mode="python", exclude_none=False)

    @classmethod
    def from_mongo(cls, raw: dict[str, Any]) -> Self:
        """Parse a raw MongoDB document (extra fields written by newer versions are ignored)."""
        return cls.model_validate(raw)


class Role(StrEnum):
    """What a member may do in an organisation; each role includes the ones before it."""

    VIEWER = "viewer"
    EDITOR = "editor"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        """True when this role is at least ``needed``."""
        order = [Role.VIEWER, Role.EDITOR, Role.ADMIN]
        return order.index(self) >= order.index(needed)


class OrganizationDocument(Document):
    """A tenant: every other resource belongs to exactly one organisation."""

    name: str
    display_name: str = ""


class LeaseDocument(Document):
    """Leader election for controllers: one holder at a time until ``expires_at``."""

    holder: str
    expires_at: datetime


class AccessMode(StrEnum):
    """How a model is reached: proxied to a remote API, downloaded and served here, or served
    here by an engine that fetches it itself (``deployModel``: an image and a command, or an
    Ollama model reference; modelplane downloads nothing)."""

    REMOTE_API = "REMOTE_API"
    LOCAL = "LOCAL"
    ENGINE = "ENGINE"


class ModelPhase(StrEnum):
    """Where a model's weights stand.

    ::

        LOCAL:       PENDING --> PULLING --> READY
                        |           |
                        +-----------+------> FAILED --(retry)--> PENDING
        REMOTE_API, ENGINE:  READY (nothing to download)
    """

    PENDING = "PENDING"
    PULLING = "PULLING"
    READY = "READY"
    FAILED = "FAILED"


class InferencePhase(StrEnum):
    """Where an inference service stands.

    ::

        (start) --> PENDING --> CREATING --> RUNNING <--> CRASH_LOOP_BACK_OFF
                       |           |            |              |
                       +-----------+------------+--------------+--> FAILED
        (stop)  --> any phase --> STOPPED --(start)--> PENDING

    PENDING: accepted, or waiting for something outside our control (no GPU free, image pull).
    CREATING: objects written / process launched, not ready yet. FAILED: will not come up
    without a change (bad image, missing secret, program not found).
    """

    PENDING = "PENDING"
    CREATING = "CREATING"
    RUNNING = "RUNNING"
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    CRASH_LOOP_BACK_OFF = "CRASH_LOOP_BACK_OFF"


class ModelSource(BaseModel):
    """Where a model comes from. The token itself lives in the secret store, never here."""

    url: str
    """Normalised: the repo id for LOCAL, the OpenAI-compatible base URL for REMOTE_API; for
    ENGINE what the engine fetches (a vLLM command's ``--model``, the Ollama model) or else
    the image."""
    access_mode: AccessMode
    revision: str | None = None
    has_token: bool = False
    selection: FileSelection = Field(default_factory=FileSelection)
    """LOCAL: which files of the repo the download takes (none stored: every file)."""


class Resources(BaseModel):
    """Kubernetes quantities for serving the model."""

    cpu: str | None = None
    memory: str | None = None
    gpu: int | None = None


class HubFacts(BaseModel):
    """What the hub said about a LOCAL model when it was added."""

    commit_sha: str | None = None
    parameters: int | None = None
    weight_bytes: int | None = None
    architecture: str | None = None
    license: str | None = None
    gated: bool = False
    pipeline_tag: str | None = None
    library_name: str | None = None


class ModelPhaseEntry(BaseModel):
    """One entry of a model's phase history (kept by :mod:`storage.history`)."""

    phase: ModelPhase
    entered_at: datetime = Field(default_factory=utcnow)
    reason: str | None = None


class ModelDocument(Document):
    """A model in an organisation's catalogue: desired state and observed status together."""

    organization_id: str
    name: str
    name_key: str
    """``name`` while the model lives; ``name#id`` once deleted, freeing the name for reuse."""
    display_name: str
    description: str | None = None
    icon: str | None = None
    label: str | None = None
    tags: list[str] = Field(default_factory=list)
    source: ModelSource
    download_target: DownloadTarget | None = None
    resources: Resources = Field(default_factory=Resources)
    hub: HubFacts | None = None
    secret_ref: str | None = None
    """Key of the model's credentials in the secret store (kubernetes Secret or encrypted doc)."""
    weights_id: str | None = None
    phase: ModelPhase = ModelPhase.PENDING
    message: str | None = None
    inference_phase: InferencePhase | None = None
    """A copy of the phase of the model's inference, kept by the inference controller (it
    lags the inference's own write: decide from the inference document, list with this)."""
    managed: bool = True
    is_deleted: bool = False
    deletion_time: datetime | None = None
    created_by: str | None = None
    phase_history: list[ModelPhaseEntry] = Field(default_factory=list)
    """Every phase change, oldest first, at most ``storage.history.HISTORY_LIMIT`` (written in
    the same compare-and-set as the phase, by :meth:`~storage.collection.Repository.update`)."""


class EncryptedSecretDocument(Document):
    """Credentials encrypted with the service's secret key (local runtime)."""

    organization_id: str
    owner_id: str
    ciphertext: bytes


class WeightsState(StrEnum):
    """Where a download stands.

    ::

        PENDING --> PULLING --> READY
           ^           |
           |           +------> FAILED ----+
           |           +------> CANCELLED -+--(retryDownload)--> PENDING
    """

    PENDING = "PENDING"
    PULLING = "PULLING"
    READY = "READY"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class WeightsFile(BaseModel):
    """A file to fetch, with what the hub promised about it."""

    path: str
    size: int
    sha256: str | None = None
    """LFS sha256; None for small git files, which are checked against their git blob id."""
    blob_id: str | None = None


class VolumeUsage(BaseModel):
    """Filesystem figures of a download's volume, measured where the download ran."""

    used: int
    free: int
    total: int
    measured_at: datetime = Field(default_factory=utcnow)


class WeightsDeletion(BaseModel):
    """deleteWeights asked the leading controller to remove these weights: it halts the
    download, removes the files, detaches the models and deletes the record; or, when the
    target refuses, keeps everything and writes ``refused`` (the reason) here."""

    request: str
    """Which call asked (it waits for the outcome of its own request)."""
    refused: str | None = None


class WeightsStateEntry(BaseModel):
    """One entry of a weights' state history (kept by :mod:`storage.history`)."""

    state: WeightsState
    entered_at: datetime = Field(default_factory=utcnow)
    reason: str | None = None


class DownloadAttempt(BaseModel):
    """One run of a download, from entering PULLING to leaving it (kept by
    :mod:`storage.history` in the same write as the state change)."""

    attempt: int
    """The weights' ``attempt`` counter while it ran."""
    started_at: datetime = Field(default_factory=utcnow)
    ended_at: datetime | None = None
    outcome: WeightsState = WeightsState.PULLING
    """READY, FAILED or CANCELLED once ended; PULLING while in progress."""
    bytes_fetched: int = 0
    """Bytes this attempt fetched (its last progress record: done less resumed)."""
    bytes_resumed: int = 0
    """Bytes already stored when it began (a resumed attempt does not fetch them again)."""
    reason: str | None = None


class WeightsDocument(Document):
    """Downloaded (or downloading) weights: one repo at one commit in one place."""

    organization_id: str
    repo_id: str
    requested_revision: str | None = None
    commit_sha: str
    target: DownloadTarget
    location: str
    """Directory for LOCAL/PVC targets, ``s3://bucket/prefix/<repo>/<commit>`` for S3 (with
    ``-files-<digest>`` for a subset, :meth:`FileSelection.digest`)."""
    selection: FileSelection = Field(default_factory=FileSelection)
    """The allow/ignore patterns ``files`` were chosen by: part of the copy's identity (none
    stored, as in documents older than patterns: every file)."""
    prefetched: bool = False
    """Asked for by ``downloadWeights``, on their own: the download goes on while no model
    uses them (the weights' own reconcile drives it), and a model deleted leaves them."""
    files: list[WeightsFile] = Field(default_factory=list)
    state: WeightsState = WeightsState.PENDING
    message: str | None = None
    progress: Progress | None = None
    model_ids: list[str] = Field(default_factory=list)
    secret_ref: str | None = None
    attempt: int = 0
    """Bumped by retryDownload; a runner whose attempt is stale stops."""
    volume: VolumeUsage | None = None
    """The target filesystem when the download finished (how PVC usage is known)."""
    deletion: WeightsDeletion | None = None
    """A removal asked for and not yet done (``refused`` None), or refused (why)."""
    progress_attempt: int | None = None
    """The attempt that wrote ``progress`` (an older attempt's figures are not this one's)."""
    progress_baseline: int | None = None
    """Bytes already stored when the attempt that wrote ``progress`` began (its first
    runner's ``bytes_resumed``; a runner taking over the attempt resumes from more)."""
    state_history: list[WeightsStateEntry] = Field(default_factory=list)
    """Every state change, oldest first, bounded like a model's ``phase_history``."""
    attempts: list[DownloadAttempt] = Field(default_factory=list)
    """Every download attempt, oldest first, at most ``storage.history.ATTEMPTS_LIMIT``."""


class LedgerDocument(Document):
    """Completed chunks of one file of one download: what a restart may skip."""

    weights_id: str
    path: str
    chunk_size: int
    chunks: list[int] = Field(default_factory=list)
    upload_id: str | None = None
    """S3 multipart upload id, resumed with ListParts."""


class InferenceEngine(StrEnum):
    """What serves a model: an engine image we know how to run, or a command of the user's."""

    VLLM = "VLLM"
    OLLAMA = "OLLAMA"
    LITELLM_PROXY = "LITELLM_PROXY"
    CUSTOM = "CUSTOM"


class EnvVarSpec(BaseModel):
    """One environment variable: a literal value or a reference to a Secret key."""

    name: str
    value: str | None = None
    secret_name: str | None = None
    secret_key: str | None = None


class Toleration(BaseModel):
    """A Kubernetes toleration, as given by the user."""

    key: str | None = None
    operator: str = "Equal"
    value: str | None = None
    effect: str | None = None


class AutoscalingSpec(BaseModel):
    """Replica bounds and the metric that moves between them. The defaults are the
    organisation API's (AIBrix): ``num_requests_running`` at 40, 1 to 8 replicas, 3 minutes
    before scaling down."""

    min_replicas: int = 1
    max_replicas: int = 8
    target_metric: str = "num_requests_running"
    """``cpu`` or ``memory`` (utilisation percent), else a pod metric the engine exports (vLLM's
    ``num_requests_running`` by default, what the organisation API's AIBrix autoscaler reads)."""
    target_value: int = 40
    scale_down_delay_seconds: int = 180
    """How long load must stay low before replicas are removed (the organisation API's 3m)."""


class LiteLLMSpec(BaseModel):
    """How a LITELLM_PROXY inference routes: every model, one model, or a full config."""

    mode: str = "WILDCARD"
    """WILDCARD (``*`` to the upstream), SINGLE (the model's name only) or CONFIG (as given)."""
    model: str | None = None
    """LiteLLM's model: ``provider/name`` (SINGLE) or ``provider/*`` / ``*`` (WILDCARD); None:
    ``openai/<name>`` / ``openai/*``."""
    config_yaml: str | None = None
    api_key_secret_name: str | None = None
    api_key_secret_key: str | None = None


class InferenceSpec(BaseModel):
    """What to run. Resources not given come from the model's ``resources`` (the Playground
    API: they are the inference's requirements), then the organisation API's defaults: 1 GPU,
    cpu 1, memory 2Gi; port 8000."""

    engine: InferenceEngine | None = InferenceEngine.VLLM
    """None for a REMOTE_API model: a gateway route, no workload."""
    image: str | None = None
    image_pull_policy: str = "IfNotPresent"
    command: list[str] | None = None
    args: list[str] | None = None
    replicas: int = 1
    cpu: str = "1"
    memory: str = "2Gi"
    gpu: int = 1
    gpu_type: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    port: int = 8000
    health_path: str | None = None
    """Readiness path; None: the engine's own (``/health`` for vLLM)."""
    initial_delay_seconds: int = 60
    ollama_model: str | None = None
    """What Ollama pulls; None: ``hf.co/<repo>`` of the model."""
    engine_args: list[str] = Field(default_factory=list)
    """Extra flags appended to the command line modelplane builds (VLLM only):
    :mod:`controllers.inference.engine_args`."""
    context_length: int | None = None
    """vLLM's ``--max-model-len`` (and the context gpuFit sizes the KV cache for); None: the
    engine's default, the model's whole context."""
    upstream_timeout_seconds: float | None = None
    """How long the ``/v1`` gateway waits for this inference's response headers, and then
    between two chunks of its body; None means ``MODELPLANE_GATEWAY_UPSTREAM_TIMEOUT_SECONDS``."""
    env: list[EnvVarSpec] = Field(default_factory=list)
    autoscaling: AutoscalingSpec | None = None
    litellm: LiteLLMSpec | None = None
    service_monitor: bool | None = None
    """A Prometheus ServiceMonitor: True required (refused without its CRD), False never, None
    when the cluster has the CRD."""
    resources_given: list[str] = Field(default_factory=list)
    """Which of ``cpu``, ``memory`` and ``gpu`` the start gave explicitly; the others came
    from the model's ``resources`` (or the defaults), and a toggle back on takes them from the
    model again, so an ``updateModel`` of its resources is honoured."""


class PhaseEntry(BaseModel):
    """One entry of an inference's phase history."""

    phase: InferencePhase
    entered_at: datetime = Field(default_factory=utcnow)
    reason: str | None = None
    message: str | None = None


class WorkloadCondition(BaseModel):
    """One condition the runtime reports on an inference's workload (a Deployment's
    ``Available``, ``Progressing``...), without its timestamps (they would make every
    observation a write)."""

    type: str
    status: str
    reason: str | None = None
    message: str | None = None


class AutoscalerKind(StrEnum):
    """Which autoscaler moves an inference's replicas (manifests.render_autoscaler)."""

    HORIZONTAL_POD_AUTOSCALER = "HORIZONTAL_POD_AUTOSCALER"
    AIBRIX_POD_AUTOSCALER = "AIBRIX_POD_AUTOSCALER"


class AutoscalerStatus(BaseModel):
    """What an inference's autoscaler reports in its own status (None: it has not said). Its
    replica counts are not kept: the Deployment's are fresher (the autoscaler writes its
    ``desiredReplicas`` into the Deployment's ``spec.replicas`` and refreshes its own copy only
    every sync period)."""

    kind: AutoscalerKind
    current_value: float | None = None
    """The scaling metric's current value (a percent for cpu/memory utilisation)."""
    value_message: str | None = None
    """Why ``current_value`` is None, for a person; None when it is known."""
    last_scale_time: datetime | None = None


class InferenceDocument(Document):
    """An inference service: desired state (``enabled``, ``spec``) and observed status.

    Managed inferences belong to a model (one live inference per model, unique on
    ``active_key``); unmanaged ones were created from a user's manifest or found in the
    namespace with our labels, and carry the manifest they run.
    """

    organization_id: str
    model_id: str | None = None
    model_name: str
    """The name clients use (the gateway routes on it; vLLM's ``--served-model-name``)."""
    name: str
    """Kubernetes object name: the model's name, suffixed when taken (:mod:`services.naming`);
    ``inf-<id>`` for inferences created before, kept for their life."""
    active_key: str
    """``model_id`` (or the id) while the document lives; ``<id>#deleted`` once deleted."""
    managed: bool = True
    display_name: str | None = None
    """createInferenceFromManifest's ``displayName`` (the organisation API's YAML endpoint)."""
    description: str | None = None
    tags: list[str] | None = None
    runtime: str = "local"
    enabled: bool = True
    generation: int = 1
    """Bumped by every start with a new spec; status older than it is stale."""
    spec: InferenceSpec = Field(default_factory=InferenceSpec)
    manifest: str | None = None
    """The applied objects of an unmanaged inference (Deployment and optional Service), as a
    JSON list: label keys contain dots, which MongoDB-compatible servers refuse as field names."""
    phase: InferencePhase = InferencePhase.PENDING
    reason: str | None = None
    message: str | None = None
    replicas: int = 0
    ready_replicas: int = 0
    current_replicas: int | None = None
    """Replicas that exist now (a Deployment's ``status.replicas``); None: unknown."""
    available_replicas: int | None = None
    updated_replicas: int | None = None
    """Replicas running the current spec; None: unknown."""
    conditions: list[WorkloadCondition] | None = None
    """The workload's conditions; None where the runtime has none (a local process)."""
    autoscaler: AutoscalerStatus | None = None
    """The autoscaler's own status; None without autoscaling or before it is observed."""
    endpoint: str | None = None
    """OpenAI-compatible base URL (ends in ``/v1``) where the service answers once RUNNING."""
    phase_history: list[PhaseEntry] = Field(default_factory=list)
    observed_generation: int = 0
    created_by: str | None = None
    is_deleted: bool = False


class ApiKeyDocument(Document):
    """An organisation API key: only its SHA-256 is stored, the key itself is shown once.

    Keys are 32 random bytes, so a fast hash is enough (nothing to brute-force); ``prefix`` is
    the key's first characters, kept so people can tell their keys apart in a listing.
    """

    organization_id: str
    name: str
    role: Role
    prefix: str
    key_hash: str
    """Hex SHA-256 of the whole key (unique)."""
    created_by: str | None = None
    revoked_at: datetime | None = None
    revoked_by: str | None = None
