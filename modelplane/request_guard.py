"""What ``/graphql`` over HTTP accepts before strawberry sees a request, and what happens when
the client leaves.

Body size: the body is read here, chunk by chunk, and refused with 413 as soon as it passes
``graphql_max_body_bytes`` (at once when ``Content-Length`` already says so), so an anonymous
100 MiB body costs the server one chunk past the limit, not 100 MiB plus its JSON. The
refusal is a GraphQL-shaped JSON error naming the setting. The connection is not closed with
it: uvicorn discards the rest of a body whose response is complete as it arrives, so a client
still sending (most do not read before they have sent) gets its 413 instead of a reset.

Body text: invalid UTF-8 and JSON nested deeper than the interpreter can decode were HTTP
500s; :func:`decode_request_json` turns them into 400s that say so (the router's
``decode_json`` and ``parse_json`` use it).

Disconnect: once the body is read, the request runs in a task of its own while this
middleware waits for the client's ``http.disconnect``. A client that leaves before the
response is complete cancels the request's task, so its resolvers stop at their next
``await`` instead of working on for nobody (1,000 ``gpuFit`` went on for 20 s). The app sees
the same body and, after it, a ``http.disconnect`` when the client has gone.
"""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

BODY_SETTING = "MODELPLANE_GRAPHQL_MAX_BODY_BYTES"


class BadRequestJSON(json.JSONDecodeError):
    """A request body or WebSocket message that is not JSON this server decodes; the message
    says why (a ``JSONDecodeError`` so strawberry's handlers treat it as one)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, "", 0)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def decode_request_json(data: str | bytes) -> object:
    """``json.loads`` that raises :class:`BadRequestJSON` for invalid UTF-8 and for nesting
    too deep to decode (``RecursionError``, about 1,000 levels) as it does for bad syntax."""
    try:
        return json.loads(data)
    except UnicodeDecodeError:
        raise BadRequestJSON("The request body is not valid UTF-8") from None
    except RecursionError:
        raise BadRequestJSON("The JSON is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise BadRequestJSON(f"The request body is not valid JSON ({exc.msg})") from None


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _too_large(send: Send, limit: int) -> None:
    message = f"The request body is larger than {limit} bytes (limit: {BODY_SETTING})"
    body = json.dumps(
        {
            "errors": [
                {
                    "message": message,
                    "extensions": {"code": "LIMIT_EXCEEDED", "limit": BODY_SETTING},
                }
            ]
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class GraphQLRequestGuard:
    """Pure ASGI middleware for HTTP requests under ``prefix``: body size limit, cancellation
    when the client leaves (see the module docstring). Anything else passes through."""

    def __init__(self, app: ASGIApp, *, prefix: str, max_body_bytes: int) -> None:
        self._app = app
        self._prefix = prefix
        self._max = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self._prefix):
            await self._app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self._max:
            log.info("refused a request body", extra={"declared_bytes": declared})
            await _too_large(send, self._max)
            return
        body = await self._read_body(receive)
        if body is None:
            return  # the client left while sending
        if isinstance(body, int):
            log.info("refused a request body", extra={"read_bytes": body})
            await _too_large(send, self._max)
            return
        await self._run(scope, body, receive, send)

    async def _read_body(self, receive: Receive) -> bytes | int | None:
        """The whole body; the bytes read so far when they pass the limit; None on disconnect."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max:
                return size
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _run(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """Run the app on ``body``; cancel it if the client disconnects before the response
        is complete."""
        gone = asyncio.Event()
        state = {"body_given": False, "complete": False}

        async def replay() -> Message:
            if not state["body_given"]:
                state["body_given"] = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                state["complete"] = True
            await send(message)

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        async def handle() -> None:
            await self._app(scope, replay, tracked_send)

        handler = asyncio.create_task(handle())
        watcher = asyncio.create_task(watch())
        try:
            await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not handler.done() and not state["complete"]:
                log.info("client disconnected: request cancelled")
                handler.cancel()
            await asyncio.wait({handler})
            if not handler.cancelled():
                handler.result()  # the app's own error, as without this middleware
        finally:
            for task in (handler, watcher):
                task.cancel()
            await asyncio.gather(handler, watcher, return_exceptions=True)
