"""A small OpenAI-compatible server for the gateway's tests and benchmark.

It answers ``/<tenant>/v1/chat/completions`` (whole or streamed as server-sent events),
``/<tenant>/v1/completions``, ``/<tenant>/v1/embeddings`` and ``/<tenant>/v1/models``; the
``tenant`` path segment lets one server stand for several upstreams (each inference points at
its own prefix, and the request log says which one was reached).

A request picks a behaviour with an extra body field ``"behaviour"`` (the gateway forwards
bodies unchanged; the openai client sends it with ``extra_body=``):

``normal`` (default); ``slow`` (answer after ``slow_seconds``); ``fail`` (500 with an OpenAI
error body); ``fail-text`` (502 with an HTML body); ``echo-auth`` (200 whose content is the
Authorization header received; streamed, every chunk's text is); ``reject-echo`` (401 whose
error message quotes it); ``reject-echo-encoded`` (401 quoting it in several encodings: JSON
with ASCII escapes, JSON inside JSON, URL-encoded, HTML-escaped); ``reject-echo-html`` (401,
an HTML page quoting it raw);
``gated`` (stream: first chunk, then wait for :attr:`FakeUpstream.gate`); ``endless`` (stream a
chunk every 20 ms until the client leaves); ``break`` (stream two chunks, then drop the
connection); ``stall`` (stream one chunk, then nothing for ``slow_seconds``).

Every request is logged (:attr:`FakeUpstream.seen`) with its Authorization header; a stream
whose client went away before its end, or a ``slow`` request whose client left while it
waited, sets :attr:`FakeUpstream.closed`.

``python -m testbed.openai_upstream --port N --chunks 32 --delay 0.005`` serves the ``normal``
behaviour for the benchmark (``bench/gateway.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


class BrokenStream(Exception):
    """Raised inside a streamed body to make the server drop the connection mid-stream."""


@dataclass
class Seen:
    """One request the upstream received."""

    tenant: str
    path: str
    authorization: str | None
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class FakeUpstream:
    """The server's state: behaviour knobs, the request log, and test hooks."""

    chunks: int = 5
    delay: float = 0.0
    slow_seconds: float = 5.0
    seen: list[Seen] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    record: bool = True

    def app(self) -> Starlette:
        """The ASGI application."""
        return Starlette(
            routes=[
                Route("/{tenant}/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/{tenant}/v1/completions", self._completions, methods=["POST"]),
                Route("/{tenant}/v1/embeddings", self._embeddings, methods=["POST"]),
                Route("/{tenant}/v1/models", self._models, methods=["GET"]),
            ]
        )

    async def _receive(self, request: Request) -> tuple[dict[str, Any], str]:
        body: dict[str, Any] = json.loads(await request.body())
        if self.record:
            self.seen.append(
                Seen(
                    tenant=request.path_params["tenant"],
                    path=request.url.path,
                    authorization=request.headers.get("authorization"),
                    body=body,
                    headers=dict(request.headers),
                )
            )
        return body, str(body.get("behaviour", "normal"))

    async def _common(self, request: Request, behaviour: str) -> Response | None:
        """The behaviours every operation shares; None means answer normally."""
        if behaviour == "slow":
            deadline = asyncio.get_running_loop().time() + self.slow_seconds
            while asyncio.get_running_loop().time() < deadline:
                if await request.is_disconnected():
                    self.closed.set()
                    return Response(status_code=499)
                await asyncio.sleep(0.02)
        if behaviour == "fail":
            return JSONResponse(
                {"error": {"message": "boom", "type": "server_error", "param": None, "code": None}},
                status_code=500,
            )
        if behaviour == "fail-text":
            return Response("<html>bad gateway</html>", status_code=502, media_type="text/html")
        return _rejection(request, behaviour)

    async def _chat(self, request: Request) -> Response:
        body, behaviour = await self._receive(request)
        failed = await self._common(request, behaviour)
        if failed is not None:
            return failed
        tenant = request.path_params["tenant"]
        model = str(body.get("model"))
        if body.get("stream") is True:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            echo = request.headers.get("authorization") if behaviour == "echo-auth" else None
            return StreamingResponse(
                self._chunks(model, behaviour, include_usage=include_usage, echo=echo),
                media_type="text/event-stream",
            )
        content = f"hello from {tenant}"
        if behaviour == "echo-auth":
            content = str(request.headers.get("authorization"))
        return JSONResponse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
            }
        )

    async def _chunks(
        self, model: str, behaviour: str, *, include_usage: bool, echo: str | None = None
    ) -> AsyncIterator[bytes]:
        finished = False
        try:
            index = 0
            while behaviour == "endless" or index < self.chunks:
                yield _event(_chunk(model, echo if echo is not None else f"w{index} "))
                index += 1
                if behaviour == "gated" and index == 1:
                    await self.gate.wait()
                if behaviour == "break" and index == 2:
                    raise BrokenStream("dropping the connection on purpose")
                if behaviour == "stall":
                    await asyncio.sleep(self.slow_seconds)
                if behaviour == "endless":
                    await asyncio.sleep(0.02)
                elif self.delay:
                    await asyncio.sleep(self.delay)
            final = _chunk(model, None)
            yield _event(final)
            if include_usage:
                usage = {"prompt_tokens": 11, "completion_tokens": self.chunks, "total_tokens": 0}
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                yield _event({**final, "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            if not finished and behaviour != "break":
                self.closed.set()

    async def _completions(self, request: Request) -> Response:
        body, behaviour = await self._receive(request)
        failed = await self._common(request, behaviour)
        if failed is not None:
            return failed
        return JSONResponse(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 0,
                "model": body.get("model"),
                "choices": [
                    {"text": "done", "index": 0, "logprobs": None, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5},
            }
        )

    async def _embeddings(self, request: Request) -> Response:
        body, behaviour = await self._receive(request)
        failed = await self._common(request, behaviour)
        if failed is not None:
            return failed
        inputs = body.get("input")
        count = len(inputs) if isinstance(inputs, list) else 1
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": [0.25, -0.5, float(i)]}
                    for i in range(count)
                ],
                "model": body.get("model"),
                "usage": {"prompt_tokens": 2 * count, "total_tokens": 2 * count},
            }
        )

    async def _models(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        if self.record:
            self.seen.append(
                Seen(
                    tenant=tenant,
                    path=request.url.path,
                    authorization=request.headers.get("authorization"),
                    body={},
                    headers=dict(request.headers),
                )
            )
        return JSONResponse(
            {"object": "list", "data": [{"id": tenant, "object": "model", "owned_by": tenant}]}
        )


def _rejection(request: Request, behaviour: str) -> Response | None:
    """A 401 quoting the Authorization header received (raw, or in several encodings)."""
    received = request.headers.get("authorization") or ""
    if behaviour == "reject-echo":
        error = {"message": f"Incorrect API key provided: {received}", "code": "invalid_key"}
        return JSONResponse({"error": error}, status_code=401)
    if behaviour == "reject-echo-encoded":
        error = {
            "message": f"Incorrect API key provided: {received}",
            "request": json.dumps({"headers": {"authorization": received}}),
            "url": f"https://upstream.test/?auth={quote(received, safe='')}",
            "html": html.escape(received),
            "code": "invalid_key",
        }
        body = json.dumps({"error": error}, ensure_ascii=True)
        return Response(body, status_code=401, media_type="application/json")
    if behaviour == "reject-echo-html":
        page = f"<html><body>bad key {received}</body></html>"
        return Response(page, status_code=401, media_type="text/html")
    return None


def _chunk(model: str, text: str | None) -> dict[str, Any]:
    delta = {"content": text} if text is not None else {}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [
            {"index": 0, "delta": delta, "finish_reason": None if text is not None else "stop"}
        ],
    }


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def main() -> None:
    """Serve the ``normal`` behaviour on a port (for the benchmark)."""
    import uvicorn  # noqa: PLC0415  only the command needs it

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=32)
    parser.add_argument("--delay", type=float, default=0.005)
    args = parser.parse_args()
    upstream = FakeUpstream(chunks=args.chunks, delay=args.delay, record=False)
    uvicorn.run(
        upstream.app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
