"""The gateway's side facing upstreams: connection pools, the request sent, the answer passed on.

:mod:`modelplane.gateway_http` checks and routes a ``/v1`` request, then hands it here.
Responses:

* streamed (``"stream": true`` and the upstream answers ``text/event-stream``): passed on event
  by event as the upstream sends them (:class:`Relay`). Bytes are held back only while an event
  is incomplete (normally never: servers write whole events), so each ``data:`` event can be
  looked at for a ``usage`` object and the stream can be ended cleanly: if the upstream times out
  or drops the connection mid-stream, the client gets one last ``data: {"error": ...}`` event
  instead of a silently truncated answer. When the client goes away, the upstream response is
  closed at once, which closes its connection, and the upstream stops generating.
* anything else: read whole (bodies are small), ``usage`` read from it, status and body passed
  through; a non-JSON error body is wrapped in OpenAI's error shape.

The upstream key is removed from every body and passed header of the answer, in every form it
can take there (:class:`services.redaction.Redactor`: raw, JSON- and URL-escaped...), since an
upstream may echo it in an error; it is never logged: the only per-request log line
(:meth:`Call.finish`) names the model, operation, status, time and token counts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator

import aiohttp
import anyio
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from integrations.addresses import AddressRefused, GuardedConnector, OutboundPolicy
from modelplane import logs
from services.gateway import UNKNOWN_MODEL, Admission, Endpoint, Gateway, Route, Usage
from services.gateway_errors import GatewayError, UpstreamTimeout, UpstreamUnavailable
from services.principals import Principal

log = logging.getLogger("modelplane.gateway_http")  # the request log's name before the split

CONNECT_TIMEOUT_SECONDS = 10.0
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


class Call:
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


async def send(
    session: aiohttp.ClientSession, route: Route, call: Call, body: bytes
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


async def whole(upstream: aiohttp.ClientResponse, route: Route, call: Call) -> Response:
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
            content = error_bytes(
                f"The upstream of `{route.model_name}` answered HTTP {status}: {text}",
                kind="upstream_error",
                code="upstream_error",
            )
            headers["content-type"] = "application/json"
    call.finish(status)
    return Response(content, status_code=status, headers=headers)


async def _read_whole(upstream: aiohttp.ClientResponse, route: Route, call: Call) -> bytes:
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


class Relay:
    """The upstream's event stream, passed on event by event."""

    def __init__(self, upstream: aiohttp.ClientResponse, route: Route, call: Call) -> None:
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
            yield error_event(
                UpstreamTimeout(
                    f"The upstream of `{self.route.model_name}` sent nothing for "
                    f"{self.route.timeout_seconds:g} s"
                )
            )
        except aiohttp.ClientError as exc:
            self.call.upstream_error("broken")
            yield error_event(
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


class RelayResponse(StreamingResponse):
    """A StreamingResponse that always closes the upstream and settles the request, whether
    the stream ended, failed, or the client went away (Starlette then cancels the body)."""

    def __init__(self, relay: Relay) -> None:
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


def error_bytes(message: str, *, kind: str, code: str) -> bytes:
    error = {"message": message, "type": kind, "param": None, "code": code}
    return json.dumps({"error": error}).encode()


def error_event(exc: GatewayError) -> bytes:
    return b"data: " + json.dumps(exc.body()).encode() + b"\n\n"
