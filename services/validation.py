"""Pure validation and normalisation of user input; every function is table-tested.

Each check raises :class:`~services.errors.InvalidInput` naming the offending field with its
path in the GraphQL input (``downloadTarget.local.localPath``) and saying what is accepted.
Nothing here does I/O except :func:`check_local_path` and :func:`check_weights_directory`,
which resolve symlinks, and :func:`check_resolved`, which resolves a host name with the
outbound policy that every connection to user-given URLs also uses
(:mod:`integrations.addresses`).

Every text goes through :func:`check_text`, which also refuses characters that make what a
reader sees differ from what is stored (:func:`check_characters`): control characters, Unicode
format characters (category Cf: the right-to-left override U+202E and the isolates
U+2066-2069 that reorder text, zero-width spaces U+200B, the BOM U+FEFF...), line and
paragraph separators and unpaired surrogates. Free text (descriptions) keeps newlines, tabs
and the zero-width (non-)joiners U+200C/U+200D that Persian, Indic scripts and emoji
sequences need. Patterns end in ``\\Z``, not ``$``, which also matches before a final newline.

Resource quantities have upper bounds that make sense for one inference: at most
:data:`MAX_CPU` cores (1,024) and :data:`MAX_MEMORY_BYTES` (64 TiB), more than any single node
offers today, so a typo or an attack (``10^31`` cores, ``99999999Ei``) is refused here instead
of reaching the scheduler or the fit calculation.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from controllers.transfer import locations
from integrations.addresses import AddressRefused, OutboundPolicy
from services.errors import InvalidInput

MAX_NAME = 63
MAX_DISPLAY_NAME = 256
MAX_DESCRIPTION_BYTES = 4096
MAX_LABEL = 128
MAX_URL = 2048
MAX_TAGS = 32
MAX_TAG = 64
MAX_TOKEN = 1024
MAX_GPUS = 64
MAX_CPU = Decimal(1024)
"""Cores one inference (each replica) may ask for."""
MAX_MEMORY_BYTES = 64 * 2**40
"""Memory one inference (each replica) may ask for: 64 TiB."""
MEMORY_UNITS = {
    "": 1,
    **{unit: 1000**power for power, unit in enumerate("kMGTPE", start=1)},
    **{f"{unit}i": 1024**power for power, unit in enumerate("KMGTPE", start=1)},
}
PROSE_ALLOWED = frozenset("\n\t\u200c\u200d")
"""What free text may hold beyond visible characters: newline, tab, the zero-width non-joiner
and joiner (needed by some scripts and emoji sequences)."""

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}\Z")
CPU = re.compile(r"^(?P<num>[0-9]+(\.[0-9]+)?)(?P<milli>m)?\Z")
MEMORY = re.compile(r"^(?P<num>[0-9]+(\.[0-9]+)?)(?P<unit>Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?\Z")
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
REGION = re.compile(r"^[a-z0-9-]{2,32}\Z")
AUTHORITY = re.compile(r"^(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?\Z")
"""A URL's host and port as every URL parser reads them alike (no userinfo, escapes, zones)."""
HUB_HOSTS = frozenset({"huggingface.co", "www.huggingface.co", "hf.co"})


def check_text(
    field: str, value: str | None, *, limit: int, required: bool = False, in_bytes: bool = False
) -> str | None:
    """Trimmed text within ``limit`` characters (or UTF-8 bytes); None when empty. Hidden
    characters are refused (:func:`check_characters`); ``in_bytes`` marks free text, which
    keeps newlines, tabs and joiners."""
    if value is None or not value.strip():
        if required:
            raise InvalidInput(field, f"{field} is required")
        return None
    value = value.strip()
    size = len(value.encode(errors="surrogatepass")) if in_bytes else len(value)
    if size > limit:
        unit = "bytes" if in_bytes else "characters"
        raise InvalidInput(field, f"{field} is {size} {unit}; at most {limit} are allowed")
    check_characters(field, value, prose=in_bytes)
    return value


def check_characters(field: str, value: str, *, prose: bool = False) -> None:
    """Refuse control characters (Cc), format characters (Cf: bidirectional overrides and
    isolates, zero-width spaces, the BOM...), line and paragraph separators (Zl, Zp) and
    unpaired surrogates (Cs), naming the field, the code point and its position. ``prose``
    allows newline, tab and the zero-width (non-)joiners (:data:`PROSE_ALLOWED`)."""
    if value.isascii() and value.isprintable():
        return  # the common case, without a look at each character
    for position, char in enumerate(value):
        category = unicodedata.category(char)
        if category not in _HIDDEN or (prose and char in PROSE_ALLOWED):
            continue
        raise InvalidInput(
            field,
            f"{field} contains {_HIDDEN[category]} (U+{ord(char):04X}) at position {position}; "
            "remove it",
        )


_HIDDEN = {
    "Cc": "a control character",
    "Cf": "an invisible formatting character",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Cs": "an unpaired surrogate",
}


def require_text(field: str, value: str | None, *, limit: int) -> str:
    """Like :func:`check_text` for a required field: always a non-empty string."""
    text = check_text(field, value, limit=limit, required=True)
    if text is None:  # pragma: no cover - check_text raised already
        raise InvalidInput(field, f"{field} is required")
    return text


def check_name(field: str, value: str) -> str:
    """A DNS-1123 label: what Kubernetes objects are named after."""
    if len(value) > MAX_NAME:
        raise InvalidInput(field, f"{field} is {len(value)} characters; at most {MAX_NAME}")
    if not DNS_LABEL.match(value):
        raise InvalidInput(
            field,
            f"{field} {value!r} must be a DNS-1123 label: lowercase letters, digits and '-', "
            "starting and ending with a letter or digit",
        )
    return value


def derive_name(seed: str) -> str:
    """A DNS-1123 label from a repo id or display name: ``Qwen/Qwen2.5-7B`` -> ``qwen2-5-7b``."""
    base = seed.rsplit("/", 1)[-1].lower()
    base = re.sub(r"[^a-z0-9]+", "-", base).strip("-")
    base = base[:MAX_NAME].strip("-")
    return base or "model"


def check_tags(field: str, tags: Sequence[str] | None) -> list[str]:
    """At most 32 tags of at most 64 characters; duplicates dropped, order kept."""
    if not tags:
        return []
    if len(tags) > MAX_TAGS:
        raise InvalidInput(field, f"{len(tags)} tags given; at most {MAX_TAGS} are allowed")
    cleaned: list[str] = []
    for tag in tags:
        value = check_text(field, tag, limit=MAX_TAG, required=True)
        if value is not None and value not in cleaned:
            cleaned.append(value)
    return cleaned


def normalize_repo_id(field: str, url: str, *, hub_endpoint: str) -> str:
    """``org/name`` from a repo id or a hub URL (``https://huggingface.co/org/name/tree/main``)."""
    text = url.strip()
    if "://" in text:
        parts = urlsplit(text)
        allowed = set(HUB_HOSTS)
        endpoint_host = urlsplit(hub_endpoint).netloc
        if endpoint_host:
            allowed.add(endpoint_host)
        if parts.scheme not in ("http", "https") or parts.netloc not in allowed:
            raise InvalidInput(
                field,
                f"{field} must be a Hugging Face repo id (org/name) or a URL on the hub "
                f"({', '.join(sorted(allowed))})",
            )
        segments = [s for s in parts.path.split("/") if s]
        if segments and segments[0] == "models":
            segments = segments[1:]
        text = "/".join(segments[:2])
    pieces = text.split("/")
    if (
        len(pieces) != 2
        or not all(REPO_PART.match(p) for p in pieces)
        or any(".." in p or "--" in p or p.endswith(".") for p in pieces)
    ):
        raise InvalidInput(
            field,
            f"{field} {url!r} is not a Hugging Face repo id such as 'Qwen/Qwen2.5-7B-Instruct'",
        )
    return text


def check_revision(field: str, revision: str | None) -> str | None:
    """A branch, tag or commit: no whitespace, no '..', at most 255 characters."""
    value = check_text(field, revision, limit=255)
    if value is not None and (".." in value or re.search(r"\s", value)):
        raise InvalidInput(field, f"{field} {value!r} is not a valid revision")
    return value


def check_remote_url(field: str, url: str, *, outbound: OutboundPolicy) -> str:
    """An http(s) base URL whose host the outbound policy allows (no resolution here: see
    :func:`check_resolved`), without credentials, query string or fragment."""
    value = require_text(field, url, limit=MAX_URL)
    _check_outbound_url(field, value, outbound=outbound)
    return value.rstrip("/")


def check_endpoint(field: str, value: str | None, *, outbound: OutboundPolicy) -> str | None:
    """An optional http(s) S3 endpoint URL (MinIO, Ceph...); unset means AWS. Same rules as
    :func:`check_remote_url`."""
    text = check_text(field, value, limit=MAX_URL)
    if text is None:
        return None
    _check_outbound_url(field, text, outbound=outbound)
    return text.rstrip("/")


def check_address(field: str, host: str, *, outbound: OutboundPolicy) -> None:
    """Refuse a host that is a refused address in any spelling, or a metadata name."""
    try:
        outbound.check_host(host)
    except AddressRefused as exc:
        raise InvalidInput(field, f"{field} {exc}") from None


async def check_resolved(field: str, url: str, *, outbound: OutboundPolicy) -> None:
    """Resolve the URL's host now and refuse it if any address is refused (the connection
    checks again, with the same policy, whatever the name resolves to then)."""
    try:
        await outbound.check_url(url)
    except AddressRefused as exc:
        raise InvalidInput(field, f"{field} {exc}") from None


def _check_outbound_url(field: str, value: str, *, outbound: OutboundPolicy) -> None:
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise InvalidInput(field, f"{field} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(field, f"{field} must be an http:// or https:// URL")
    if parts.username or parts.password or "@" in parts.netloc:
        raise InvalidInput(field, f"{field} must not carry credentials; use the token field")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise InvalidInput(
            field,
            f"{field} must not carry a query string or fragment (every viewer sees the URL; "
            "credentials go in the token field)",
        )
    if not AUTHORITY.match(parts.netloc) or port == 0:
        raise InvalidInput(
            field,
            f"{field} must name its host plainly: letters, digits, '.', '-' (punycode for "
            "international names) or a bracketed IPv6 address, and an optional port",
        )
    check_address(field, parts.hostname, outbound=outbound)


def check_cpu(field: str, value: str | None) -> str | None:
    """A CPU quantity: ``16``, ``0.5`` or ``500m``, greater than zero, at most
    :data:`MAX_CPU` cores."""
    text = check_text(field, value, limit=32)
    if text is None:
        return None
    match = CPU.match(text)
    number = None if match is None else _positive(match.group("num"))
    if match is None or number is None:
        raise InvalidInput(
            field, f"{field} {text!r} is not a CPU quantity such as '4', '0.5' or '500m'"
        )
    cores = number / 1000 if match.group("milli") else number
    if cores > MAX_CPU:
        raise InvalidInput(field, f"{field} {text!r} is over {MAX_CPU} CPUs, the most allowed")
    return text


def check_memory(field: str, value: str | None) -> str | None:
    """A memory quantity: ``64Gi``, ``512Mi``, ``1G`` or bytes, greater than zero, at most
    :data:`MAX_MEMORY_BYTES` (64 TiB)."""
    text = check_text(field, value, limit=32)
    if text is None:
        return None
    match = MEMORY.match(text)
    number = None if match is None else _positive(match.group("num"))
    if match is None or number is None:
        raise InvalidInput(
            field, f"{field} {text!r} is not a memory quantity such as '64Gi', '512Mi' or '16G'"
        )
    if number * MEMORY_UNITS[match.group("unit") or ""] > MAX_MEMORY_BYTES:
        raise InvalidInput(field, f"{field} {text!r} is over 64Ti, the most allowed")
    return text


def check_gpu(field: str, value: int | None) -> int | None:
    """A whole number of GPUs, 0 to 64."""
    if value is None:
        return None
    if value < 0 or value > MAX_GPUS:
        raise InvalidInput(field, f"{field} must be between 0 and {MAX_GPUS} GPUs; got {value}")
    return value


def _positive(number: str) -> Decimal | None:
    try:
        parsed = Decimal(number)
    except InvalidOperation:
        return None
    return parsed if parsed > 0 else None


def check_local_path(field: str, value: str, *, roots: Sequence[Path]) -> str:
    """An absolute path without '..' that resolves inside one of the allowed roots."""
    text = require_text(field, value, limit=1024)
    pure = PurePosixPath(text)
    if not pure.is_absolute():
        raise InvalidInput(field, f"{field} must be an absolute path")
    if ".." in pure.parts:
        raise InvalidInput(field, f"{field} must not contain '..'")
    if not roots:
        raise InvalidInput(field, f"{field}: no local download roots are configured")
    resolved = Path(text).resolve(strict=False)
    for root in roots:
        root_resolved = root.resolve(strict=False)
        if resolved == root_resolved or root_resolved in resolved.parents:
            return str(resolved)
    allowed = ", ".join(str(r) for r in roots)
    raise InvalidInput(field, f"{field} {text!r} is outside the allowed roots ({allowed})")


def weights_areas(roots: Sequence[Path], organization_id: str) -> list[Path]:
    """The organisation's area under each allowed root, in the roots' order."""
    return [locations.organization_area(root, organization_id) for root in roots]


def check_weights_directory(
    field: str, value: str, *, roots: Sequence[Path], organization_id: str
) -> str:
    """A LOCAL download directory: resolved (symlinks followed), strictly inside the caller's
    organisation's area under one of the roots (``<root>/<area>/...``, see
    :mod:`controllers.transfer.locations`). The root itself, the area itself and anything outside
    it,
    other organisations' areas included, are refused."""
    path = check_local_path(field, value, roots=roots)
    areas = weights_areas(roots, organization_id)
    resolved = PurePosixPath(path)
    if any(locations.inside(resolved, area) for area in areas):
        if any(part.startswith(".modelplane") for part in resolved.parts):
            raise InvalidInput(field, f"{field} must not name modelplane's own files")
        return path
    where = " or ".join(f"{area}/<directory>" for area in areas)
    raise InvalidInput(
        field,
        f"{field} {value!r} (resolved: {path}) is not inside your organisation's area; "
        f"use a directory such as {where}",
    )


def check_relative_path(field: str, value: str | None, *, limit: int = 512) -> str | None:
    """A relative path (sub-path or prefix) without '..' or a leading '/'."""
    text = check_text(field, value, limit=limit)
    if text is None:
        return None
    if text.startswith("/") or ".." in PurePosixPath(text).parts:
        raise InvalidInput(field, f"{field} must be relative and must not contain '..'")
    return text.strip("/")


def check_bucket(field: str, value: str | None) -> str:
    """An S3 bucket name: 3 to 63 lowercase letters, digits, '.' and '-'."""
    text = require_text(field, value, limit=63)
    if not BUCKET.match(text) or ".." in text:
        raise InvalidInput(field, f"{field} {text!r} is not a valid S3 bucket name")
    return text


def check_region(field: str, value: str | None) -> str:
    """An S3 region (default ``us-east-1``)."""
    text = check_text(field, value, limit=32) or "us-east-1"
    if not REGION.match(text):
        raise InvalidInput(field, f"{field} {text!r} is not a region name such as 'eu-west-1'")
    return text


def check_secret_value(field: str, value: str | None, *, required: bool) -> str | None:
    """A token or key: no whitespace inside, at most 1024 characters. Never echoed."""
    if value is None or value == "":
        if required:
            raise InvalidInput(field, f"{field} is required")
        return None
    if len(value) > MAX_TOKEN or re.search(r"\s", value.strip()):
        raise InvalidInput(field, f"{field} is not a valid credential (length or whitespace)")
    return value.strip()
