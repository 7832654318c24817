"""Removing an upstream's key from what the upstream answered (:class:`Redactor`).

An upstream may echo the key it was sent (in an error message, a debug header); the gateway
passes nothing on before this has looked at it, in every encoding a body or header value can
carry the key in (tested in ``tests/test_redaction.py``)."""

from __future__ import annotations

import re

REDACTED = b"[REDACTED]"
_HTML_NAMED = {'"': b"&quot;", "&": b"&amp;", "<": b"&lt;", ">": b"&gt;", "'": b"&#39;|&apos;"}


def _hex(value: int, width: int) -> bytes:
    """A regex matching ``value`` in hexadecimal, either case."""
    digits = f"{value:0{width}x}"
    return b"".join(f"[{d}{d.upper()}]".encode() if d.isalpha() else d.encode() for d in digits)


def _char_forms(char: str, *, latin1: bool = True) -> bytes:
    """A regex for one character of a secret in any form a body may carry it in."""
    raw = char.encode("utf-8", "surrogatepass")
    code = ord(char)
    units = [code]
    if code > 0xFFFF:
        units = [0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)]
    forms = [
        re.escape(raw),  # raw
        rb"\\+" + re.escape(raw),  # JSON-escaped (\" \\ \/), at any depth
        b"".join(rb"\\+u" + _hex(unit, 4) for unit in units),  # JSON \uXXXX, any depth
        b"".join(b"%(?:25)*" + _hex(byte, 2) for byte in raw),  # URL-encoded, even twice
        b"&#0*" + str(code).encode() + b";",  # HTML numeric entities
        b"&#[xX]0*" + _hex(code, 1) + b";",
    ]
    if char in _HTML_NAMED:
        forms.append(_HTML_NAMED[char])
    if latin1 and code > 0x7F:
        # Its UTF-8 bytes read as Latin-1 characters (how HTTP stacks decode header values),
        # each of which may then take any form above.
        forms.append(b"".join(_char_forms(chr(byte), latin1=False) for byte in raw))
    return b"(?:" + b"|".join(forms) + b")"


class Redactor:
    """Removes one known secret from a body in every form it can take there: raw UTF-8,
    JSON-escaped (``\\"``, ``\\\\``, ``\\/``, ``\\u00e9``, surrogate pairs, and those escaped
    again when a JSON document is quoted inside another), URL-encoded (``%22``, also twice),
    HTML entities, and non-ASCII characters' UTF-8 bytes read as Latin-1 (an upstream that
    decodes the Authorization header so and echoes it re-encoded). Forms are matched per
    character, so mixed encodings are caught too. A secret is sent only as a Bearer token (no
    basic auth), so no base64 form exists."""

    def __init__(self, secret: str) -> None:
        self._raw = secret.encode("utf-8", "surrogatepass")
        self._pattern = re.compile(b"".join(_char_forms(c) for c in secret))
        self.longest = 64 * len(secret)
        """An upper bound of an encoded form's length (a stream holds this much back)."""

    def __call__(self, content: bytes) -> bytes:
        """``content`` with every form of the secret replaced by ``[REDACTED]``."""
        if self._raw.isascii() and not any(m in content for m in (b"\\", b"%", b"&")):
            return content.replace(self._raw, REDACTED)  # only the raw form can be there
        return self._pattern.sub(REDACTED, content)
