"""Bearer-token verification: development tokens and an OIDC issuer's JWKS over real HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, OctKey, RSAKey

from modelplane.auth import AuthError, TokenVerifier, issue_dev_token, load_dev_key
from storage.documents import Role


class Issuer:
    """A minimal OIDC issuer on loopback: discovery document and JWKS, keys rotatable."""

    def __init__(self) -> None:
        self.keys = [RSAKey.generate_key(2048, parameters={"kid": "k1"})]
        self.jwks_requests = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body: object
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks"}
                elif self.path == "/jwks":
                    issuer.jwks_requests += 1
                    body = KeySet(list(issuer.keys)).as_dict(private=False)
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def sign(self, claims: dict[str, Any], key: RSAKey | None = None) -> str:
        key = key or self.keys[0]
        return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {
            "iss": self.url,
            "sub": "user-1",
            "aud": "modelplane",
            "org": "org-a",
            "role": "editor",
            "iat": now,
            "exp": now + 300,
        }
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    served = Issuer()
    served.thread.start()
    try:
        yield served
    finally:
        served.server.shutdown()
        served.server.server_close()
        served.thread.join(timeout=5)


def oidc_verifier(issuer: Issuer, dev_key: OctKey | None = None) -> TokenVerifier:
    return TokenVerifier(
        dev_key=dev_key,
        oidc_issuer=issuer.url,
        oidc_audience="modelplane",
        jwks_url=None,
        organization_claim="org",
        role_claim="role",
    )


async def test_oidc_token_becomes_a_principal(issuer: Issuer) -> None:
    principal = await oidc_verifier(issuer).verify("Bearer " + issuer.sign(issuer.claims()))
    assert principal.subject == "user-1"
    assert principal.organization_id == "org-a"
    assert principal.role is Role.EDITOR
    assert principal.scope == {"organization_id": "org-a"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"aud": "someone-else"}, "invalid token"),
        ({"exp": int(time.time()) - 3600}, "invalid token"),
        ({"org": None}, r"'org' \(organisation\) claim"),
        ({"role": "owner"}, "not viewer, editor or admin"),
        ({"sub": None}, "invalid token"),
    ],
)
async def test_bad_claims_are_refused(
    issuer: Issuer, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(AuthError, match=message):
        await oidc_verifier(issuer).verify(issuer.sign(issuer.claims(**overrides)))


async def test_token_from_another_key_is_refused(issuer: Issuer) -> None:
    stranger = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    with pytest.raises(AuthError, match="invalid token"):
        await oidc_verifier(issuer).verify(issuer.sign(issuer.claims(), key=stranger))


async def test_rotated_key_is_fetched_once(issuer: Issuer) -> None:
    verifier = oidc_verifier(issuer)
    await verifier.verify(issuer.sign(issuer.claims()))
    assert issuer.jwks_requests == 1
    await verifier.verify(issuer.sign(issuer.claims()))
    assert issuer.jwks_requests == 1  # cached

    new_key = RSAKey.generate_key(2048, parameters={"kid": "k2"})
    issuer.keys.append(new_key)
    verifier._jwks_fetched -= 3600  # the cache is old enough to refresh on an unknown key
    principal = await verifier.verify(issuer.sign(issuer.claims(sub="rotated"), key=new_key))
    assert principal.subject == "rotated"
    assert issuer.jwks_requests == 2


async def test_development_tokens(tmp_path: Path, issuer: Issuer) -> None:
    key = load_dev_key(secret_key=None, state_dir=tmp_path)
    assert load_dev_key(secret_key=None, state_dir=tmp_path).as_dict() == key.as_dict()
    assert (tmp_path / "keys" / "dev-signing-key").stat().st_mode & 0o777 == 0o600
    token = issue_dev_token(
        key, subject="admin", organization_id="default", role=Role.ADMIN, ttl_seconds=60
    )
    principal = await oidc_verifier(issuer, dev_key=key).verify(token)
    assert principal.role is Role.ADMIN
    with pytest.raises(AuthError, match="development tokens are not accepted"):
        await oidc_verifier(issuer, dev_key=None).verify(token)
    other = load_dev_key(secret_key="x" * 40, state_dir=tmp_path)
    with pytest.raises(AuthError, match="invalid token"):
        await oidc_verifier(issuer, dev_key=other).verify(token)


async def test_garbage_is_refused(issuer: Issuer) -> None:
    verifier = oidc_verifier(issuer)
    for value in ["", "Bearer ", "not-a-jwt", "a.b.c"]:
        with pytest.raises(AuthError):
            await verifier.verify(value)
