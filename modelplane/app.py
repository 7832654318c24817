"""The FastAPI application factory and the resources it owns.

:func:`open_resources` connects everything the service needs (MongoDB, the runtime, the hub
client, the token verifier) and raises :class:`StartupError` with one readable line naming the
setting when something is wrong. :func:`create_app` mounts GraphQL at ``/graphql`` (GraphiQL on
GET, subscriptions over ``graphql-transport-ws`` only; request limits in
``modelplane/request_guard.py`` and ``schema/limits.py``), ``/healthz``, ``/readyz``,
``/metrics`` (the metrics token, or an admin in development: its labels name every
organisation's models), the OpenAI-compatible gateway at ``/v1``
(:mod:`modelplane.gateway_http`) and the operator dashboard at ``/``
(:mod:`modelplane.dashboard`). No module-level singletons: everything hangs off the app built
here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path

from cross_web import HTTPException  # the HTTP error strawberry's views answer with
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from joserfc.jwk import OctKey
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.exceptions import ConnectionRejectionError
from strawberry.fastapi import GraphQLRouter
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types.unset import UnsetType

from controllers.downloads.reconciler import DownloadController
from controllers.downloads.running import WeightsRuntimeConfig
from controllers.inference.engines import EngineImages
from controllers.inference.reconciler import (
    InferenceController,
    InferenceExecutor,
    KubernetesInferenceExecutor,
    LocalInferenceExecutor,
)
from controllers.runtimes.base import (
    KubernetesRuntime,
    LocalRuntime,
    Runtime,
    RuntimeConfigError,
    RuntimeUnavailable,
)
from controllers.runtimes.inventory import ClusterInventory, read_inventory
from controllers.runtimes.kubernetes.jobs import JobExecutor, JobTemplate
from controllers.runtimes.kubernetes.manifests import Integrations
from controllers.runtimes.local.processes import (
    EngineUser,
    EngineUserError,
    ProcessSupervisor,
    engine_user,
    protect_server_process,
)
from controllers.runtimes.secrets import (
    EncryptedSecretStore,
    KubernetesSecretStore,
    SecretStore,
    fernet_for,
)
from integrations.addresses import OutboundPolicy
from integrations.huggingface import HubClient
from modelplane import logs
from modelplane.auth import Authenticator, AuthError, TokenVerifier, load_dev_key
from modelplane.dashboard import install_dashboard
from modelplane.direct import (
    Flusher,
    SocketAdapter,
    TransportHandler,
    capture_connection,
    next_message,
    next_prefix,
    release_connection,
)
from modelplane.embedded import (
    EmbeddedError,
    FerretDBProcess,
    default_ferretdb_binary,
    free_port,
)
from modelplane.gateway_http import Upstreams, gateway_router
from modelplane.keyfiles import read_or_create
from modelplane.request_guard import BadRequestJSON, GraphQLRequestGuard, decode_request_json
from modelplane.schema_root import make_schema
from modelplane.settings import Environment, RuntimeKind, Settings
from modelplane.sockets import OpenSockets, credential_of
from modelplane.wiring import event_log_for
from resolvers.context import Context, Services
from services.api_keys import ApiKeyService
from services.broadcasting import Broker
from services.cluster import ClusterService
from services.gateway import Gateway
from services.inference import InferenceService
from services.models import ModelPolicy, ModelService
from services.weights import WeightsService
from storage.client import Client, Database, make_client, ping
from storage.documents import OrganizationDocument, Role, utcnow
from storage.errors import DatabaseUnavailable, DuplicateKey
from storage.events import Event, EventLogNotCapped, EventType, Recorder, ResourceKind
from storage.recovering import EventRecovery
from storage.repositories import (
    ApiKeyRepository,
    InferenceRepository,
    LeaseRepository,
    LedgerRepository,
    ModelRepository,
    OrganizationRepository,
    SecretRepository,
    WeightsRepository,
    ensure_indexes,
)

log = logging.getLogger(__name__)

DEFAULT_ORGANIZATION = "default"
ENCODED_RESULTS = 1024  # subscription payloads whose JSON is kept for their other subscribers


class StartupError(Exception):
    """The service cannot start; the message is one line naming the setting at fault."""


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
        broker, recorder = await _open_events(stack, settings, database)

        runtime = await _open_runtime(stack, settings)

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
        hub = HubClient(endpoint=settings.hf_endpoint)
        secrets = _secret_store(settings, runtime, database)
        controller = _start_download_controller(
            stack,
            settings,
            runtime,
            database,
            hub=hub,
            secrets=secrets,
            recorder=recorder,
            broker=broker,
            outbound=outbound,
        )
        if settings.runtime is RuntimeKind.LOCAL:
            # On the kubernetes runtime the roots are node paths (hostPath volumes of download
            # pods), not this container's: creating them here fails on a read-only root.
            for root in settings.local_roots:
                root.mkdir(parents=True, exist_ok=True)
        models = ModelService(
            models=ModelRepository(database),
            secrets=secrets,
            hub=hub,
            runtime=runtime,
            policy=ModelPolicy(
                runtime_kind=runtime.kind,
                local_roots=tuple(settings.local_roots),
                outbound=outbound,
                hub_endpoint=settings.hf_endpoint,
            ),
            recorder=recorder,
            weights=WeightsRepository(database),
        )
        inference_controller = _start_inference_controller(
            stack,
            settings,
            runtime,
            database,
            secrets=secrets,
            recorder=recorder,
            broker=broker,
            outbound=outbound,
        )
        cluster = ClusterService(
            runtime=runtime,
            hub=hub,
            models=models,
            secrets=secrets,
            hub_endpoint=settings.hf_endpoint,
        )
        inference = InferenceService(
            inferences=InferenceRepository(database),
            models=ModelRepository(database),
            controller=inference_controller,
            runtime_kind=runtime.kind,
            namespace=runtime.namespace if isinstance(runtime, KubernetesRuntime) else None,
            local_roots=tuple(settings.local_roots),
            recorder=recorder,
            free_port=free_port,
            cluster=cluster,
            allow_host_commands=settings.allow_host_commands,
            allow_external_services=settings.manifest_allow_external_services,
        )
        weights = WeightsService(
            weights=WeightsRepository(database),
            models=ModelRepository(database),
            inferences=InferenceRepository(database),
            local_roots=tuple(settings.local_roots),
            recorder=recorder,
            removal_wait=settings.weights_removal_wait_seconds,
        )
        broker.listen(weights.on_event)  # deleteWeights waits for the leader's outcome
        api_keys, gateway, upstream = _open_gateway(
            stack, settings, database, secrets=secrets, recorder=recorder, outbound=outbound
        )
        authenticator, sockets = _open_sockets(settings, broker, verifier, api_keys)
        services = Services(
            database=database,
            runtime=runtime,
            hub=hub,
            models=models,
            weights=weights,
            cluster=cluster,
            inference=inference,
            broker=broker,
            api_keys=api_keys,
            version=modelplane_version(),
            started_at=utcnow(),
            local_roots=tuple(settings.local_roots),
        )
        yield Resources(
            settings=settings,
            client=client,
            database=database,
            runtime=runtime,
            hub=hub,
            verifier=verifier,
            dev_key=dev_key,
            services=services,
            downloads=controller,
            inference_controller=inference_controller,
            authenticator=authenticator,
            gateway=gateway,
            upstream=upstream,
            sockets=sockets,
        )


def _open_gateway(
    stack: AsyncExitStack,
    settings: Settings,
    database: Database,
    *,
    secrets: SecretStore,
    recorder: Recorder,
    outbound: OutboundPolicy,
) -> tuple[ApiKeyService, Gateway, Upstreams]:
    """API keys, the ``/v1`` gateway and its upstream connection pools (closed with the stack)."""
    api_keys = ApiKeyService(ApiKeyRepository(database), recorder=recorder)
    stack.push_async_callback(api_keys.close)
    gateway = Gateway(
        inferences=InferenceRepository(database),
        models=ModelRepository(database),
        secrets=secrets,
        limits=settings.gateway_limits(),
        route_cache_seconds=settings.gateway_route_cache_seconds,
    )
    stack.push_async_callback(gateway.close)
    upstream = Upstreams(outbound)
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


async def _open_runtime(stack: AsyncExitStack, settings: Settings) -> Runtime:
    """The configured runtime, started (closed with the stack)."""
    runtime: Runtime
    if settings.runtime is RuntimeKind.KUBERNETES:
        runtime = KubernetesRuntime(kubeconfig=settings.kubeconfig, namespace=settings.namespace)
    else:
        runtime = LocalRuntime(state_dir=settings.state_dir.resolve())
    try:
        await runtime.start()
    except RuntimeConfigError as exc:
        raise StartupError(str(exc)) from None
    stack.push_async_callback(runtime.close)
    return runtime


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


def _start_download_controller(
    stack: AsyncExitStack,
    settings: Settings,
    runtime: Runtime,
    database: Database,
    *,
    hub: HubClient,
    secrets: SecretStore,
    recorder: Recorder,
    broker: Broker,
    outbound: OutboundPolicy,
) -> DownloadController | None:
    """The download controller, started (stopped with the stack) and fed by the event log of
    every replica; None when this process runs no controllers."""
    if not settings.run_controllers:
        return None
    controller = _download_controller(
        settings, runtime, database, hub=hub, secrets=secrets, recorder=recorder, outbound=outbound
    )
    controller.start()
    stack.push_async_callback(controller.stop)
    broker.listen(controller.on_event)
    broker.on_trimmed(controller.resync_soon)  # it may have missed a mutation's event
    return controller


def _download_controller(
    settings: Settings,
    runtime: Runtime,
    database: Database,
    *,
    hub: HubClient,
    secrets: SecretStore,
    recorder: Recorder,
    outbound: OutboundPolicy,
) -> DownloadController:
    """The download controller, with in-process workers or download Jobs per the runtime."""
    config = WeightsRuntimeConfig(
        hub_endpoint=settings.hf_endpoint,
        options=settings.download_options(),
        pvc_mount_path=settings.pvc_mount_path,
        outbound=outbound,
    )
    executor = None
    if isinstance(runtime, KubernetesRuntime):
        executor = JobExecutor(
            runtime.api,
            namespace=runtime.namespace,
            template=JobTemplate(
                image=settings.download_image,
                image_pull_policy=settings.download_image_pull_policy,
                hf_endpoint=settings.hf_endpoint,
                mongodb_database=settings.mongodb_database,
                mongodb_secret=settings.download_mongodb_secret,
                pvc_mount_path=str(settings.pvc_mount_path),
                service_account=settings.download_service_account,
                cpu_limit=settings.download_cpu_limit,
                memory_limit=settings.download_memory_limit,
                deadline_seconds=settings.download_deadline_seconds,
                backoff_limit=settings.download_backoff_limit,
                download_env=settings.download_env(),
            ),
        )
    return DownloadController(
        models=ModelRepository(database),
        weights=WeightsRepository(database),
        ledgers=LedgerRepository(database),
        secrets=secrets,
        hub=hub,
        config=config,
        executor=executor,
        recorder=recorder,
        leases=LeaseRepository(database),
        holder=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
    )


def _inference_controller(
    settings: Settings,
    runtime: Runtime,
    database: Database,
    *,
    secrets: SecretStore,
    recorder: Recorder,
    outbound: OutboundPolicy,
) -> InferenceController:
    """The inference controller, with Deployments or supervised processes per the runtime."""
    executor: InferenceExecutor
    if isinstance(runtime, KubernetesRuntime):
        inventory = _Cached(lambda: read_inventory(runtime), seconds=10.0)

        async def largest_free() -> int | None:
            nodes = (await inventory()).nodes
            return max((node.free for node in nodes), default=0)

        async def integrations() -> Integrations:
            found = (await inventory()).integrations
            return Integrations(service_monitor=found.service_monitor, aibrix=found.pod_autoscaler)

        executor = KubernetesInferenceExecutor(
            runtime.api,
            namespace=runtime.namespace,
            largest_free_gpus=largest_free,
            integrations=integrations,
        )
    else:
        notify = _Forward()
        executor = LocalInferenceExecutor(
            supervisor=ProcessSupervisor(
                log_dir=(settings.state_dir / "engines" / "logs").resolve(),
                on_change=notify,
                backoff_max=settings.engine_restart_max_seconds,
                run_as=_engine_user(settings),
            ),
            work_dir=(settings.state_dir / "engines").resolve(),
        )
    controller = InferenceController(
        inferences=InferenceRepository(database),
        models=ModelRepository(database),
        weights=WeightsRepository(database),
        secrets=secrets,
        executor=executor,
        images=EngineImages(
            vllm=settings.vllm_image,
            ollama=settings.ollama_image,
            litellm=settings.litellm_image,
            s3_sync=settings.s3_sync_image,
        ),
        pvc_mount_path=str(settings.pvc_mount_path),
        recorder=recorder,
        outbound=outbound,
        leases=LeaseRepository(database),
        holder=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        allow_host_commands=settings.allow_host_commands,
    )
    if not isinstance(runtime, KubernetesRuntime):
        notify.target = controller.notify
    return controller


def _engine_user(settings: Settings) -> EngineUser | None:
    """Who local engines run as (see :mod:`controllers.runtimes.local.processes`); protects this
    process's
    environment and memory from same-user engines; says what it decided."""
    try:
        user = engine_user(settings.engine_user)
    except EngineUserError as exc:
        raise StartupError(f"MODELPLANE_ENGINE_USER: {exc}") from None
    protected = protect_server_process()
    if user is not None:
        log.info("local engines run as another user", extra={"engine_user": user.name})
    elif settings.allow_host_commands:
        log.warning(
            "local engines run as the server's own user: a command an admin starts can read "
            "what the server's user can (key files in the state directory among them)",
            extra={"server_dumpable": not protected},
        )
    return user


def _start_inference_controller(
    stack: AsyncExitStack,
    settings: Settings,
    runtime: Runtime,
    database: Database,
    *,
    secrets: SecretStore,
    recorder: Recorder,
    broker: Broker,
    outbound: OutboundPolicy,
) -> InferenceController | None:
    """The inference controller, started (stopped with the stack) and fed by the event log;
    None when this process runs no controllers."""
    if not settings.run_controllers:
        return None
    controller = _inference_controller(
        settings, runtime, database, secrets=secrets, recorder=recorder, outbound=outbound
    )
    controller.start()
    stack.push_async_callback(controller.stop)
    broker.listen(_model_changes_to(controller))
    broker.on_trimmed(controller.resync_soon)  # it may have missed a model's phase change
    return controller


def _model_changes_to(controller: InferenceController) -> Callable[[Event], None]:
    """Feed the inference controller from the event log: a model's phase change (its weights
    became READY or FAILED, from this process or a download Job's pod) or its deletion."""

    def listener(event: Event) -> None:
        if event.resource_kind is ResourceKind.MODEL and event.type in {
            EventType.PHASE_CHANGED,
            EventType.DELETED,
        }:
            for model_id in event.model_ids:
                controller.notify_model(model_id)

    return listener


class _Cached:
    """The last answer of an async call, reused for ``seconds`` (cluster discovery and GPU
    inventory are asked for per reconcile only while something is unschedulable or applied)."""

    def __init__(self, call: Callable[[], Awaitable[ClusterInventory]], *, seconds: float) -> None:
        self._call = call
        self._seconds = seconds
        self._value: ClusterInventory | None = None
        self._at = 0.0

    async def __call__(self) -> ClusterInventory:
        now = time.monotonic()
        if self._value is None or now - self._at > self._seconds:
            self._value = await self._call()
            self._at = time.monotonic()
        return self._value


class _Forward:
    """Calls the controller's notify once it exists (the supervisor is built first)."""

    def __init__(self) -> None:
        self.target: Callable[[str], None] | None = None

    def __call__(self, key: str) -> None:
        if self.target is not None:
            self.target(key)


def _secret_store(settings: Settings, runtime: Runtime, database: Database) -> SecretStore:
    """Kubernetes Secrets with the kubernetes runtime; encrypted documents otherwise."""
    if isinstance(runtime, KubernetesRuntime):
        return KubernetesSecretStore(runtime.api, namespace=runtime.namespace)
    if settings.secret_key is not None:
        key = settings.secret_key.get_secret_value()
    else:
        key = _generated_secret(settings.state_dir)
    return EncryptedSecretStore(SecretRepository(database), cipher=fernet_for(key))


def _generated_secret(state_dir: Path) -> str:
    """Development only: a secret key generated once and kept in the state directory's
    key directory (mode 0700, the file 0600: see :mod:`modelplane.keyfiles`)."""
    return (
        read_or_create(state_dir, "secret-key", lambda: secrets.token_urlsafe(48).encode())
        .decode()
        .strip()
    )


async def _ensure_organization(database: Database, organization_id: str) -> None:
    repository = OrganizationRepository(database)
    if await repository.get(organization_id) is None:
        with contextlib.suppress(DuplicateKey):  # another replica created it first
            await repository.insert(
                OrganizationDocument(
                    id=organization_id, name=organization_id, display_name="Default"
                )
            )


class _Metrics:
    """Per-app Prometheus registry (no global default registry, so tests can build many apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelplane_http_requests",
            "HTTP requests served, by method, route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "modelplane_http_request_duration_seconds",
            "Time to produce an HTTP response, by method and route.",
            ["method", "route"],
            registry=self.registry,
        )


class _Router(GraphQLRouter[Context, None]):
    """GraphQL router that authenticates WebSocket connections in ``connection_init`` and
    encodes a subscription result shared by many subscribers once (see ``schema/sharing.py``):
    each ``next`` message is the subscriber's id spliced around the shared payload's JSON. Its
    WebSocket handler offers event subscriptions the fast lane of ``modelplane/direct.py``,
    re-checks the connection's credential and refuses malformed messages
    (``modelplane/sockets.py``); its adapter closes without waiting for a slow client."""

    verifier_getter: Callable[[], Authenticator]
    sockets_getter: Callable[[], OpenSockets]
    _encoded: dict[int, tuple[object, str]]
    graphql_transport_ws_handler_class = TransportHandler
    websocket_adapter_class = SocketAdapter

    def decode_json(self, data: str | bytes) -> object:
        # invalid UTF-8 and too-deep nesting are bad JSON too (they were HTTP 500s)
        return decode_request_json(data)

    def parse_json(self, data: str | bytes) -> object:
        try:
            return self.decode_json(data)
        except BadRequestJSON as exc:
            raise HTTPException(400, exc.reason) from None

    def encode_json(self, data: object) -> str | bytes:
        if isinstance(data, dict) and data.get("type") == "next":
            payload = data.get("payload")
            if isinstance(payload, dict) and payload.keys() == {"data"}:
                return self._encode_next(data["id"], payload)
        return super().encode_json(data)

    def _encode_next(self, operation_id: object, payload: dict[str, object]) -> str:
        shared = payload["data"]
        cache = self.__dict__.setdefault("_encoded", {})
        found = cache.get(id(shared))
        if found is None or found[0] is not shared:  # the entry holds the object: no id reuse
            found = (shared, json.dumps(payload, separators=(",", ":")))
            cache[id(shared)] = found
            if len(cache) > ENCODED_RESULTS:
                del cache[next(iter(cache))]
        return next_message(next_prefix(str(operation_id)), found[1])

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        params = context.connection_params if isinstance(context.connection_params, dict) else {}
        token = credential_of(params)
        if token is None:
            raise ConnectionRejectionError({"message": "connection_init needs `Authorization`"})
        try:
            context.principal = await self.verifier_getter().verify(token)
        except AuthError as exc:
            raise ConnectionRejectionError({"message": str(exc)}) from None
        return {"organizationId": context.principal.organization_id}


def create_app(settings: Settings, *, resources: Resources | None = None) -> FastAPI:
    """The ASGI app. With ``resources`` given the caller owns them; otherwise the lifespan does."""
    holder: dict[str, Resources] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if resources is not None:
            holder["resources"] = resources
            yield
            return
        async with open_resources(settings) as opened:
            holder["resources"] = opened
            yield

    def current() -> Resources:
        return holder["resources"]

    app = FastAPI(
        title="modelplane",
        version=modelplane_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    # inside the observability middleware (added after it): refusals get a request id too
    app.add_middleware(
        GraphQLRequestGuard, prefix="/graphql", max_body_bytes=settings.graphql_max_body_bytes
    )
    _install_observability(app, settings, _Metrics(), current)
    _install_health(app, current)
    app.include_router(_graphql_router(current, settings), prefix="/graphql")
    app.include_router(gateway_router(current), prefix="/v1")
    install_dashboard(app, settings.dashboard_dir)
    return app


def _graphql_router(current: Callable[[], Resources], settings: Settings) -> _Router:
    async def get_context(connection: HTTPConnection) -> Context:
        res = current()
        principal = None
        header = connection.headers.get("authorization")
        if header and connection.scope["type"] == "http":
            try:
                principal = await res.authenticator.verify(header)
            except AuthError as exc:
                log.info("rejected bearer token: %s", exc)
        return Context(
            services=res.services,
            principal=principal,
            request_id=logs.request_id.get() or uuid.uuid4().hex,
        )

    router = _Router(
        make_schema(settings.graphql_limits()),
        graphql_ide="graphiql",
        context_getter=get_context,
        subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
        connection_init_wait_timeout=timedelta(seconds=10),
    )
    router.verifier_getter = lambda: current().authenticator
    router.sockets_getter = lambda: current().sockets
    return router


class _Observability:
    """Pure ASGI middleware: a request id per request (the caller's ``X-Request-Id`` when it is
    a short alphanumeric string), in the log context for the whole exchange and echoed in the
    response; request count and time to response headers per route.

    Not ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware moves every chunk of a
    streamed body through a memory stream between two tasks, which the gateway's streams
    would pay for per token.
    """

    def __init__(self, app: ASGIApp, metrics: _Metrics, flusher: Flusher) -> None:
        self._app = app
        self._metrics = metrics
        self._flusher = flusher

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] != "websocket":
                await self._app(scope, receive, send)
                return
            # for the subscriptions' fast lane and the slow-reader limit (direct.py)
            capture_connection(scope, send, self._flusher)
            try:
                await self._app(scope, receive, send)
            finally:
                release_connection(scope, self._flusher)
            return
        incoming = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        rid = incoming if incoming.isalnum() and len(incoming) <= 64 else uuid.uuid4().hex
        started = time.perf_counter()
        metrics = self._metrics

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                path = getattr(route, "path", "unmatched")
                method = scope["method"]
                metrics.requests.labels(method, path, str(message["status"])).inc()
                metrics.latency.labels(method, path).observe(time.perf_counter() - started)
                MutableHeaders(scope=message).append("x-request-id", rid)
            await send(message)

        token = logs.request_id.set(rid)
        try:
            await self._app(scope, receive, send_with_id)
        finally:
            logs.request_id.reset(token)


class _SubscriptionCollector(Collector):
    """Subscription figures read from the broker at scrape time."""

    def __init__(self, current: Callable[[], Resources]) -> None:
        self._current = current

    def collect(self) -> Iterator[Metric]:
        try:
            broker = self._current().services.broker
        except KeyError:  # before the lifespan opened the resources
            return
        events = CounterMetricFamily(
            "modelplane_subscription_events",
            "Events handed to subscribers, by path: direct (written to the subscriber's "
            "connection by the event-log tail) or queued (delivered by the subscriber's task).",
            labels=["path"],
        )
        events.add_metric(["direct"], broker.direct_deliveries)
        events.add_metric(["queued"], broker.queued_deliveries)
        yield events
        yield CounterMetricFamily(
            "modelplane_subscription_progress_coalesced",
            "PROGRESS events offered to no subscriber because a later PROGRESS of the same "
            "resource arrived in the same read of the event log.",
            broker.coalesced,
        )
        yield GaugeMetricFamily(
            "modelplane_subscribers", "Live subscriptions in this process.", broker.subscribers
        )


def _install_observability(
    app: FastAPI, settings: Settings, metrics: _Metrics, current: Callable[[], Resources]
) -> None:
    flusher = Flusher(
        settings.subscription_flush_ms / 1000, send_limit=settings.ws_send_buffer_bytes
    )
    app.add_middleware(_Observability, metrics=metrics, flusher=flusher)
    metrics.registry.register(_SubscriptionCollector(current))

    @app.get("/metrics", include_in_schema=False)
    async def prometheus(request: Request) -> Response:
        refusal = await _metrics_refusal(request, settings, current().authenticator)
        if refusal is not None:
            return refusal
        text = generate_latest(metrics.registry) + generate_latest(
            current().gateway.metrics.registry
        )
        return PlainTextResponse(text.decode(), media_type=CONTENT_TYPE_LATEST)


async def _metrics_refusal(
    request: Request, settings: Settings, authenticator: Authenticator
) -> Response | None:
    """None when the caller may read ``/metrics``; otherwise the 401 or 403 to answer."""
    denied = await _metrics_denial(request, settings, authenticator)
    if denied is None:
        return None
    status, message = denied
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)


async def _metrics_denial(
    request: Request, settings: Settings, authenticator: Authenticator
) -> tuple[int, str] | None:
    """Who may read ``/metrics`` (its labels name every organisation's models): the
    ``metrics_token`` setting as a bearer token, or, in development only (one trusted
    operator), an admin's token or API key. Else the status and reason of the refusal."""
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        return 401, "/metrics needs `Authorization: Bearer <metrics token>`"
    expected = settings.metrics_token
    if expected is not None and secrets.compare_digest(
        credential.encode(), expected.get_secret_value().encode()
    ):
        return None
    if settings.environment is not Environment.DEVELOPMENT:
        if expected is None:
            return 403, "/metrics is closed: MODELPLANE_METRICS_TOKEN is not set"
        return 401, "invalid metrics token (MODELPLANE_METRICS_TOKEN)"
    try:
        principal = await authenticator.verify(credential)
    except AuthError as exc:
        return 401, str(exc)
    admin = principal.role is Role.ADMIN
    return None if admin else (403, "/metrics needs the admin role or the metrics token")


def _install_health(app: FastAPI, current: Callable[[], Resources]) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        res = current()
        reasons: list[str] = []
        try:
            await ping(res.database)
        except DatabaseUnavailable as exc:
            reasons.append(f"mongodb: {exc}")
        try:
            await res.runtime.check()
        except RuntimeUnavailable as exc:
            reasons.append(f"runtime ({res.runtime.kind}): {exc}")
        if reasons:
            return JSONResponse({"status": "unavailable", "reasons": reasons}, status_code=503)
        return JSONResponse({"status": "ready", "runtime": res.runtime.kind})
