"""The OpenAI-compatible gateway over HTTP: ``/v1/models``, ``/v1/chat/completions``,
``/v1/completions`` and ``/v1/embeddings``.

Decisions live in :mod:`services.gateway`; this module moves bytes. A request is checked in
the order that costs least first: credential (401), declared body size (413), the credential's
limits (429, with ``Retry-After``), the body as read (413), its JSON (400), the route (404, 409),
then forwarded with one of two shared ``aiohttp`` pools
(:class:`~modelplane.gateway_upstream.Upstreams`): inference endpoints modelplane runs itself
go through the plain pool, REMOTE_API URLs (user-given) through the pool whose every connection
is checked by the outbound policy
(:mod:`integrations.addresses`). The client's headers are not forwarded; the upstream gets JSON,
the request id, and the model's key when it has one.

The exchange with the upstream, streamed or read whole, and the removal of the upstream key
from the answer, are :mod:`modelplane.gateway_upstream`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Protocol

import aiohttp
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from modelplane.auth import Authenticator, AuthError
from modelplane.gateway_upstream import (
    Call,
    Relay,
    RelayResponse,
    Upstreams,
    send,
    whole,
)
from services.gateway import Endpoint, Gateway, Route
from services.gateway_errors import (
    BadRequest,
    BodyTooLarge,
    GatewayError,
    ModelNotFound,
    ModelNotRunning,
    Unauthenticated,
)
from services.principals import Principal

__all__ = ["GatewayParts", "Upstreams", "gateway_router"]


CLIENT_CLOSED = 499
"""Status recorded (nginx's convention) when the client left before the upstream answered."""


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
        call = Call(parts.gateway, endpoint)
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
    request: Request, parts: GatewayParts, call: Call, principal: Principal
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
    session: aiohttp.ClientSession, route: Route, call: Call, body: bytes, *, stream: bool
) -> Response:
    """Send to the upstream; a stream is handed on once its headers are in, anything else is
    read whole first."""
    upstream = await send(session, route, call, body)
    media = upstream.headers.get("content-type", "")
    if stream and upstream.status == 200 and media.startswith("text/event-stream"):
        call.streaming = True
        return RelayResponse(Relay(upstream, route, call))
    return await whole(upstream, route, call)


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
