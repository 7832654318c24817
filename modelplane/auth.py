"""Bearer-token authentication with joserfc (docs/architecture.md decision 8).

Two kinds of signer are accepted:

* an OIDC issuer: RS/ES-signed JWTs verified against the issuer's JWKS (discovered from
  ``/.well-known/openid-configuration`` unless a JWKS URL is configured), cached and refetched
  once when a token names an unknown key id;
* the development signer: an HS256 key derived from ``MODELPLANE_SECRET_KEY`` (or generated into
  the state directory), used by ``make run`` to print an admin token. Its tokens carry the issuer
  ``modelplane-dev``; they are refused in production.

Claims used: ``sub``, the organisation claim (default ``org``), the role claim (default
``role``), ``exp`` (required), ``nbf``, ``iss`` and ``aud`` when configured.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OctKey
from joserfc.jwt import ClaimsOption

from modelplane.keyfiles import read_or_create
from services.api_keys import ApiKeyService, InvalidApiKey, looks_like_key
from services.principals import Principal
from storage.documents import Role

log = logging.getLogger(__name__)

DEV_ISSUER = "modelplane-dev"
DEV_ALGORITHMS = ["HS256"]
OIDC_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
JWKS_MIN_REFRESH_SECONDS = 30.0


class AuthError(Exception):
    """The request is not authenticated; the message is safe to return to the caller."""


def load_dev_key(*, secret_key: str | None, state_dir: Path) -> OctKey:
    """The development HS256 key: derived from the secret key, else generated and kept."""
    if secret_key is not None:
        material = hashlib.sha256(b"modelplane-dev-token\x00" + secret_key.encode()).digest()
        return OctKey.import_key(material)
    material = read_or_create(state_dir, "dev-signing-key", lambda: secrets.token_bytes(32))
    return OctKey.import_key(material)


def issue_dev_token(
    key: OctKey, *, subject: str, organization_id: str, role: Role, ttl_seconds: int
) -> str:
    """A development token (never valid in production, where the dev key is not loaded)."""
    now = int(time.time())
    claims = {
        "iss": DEV_ISSUER,
        "sub": subject,
        "org": organization_id,
        "role": role.value,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    return jwt.encode({"alg": "HS256"}, claims, key)


class TokenVerifier:
    """Turns an ``Authorization: Bearer`` value into a :class:`Principal` or an AuthError."""

    def __init__(
        self,
        *,
        dev_key: OctKey | None,
        oidc_issuer: str | None,
        oidc_audience: str | None,
        jwks_url: str | None,
        organization_claim: str,
        role_claim: str,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._dev_key = dev_key
        self._issuer = oidc_issuer
        self._audience = oidc_audience
        self._jwks_url = jwks_url
        self._org_claim = organization_claim
        self._role_claim = role_claim
        self._http = http
        self._jwks: KeySet | None = None
        self._jwks_fetched = 0.0
        self._lock = asyncio.Lock()

    async def verify(self, token: str) -> Principal:
        """Validate signature and claims; raise :class:`AuthError` with a safe message."""
        token = token.strip()
        if token.lower().startswith("bearer "):
            token = token[7:].strip()
        if not token:
            raise AuthError("missing bearer token")
        issuer = _peek_issuer(token)
        try:
            if issuer == DEV_ISSUER:
                if self._dev_key is None:
                    raise AuthError("development tokens are not accepted here")
                decoded = jwt.decode(token, self._dev_key, algorithms=DEV_ALGORITHMS)
                expected_issuer = DEV_ISSUER
            else:
                if self._issuer is None:
                    raise AuthError("no OIDC issuer is configured for this token")
                decoded = await self._decode_oidc(token)
                expected_issuer = self._issuer
            audience: ClaimsOption = (
                {"essential": True, "value": self._audience}
                if self._audience and expected_issuer != DEV_ISSUER
                else {"essential": False}
            )
            registry = jwt.JWTClaimsRegistry(
                leeway=30,
                iss={"essential": True, "value": expected_issuer},
                exp={"essential": True},
                sub={"essential": True},
                aud=audience,
            )
            registry.validate(decoded.claims)
        except JoseError as exc:
            raise AuthError(f"invalid token: {exc.error}") from None
        return self._principal(decoded.claims)

    def _principal(self, claims: dict[str, Any]) -> Principal:
        org = claims.get(self._org_claim)
        if not isinstance(org, str) or not org:
            raise AuthError(f"token has no {self._org_claim!r} (organisation) claim")
        role_value = claims.get(self._role_claim, Role.VIEWER.value)
        try:
            role = Role(role_value)
        except ValueError:
            raise AuthError(f"token role {role_value!r} is not viewer, editor or admin") from None
        exp = claims.get("exp")
        return Principal(
            subject=str(claims["sub"]),
            organization_id=org,
            role=role,
            expires_at=datetime.fromtimestamp(exp, UTC) if isinstance(exp, int) else None,
        )

    async def _decode_oidc(self, token: str) -> jwt.Token:
        keys = await self._key_set(refresh=False)
        try:
            return jwt.decode(token, keys, algorithms=OIDC_ALGORITHMS)
        except JoseError:
            # A key rotation: refetch once (rate limited), then give the real verdict.
            keys = await self._key_set(refresh=True)
            return jwt.decode(token, keys, algorithms=OIDC_ALGORITHMS)

    async def _key_set(self, *, refresh: bool) -> KeySet:
        async with self._lock:
            stale = time.monotonic() - self._jwks_fetched > JWKS_MIN_REFRESH_SECONDS
            if self._jwks is None or (refresh and stale):
                self._jwks = await self._fetch_jwks()
                self._jwks_fetched = time.monotonic()
            return self._jwks

    async def _fetch_jwks(self) -> KeySet:
        client = self._http or httpx.AsyncClient(timeout=5.0)
        try:
            url = self._jwks_url
            if url is None:
                discovery = f"{(self._issuer or '').rstrip('/')}/.well-known/openid-configuration"
                response = await client.get(discovery)
                response.raise_for_status()
                url = str(response.json()["jwks_uri"])
            response = await client.get(url)
            response.raise_for_status()
            return KeySet.import_key_set(response.json())
        except (httpx.HTTPError, KeyError, ValueError, JoseError) as exc:
            log.warning("could not fetch the issuer's JWKS: %s", type(exc).__name__)
            raise AuthError("the token issuer's keys are unavailable") from exc
        finally:
            if self._http is None:
                await client.aclose()


class Authenticator:
    """Either credential a caller may present as ``Authorization: Bearer``: a JWT (checked by
    :class:`TokenVerifier`) or an organisation API key (``mp_...``, checked by
    :class:`ApiKeyService`). Used by GraphQL (HTTP and ``connection_init``) and ``/v1``."""

    def __init__(self, tokens: TokenVerifier, keys: ApiKeyService) -> None:
        self._tokens = tokens
        self._keys = keys

    async def verify(self, credential: str) -> Principal:
        """The caller, or :class:`AuthError` with a message safe to return."""
        value = credential.strip()
        if value[:7].lower() == "bearer ":
            value = value[7:].strip()
        if looks_like_key(value):
            try:
                return await self._keys.authenticate(value)
            except InvalidApiKey as exc:
                raise AuthError(str(exc)) from None
        return await self._tokens.verify(value)


def _peek_issuer(token: str) -> str | None:
    """The unverified ``iss`` claim, only to choose which keys verify the token."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    issuer = payload.get("iss") if isinstance(payload, dict) else None
    return issuer if isinstance(issuer, str) else None
