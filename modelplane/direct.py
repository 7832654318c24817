"""The subscription fast lane's transport half: ``next`` messages written as WebSocket frames
straight to a connection, batched into one socket write per connection per loop iteration.

Why: fanning one event out to 1,000 subscribers through strawberry's per-operation pipeline
wakes 1,000 tasks and makes 1,000 socket writes; a profile of ``bench/fanout.py`` put each
delivery at tens of microseconds, most of it that pipeline and the ``send`` system call (on
loopback the sender's call also does the receiver's TCP work). ``schema/sharing.py`` describes
the resolver half; the broker's side is in ``live/broker.py``.

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

Slow readers: a captured connection may hold at most ``send_limit`` bytes the client has not
taken (``ws_send_buffer_bytes``: the pending direct frames, the transport's unsent buffer and
the kernel's send queue, which on Linux grows to 4 MiB before the transport buffers anything).
The transport's high-water mark is set to that limit, so the ordinary path writes until then;
a connection found over it (when the fast lane flushes and before the ordinary path sends,
counting this process's buffers; once a second by a sweep, counting the kernel's queue too) is
closed with 4008 and the reason. Every close this side starts (:meth:`FrameWriter.close`: slow
reader, expired or revoked credential, protocol error) writes the close frame without waiting
for the client to read, drops pending frames, and resets the TCP connection unless the client
answers with its close frame within :data:`CLOSE_GRACE_SECONDS`. A reset, not a plain close:
the kernel would otherwise keep the orphaned socket and its send queue (up to 4 MiB) for
minutes while it probes a client that never reads. The sweep also resets a connection uvicorn
closed itself (its keepalive timeout) whose buffer never drains. Before this, a client that
never read kept its buffers (14 to 25 MiB a socket in the probe of issue 15) for good, even
after uvicorn had "closed" it; 200 such sockets are now closed within seconds and leave the
server's memory where it was (``tests/security/test_sockets.py``).

Nothing else depends on this: under another ASGI server, or with a connection that cannot be
captured, no channel is offered, every message takes the ordinary path, and only uvicorn's own
backpressure applies.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import json
import logging
import socket
import struct
import termios
from collections.abc import Sequence
from typing import Any

from starlette.types import Scope, Send
from starlette.websockets import WebSocketState
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ConnectionInitMessage,
    Message,
    SubscribeMessage,
)
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from graphql import GraphQLError
from modelplane.sockets import (
    CredentialWatch,
    OpenSockets,
    Refusal,
    SocketCredential,
    credential_of,
    malformed,
)
from resolvers.context import Context
from schema.sharing import offer_direct_channel

log = logging.getLogger(__name__)

SCOPE_KEY = "modelplane.frame_writer"
PENDING_LIMIT = 1024 * 1024
"""Bytes of direct frames one connection may hold between flushes before it refuses more."""
DEFAULT_SEND_LIMIT = 1024 * 1024
"""Unsent bytes a connection may hold before it is closed as a slow reader (the setting's
default, ``ws_send_buffer_bytes``)."""
SLOW_READER = 4008
"""Close code for a connection over its send buffer limit (graphql-ws clients reconnect)."""
CLOSE_GRACE_SECONDS = 5.0
"""After this side sent a close frame, how long the connection may take to flush and close
before it is aborted (its buffers dropped)."""
SWEEP_SECONDS = 1.0
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


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

    def __init__(self, interval: float, *, send_limit: int = DEFAULT_SEND_LIMIT) -> None:
        self._interval = interval
        self.send_limit = send_limit
        """Unsent bytes a connection may hold (see the module docstring)."""
        self._dirty: list[FrameWriter] = []
        self._scheduled = False
        self._last = float("-inf")
        self._watched: set[FrameWriter] = set()
        self._sweep: asyncio.TimerHandle | None = None

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

    def watch(self, writer: FrameWriter) -> None:
        """Sweep ``writer``'s connection once a second until :meth:`forget`."""
        self._watched.add(writer)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(SWEEP_SECONDS, self.sweep)

    def forget(self, writer: FrameWriter) -> None:
        """The connection's ASGI call ended: no reference to it is kept here once the
        connection is gone (until then the sweep still aborts it if it cannot flush)."""
        writer.released = True
        if writer in self._dirty:
            self._dirty.remove(writer)
        if writer.gone:
            self._watched.discard(writer)

    def sweep(self) -> None:
        """Close slow readers and abort connections stuck closing (see the module docstring)."""
        self._sweep = None
        for writer in list(self._watched):
            writer.check()
            if writer.released and writer.gone:
                self._watched.discard(writer)
        if self._watched:
            self._sweep = asyncio.get_running_loop().call_later(SWEEP_SECONDS, self.sweep)


class FrameWriter:
    """Direct text frames for one WebSocket connection, written by its :class:`Flusher`."""

    def __init__(self, connection: WebSocketsSansIOProtocol, flusher: Flusher) -> None:
        self._connection = connection
        self._flusher = flusher
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._limit = flusher.send_limit
        self._pending_limit = min(PENDING_LIMIT, self._limit)
        self._closing_since: float | None = None
        self.released = False
        """The connection's ASGI call ended (the sweep drops it once it is gone)."""
        connection.transport.set_write_buffer_limits(high=self._limit)

    @property
    def gone(self) -> bool:
        """True once the TCP connection is lost (its buffers are freed)."""
        return self._connection.disconnected

    @property
    def unsent(self) -> int:
        """Bytes written for the client that this process still holds (the transport's buffer
        and the pending direct frames; the kernel's queue is :meth:`in_kernel`)."""
        return self._connection.transport.get_write_buffer_size() + self._pending_bytes

    def in_kernel(self) -> int:
        """Bytes the kernel holds for the client, not yet acknowledged (Linux ``SIOCOUTQ``;
        0 where that cannot be read)."""
        sock = self._connection.transport.get_extra_info("socket")
        if sock is None:
            return 0
        buffer = array.array("i", [0])
        try:
            fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buffer, True)
        except (OSError, ValueError, AttributeError):
            return 0
        return buffer[0]

    def over_limit(self, *, kernel: bool = False) -> bool:
        """Close the connection as a slow reader if it holds more than the limit unsent
        (with ``kernel``, counting the kernel's send queue too: a system call, so only the
        sweep asks); True if it is closed (or closing) now."""
        if self._closing():
            return True
        unsent = self.unsent
        if unsent <= self._limit and (not kernel or unsent + self.in_kernel() <= self._limit):
            return False
        log.info("closing a slow WebSocket reader", extra={"limit_bytes": self._limit})
        self.close(SLOW_READER, f"slow reader: more than {self._limit} bytes unsent")
        return True

    def check(self) -> None:
        """The sweep: a slow reader is closed; a connection closing for longer than the
        grace (never flushed: the client does not read) is aborted."""
        connection = self._connection
        if connection.disconnected:
            return
        if not self._closing():
            self.over_limit(kernel=True)
            return
        loop = asyncio.get_running_loop()
        if self._closing_since is None:
            self._closing_since = loop.time()
        elif loop.time() - self._closing_since >= CLOSE_GRACE_SECONDS:
            self.abort()

    def close(self, code: int, reason: str) -> None:
        """Send a close frame now, without waiting for the client to read: the app sees the
        disconnect at once, pending frames are dropped, the transport closes when the client
        answers with its close frame and is reset after :data:`CLOSE_GRACE_SECONDS` if not."""
        connection = self._connection
        self._pending.clear()
        self._pending_bytes = 0
        if connection.close_sent or connection.disconnected:
            return
        connection.queue.put_nowait(
            {"type": "websocket.disconnect", "code": code, "reason": reason}
        )
        connection.conn.send_close(code, reason)
        connection.transport.write(b"".join(connection.conn.data_to_send()))
        connection.close_sent = True
        if connection.read_paused:  # to read the client's answering close frame
            connection.read_paused = False
            connection.transport.resume_reading()
        # As uvicorn's own close does: its timer, so the transport is not closed when the app
        # returns. Closing it then would hand a non-reader's queue to the kernel, which keeps
        # it for minutes; the client's close frame closes the transport, the timer resets it.
        loop = asyncio.get_running_loop()
        connection.close_timer = loop.call_later(CLOSE_GRACE_SECONDS, self.abort)
        self._closing_since = loop.time()

    def abort(self) -> None:
        """Reset the connection: it and everything it holds unsent (here and in the kernel)
        are dropped."""
        self._pending.clear()
        self._pending_bytes = 0
        transport = self._connection.transport
        self._connection.close_timer = None
        if self._connection.disconnected:
            return
        log.info("aborting a WebSocket connection that does not take its data")
        sock = transport.get_extra_info("socket")
        if sock is not None:  # reset, not FIN: the kernel drops its send queue at once too
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        transport.abort()

    def write_messages(self, prefix: bytes, payloads: Sequence[bytes], suffix: bytes) -> bool:
        """Queue one text frame per payload, each ``prefix + payload + suffix`` (UTF-8), for
        the next flush; False (nothing queued) when the connection is closing, paused for a
        slow reader, or holds too much already. Parts are not copied here: the flush joins
        them once."""
        if (
            self._closing()
            or not self._connection.writable.is_set()
            or self._pending_bytes > self._pending_limit
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
            self.over_limit()

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
        writer = FrameWriter(connection, flusher)
        scope[SCOPE_KEY] = writer
        flusher.watch(writer)


def release_connection(scope: Scope, flusher: Flusher) -> None:
    """The connection's ASGI call ended: stop watching it (nothing keeps it alive here)."""
    writer = scope.pop(SCOPE_KEY, None)
    if isinstance(writer, FrameWriter):
        flusher.forget(writer)


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


class SocketAdapter(ASGIWebSocketAdapter):
    """strawberry's WebSocket adapter, closing a captured connection with
    :meth:`FrameWriter.close` (which never waits for a slow client to read)."""

    async def close(self, code: int, reason: str) -> None:
        writer = frame_writer(self.ws.scope)
        if writer is None:
            await super().close(code, reason)
            return
        writer.close(code, reason)
        self.ws.application_state = WebSocketState.DISCONNECTED  # the handler reads no more


class TransportHandler(BaseGraphQLTransportWSHandler[Context, None]):
    """strawberry's graphql-transport-ws handler, offering each operation a direct channel
    and flushing direct frames before anything it sends itself (see the module docstring);
    refusing malformed messages with 4400, re-checking the credential of ``connection_init``
    before every operation and on a timer (``modelplane/sockets.py``), and closing slow readers.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watch: CredentialWatch | None = None
        sockets = self._sockets()
        if sockets is not None:
            self.max_subscriptions_per_connection = sockets.max_operations

    def _sockets(self) -> OpenSockets | None:
        getter = getattr(self.view, "sockets_getter", None)
        found = getter() if callable(getter) else None
        return found if isinstance(found, OpenSockets) else None

    def _writer(self) -> FrameWriter | None:
        request: Any = self.context.request
        scope = getattr(request, "scope", None)
        return frame_writer(scope) if isinstance(scope, dict) else None

    async def handle_message(self, message: Message) -> None:
        problem = malformed(message)
        if problem is not None:
            await self.handle_invalid_message(problem)
            return
        await super().handle_message(message)

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        await super().handle_connection_init(message)
        sockets = self._sockets()
        principal = self.context.principal
        params = self.context.connection_params
        credential = credential_of(params) if isinstance(params, dict) else None
        if (
            self.connection_acknowledged
            and self._watch is None
            and sockets is not None
            and principal is not None
            and credential is not None
        ):
            watch = CredentialWatch(
                SocketCredential(credential, principal, sockets.authenticator),
                self._refuse,
                recheck_seconds=sockets.recheck_seconds,
            )
            sockets.add(watch)
            watch.start()
            self._watch = watch

    async def _refuse(self, refusal: Refusal) -> None:
        await self.websocket.close(refusal.code, refusal.reason)

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        if self._watch is not None and not await self._watch.admit():
            return  # closed: the credential no longer holds
        cap = self.max_subscriptions_per_connection
        if self.connection_acknowledged and cap is not None and len(self.operations) >= cap:
            error = GraphQLError(
                f"too many operations on this connection: at most {cap} in flight "
                "(setting ws_max_operations)"
            )
            await self.send_message(
                {"id": message["id"], "type": "error", "payload": [error.formatted]}
            )
            return
        await super().handle_subscribe(message)

    async def shutdown(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            sockets = self._sockets()
            if sockets is not None:
                sockets.discard(watch)
            await watch.stop()
        await super().shutdown()

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        writer = self._writer()
        if writer is not None:  # this task's context: the operation's resolvers see it
            offer_direct_channel(_OperationChannel(writer, operation))
        await super().run_operation(operation)

    async def send_message(self, message: Message) -> None:
        writer = self._writer()
        if writer is not None:
            writer.flush()
            if writer.over_limit():
                return  # closed, as a slow reader or otherwise: nothing may follow
        await super().send_message(message)
