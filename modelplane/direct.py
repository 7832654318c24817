"""The subscription fast lane's transport half: ``next`` messages written as WebSocket frames
straight to a connection, batched into one socket write per connection per loop iteration.

Why: fanning one event out to 1,000 subscribers through strawberry's per-operation pipeline
wakes 1,000 tasks and makes 1,000 socket writes; a profile of ``bench/fanout.py`` put each
delivery at tens of microseconds, most of it that pipeline and the ``send`` system call (on
loopback the sender's call also does the receiver's TCP work). ``schema/sharing.py`` describes
the resolver half; the broker's side is in ``services/broadcasting.py``.

How: :class:`FrameWriter` holds one uvicorn connection (the ``websockets-sansio`` protocol,
found behind the ASGI ``send`` callable by :func:`capture_connection`). A ``next`` message is
framed here (a server's text frame is a two- to ten-byte header and the UTF-8 payload, RFC 6455
section 5.2; no extension is negotiated because ``modelplane serve`` turns per-message deflate
off, and a connection that negotiated one is not captured) and appended to the connection's
pending bytes; one ``transport.write`` sends them all, at the end of the loop iteration or, while
events keep coming, once per flush interval (:class:`Flusher`; ``subscription_flush_ms``).

Order: every message the ordinary path sends (``connection_ack``, ``pong``, ``complete``,
``error``, and ``next`` messages of queued events) first flushes the pending frames
(:class:`TransportHandler`), so a subscriber sees its messages in the order they were made. A
connection that is closing, or whose transport paused writing (the client reads too slowly),
refuses direct frames: its events then queue in the broker and the ordinary path applies the
usual backpressure and OVERFLOW. Frames still pending when a close frame went out are dropped
(nothing may follow a close); the client resumes with ``after``.

Nothing else depends on this: under another ASGI server, or with a connection that cannot be
captured, no channel is offered and every message takes the ordinary path.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from starlette.types import Scope, Send
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import Message
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from resolvers.context import Context
from schema.sharing import offer_direct_channel

SCOPE_KEY = "modelplane.frame_writer"
PENDING_LIMIT = 1024 * 1024
"""Bytes of direct frames one connection may hold between flushes before it refuses more."""


NEXT_SUFFIX = "}"


def next_prefix(operation_id: str) -> str:
    """``{"id":…,"type":"next","payload":`` — a ``next`` message up to its payload's JSON
    (which :data:`NEXT_SUFFIX` follows)."""
    head = json.dumps({"id": operation_id, "type": "next"}, separators=(",", ":"))
    return f'{head[:-1]},"payload":'


def next_message(prefix: str, payload_json: str) -> str:
    """The ``next`` message text from :func:`next_prefix` and the payload's JSON."""
    return prefix + payload_json + NEXT_SUFFIX


def frame_header(size: int) -> bytes:
    """The header of an unmasked, final text frame of ``size`` payload bytes (RFC 6455 5.2)."""
    if size < 126:
        return bytes((0x81, size))
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big")
    return b"\x81\x7f" + size.to_bytes(8, "big")


class Flusher:
    """Writes the pending frames of every connection that has some, once per loop iteration,
    and no more often than every ``interval`` seconds: while events keep coming, a connection
    gets one ``write`` per interval carrying all of them (each ``write`` on loopback costs the
    sender the receiver's TCP work too, and it was the largest cost left per delivery); after a
    quiet interval the next event is written at once."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._dirty: list[FrameWriter] = []
        self._scheduled = False
        self._last = float("-inf")

    def add(self, writer: FrameWriter) -> None:
        """Flush ``writer`` with the next batch."""
        self._dirty.append(writer)
        if not self._scheduled:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            delay = self._last + self._interval - loop.time()
            if delay > 0:
                loop.call_later(delay, self.run)
            else:
                loop.call_soon(self.run)

    def run(self) -> None:
        """Write every pending frame now."""
        self._scheduled = False
        self._last = asyncio.get_running_loop().time()
        dirty, self._dirty = self._dirty, []
        for writer in dirty:
            writer.flush()


class FrameWriter:
    """Direct text frames for one WebSocket connection, written by its :class:`Flusher`."""

    def __init__(self, connection: WebSocketsSansIOProtocol, flusher: Flusher) -> None:
        self._connection = connection
        self._flusher = flusher
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def write_messages(self, prefix: bytes, payloads: Sequence[bytes], suffix: bytes) -> bool:
        """Queue one text frame per payload, each ``prefix + payload + suffix`` (UTF-8), for
        the next flush; False (nothing queued) when the connection is closing, paused for a
        slow reader, or holds too much already. Parts are not copied here: the flush joins
        them once."""
        if (
            self._closing()
            or not self._connection.writable.is_set()
            or self._pending_bytes > PENDING_LIMIT
        ):
            return False
        if not self._pending:
            self._flusher.add(self)
        pending = self._pending
        fixed = len(prefix) + len(suffix)
        for payload in payloads:
            size = fixed + len(payload)
            pending.extend((frame_header(size), prefix, payload, suffix))
            self._pending_bytes += size
        return True

    def flush(self) -> None:
        """Write the pending frames now (dropped if a close frame already went out)."""
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        if not self._closing():
            self._connection.transport.write(data)

    def _closing(self) -> bool:
        connection = self._connection
        return connection.close_sent or connection.disconnected or connection.transport.is_closing()


def capture_connection(scope: Scope, send: Send, flusher: Flusher) -> None:
    """Remember the uvicorn connection behind a WebSocket's ``send`` in its scope, when it is
    one this module can write to (the ``websockets-sansio`` protocol, without extensions)."""
    connection = getattr(send, "__self__", None)
    if (
        isinstance(connection, WebSocketsSansIOProtocol)
        and not connection.config.ws_per_message_deflate
    ):
        scope[SCOPE_KEY] = FrameWriter(connection, flusher)


def frame_writer(scope: Scope) -> FrameWriter | None:
    """The connection's :class:`FrameWriter`, if :func:`capture_connection` found one."""
    found = scope.get(SCOPE_KEY)
    return found if isinstance(found, FrameWriter) else None


_SUFFIX = NEXT_SUFFIX.encode()


class _OperationChannel:
    """One operation's :class:`~schema.sharing.DirectChannel`."""

    def __init__(self, writer: FrameWriter, operation: Operation[Context, None]) -> None:
        self._writer = writer
        self._operation = operation
        self._prefix = next_prefix(operation.id).encode()

    def write_next(self, payloads: Sequence[bytes]) -> bool:
        if self._operation.completed:
            return False
        return self._writer.write_messages(self._prefix, payloads, _SUFFIX)


class TransportHandler(BaseGraphQLTransportWSHandler[Context, None]):
    """strawberry's graphql-transport-ws handler, offering each operation a direct channel
    and flushing direct frames before anything it sends itself (see the module docstring)."""

    def _writer(self) -> FrameWriter | None:
        request: Any = self.context.request
        scope = getattr(request, "scope", None)
        return frame_writer(scope) if isinstance(scope, dict) else None

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        writer = self._writer()
        if writer is not None:  # this task's context: the operation's resolvers see it
            offer_direct_channel(_OperationChannel(writer, operation))
        await super().run_operation(operation)

    async def send_message(self, message: Message) -> None:
        writer = self._writer()
        if writer is not None:
            writer.flush()
        await super().send_message(message)
