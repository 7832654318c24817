"""Service settings: one pydantic-settings class, validated once at start-up and passed down.

Every knob is an environment variable prefixed ``MODELPLANE_`` (``MODELPLANE_MONGODB_URI``...).
Nothing here is read at import time: :func:`load_settings` builds the object, the CLI calls it
once and hands it to the app factory, and lower layers receive plain values from it.

When nothing is configured the service runs on *embedded defaults*: a FerretDB process started
from the testbed cache with its data under ``./.state/``, the ``local`` runtime, and a signing
key generated into the state directory so a development admin token can be printed.
"""

from __future__ import annotations

import ipaddress
import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pymongo.errors import InvalidURI
from pymongo.uri_parser import parse_uri

from controllers.alerts.deciding import DEFAULT_HYSTERESIS, DEFAULT_THRESHOLD, AlertPolicy
from controllers.alerts.measuring import normalise_s3_location
from controllers.transfer.downloader import DownloadOptions
from integrations.addresses import OutboundPolicy
from live import DEFAULT_POLL_INTERVAL
from schema.limits import GraphQLLimits
from services.gateway import GatewayLimits

MIN_SECRET_KEY_LENGTH = 32


class Environment(StrEnum):
    """Where the service runs: development allows embedded defaults, production refuses them."""

    DEVELOPMENT = "development"
    PRODUCTION = "production"


class RuntimeKind(StrEnum):
    """Which execution engine runs downloads and inference (docs/architecture.md decision 3)."""

    LOCAL = "local"
    KUBERNETES = "kubernetes"


class SettingsError(Exception):
    """A setting is missing or wrong; the message names the setting and says what to do."""


class Settings(BaseSettings):
    """All configuration of one modelplane process."""

    model_config = SettingsConfigDict(
        env_prefix="MODELPLANE_", env_file=None, extra="ignore", frozen=True
    )

    environment: Environment = Environment.DEVELOPMENT
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    log_level: str = "INFO"
    log_format: str = Field(default="json", pattern="^(json|console)$")

    state_dir: Path = Path(".state")
    """Embedded FerretDB data, local-runtime weights and generated keys live here."""

    mongodb_uri: SecretStr | None = None
    """``mongodb://`` URI; unset means start the embedded FerretDB (development only)."""
    mongodb_database: str = Field(default="modelplane", pattern=r"^[A-Za-z0-9_-]{1,63}$")
    mongodb_timeout_seconds: float = Field(default=5.0, gt=0)
    ferretdb_binary: Path | None = None
    """Binary for the embedded FerretDB; defaults to the testbed cache (deploy/testbed/build.sh)."""

    runtime: RuntimeKind = RuntimeKind.LOCAL
    kubeconfig: Path | None = None
    """Kubeconfig for the kubernetes runtime; unset means in-cluster service account config."""
    namespace: str = Field(default="modelplane", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

    hf_endpoint: str = "https://huggingface.co"
    """Hugging Face Hub base URL (a mirror or the local test hub)."""

    secret_key: SecretStr | None = None
    """Key for encrypting secrets at rest and signing development tokens (>= 32 chars)."""

    oidc_issuer: str | None = None
    """Issuer whose JWKS signs bearer tokens; unset means only development tokens are accepted."""
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    """JWKS document URL; defaults to the issuer's discovery document."""
    organization_claim: str = "org"
    role_claim: str = "role"

    allowed_local_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    """Directories LOCAL download targets must resolve inside (comma separated);
    defaults to ``<state_dir>/models``."""

    allowed_remote_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Host names (comma separated) REMOTE_API URLs and S3 endpoints may use whatever they
    resolve to, even loopback, private, link-local or metadata addresses: the operator vouches
    for them (see :mod:`integrations.addresses`)."""

    run_controllers: bool = True
    """Run the download controller in this process (the local runtime's downloads)."""
    download_parallel_files: int = Field(default=4, ge=1, le=32)
    download_chunk_mib: int = Field(default=32, ge=1, le=1024)
    download_stall_seconds: float = Field(default=30.0, gt=0)
    download_max_retries: int = Field(default=5, ge=0, le=100)

    download_image: str = Field(default="modelplane:latest", min_length=1)
    """Image of download Jobs (kubernetes runtime): this project's image."""
    download_image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    download_mongodb_secret: str = Field(
        default="modelplane-mongodb", pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
    )
    """Secret in the namespace whose ``uri`` key download pods connect with (the chart's)."""
    download_service_account: str | None = None
    download_cpu_limit: str = "2"
    download_memory_limit: str = "2Gi"
    download_deadline_seconds: int = Field(default=6 * 3600, ge=60)
    """activeDeadlineSeconds of a download Job."""
    download_backoff_limit: int = Field(default=2, ge=0, le=20)
    events_size_mib: int = Field(default=64, ge=1, le=65536)
    """Size of the capped ``events`` collection (the log subscriptions replay from)."""
    events_max: int | None = Field(default=None, ge=100)
    """Also cap the log by count; unset: 5,000 on the embedded FerretDB (which scans the whole
    log per query), none on MongoDB."""
    events_poll_seconds: float = Field(default=DEFAULT_POLL_INTERVAL, gt=0, le=5)
    """Polling interval of the log tail where the server cannot await data (FerretDB)."""
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    """The event loop ``serve`` runs on. uvloop makes subscription fan-out cheaper
    (``bench/fanout.py``) but is not the default: the test suite runs on asyncio."""
    subscription_flush_ms: float = Field(default=20.0, ge=0, le=1000)
    """While events keep coming, write each subscriber connection at most this often (all its
    pending messages in one write); 0: write at the end of every event-loop iteration."""
    vllm_image: str = Field(default="vllm/vllm-openai:v0.11.0", min_length=1)
    """Default image of VLLM inferences (kubernetes runtime)."""
    ollama_image: str = Field(default="ollama/ollama:0.12.6", min_length=1)
    """Default image of OLLAMA inferences."""
    litellm_image: str = Field(default="ghcr.io/berriai/litellm:main-v1.78.5-stable", min_length=1)
    """Default image of LITELLM_PROXY inferences."""
    s3_sync_image: str = Field(default="amazon/aws-cli:2.31.18", min_length=1)
    """Image of the init step that copies S3 weights into an inference pod."""
    engine_restart_max_seconds: float = Field(default=300.0, gt=0)
    """Longest backoff between restarts of a local engine process."""
    pvc_mount_path: Path = Path("/weights")
    """Where download pods mount a PVC target (and where ``modelplane download`` finds it)."""
    gateway_rpm: int = Field(default=600, ge=0)
    """Requests per minute one credential (API key or token subject) may send to ``/v1``;
    0 for no limit. Counted per process."""
    gateway_concurrency: int = Field(default=32, ge=0)
    """Requests one credential may have in flight on ``/v1`` (streams count until they end);
    0 for no limit. Counted per process."""
    gateway_max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest request body ``/v1`` accepts (413 beyond it)."""
    gateway_upstream_timeout_seconds: float = Field(default=300.0, gt=0)
    """How long ``/v1`` waits for an upstream's response headers, then between two chunks of
    its body (504 before the headers; an error event mid-stream). An inference's
    ``upstream_timeout_seconds`` (startInference input ``upstreamTimeoutSeconds``) overrides it."""
    gateway_route_cache_seconds: float = Field(default=2.0, ge=0, le=60)
    """How long ``/v1`` keeps a resolved route (model name to endpoint and key) before
    reading the inference again; 0 reads it per request. A stopped model stays routed to its
    old endpoint for up to this long."""
    # security: runtime
    allow_local_runtime_in_production: bool = False
    """Production refuses the ``local`` runtime (engines run on the control-plane host, for one
    trusted operator) unless this is true."""
    allow_host_commands: bool = False
    """On the local runtime, let ADMINs start CUSTOM engines or give any engine a command,
    args or program-loading environment variable (``PATH``, ``LD_*``, ``PYTHON*``...): these
    run programs of their choice on this host. Off: refused for everyone."""
    engine_user: str | None = "nobody"
    """When the server runs as root, local engine processes run as this user (its primary
    group, no supplementary groups, ``HOME`` set to the engine's work directory); empty: as
    root (not recommended). A server that is not root cannot switch: engines run as its user."""
    manifest_allow_external_services: bool = False
    """Let ``createInferenceFromManifest`` Services be NodePort or LoadBalancer or carry
    ``externalIPs``; off: ClusterIP only."""
    # security: paths
    download_checkpoint_mib: int = Field(default=4, ge=1, le=1024)
    """Inside a chunk, a LOCAL or PVC download fsyncs and records its progress after this many
    MiB, so a killed download resumes there instead of at the chunk's (or a small file's)
    first byte. S3 targets resume by whole parts (at least 5 MiB, S3's minimum part)."""
    # security: limits
    graphql_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Largest ``/graphql`` HTTP request body; refused with 413 while it streams in, before it
    is buffered (WebSocket messages have their own cap in the server)."""
    graphql_max_document_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest GraphQL document (UTF-8 bytes), checked before it is parsed."""
    graphql_max_tokens: int = Field(default=5_000, ge=100)
    """Most lexical tokens (comments included) in one document; the parser stops there."""
    graphql_max_fields: int = Field(default=500, ge=10)
    """Most field selections in one operation, fragments expanded."""
    graphql_max_aliases: int = Field(default=30, ge=0)
    """Most aliased fields in one operation, fragments expanded."""
    graphql_max_directives: int = Field(default=50, ge=0)
    """Most directives in one operation, fragments expanded."""
    graphql_max_cost: int = Field(default=1_000, ge=1)
    """Highest cost of one operation: the fields' weights (gpuFit 100; clusterStatus, hub
    look-ups 50; logs, weightsUsage 20; inferences 10; mutations and subscriptions 10; other
    resolvers 1), a page's selection counted ``limit`` times."""
    graphql_cache_bytes: int = Field(default=32 * 1024 * 1024, ge=0)
    """Memory (estimated) for parsed and validated documents kept for reuse; 0 keeps none."""
    metrics_token: SecretStr | None = None
    """Bearer token a Prometheus scraper presents to ``/metrics``; unset: only an admin's
    bearer token or API key reads it."""
    # security: sockets
    ws_send_buffer_bytes: int = Field(default=1024 * 1024, ge=64 * 1024, le=1024 * 1024 * 1024)
    """Bytes a WebSocket connection may hold unsent (the client reads too slowly) before it is
    closed with 4008 ("slow reader") and its buffers dropped."""
    ws_max_operations: int = Field(default=100, ge=1, le=10_000)
    """Operations (subscriptions, queries, mutations) one WebSocket connection may have in
    flight; one more is answered with an error."""
    # security: outbound
    allowed_remote_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Loopback or private networks (CIDR, comma separated, e.g. ``10.0.0.0/8``) REMOTE_API
    URLs and S3 endpoints may reach; empty: only public addresses. Link-local, metadata,
    unspecified, multicast and reserved addresses stay refused whatever this says."""

    # security: events
    event_recovery_interval_seconds: float = Field(default=30.0, gt=0, le=3600)
    """How often each replica appends the events that document writes owe the log (a writer
    killed between its write and its event leaves a mark in the document); also at start-up."""
    event_recovery_grace_seconds: float = Field(default=10.0, ge=0, le=3600)
    """How old such a mark must be before the recovery appends its event instead of the writer
    (a racing writer is harmless: the log holds one event per write either way)."""
    dashboard_dir: Path | None = None
    """Built operator dashboard (``index.html`` and its assets) served at ``/``; defaults to
    ``modelplane/static`` inside the package, where ``make dashboard`` writes it."""
    # issue 16: replicas
    controller_lease_seconds: float = Field(default=15.0, ge=1, le=600)
    """How long a replica's hold on a controller's lease lasts without renewal (renewed every
    third of it): after a leader dies, another replica leads within about this long. Shorter
    means a faster take-over, but a leader paused longer than this (a stalled event loop, a
    partition) loses the lease and stops its work."""

    # issue 16: downloads
    weights_removal_wait_seconds: float = Field(default=30.0, gt=0, le=600)
    """How long ``deleteWeights`` waits for the leading replica to remove the files and the
    record (or to report the target's refusal) before answering that the removal goes on."""

    # fidelity-k8s
    refuse_unfit_gpus: bool = True
    """Refuse at ``startInference`` a GPU count (per replica) or ``gpuType`` no node can ever
    offer (by allocatable), instead of accepting an inference that stays PENDING. Turn it off
    on a cluster whose node autoscaler adds GPU nodes only when a pod asks for them."""
    pvc_default_size_gi: int = Field(default=20, ge=1, le=65536)
    """Size in GiB of the claim created for a PVC download target that gives no size and does
    not exist yet (the organisation API's default ``storage_size``); an existing claim is used
    as it is."""

    # issue 18: catalogue
    catalogue_sync_seconds: float = Field(default=300.0, ge=0, le=86_400)
    """How often the leading replica pulls every organisation's catalogue (``refreshCatalog``
    pulls at once on any replica); 0 turns the schedule off."""
    catalogue_cache_dir: Path | None = None
    """Where each replica keeps its bare git repositories of the catalogues; default
    ``<state_dir>/catalogues``. A cache: deleting it costs one full fetch."""
    catalogue_git_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    """Longest one git command (fetch, push) may take before the remote counts as unreachable."""
    catalogue_author_name: str = "modelplane"
    """Author and committer name of the commits ``proposeCatalogEntry`` pushes."""
    catalogue_author_email: str = "modelplane@localhost"
    """Author and committer e-mail of those commits."""

    # issue 18: vLLM compatibility
    vllm_search_scan: int = Field(default=200, ge=1, le=1000)
    """How many hub results ``huggingFaceSearch(vllmCompatible: ...)`` asks the hub for (one
    request, each with its config summary) before keeping those whose ``config.json``
    architectures vLLM serves (or not) and returning the first ``limit``: a rare match beyond
    this many is not found, a larger value makes each filtered search's answer bigger."""

    # issue 18: storage alerts
    storage_alert_threshold: float = Field(default=DEFAULT_THRESHOLD, gt=0, le=1)
    """Usage fraction (used / capacity, above 0 and at most 1) at which a weights location (a
    local root, a PVC, an S3 prefix with a quota) alerts: an ALERT event and a webhook message."""
    storage_alert_thresholds: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    """Per-location thresholds as JSON, keyed as ``weightsUsage`` names the location, e.g.
    ``{"pvc://models": 0.95, "/srv/models": 0.8}``; the others use the default."""
    storage_alert_hysteresis: float = Field(default=DEFAULT_HYSTERESIS, ge=0, lt=1)
    """How far (a fraction of capacity) usage must fall below the threshold before an alert
    clears, so a location hovering at its threshold does not flap."""
    storage_alert_s3_quotas: Annotated[dict[str, int], NoDecode] = Field(default_factory=dict)
    """Bytes allowed per S3 bucket prefix, as JSON, e.g. ``{"s3://weights/team-a": 5e12}``: a
    bucket has no capacity, so only a prefix with a quota has usage figures and alerts (its use
    is the READY weights stored under it)."""
    storage_alert_interval_seconds: float = Field(default=60.0, gt=0, le=86_400)
    """How often each replica measures every location (its gauges) and the leading replica
    decides the crossings."""
    storage_alert_webhook_url: SecretStr | None = None
    """Slack-compatible incoming webhook (http or https) POSTed ``{"text": ...}`` at each
    crossing; a secret: never logged, never returned. Unset: no messages."""
    storage_alert_webhook_attempts: int = Field(default=5, ge=1, le=20)
    """Attempts per webhook message (exponential backoff from 1 s, capped at 60 s) before it
    is given up with a logged error."""
    storage_alert_webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    """Longest one webhook attempt may take (a receiver that hangs is tried again)."""

    # issue 18: install options
    hub_token_secret: str | None = Field(
        default=None, pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
    )
    """The server-wide hub token, used for hub previews, searches, GPU fits and downloads of
    models (and prefetched weights) that have no token of their own: the name of an entry of
    the runtime's secret store, a Secret in the managed namespace (kubernetes; download Jobs
    get it through a ``secretKeyRef``) or an encrypted entry in MongoDB (local; ``modelplane
    hub-token set NAME`` stores one). Never returned, never logged; unset: no server token."""
    hub_token_key: str = Field(default="hf-token", pattern=r"^[-._a-zA-Z0-9]{1,253}$")
    """The key of the token in that entry (a Secret's data key)."""

    @property
    def events_max_count(self) -> int | None:
        """The event log's count cap: the setting, or 5,000 on the embedded FerretDB."""
        if self.events_max is None and self.embedded_database:
            return 5_000
        return self.events_max

    def download_env(self) -> tuple[tuple[str, str], ...]:
        """The downloader's knobs, and the outbound policy its S3 client connects under, as
        environment for a download Job's pod (empty values left out: Kubernetes drops them)."""
        knobs = (
            ("MODELPLANE_DOWNLOAD_PARALLEL_FILES", str(self.download_parallel_files)),
            ("MODELPLANE_DOWNLOAD_CHUNK_MIB", str(self.download_chunk_mib)),
            ("MODELPLANE_DOWNLOAD_STALL_SECONDS", f"{self.download_stall_seconds:g}"),
            ("MODELPLANE_DOWNLOAD_MAX_RETRIES", str(self.download_max_retries)),
            ("MODELPLANE_DOWNLOAD_CHECKPOINT_MIB", str(self.download_checkpoint_mib)),
            ("MODELPLANE_ALLOWED_REMOTE_HOSTS", ",".join(self.allowed_remote_hosts)),
            ("MODELPLANE_ALLOWED_REMOTE_NETWORKS", ",".join(self.allowed_remote_networks)),
        )
        return tuple((name, value) for name, value in knobs if value)

    def outbound_policy(self) -> OutboundPolicy:
        """Where user-given URLs (REMOTE_API, S3 endpoints) may connect."""
        return OutboundPolicy.of(
            hosts=self.allowed_remote_hosts, networks=self.allowed_remote_networks
        )

    def gateway_limits(self) -> GatewayLimits:
        """The gateway's limits from the settings."""
        return GatewayLimits(
            requests_per_minute=self.gateway_rpm,
            concurrency=self.gateway_concurrency,
            max_body_bytes=self.gateway_max_body_bytes,
            upstream_timeout_seconds=self.gateway_upstream_timeout_seconds,
        )

    def graphql_limits(self) -> GraphQLLimits:
        """What one GraphQL operation may ask for, from the settings."""
        return GraphQLLimits(
            max_document_bytes=self.graphql_max_document_bytes,
            max_tokens=self.graphql_max_tokens,
            max_fields=self.graphql_max_fields,
            max_aliases=self.graphql_max_aliases,
            max_directives=self.graphql_max_directives,
            max_cost=self.graphql_max_cost,
            cache_bytes=self.graphql_cache_bytes,
        )

    def download_options(self) -> DownloadOptions:
        """The downloader's knobs from the settings."""
        return DownloadOptions(
            parallel_files=self.download_parallel_files,
            chunk_size=self.download_chunk_mib * 1024 * 1024,
            stall_seconds=self.download_stall_seconds,
            max_retries=self.download_max_retries,
            checkpoint_bytes=self.download_checkpoint_mib * 1024 * 1024,
        )

    @field_validator("allowed_local_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(part.strip()) for part in value.split(",") if part.strip()]
        return value

    @field_validator("engine_user", mode="before")
    @classmethod
    def _empty_user(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("allowed_remote_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_remote_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            return value
        networks = []
        for item in value:
            try:
                networks.append(str(ipaddress.ip_network(str(item).strip(), strict=False)))
            except ValueError:
                raise ValueError(f"{item!r} is not a network such as 10.0.0.0/8") from None
        return networks

    @property
    def local_roots(self) -> list[Path]:
        """The allowed roots for LOCAL targets, absolute."""
        roots = self.allowed_local_roots or [self.state_dir / "models"]
        return [root.resolve() for root in roots]

    @field_validator("storage_alert_thresholds", mode="before")
    @classmethod
    def _parse_thresholds(cls, value: object) -> object:
        found = _json_mapping(value)
        for location, fraction in found.items():
            number = _number(fraction, f"the threshold of {location!r}")
            if not 0 < number <= 1:
                raise ValueError(f"the threshold of {location!r} must be above 0 and at most 1")
            found[location] = number
        return found

    @field_validator("storage_alert_s3_quotas", mode="before")
    @classmethod
    def _parse_quotas(cls, value: object) -> object:
        quotas: dict[str, object] = {}
        for location, size in _json_mapping(value).items():
            number = _number(size, f"the quota of {location!r}")
            if number < 1 or number != int(number):
                raise ValueError(f"the quota of {location!r} must be a whole number of bytes >= 1")
            quotas[normalise_s3_location(location)] = int(number)
        return quotas

    @field_validator("storage_alert_webhook_url")
    @classmethod
    def _check_webhook(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        parsed = urlsplit(value.get_secret_value().strip())
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            # never echo the URL: it is its own credential
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    def storage_alert_policy(self) -> AlertPolicy:
        """Thresholds and hysteresis of the storage alerts."""
        return AlertPolicy(
            threshold=self.storage_alert_threshold,
            overrides=dict(self.storage_alert_thresholds),
            hysteresis=self.storage_alert_hysteresis,
        )

    @field_validator("mongodb_uri")
    @classmethod
    def _check_uri(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        try:
            parse_uri(value.get_secret_value(), validate=True, warn=False)
        except (InvalidURI, ValueError) as exc:
            # The parser's message can quote the URI (and its password): describe, don't echo.
            reason = type(exc).__name__
            raise ValueError(f"not a valid mongodb:// URI ({reason})") from None
        return value

    @field_validator("secret_key")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_KEY_LENGTH:
            raise ValueError(f"must be at least {MIN_SECRET_KEY_LENGTH} characters")
        return value

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> Self:
        if self.environment is Environment.PRODUCTION and self.mongodb_uri is None:
            raise ValueError(
                "MODELPLANE_MONGODB_URI is required in production "
                "(the embedded FerretDB is for development only)"
            )
        return self

    def check_serving(self) -> None:
        """What only the API server needs in production (a download Job's pod needs neither):
        raise :class:`SettingsError` naming the missing setting."""
        if self.environment is Environment.PRODUCTION:
            if self.secret_key is None:
                raise SettingsError("MODELPLANE_SECRET_KEY is required in production")
            if self.oidc_issuer is None:
                raise SettingsError("MODELPLANE_OIDC_ISSUER is required in production")
            if self.runtime is RuntimeKind.LOCAL and not self.allow_local_runtime_in_production:
                raise SettingsError(
                    "MODELPLANE_RUNTIME=local runs engines on this host for one trusted operator; "
                    "production refuses it unless MODELPLANE_ALLOW_LOCAL_RUNTIME_IN_PRODUCTION=true"
                )

    @property
    def embedded_database(self) -> bool:
        """True when the service starts its own FerretDB."""
        return self.mongodb_uri is None


def _json_mapping(value: object) -> dict[str, object]:
    """A JSON object (from the environment) or a mapping, as a dict; ValueError otherwise."""
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError('must be a JSON object such as {"<location>": <value>}') from None
    if not isinstance(value, dict):
        raise ValueError('must be a JSON object such as {"<location>": <value>}')  # noqa: TRY004
    return {str(k): v for k, v in value.items()}


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{what} must be a number")  # noqa: TRY004  (see _json_mapping)
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{what} must be a number") from None


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment (plus overrides) or raise one readable SettingsError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]  # keyword overrides are validated
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False, include_input=False):
            field = ".".join(str(part) for part in error["loc"])
            name = f"MODELPLANE_{field.upper()}" if field else "settings"
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{name}: {message}")
        raise SettingsError("; ".join(lines)) from None
