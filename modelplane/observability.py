"""Observability of the HTTP app: request ids, request metrics, ``/metrics``, health probes.

Each app has its own Prometheus registry (:class:`Metrics`; no global default registry, so
tests can build many apps). :class:`ObservabilityMiddleware` gives every request an id (in the
log context for the whole exchange and echoed in the response) and counts and times it per
route; it also hands WebSocket connections to the subscriptions' fast lane
(``modelplane/direct.py``). ``/metrics`` answers the metrics token, or an admin in development
(its labels name every organisation's models); ``/healthz`` says the process is up and
``/readyz`` that MongoDB and the runtime answer."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Iterator

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from controllers.runtimes.base import RuntimeUnavailable
from modelplane import logs
from modelplane.auth import Authenticator, AuthError
from modelplane.direct import Flusher, capture_connection, release_connection
from modelplane.graph import Resources
from modelplane.settings import Environment, Settings
from storage.client import ping
from storage.documents import Role
from storage.errors import DatabaseUnavailable


class Metrics:
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


class ObservabilityMiddleware:
    """Pure ASGI middleware: a request id per request (the caller's ``X-Request-Id`` when it is
    a short alphanumeric string), in the log context for the whole exchange and echoed in the
    response; request count and time to response headers per route.

    Not ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware moves every chunk of a
    streamed body through a memory stream between two tasks, which the gateway's streams
    would pay for per token.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, flusher: Flusher) -> None:
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


class _StorageCollector(Collector):
    """Each weights location's usage, capacity, threshold and alert state, as this replica's
    storage watcher last measured them (every replica that runs controllers measures; the
    alert state is the leading replica's, read from the database)."""

    def __init__(self, current: Callable[[], Resources]) -> None:
        self._current = current

    def collect(self) -> Iterator[Metric]:
        try:
            watch = self._current().storage_watch
        except KeyError:  # before the lifespan opened the resources
            return
        if watch is None:
            return
        labels = ["kind", "location"]
        used = GaugeMetricFamily(
            "modelplane_storage_used_bytes",
            "Bytes used at a weights location (S3: READY weights under the prefix).",
            labels=labels,
        )
        capacity = GaugeMetricFamily(
            "modelplane_storage_capacity_bytes",
            "Size of a weights location's filesystem (S3: the prefix's quota).",
            labels=labels,
        )
        threshold = GaugeMetricFamily(
            "modelplane_storage_alert_threshold",
            "Usage fraction at which a weights location alerts.",
            labels=labels,
        )
        alerting = GaugeMetricFamily(
            "modelplane_storage_alerting",
            "1 while a weights location is over its alert threshold, else 0.",
            labels=labels,
        )
        for status in watch.locations:
            values = [status.usage.kind.value, status.usage.root]
            used.add_metric(values, status.usage.used)
            capacity.add_metric(values, status.usage.total)
            threshold.add_metric(values, status.threshold)
            alerting.add_metric(values, 1 if status.alerting else 0)
        yield from (used, capacity, threshold, alerting)


def install_observability(
    app: FastAPI, settings: Settings, metrics: Metrics, current: Callable[[], Resources]
) -> None:
    flusher = Flusher(
        settings.subscription_flush_ms / 1000, send_limit=settings.ws_send_buffer_bytes
    )
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, flusher=flusher)
    metrics.registry.register(_SubscriptionCollector(current))
    metrics.registry.register(_StorageCollector(current))

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


def install_health(app: FastAPI, current: Callable[[], Resources]) -> None:
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
