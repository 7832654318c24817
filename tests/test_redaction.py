"""The gateway's redaction of the upstream key (services.redaction.Redactor): every form a key can
take in an upstream's answer is replaced, for keys with quotes, backslashes, slashes, non-ASCII."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from urllib.parse import quote

import pytest

from services.gateway import Route
from services.redaction import Redactor

KEYS = ['sk-"quote"d', "sk-back\\slash", "sk-ünï€😀", "sk-a/b+c=", "sk-plain0123456789"]


def latin1(key: str) -> str:
    """The key's UTF-8 bytes read as Latin-1: what Starlette and others make of a header."""
    return key.encode().decode("latin-1")


FORMS: dict[str, Callable[[str], str]] = {
    "raw": lambda k: k,
    "json": lambda k: json.dumps(k)[1:-1],
    "json-ascii": lambda k: json.dumps(k, ensure_ascii=True)[1:-1],
    "json-ascii-upper": lambda k: json.dumps(k)[1:-1].replace("\\u00fc", "\\u00FC"),
    "json-in-json": lambda k: json.dumps(json.dumps({"auth": k}))[1:-1],
    "json-slash": lambda k: json.dumps(k)[1:-1].replace("/", "\\/"),
    "url": lambda k: quote(k, safe=""),
    "url-lower": lambda k: quote(k, safe="").lower(),
    "url-twice": lambda k: quote(quote(k, safe=""), safe=""),
    "html": html.escape,
    "html-numeric": lambda k: "".join(f"&#{ord(c)};" for c in k),
    "latin1": latin1,
    "latin1-json": lambda k: json.dumps(latin1(k))[1:-1],
    "latin1-url": lambda k: quote(latin1(k), safe=""),
}


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_form_of_the_key_is_redacted(key: str, form: str) -> None:
    encoded = FORMS[form](key)
    body = '{"error": {"message": "Incorrect API key provided: Bearer ' + encoded + ' !"}}'
    route = Route("o", "m", "http://x", 1.0, secret=key, redactor=Redactor(key))
    redacted = route.redact(body.encode())
    assert encoded.encode() not in redacted
    assert b"[REDACTED]" in redacted
    assert redacted.endswith(b' !"}}')  # nothing after the key was eaten


def test_text_without_the_key_is_left_alone() -> None:
    redactor = Redactor('sk-"x')
    body = b'{"choices": [{"text": "a \\"quoted\\" sk- word, 100% & more"}]}'
    assert redactor(body) == body
    assert Route("o", "m", "http://x", 1.0).redact(body) == body
