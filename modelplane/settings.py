"""Service settings: one pydantic-settings class, validated once at start-up and passed down.

Every knob is an environment variable prefixed ``MODELPLANE_`` (``MODELPLANE_MONGODB_URI``...).
Nothing here is read at import time: :func:`load_settings` builds the object, the CLI calls it
once and hands it to the app factory, and lower layers receive plain values from it.

When nothing is configured the service runs on *embedded defaults*: a FerretDB process started
from the testbed cache with its data under ``./.state/``, the ``local`` runtime, and a signing
key generated into the state directory so a development admin token can be printed.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pymongo.errors import InvalidURI
from pymongo.uri_parser import parse_uri

from controllers.downloading import DownloadOptions
from services.gateway import GatewayLimits
from storage.events import DEFAULT_POLL_INTERVAL

MIN_SECRET_KEY_LENGTH = 32


class Environment(StrEnum):
    """Where the service runs: development allows embedded defaults, production refuses them."""

    DEVELOPMENT = "development"
    PRODUCTION = "production"


class RuntimeKind(StrEnum):
    """Which execution engine runs downloads and inference (ARCHITECTURE.md decision 3)."""

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
    """Hosts REMOTE_API URLs may use even if they resolve to link-local addresses."""

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

    @property
    def events_max_count(self) -> int | None:
        """The event log's count cap: the setting, or 5,000 on the embedded FerretDB."""
        if self.events_max is None and self.embedded_database:
            return 5_000
        return self.events_max

    def download_env(self) -> tuple[tuple[str, str], ...]:
        """The downloader's knobs as environment for a download Job's pod."""
        return (
            ("MODELPLANE_DOWNLOAD_PARALLEL_FILES", str(self.download_parallel_files)),
            ("MODELPLANE_DOWNLOAD_CHUNK_MIB", str(self.download_chunk_mib)),
            ("MODELPLANE_DOWNLOAD_STALL_SECONDS", f"{self.download_stall_seconds:g}"),
            ("MODELPLANE_DOWNLOAD_MAX_RETRIES", str(self.download_max_retries)),
        )

    def gateway_limits(self) -> GatewayLimits:
        """The gateway's limits from the settings."""
        return GatewayLimits(
            requests_per_minute=self.gateway_rpm,
            concurrency=self.gateway_concurrency,
            max_body_bytes=self.gateway_max_body_bytes,
            upstream_timeout_seconds=self.gateway_upstream_timeout_seconds,
        )

    def download_options(self) -> DownloadOptions:
        """The downloader's knobs from the settings."""
        return DownloadOptions(
            parallel_files=self.download_parallel_files,
            chunk_size=self.download_chunk_mib * 1024 * 1024,
            stall_seconds=self.download_stall_seconds,
            max_retries=self.download_max_retries,
        )

    @field_validator("allowed_local_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [Path(part.strip()) for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_remote_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    @property
    def local_roots(self) -> list[Path]:
        """The allowed roots for LOCAL targets, absolute."""
        roots = self.allowed_local_roots or [self.state_dir / "models"]
        return [root.resolve() for root in roots]

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

    @property
    def embedded_database(self) -> bool:
        """True when the service starts its own FerretDB."""
        return self.mongodb_uri is None


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
