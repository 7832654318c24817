"""The object graph: everything long-lived the app uses, opened and closed together.

:func:`open_resources` connects everything the service needs (MongoDB, the event log, the
runtime, the hub client, the token verifier, the controllers, the services and the gateway) and
raises :class:`StartupError` with one readable line naming the setting when something is wrong.
Each step is its own function below; the runtime is picked once, in :func:`open_runtime`, and
what differs per runtime comes from its builder (:mod:`modelplane.runtimes`). The controllers
are built in :mod:`modelplane.controller_wiring`. No module-level singletons: the HTTP app
(:mod:`modelplane.app`), the CLI and the tests each open their own."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

from joserfc.jwk import OctKey

from controllers.alerts.watching import StorageWatch
from controllers.downloads.reconciler import DownloadController
from controllers.inference.reconciler import InferenceController
from controllers.inference.workloads import InferenceRuntime
from controllers.runtimes.base import Runtime, RuntimeConfigError
from controllers.runtimes.hub_token import ServerHubToken
from controllers.runtimes.secrets import SecretStore
from integrations.addresses import OutboundPolicy
from integrations.huggingface import HubClient
from live import Broker, EventLogNotCapped, EventRecovery, Recorder
from modelplane import logs
from modelplane.alert_wiring import start_storage_watch
from modelplane.auth import Authenticator, TokenVerifier, load_dev_key
from modelplane.catalogue_wiring import build_catalogue
from modelplane.controller_wiring import start_download_controller, start_inference_controller
from modelplane.embedded import EmbeddedError, FerretDBProcess, default_ferretdb_binary, free_port
from modelplane.gateway_http import Upstreams
from modelplane.runtimes.base import RuntimeParts
from modelplane.runtimes.kubernetes import KubernetesParts
from modelplane.runtimes.local import LocalParts
from modelplane.settings import Environment, RuntimeKind, Settings
from modelplane.sockets import OpenSockets
from modelplane.startup import StartupError
from modelplane.wiring import event_log_for
from resolvers.context import Services
from services.api_keys import ApiKeyService
from services.cluster import ClusterService
from services.deploying import DeployService
from services.gateway import Gateway
from services.history import Deployment, HistoryService
from services.inference import InferenceService
from services.models import ModelPolicy, ModelService
from services.prefetching import PrefetchService
from services.retiring import InferenceRetirement
from services.vllm import VllmService
from services.weights import WeightsService
from storage.alerts import StorageAlertRepository
from storage.client import Client, Database, make_client, ping
from storage.documents import OrganizationDocument, utcnow
from storage.errors import DatabaseUnavailable, DuplicateKey
from storage.repositories import (
    ApiKeyRepository,
    InferenceRepository,
    ModelRepository,
    OrganizationRepository,
    WeightsRepository,
    ensure_indexes,
)

__all__ = [
    "Core",
    "Resources",
    "StartupError",
    "modelplane_version",
    "open_resources",
    "open_runtime",
]

log = logging.getLogger(__name__)

DEFAULT_ORGANIZATION = "default"


def modelplane_version() -> str:
    """The installed package version."""
    try:
        return package_version("modelplane")
    except PackageNotFoundError:
        return "0.0.0+unknown"


@dataclass
class Resources:
    """Everything long-lived the app uses; closed together by :func:`open_resources`."""

    settings: Settings
    client: Client
    database: Database
    runtime: Runtime
    hub: HubClient
    verifier: TokenVerifier
    dev_key: OctKey | None
    services: Services
    downloads: DownloadController | None
    authenticator: Authenticator
    """Bearer JWTs and organisation API keys, for GraphQL and ``/v1`` alike."""
    gateway: Gateway
    upstream: Upstreams
    """The gateway's connection pools to upstreams (closed with the resources)."""
    sockets: OpenSockets
    """Authenticated WebSocket connections, closed when their credential is revoked."""
    inference_controller: InferenceController | None = None
    storage_watch: StorageWatch | None = None
    """This replica's storage watcher (its last measurements feed the gauges)."""


@dataclass(frozen=True)
class Core:
    """What most parts of the graph are built from, opened first."""

    settings: Settings
    database: Database
    parts: RuntimeParts
    """The configured runtime's builder (see :mod:`modelplane.runtimes`)."""
    hub: HubClient
    secrets: SecretStore
    recorder: Recorder
    broker: Broker
    outbound: OutboundPolicy


@dataclass(frozen=True)
class _Controllers:
    downloads: DownloadController | None
    inference: InferenceController | None
    inference_runtime: InferenceRuntime
    """The API's view of the runtime's inferences: built in every replica, controllers or not."""


@asynccontextmanager
async def open_resources(
    settings: Settings, *, outbound: OutboundPolicy | None = None
) -> AsyncIterator[Resources]:
    """Start the embedded database if needed, connect, create indexes, start the runtime.

    ``outbound`` (where user-given URLs may connect) defaults to the settings' policy; a test
    passes one with its own resolver."""
    logs.quiet_wire_loggers()
    outbound = outbound or settings.outbound_policy()
    async with AsyncExitStack() as stack:
        client, database = await _open_database(stack, settings)
        broker, recorder = await _open_events(stack, settings, database)
        parts = await open_runtime(stack, settings)
        secrets = parts.secret_store(database)
        dev_key, verifier = await _open_verifier(settings, database)
        core = Core(
            settings=settings,
            database=database,
            parts=parts,
            hub=_hub_client(settings, secrets),
            secrets=secrets,
            recorder=recorder,
            broker=broker,
            outbound=outbound,
        )
        controllers = _start_controllers(stack, core)
        api_keys, gateway, upstream = _open_gateway(stack, core)
        authenticator, sockets = _open_sockets(settings, broker, verifier, api_keys)
        services = _services(stack, core, api_keys, controllers)
        storage_watch = start_storage_watch(stack, settings, database, recorder=recorder)
        yield Resources(
            settings=settings,
            client=client,
            database=database,
            runtime=parts.runtime,
            hub=core.hub,
            verifier=verifier,
            dev_key=dev_key,
            services=services,
            downloads=controllers.downloads,
            inference_controller=controllers.inference,
            storage_watch=storage_watch,
            authenticator=authenticator,
            gateway=gateway,
            upstream=upstream,
            sockets=sockets,
        )


async def _open_database(stack: AsyncExitStack, settings: Settings) -> tuple[Client, Database]:
    """The MongoDB client (the embedded FerretDB started first when no URI is set), pinged and
    indexed; closed with the stack."""
    uri = settings.mongodb_uri.get_secret_value() if settings.mongodb_uri else None
    if uri is None:
        ferret = FerretDBProcess(
            binary=settings.ferretdb_binary or default_ferretdb_binary(),
            data_dir=(settings.state_dir / "ferretdb").resolve(),
        )
        try:
            ferret.start()
            stack.callback(ferret.stop)
            await ferret.wait_ready()
        except EmbeddedError as exc:
            raise StartupError(str(exc)) from None
        uri = ferret.uri
        log.info("embedded FerretDB started", extra={"port": ferret.port})

    client = make_client(uri, timeout_seconds=settings.mongodb_timeout_seconds)
    stack.push_async_callback(client.close)
    database = client[settings.mongodb_database]
    try:
        await ping(database)
    except DatabaseUnavailable as exc:
        raise StartupError(
            f"MODELPLANE_MONGODB_URI: MongoDB is not reachable within "
            f"{settings.mongodb_timeout_seconds:g} s ({exc.__cause__.__class__.__name__})"
        ) from None
    await ensure_indexes(database)
    return client, database


async def _open_events(
    stack: AsyncExitStack, settings: Settings, database: Database
) -> tuple[Broker, Recorder]:
    """The capped event log (created if missing), its broker (closed with the stack), the
    recorder writers append through, and the recovery of events writers died before
    appending (run now and periodically on every replica; stopped with the stack)."""
    event_log = event_log_for(settings, database)
    try:
        await event_log.ensure()
    except EventLogNotCapped as exc:
        raise StartupError(f"MODELPLANE_MONGODB_URI: {exc}") from None
    recorder = Recorder(event_log)
    recovery = EventRecovery(
        database,
        recorder,
        grace_seconds=settings.event_recovery_grace_seconds,
        interval_seconds=settings.event_recovery_interval_seconds,
    )
    recovery.start()
    stack.push_async_callback(recovery.stop)  # after the broker's close (the stack is LIFO)
    broker = Broker(event_log)
    await broker.start()
    stack.push_async_callback(broker.close)
    return broker, recorder


async def open_runtime(stack: AsyncExitStack, settings: Settings) -> RuntimeParts:
    """The configured runtime's builder, its runtime started (closed with the stack). The one
    place that asks which runtime the settings name."""
    parts: RuntimeParts
    if settings.runtime is RuntimeKind.KUBERNETES:
        parts = KubernetesParts(settings)
    else:
        parts = LocalParts(settings)
    try:
        await parts.runtime.start()
    except RuntimeConfigError as exc:
        raise StartupError(str(exc)) from None
    stack.push_async_callback(parts.runtime.close)
    return parts


def _start_controllers(stack: AsyncExitStack, core: Core) -> _Controllers:
    """Both controllers started (None each when this process runs no controllers), and the
    runtime's local directories created between the two."""
    downloads = start_download_controller(
        stack,
        core.settings,
        core.parts,
        core.database,
        hub=core.hub,
        secrets=core.secrets,
        recorder=core.recorder,
        broker=core.broker,
        outbound=core.outbound,
    )
    core.parts.prepare()
    inference_runtime = core.parts.inference_runtime(core.database)
    inference = start_inference_controller(
        stack,
        core.settings,
        core.parts,
        core.database,
        inference_runtime,
        secrets=core.secrets,
        recorder=core.recorder,
        broker=core.broker,
        outbound=core.outbound,
    )
    return _Controllers(downloads, inference, inference_runtime)


async def _open_verifier(
    settings: Settings, database: Database
) -> tuple[OctKey | None, TokenVerifier]:
    """The development signing key (and the default organisation) in development, and the
    bearer token verifier."""
    dev_key = None
    if settings.environment is Environment.DEVELOPMENT:
        secret = settings.secret_key.get_secret_value() if settings.secret_key else None
        dev_key = load_dev_key(secret_key=secret, state_dir=settings.state_dir)
        await _ensure_organization(database, DEFAULT_ORGANIZATION)
    verifier = TokenVerifier(
        dev_key=dev_key,
        oidc_issuer=settings.oidc_issuer,
        oidc_audience=settings.oidc_audience,
        jwks_url=settings.oidc_jwks_url,
        organization_claim=settings.organization_claim,
        role_claim=settings.role_claim,
    )
    return dev_key, verifier


def _services(
    stack: AsyncExitStack, core: Core, api_keys: ApiKeyService, controllers: _Controllers
) -> Services:
    """The services the resolvers call (the catalogue's pull schedule stopped with the
    stack)."""
    runtime, database, settings = core.parts.runtime, core.database, core.settings
    local_roots = tuple(settings.local_roots)
    models = ModelService(
        models=ModelRepository(database),
        secrets=core.secrets,
        hub=core.hub,
        runtime=runtime,
        policy=ModelPolicy(
            runtime_kind=runtime.kind,
            local_roots=local_roots,
            outbound=core.outbound,
            hub_endpoint=settings.hf_endpoint,
        ),
        recorder=core.recorder,
        weights=WeightsRepository(database),
        retire=InferenceRetirement(InferenceRepository(database), core.recorder),
    )
    cluster = ClusterService(
        runtime=runtime,
        hub=core.hub,
        models=models,
        secrets=core.secrets,
        hub_endpoint=settings.hf_endpoint,
        refuse_unfit_gpus=settings.refuse_unfit_gpus,
    )
    inference = _inference_service(core, cluster, controllers.inference_runtime)
    catalogue = build_catalogue(
        stack,
        settings,
        database,
        secrets=core.secrets,
        models=models,
        inference=inference,
        cluster=cluster,
        outbound=core.outbound,
    )
    return Services(
        database=database,
        runtime=runtime,
        hub=core.hub,
        models=models,
        weights=_weights_service(core),
        cluster=cluster,
        inference=inference,
        deploy=DeployService(models=models, inference=inference),
        catalogue=catalogue,
        history=_history_service(core),
        prefetch=_prefetch_service(core, models.policy),
        broker=core.broker,
        api_keys=api_keys,
        vllm=VllmService(cluster=cluster, models=models, search_scan=settings.vllm_search_scan),
        version=modelplane_version(),
        started_at=utcnow(),
        local_roots=local_roots,
    )


def _hub_client(settings: Settings, secrets: SecretStore) -> HubClient:
    """The hub client, with the server-wide token (if set) for calls that carry none."""
    server = (
        ServerHubToken(secrets, ref=settings.hub_token_secret, key=settings.hub_token_key)
        if settings.hub_token_secret
        else None
    )
    return HubClient(
        endpoint=settings.hf_endpoint, default_token=server.value if server is not None else None
    )


def _prefetch_service(core: Core, policy: ModelPolicy) -> PrefetchService:
    """downloadWeights, under the same rules as a LOCAL model's download."""
    database = core.database
    return PrefetchService(
        weights=WeightsRepository(database),
        models=ModelRepository(database),
        secrets=core.secrets,
        hub=core.hub,
        runtime=core.parts.runtime,
        policy=policy,
        recorder=core.recorder,
    )


def _history_service(core: Core) -> HistoryService:
    """Timelines and the system summary, told what this process runs."""
    runtime = core.parts.runtime
    local = runtime.kind == "local"
    return HistoryService(
        database=core.database,
        deployment=Deployment(
            version=modelplane_version(),
            runtime=runtime,
            namespace=core.parts.namespace,
            state_dir=core.settings.state_dir.resolve() if local else None,
        ),
    )


def _inference_service(
    core: Core, cluster: ClusterService, runtime: InferenceRuntime
) -> InferenceService:
    settings = core.settings
    return InferenceService(
        inferences=InferenceRepository(core.database),
        models=ModelRepository(core.database),
        runtime=runtime,
        namespace=core.parts.namespace,
        local_roots=tuple(settings.local_roots),
        recorder=core.recorder,
        free_port=free_port,
        cluster=cluster,
        allow_host_commands=settings.allow_host_commands,
        allow_external_services=settings.manifest_allow_external_services,
    )


def _weights_service(core: Core) -> WeightsService:
    """The weights service; deleteWeights waits for the leader's outcome, woken by the log."""
    weights = WeightsService(
        weights=WeightsRepository(core.database),
        models=ModelRepository(core.database),
        inferences=InferenceRepository(core.database),
        local_roots=tuple(core.settings.local_roots),
        recorder=core.recorder,
        removal_wait=core.settings.weights_removal_wait_seconds,
        alerts=StorageAlertRepository(core.database),
        alert_policy=core.settings.storage_alert_policy(),
        s3_quotas=core.settings.storage_alert_s3_quotas,
    )
    core.broker.listen(weights.on_event)
    return weights


def _open_gateway(stack: AsyncExitStack, core: Core) -> tuple[ApiKeyService, Gateway, Upstreams]:
    """API keys, the ``/v1`` gateway and its upstream connection pools (closed with the stack)."""
    api_keys = ApiKeyService(ApiKeyRepository(core.database), recorder=core.recorder)
    stack.push_async_callback(api_keys.close)
    gateway = Gateway(
        inferences=InferenceRepository(core.database),
        models=ModelRepository(core.database),
        secrets=core.secrets,
        limits=core.settings.gateway_limits(),
        route_cache_seconds=core.settings.gateway_route_cache_seconds,
    )
    stack.push_async_callback(gateway.close)
    upstream = Upstreams(core.outbound)
    stack.push_async_callback(upstream.close)
    return api_keys, gateway, upstream


def _open_sockets(
    settings: Settings, broker: Broker, verifier: TokenVerifier, api_keys: ApiKeyService
) -> tuple[Authenticator, OpenSockets]:
    """The authenticator, and the WebSocket registry that closes sockets whose API key was
    revoked through any replica (both fed by the event log)."""
    authenticator = Authenticator(verifier, api_keys)
    sockets = OpenSockets(authenticator, max_operations=settings.ws_max_operations)
    broker.listen(api_keys.on_event)  # a key revoked through any replica: forgotten here
    broker.listen(sockets.on_event)  # ... and the sockets using it closed
    return authenticator, sockets


async def _ensure_organization(database: Database, organization_id: str) -> None:
    repository = OrganizationRepository(database)
    if await repository.get(organization_id) is None:
        with contextlib.suppress(DuplicateKey):  # another replica created it first
            await repository.insert(
                OrganizationDocument(
                    id=organization_id, name=organization_id, display_name="Default"
                )
            )
