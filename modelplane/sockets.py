"""What a ``graphql-transport-ws`` connection may do after ``connection_init``: its credential is
checked again for every operation and while it stays open, and its messages must be well formed.

Why: a socket used to keep the principal of its ``connection_init`` for good. After the token
expired, or the API key was revoked, it still ran queries and mutations sent as ``subscribe``
messages, and its subscriptions kept streaming (issue 15, finding 3).

The rule, one place for every operation and stream of a connection (:class:`CredentialWatch`,
driven by ``TransportHandler`` in ``modelplane/direct.py``):

* Every ``subscribe`` message (query, mutation or subscription) re-verifies the credential
  first. An expired or no longer valid token closes the socket with 4401, a revoked API key
  with 4403; the operation does not run.
* A timer closes the socket at the token's ``exp`` (no leeway), even if the client sends
  nothing, and re-verifies the credential every :data:`RECHECK_SECONDS` as a backstop.
* Revocation reaches every replica through the event log: revoking a key appends an
  ``API_KEY`` event (``services/api_keys.py``), each replica's broker hands it to
  :meth:`OpenSockets.on_event`, which closes this process's sockets using that key at once.

Malformed messages (issue 15, finding 9): strawberry's handler indexed into whatever JSON
arrived, so ``[1,2]`` raised a TypeError that dropped the connection without a close frame.
:func:`malformed` checks a message's shape before strawberry sees it; anything wrong closes the
socket with 4400 and a reason naming the problem.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from live import API_KEY_REVOKED, Event, ResourceKind
from modelplane.auth import Authenticator, AuthError
from services.api_keys import SUBJECT_PREFIX
from services.principals import Principal

log = logging.getLogger(__name__)

UNAUTHORIZED = 4401
FORBIDDEN = 4403
INTERNAL_ERROR = 4500
RECHECK_SECONDS = 30.0
"""How often an open socket's credential is verified again even when nothing happens."""
MAX_ID_LENGTH = 128
DEFAULT_MAX_OPERATIONS = 100

CLIENT_TYPES = frozenset({"connection_init", "ping", "pong", "subscribe", "complete"})


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a connection is closed: the close code and a reason safe to send."""

    code: int
    reason: str


def credential_of(params: Mapping[str, object]) -> str | None:
    """The credential of a ``connection_init`` payload (``Authorization``, or ``token``)."""
    for name in ("Authorization", "authorization", "token"):
        value = params.get(name)
        if isinstance(value, str):
            return value
    return None


def malformed(message: object) -> str | None:
    """What is wrong with a client message (None when strawberry may handle it): every field
    strawberry's handler reads must be there, with its type."""
    if not isinstance(message, dict):
        return "a message must be a JSON object"
    kind = message.get("type")
    if not isinstance(kind, str):
        return "a message needs a string `type`"
    if kind not in CLIENT_TYPES:
        return f"unknown message type {kind[:64]!r}"
    payload = message.get("payload")
    if kind in {"connection_init", "ping", "pong"}:
        return _optional(f"the `payload` of {kind}", payload, dict, "an object")
    return _malformed_id(kind, message.get("id")) or (
        _malformed_subscribe(payload) if kind == "subscribe" else None
    )


def _optional(name: str, value: object, wanted: type, label: str) -> str | None:
    if value is None or isinstance(value, wanted):
        return None
    return f"{name} must be {label} or null"


def _malformed_id(kind: str, operation_id: object) -> str | None:
    if not isinstance(operation_id, str) or not operation_id:
        return f"{kind} needs a string `id`"
    if len(operation_id) > MAX_ID_LENGTH:
        return f"an `id` must be at most {MAX_ID_LENGTH} characters"
    return None


def _malformed_subscribe(payload: object) -> str | None:
    if not isinstance(payload, dict):
        return "subscribe needs an object `payload`"
    if not isinstance(payload.get("query"), str):
        return "subscribe needs a string `payload.query`"
    for name, wanted, label in (
        ("variables", dict, "an object"),
        ("operationName", str, "a string"),
        ("extensions", dict, "an object"),
    ):
        problem = _optional(f"`payload.{name}`", payload.get(name), wanted, label)
        if problem is not None:
            return problem
    return None


class SocketCredential:
    """The credential a connection presented in ``connection_init``, and who it was."""

    def __init__(self, credential: str, principal: Principal, authenticator: Authenticator) -> None:
        self._credential = credential
        self.principal = principal
        self._authenticator = authenticator

    @property
    def expires_at(self) -> float | None:
        """The token's ``exp`` as a UNIX time (None for an API key)."""
        expires = self.principal.expires_at
        return None if expires is None else expires.timestamp()

    async def check(self) -> Refusal | None:
        """None while the credential is still good; otherwise why the socket must close."""
        expires = self.expires_at
        if expires is not None and time.time() >= expires:
            return Refusal(UNAUTHORIZED, "token expired")
        try:
            await self._authenticator.verify(self._credential)
        except AuthError as exc:
            if self.principal.subject.startswith(SUBJECT_PREFIX):
                return Refusal(FORBIDDEN, f"API key no longer valid: {exc}")
            return Refusal(UNAUTHORIZED, f"token no longer valid: {exc}")
        return None


class CredentialWatch:
    """One connection's credential: checked before every operation and by a timer (at the
    token's expiry, and every ``recheck_seconds``), and told of revocations by
    :class:`OpenSockets`. A failed check calls ``close`` once with the :class:`Refusal`."""

    def __init__(
        self,
        credential: SocketCredential,
        close: Callable[[Refusal], Awaitable[None]],
        *,
        recheck_seconds: float = RECHECK_SECONDS,
    ) -> None:
        self.credential = credential
        self._close = close
        self._recheck = recheck_seconds
        self._revoked: Refusal | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def subject(self) -> str:
        """Whose credential this is."""
        return self.credential.principal.subject

    def start(self) -> None:
        """Start the timer (owned here; :meth:`stop` ends it)."""
        self._task = asyncio.create_task(self._run(), name="socket-credential")

    async def stop(self) -> None:
        """End the timer (the connection is over)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def revoke(self, refusal: Refusal) -> None:
        """The credential was revoked (possibly through another replica): close at once."""
        self._revoked = refusal
        self._wake.set()

    async def admit(self) -> bool:
        """Before an operation: True if the credential still holds; otherwise the connection
        is closed and the operation must not run (also when it cannot be verified now)."""
        try:
            refusal = self._revoked or await self.credential.check()
        except Exception:
            log.warning("could not verify a WebSocket's credential", exc_info=True)
            refusal = Refusal(INTERNAL_ERROR, "could not verify the credential now; reconnect")
        if refusal is None:
            return True
        await self._refuse(refusal)
        return False

    async def _run(self) -> None:
        while not self._closed:
            delay = self._recheck
            expires = self.credential.expires_at
            if expires is not None:
                delay = min(delay, max(0.0, expires - time.time()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            try:
                refusal = self._revoked or await self.credential.check()
            except Exception:
                log.warning("could not recheck a WebSocket's credential", exc_info=True)
                continue
            if refusal is not None:
                await self._refuse(refusal)
                return

    async def _refuse(self, refusal: Refusal) -> None:
        if self._closed:
            return
        self._closed = True
        log.info(
            "closing a WebSocket: its credential no longer holds",
            extra={"subject": self.subject, "code": refusal.code, "reason": refusal.reason},
        )
        await self._close(refusal)


class OpenSockets:
    """This process's authenticated WebSocket connections by subject, and their limits.

    A listener of the event log (:meth:`on_event`): an API key revoked through any replica
    closes the connections that authenticated with it here.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        *,
        max_operations: int = DEFAULT_MAX_OPERATIONS,
        recheck_seconds: float = RECHECK_SECONDS,
    ) -> None:
        self.authenticator = authenticator
        self.max_operations = max_operations
        """Operations in flight on one connection (``ws_max_operations``)."""
        self.recheck_seconds = recheck_seconds
        self._by_subject: dict[str, set[CredentialWatch]] = {}

    def add(self, watch: CredentialWatch) -> None:
        """Track an acknowledged connection."""
        self._by_subject.setdefault(watch.subject, set()).add(watch)

    def discard(self, watch: CredentialWatch) -> None:
        """The connection ended."""
        found = self._by_subject.get(watch.subject)
        if found is not None:
            found.discard(watch)
            if not found:
                del self._by_subject[watch.subject]

    def __len__(self) -> int:
        return sum(len(found) for found in self._by_subject.values())

    def on_event(self, event: Event) -> None:
        """Close the connections of an API key revoked anywhere (cheap; never raises)."""
        if event.resource_kind is not ResourceKind.API_KEY or event.phase != API_KEY_REVOKED:
            return
        subject = f"{SUBJECT_PREFIX}{event.resource_id}"
        for watch in list(self._by_subject.get(subject, ())):
            if watch.credential.principal.organization_id == event.organization_id:
                watch.revoke(Refusal(FORBIDDEN, "API key revoked"))
