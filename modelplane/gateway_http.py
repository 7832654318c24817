"""The OpenAI-compatible gateway over HTTP: ``/v1/models``, ``/v1/chat/completions``,
``/v1/completions`` and ``/v1/embeddings``.

Decisions live in :mod:`services.gateway`; this module moves bytes. A request is checked in
the order that costs least first: credential (401), declared body size (413), the credential's
limits (429, with ``Retry-After``), the body as read (413), its JSON (400), the route (404, 409),
then forwarded with one of two shared ``aiohttp`` pools (see :class:`Upstreams`): inference
endpoints modelplane runs itself go through the plain pool, REMOTE_API URLs (user-given) through
the pool whose every connection is checked by the outbound policy
(:mod:`integrations.addresses`). The client's headers are not forwarded; the upstream gets JSON,
the request id, and the model's key when it has one.

Responses:

* streamed (``"stream": true`` and the upstream answers ``text/event-stream``): passed on event
  by event as the upstream sends them. Bytes are held back only while an event is incomplete
  (normally never: servers write whole events), so each ``data:`` event can be looked at for a
  ``usage`` object and the stream can be ended cleanly: if the upstream times out or drops the
  connection mid-stream, the client gets one last ``data: {"error": ...}`` event instead of a
  silently truncated answer. When the client goes away, the upstream response is closed at once,
  which closes its connection, and the upstream stops generating.
* anything else: read whole (bodies are small), ``usage`` read from it, status and body passed
  through; a non-JSON error body is wrapped in OpenAI's error shape.

The upstream key is removed from every body and passed header of the answer, in every form it
can take there (:class:`services.gateway.Redactor`: raw, JSON- and URL-escaped...), since an
upstream may echo it in an error; it is never logged: the only per-request log line names the
model, operation, status, time and token counts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Protocol

import aiohttp
import anyio
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from integrations.addresses import AddressRefused, GuardedConnector, OutboundPolicy
from modelplane import logs
from modelplane.auth import Authenticator, AuthError
from services.gateway import (
    UNKNOWN_MODEL,
    Admission,
    BadRequest,
    BodyTooLarge,
    Endpoint,
    Gateway,
    GatewayError,
    ModelNotFound,
    ModelNotRunning,
    Route,
    Unauthenticated,
    UpstreamTimeout,
    UpstreamUnavailable,
    Usage,
)
from services.principals import Principal

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 10.0
CLIENT_CLOSED = 499
"""Status recorded (nginx's convention) when the client left before the upstream answered."""
MAX_PENDING_EVENT = 1024 * 1024
"""An "event" longer than this without a blank line is passed on as it is (not SSE, then)."""
REDACT_INLINE_BYTES = 256 * 1024
PASSED_HEADERS = ("content-type", "retry-after")
"""Upstream response headers a client gets; others (cookies, the upstream's own organisation
and rate-limit headers) stay behind."""


def upstream_session(connector: aiohttp.TCPConnector | None = None) -> aiohttp.ClientSession:
    """A gateway connection pool (call inside the running loop).

    aiohttp rather than httpx for this one job, measured on the 2-core build machine: relaying
    64 streams, httpx (pure-Python parser, a timeout scope per read) cost modelplane 4.0 ms of
    CPU per stream in bench/gateway.py against 1.9 ms with aiohttp's C parser, and a client
    process relaying them waited 16 ms (p50) for a new request's response headers against
    7 ms. httpcore's pool also re-scans all its connections, quadratically, per request (it had
    to be split into shards). aiohttp is installed anyway (aiobotocore uses it). No environment
    proxies (upstreams are in-cluster or chosen by the model's owner), no redirects; timeouts
    are set per request from the route.
    """
    return aiohttp.ClientSession(
        connector=connector or aiohttp.TCPConnector(limit=1024, limit_per_host=0),
        trust_env=False,
        raise_for_status=False,
    )


class Upstreams:
    """The gateway's two pools: ``internal`` for the inference endpoints modelplane runs (a
    Service, a local engine's loopback port), ``remote`` for REMOTE_API URLs, whose every new
    connection resolves and checks the address with the outbound policy."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self.internal = upstream_session()
        self.remote = upstream_session(GuardedConnector(policy, limit=1024, limit_per_host=0))

    def for_route(self, route: Route) -> aiohttp.ClientSession:
        """The pool a route's requests go through."""
        return self.remote if route.remote else self.internal

    async def close(self) -> None:
        """Close both pools."""
        await self.internal.close()
        await self.remote.close()


class GatewayParts(Protocol):
    """What the router needs from the app's resources."""

    authenticator: Authenticator
    gateway: Gateway
    upstream: Upstreams


def gateway_router(current: Callable[[], GatewayParts]) -> APIRouter:
    """The ``/v1`` routes (mounted by the app factory)."""
    router = APIRouter()

    async def list_models(request: Request) -> Response:
        parts = current()
        try:
            principal = await _principal(request, parts.authenticator)
        except GatewayError as exc:
            return _error_response(exc)
        served = await parts.gateway.served_models(principal)
        return _json(
            200,
            {
                "object": "list",
                "data": [
                    {
                        "id": m.name,
                        "object": "model",
                        "created": m.created,
                        "owned_by": m.organization_id,
                    }
                    for m in served
                ],
            },
        )

    async def retrieve_model(request: Request) -> Response:
        parts = current()
        name = request.path_params["model"]
        try:
            principal = await _principal(request, parts.authenticator)
        except GatewayError as exc:
            return _error_response(exc)
        for m in await parts.gateway.served_models(principal):
            if m.name == name:
                body = {"id": m.name, "object": "model", "created": m.created}
                return _json(200, {**body, "owned_by": m.organization_id})
        return _error_response(ModelNotFound(f"The model `{name}` does not exist", param="model"))

    router.add_route("/models", list_models, methods=["GET"], include_in_schema=False)
    router.add_route("/models/{model}", retrieve_model, methods=["GET"], include_in_schema=False)
    for endpoint in Endpoint:
        router.add_route(
            f"/{endpoint.value}",
            _forwarder(current, endpoint),
            methods=["POST"],
            include_in_schema=False,
        )
    return router


def _forwarder(
    current: Callable[[], GatewayParts], endpoint: Endpoint
) -> Callable[[Request], Awaitable[Response]]:
    async def forward(request: Request) -> Response:
        parts = current()
        call = _Call(parts.gateway, endpoint)
        try:
            principal = await _principal(request, parts.authenticator)
        except GatewayError as exc:
            return _error_response(exc)
        call.principal = principal
        try:
            return await _forward(request, parts, call, principal)
        except GatewayError as exc:
            call.finish(exc.status)
            return _error_response(exc)
        finally:
            call.release_unless_streaming()

    return forward


class _Call:
    """One forwarded request's bookkeeping: its slot, its metrics, its log line."""

    def __init__(self, gateway: Gateway, endpoint: Endpoint) -> None:
        self.gateway = gateway
        self.endpoint = endpoint
        self.started = time.perf_counter()
        self.request_id = logs.request_id.get()
        self.principal: Principal | None = None
        self.model = UNKNOWN_MODEL
        self.admission: Admission | None = None
        self.streaming = False
        self.usage: Usage | None = None
        self._first_byte = False
        self._finished = False

    @property
    def organization(self) -> str:
        return self.principal.organization_id if self.principal else ""

    def first_byte(self) -> None:
        """The upstream's first body bytes arrived (first token, when streaming)."""
        if not self._first_byte:
            self._first_byte = True
            self.gateway.metrics.first_byte.labels(
                self.organization, self.model, self.endpoint.value
            ).observe(time.perf_counter() - self.started)

    def upstream_error(self, kind: str) -> None:
        """Count an upstream failure of this request."""
        self.gateway.metrics.upstream_error(
            organization=self.organization, model=self.model, kind=kind
        )

    def release_unless_streaming(self) -> None:
        """The handler is done; a streamed body releases the slot when it ends instead."""
        if not self.streaming and self.admission is not None:
            self.admission.release()

    def finish(self, status: int) -> None:
        """Count and log the request once, and give its slot back."""
        if self._finished:
            return
        self._finished = True
        if self.admission is not None:
            self.admission.release()
        seconds = time.perf_counter() - self.started
        self.gateway.metrics.observe(
            organization=self.organization,
            model=self.model,
            endpoint=self.endpoint,
            status=status,
            seconds=seconds,
            usage=self.usage,
        )
        log.info(
            "gateway %s %s -> %d",
            self.endpoint.value,
            self.model,
            status,
            extra={
                "model": self.model,
                "organization": self.organization,
                "subject": self.principal.subject if self.principal else None,
                "status": status,
                "duration_ms": round(seconds * 1000, 1),
                "input_tokens": self.usage.input_tokens if self.usage else None,
                "output_tokens": self.usage.output_tokens if self.usage else None,
                "streamed": self.streaming,
                "request_id": self.request_id,
            },
        )


async def _principal(request: Request, authenticator: Authenticator) -> Principal:
    header = request.headers.get("authorization")
    if not header:
        raise Unauthenticated(
            "Missing credentials: send `Authorization: Bearer <API key or token>`"
        )
    try:
        return await authenticator.verify(header)
    except AuthError as exc:
        raise Unauthenticated(str(exc)) from None


async def _forward(
    request: Request, parts: GatewayParts, call: _Call, principal: Principal
) -> Response:
    gateway = parts.gateway
    limit = gateway.limits.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"The request body is {declared} bytes; at most {limit} are accepted")
    call.admission = gateway.admit(principal)
    body = await _read_body(request, limit)
    model, stream = _parse(body)
    try:
        route = await gateway.route(principal, model)
    except ModelNotRunning:
        call.model = model  # it exists in the caller's organisation: a bounded label
        raise
    call.model = route.model_name
    answered = await _unless_disconnected(
        request, _exchange(parts.upstream.for_route(route), route, call, body, stream=stream)
    )
    if answered is None:
        call.finish(CLIENT_CLOSED)
        return Response(status_code=CLIENT_CLOSED)
    return answered


async def _exchange(
    session: aiohttp.ClientSession, route: Route, call: _Call, body: bytes, *, stream: bool
) -> Response:
    """Send to the upstream; a stream is handed on once its headers are in, anything else is
    read whole first."""
    upstream = await _send(session, route, call, body)
    media = upstream.headers.get("content-type", "")
    if stream and upstream.status == 200 and media.startswith("text/event-stream"):
        call.streaming = True
        return _RelayResponse(_Relay(upstream, route, call))
    return await _whole(upstream, route, call)


async def _unless_disconnected(request: Request, work: Awaitable[Response]) -> Response | None:
    """``work``'s response, or None if the client went away first — then ``work`` is cancelled,
    which closes the upstream connection, so the upstream stops working for nobody. (Once a
    stream's body is flowing, Starlette watches the client and :class:`_RelayResponse` closes
    the upstream.)"""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this handler itself is cancelled
        watcher.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        return None
    return task.result()


async def _disconnected(request: Request) -> None:
    """Return once the client has closed its connection (the body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _read_body(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"The request body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes) -> tuple[str, bool]:
    """The ``model`` and whether a stream was asked for; the body itself goes on unchanged."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise BadRequest("The request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("`model` is required: the name of one of your models", param="model")
    return model, payload.get("stream") is True


async def _send(
    session: aiohttp.ClientSession, route: Route, call: _Call, body: bytes
) -> aiohttp.ClientResponse:
    headers = route.headers()
    if call.request_id:
        headers["x-request-id"] = call.request_id
    timeout = aiohttp.ClientTimeout(
        total=None,
        sock_connect=min(CONNECT_TIMEOUT_SECONDS, route.timeout_seconds),
        sock_read=route.timeout_seconds,
    )
    try:
        return await session.post(
            route.url(call.endpoint),
            data=body,
            headers=headers,
            timeout=timeout,
            allow_redirects=False,
        )
    except TimeoutError:
        call.upstream_error("timeout")
        raise UpstreamTimeout(
            f"The upstream of `{route.model_name}` did not answer within "
            f"{route.timeout_seconds:g} s"
        ) from None
    except aiohttp.ClientError as exc:
        call.upstream_error("connect")
        if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
            exc.os_error, AddressRefused
        ):
            raise UpstreamUnavailable(
                f"The upstream of `{route.model_name}` {exc.os_error}: refused by the outbound "
                "address policy"
            ) from None
        raise UpstreamUnavailable(
            f"The upstream of `{route.model_name}` cannot be reached ({type(exc).__name__})"
        ) from None


async def _whole(upstream: aiohttp.ClientResponse, route: Route, call: _Call) -> Response:
    """A response read whole: status and body passed through."""
    try:
        content = await _read_whole(upstream, route, call)
    except BaseException:
        upstream.close()  # unfinished: the connection cannot be reused
        raise
    upstream.release()
    content = await _redacted(content, route)
    status = upstream.status
    headers = _passed_headers(upstream, route)
    if 200 <= status < 300:
        call.first_byte()
        call.usage = usage_in(content)
    else:
        call.upstream_error("status")
        if not _is_error_json(content):
            text = content[:500].decode("utf-8", "replace")
            content = _error_bytes(
                f"The upstream of `{route.model_name}` answered HTTP {status}: {text}",
                kind="upstream_error",
                code="upstream_error",
            )
            headers["content-type"] = "application/json"
    call.finish(status)
    return Response(content, status_code=status, headers=headers)


async def _read_whole(upstream: aiohttp.ClientResponse, route: Route, call: _Call) -> bytes:
    try:
        return await upstream.read()
    except TimeoutError:
        call.upstream_error("timeout")
        raise UpstreamTimeout(
            f"The upstream of `{route.model_name}` stopped sending its answer for "
            f"{route.timeout_seconds:g} s"
        ) from None
    except aiohttp.ClientError as exc:
        call.upstream_error("broken")
        raise UpstreamUnavailable(
            f"The upstream of `{route.model_name}` broke off its answer ({type(exc).__name__})"
        ) from None


class _Relay:
    """The upstream's event stream, passed on event by event."""

    def __init__(self, upstream: aiohttp.ClientResponse, route: Route, call: _Call) -> None:
        self.upstream = upstream
        self.route = route
        self.call = call
        self._ended = False

    async def events(self) -> AsyncGenerator[bytes, None]:
        """Complete events as they arrive; an error event if the upstream breaks off."""
        pending = b""
        try:
            async for chunk in self.upstream.content.iter_any():
                self.call.first_byte()
                data = pending + chunk if pending else chunk
                cut = event_boundary(data)
                if cut == 0 and len(data) < MAX_PENDING_EVENT:
                    pending = data
                    continue
                # Not SSE: pass it on, but hold back enough for a split key to be seen whole.
                cut = cut or max(1, len(data) - self.route.holdback)
                ready, pending = data[:cut], data[cut:]
                yield self._inspect(ready)
            self._ended = True
            if pending:
                yield self._inspect(pending)
        except TimeoutError:
            self.call.upstream_error("timeout")
            yield _error_event(
                UpstreamTimeout(
                    f"The upstream of `{self.route.model_name}` sent nothing for "
                    f"{self.route.timeout_seconds:g} s"
                )
            )
        except aiohttp.ClientError as exc:
            self.call.upstream_error("broken")
            yield _error_event(
                UpstreamUnavailable(
                    f"The upstream of `{self.route.model_name}` broke off the stream "
                    f"({type(exc).__name__})"
                )
            )

    def _inspect(self, ready: bytes) -> bytes:
        if b'"usage"' in ready:
            found = usage_in(ready)
            if found is not None:
                self.call.usage = found
        return self.route.redact(ready)

    def close(self) -> None:
        """Give a finished connection back to the pool; close an unfinished one, which is
        how the upstream learns that nobody is listening any more."""
        if self._ended:
            self.upstream.release()
        else:
            self.upstream.close()


class _RelayResponse(StreamingResponse):
    """A StreamingResponse that always closes the upstream and settles the request, whether
    the stream ended, failed, or the client went away (Starlette then cancels the body)."""

    def __init__(self, relay: _Relay) -> None:
        self._events = relay.events()
        super().__init__(
            self._events,
            status_code=200,
            media_type=None,
            headers={
                "content-type": relay.route.redact(
                    relay.upstream.headers.get("content-type", "text/event-stream").encode()
                ).decode("utf-8", "replace"),
                "cache-control": "no-cache",
                "x-accel-buffering": "no",
            },
        )
        self._relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._events.aclose()
                self._relay.close()
                self._relay.call.finish(200)


def event_boundary(data: bytes) -> int:
    """Length of the longest prefix of ``data`` made of complete SSE events (0 if none)."""
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def usage_in(content: bytes) -> Usage | None:
    """The last ``"usage"`` object in a JSON body or SSE events, without parsing the rest
    (an embeddings answer can be megabytes of floats before it)."""
    decoder = json.JSONDecoder()
    at = content.rfind(b'"usage"')
    while at > 0 and content[at - 1 : at] == b"\\":  # inside a string: look further back
        at = content.rfind(b'"usage"', 0, at)
    if at < 0:
        return None
    colon = content.find(b":", at + 7)
    if colon < 0:
        return None
    text = content[colon + 1 : colon + 1 + 4096].decode("utf-8", "replace").lstrip()
    try:
        value, _end = decoder.raw_decode(text)
    except ValueError:
        return None
    return Usage.parse(value)


async def _redacted(content: bytes, route: Route) -> bytes:
    """The body without the upstream key; a big one (an embeddings answer) is scanned in a
    worker thread when it has escapes (80 ns a byte), so the loop keeps serving meanwhile."""
    if len(content) > REDACT_INLINE_BYTES:
        return await asyncio.to_thread(route.redact, content)
    return route.redact(content)


def _passed_headers(upstream: aiohttp.ClientResponse, route: Route) -> dict[str, str]:
    passed = {k: v for k in PASSED_HEADERS if (v := upstream.headers.get(k)) is not None}
    return {k: route.redact(v.encode()).decode("utf-8", "replace") for k, v in passed.items()}


def _is_error_json(content: bytes) -> bool:
    try:
        parsed = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(parsed, dict) and "error" in parsed


def _error_bytes(message: str, *, kind: str, code: str) -> bytes:
    error = {"message": message, "type": kind, "param": None, "code": code}
    return json.dumps({"error": error}).encode()


def _error_event(exc: GatewayError) -> bytes:
    return b"data: " + json.dumps(exc.body()).encode() + b"\n\n"


def _error_response(exc: GatewayError) -> Response:
    headers: dict[str, str] = {}
    if exc.retry_after is not None:
        headers["retry-after"] = str(exc.retry_after)
    if exc.status == 401:
        headers["www-authenticate"] = "Bearer"
    return _json(exc.status, exc.body(), headers=headers)


def _json(status: int, body: object, *, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body).encode(),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )
