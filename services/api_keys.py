"""Organisation API keys: created by admins, shown once, stored as a hash, revocable.

A key is ``mp_`` followed by 43 URL-safe characters (32 random bytes). Only its SHA-256 is
stored; a salted slow hash would buy nothing against 256 bits of entropy and would cost every
gateway request a KDF. The first :data:`PREFIX_LENGTH` characters are kept in clear so a listing
can tell keys apart without revealing them.

A key authenticates as a :class:`Principal` of its organisation with the role it was created
with (subject ``apikey:<id>``), on ``/v1`` and on GraphQL alike. Verified keys are cached in
this process for :data:`CACHE_SECONDS` (bounded), so a busy client costs one database read per
key per few seconds. Revoking drops the entry at once in this process and appends an
``API_KEY`` event to the log; every replica's :meth:`ApiKeyService.on_event` drops it there as
the tail reads the event (within a second), and the cache lifetime bounds it if that event is
lost. (Open WebSockets that use the key are closed from the same event:
``modelplane/sockets.py``.)
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass

from live import API_KEY_REVOKED, Event, Recorder, ResourceKind
from services import validation as v
from services.caching import ExpiringCache
from services.errors import InvalidInput, Missing
from services.principals import Forbidden, Principal
from storage.documents import ApiKeyDocument, Role, new_id, utcnow
from storage.errors import NotFound
from storage.repositories import ApiKeyRepository, Page

log = logging.getLogger(__name__)

KEY_PREFIX = "mp_"
PREFIX_LENGTH = 11  # "mp_" and 8 random characters: enough to tell keys apart, useless to guess
MAX_NAME = 100
MAX_PAGE = 100
CACHE_SECONDS = 10.0
CACHE_ENTRIES = 4096
SUBJECT_PREFIX = "apikey:"


class InvalidApiKey(Exception):
    """The presented key is unknown, revoked or malformed; the message is safe to return."""


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_key(credential: str) -> bool:
    """True when a bearer credential is one of our API keys rather than a JWT."""
    return credential.startswith(KEY_PREFIX)


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A new key: the stored document and the key itself, which is never available again."""

    document: ApiKeyDocument
    key: str


class ApiKeyService:
    """Create, list, revoke and verify organisation API keys."""

    def __init__(
        self,
        keys: ApiKeyRepository,
        *,
        cache_seconds: float = CACHE_SECONDS,
        recorder: Recorder | None = None,
    ) -> None:
        self._keys = keys
        self._recorder = recorder or Recorder(None)
        self._cache: ExpiringCache[str, Principal] = ExpiringCache(
            ttl=cache_seconds, size=CACHE_ENTRIES
        )

    async def create(self, principal: Principal, *, name: str, role: Role) -> CreatedKey:
        """A new key of ``role`` (at most the caller's own) named ``name``."""
        principal.require(Role.ADMIN)
        if not principal.role.allows(role):
            raise Forbidden(
                f"a key cannot have a higher role ({role.value}) than its creator's "
                f"({principal.role.value})",
                required=role,
            )
        clean = v.require_text("name", name, limit=MAX_NAME)
        if any(not ch.isprintable() for ch in clean):
            raise InvalidInput("name", "name must not contain control characters")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        document = ApiKeyDocument(
            id=new_id("key", 8),
            organization_id=principal.organization_id,
            name=clean,
            role=role,
            prefix=key[:PREFIX_LENGTH],
            key_hash=hash_key(key),
            created_by=principal.subject,
        )
        await self._keys.insert(document)
        log.info(
            "API key created",
            extra={"key_id": document.id, "role": role.value, "by": principal.subject},
        )
        return CreatedKey(document=document, key=key)

    async def page(
        self, principal: Principal, *, include_revoked: bool, limit: int, offset: int
    ) -> Page[ApiKeyDocument]:
        """The organisation's keys, newest first (admins only: keys are credentials)."""
        principal.require(Role.ADMIN)
        if not 0 <= limit <= MAX_PAGE:
            raise InvalidInput("limit", f"limit must be between 0 and {MAX_PAGE}")
        if offset < 0:
            raise InvalidInput("offset", "offset must not be negative")
        return await self._keys.list_page(
            organization_id=principal.organization_id,
            include_revoked=include_revoked,
            limit=limit,
            offset=offset,
        )

    async def revoke(self, principal: Principal, key_id: str) -> ApiKeyDocument:
        """Revoke a key of the caller's organisation; revoking twice changes nothing."""
        principal.require(Role.ADMIN)
        wrote = False

        def change(found: ApiKeyDocument) -> dict[str, object] | None:
            nonlocal wrote
            self._cache.forget(found.key_hash)
            wrote = found.revoked_at is None
            return {"revoked_at": utcnow(), "revoked_by": principal.subject} if wrote else None

        try:
            revoked = await self._keys.modify(key_id, change, scope=principal.scope)
        except NotFound:
            raise Missing(key_id, f"API key {key_id} not found") from None
        if wrote:
            self._cache.forget(revoked.key_hash)  # again: an authentication may have raced us
            log.info("API key revoked", extra={"key_id": key_id, "by": principal.subject})
            await self._recorder.api_key_revoked(revoked)  # tells the other replicas
        return revoked

    def on_event(self, event: Event) -> None:
        """A listener of the event log: forget a key revoked through any replica."""
        if event.resource_kind is ResourceKind.API_KEY and event.phase == API_KEY_REVOKED:
            subject = f"{SUBJECT_PREFIX}{event.resource_id}"
            self._cache.forget_where(lambda principal: principal.subject == subject)

    async def close(self) -> None:
        """Stop the cache's background refreshes (at shutdown)."""
        await self._cache.close()

    async def authenticate(self, key: str) -> Principal:
        """The principal a key stands for, or :class:`InvalidApiKey`."""
        if not looks_like_key(key) or len(key) > 128:
            raise InvalidApiKey("invalid API key")
        digest = hash_key(key)

        async def load() -> Principal:
            document = await self._keys.by_hash(digest)
            if document is None or document.revoked_at is not None:
                raise InvalidApiKey("invalid or revoked API key")
            return Principal(
                subject=f"{SUBJECT_PREFIX}{document.id}",
                organization_id=document.organization_id,
                role=document.role,
            )

        return await self._cache.get(digest, load)
