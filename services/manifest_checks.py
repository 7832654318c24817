"""The building blocks of the manifest allow-list: checks that accept a value or refuse it
with its path (``manifest[0].spec.template.spec.containers[0].image: must be a string``).

A :data:`Check` is ``check(value, path, policy)``: it returns when the value is allowed and
raises :class:`~services.errors.InvalidInput` naming the first field that is not. The tables
that say what a Deployment or Service may hold are built from these in
:mod:`services.manifests`."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from services.errors import InvalidInput

MAX_LIST = 64
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]{0,255}$")
PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")
CAPABILITY = re.compile(r"^[A-Z_]{1,64}$")


@dataclass(frozen=True, slots=True)
class ManifestPolicy:
    """What this organisation's manifest may reach."""

    weights_dirs: tuple[PurePosixPath, ...] = ()
    """hostPath volumes must lie in one of these (the organisation's LOCAL weights)."""
    claims: frozenset[str] = frozenset()
    """PVCs the pod may mount (the organisation's PVC targets)."""
    own_secrets: frozenset[str] = frozenset()
    """Secrets env may reference (the inference's own; none for a manifest)."""
    allow_external_services: bool = False
    """NodePort / LoadBalancer Services and externalIPs."""
    volumes: dict[str, str] = field(default_factory=dict)
    """Filled while checking: volume name -> its source kind."""


Check = Callable[[Any, str, ManifestPolicy], None]


def refuse(path: str, message: str) -> InvalidInput:
    return InvalidInput(path, f"{path}: {message}")


def type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def mapping(fields: Mapping[str, Check], *, required: tuple[str, ...] = ()) -> Check:
    """A mapping with only ``fields`` (string keys), each checked; ``required`` present."""

    def check(value: Any, path: str, policy: ManifestPolicy) -> None:
        if not isinstance(value, dict):
            raise refuse(path, f"must be a mapping, not {type_name(value)}")
        for key, item in value.items():
            if not isinstance(key, str):
                raise refuse(f"{path}[{key!r}]", "keys must be strings")
            if key not in fields:
                raise refuse(
                    f"{path}.{key}",
                    f"{key} is not allowed in a manifest here "
                    f"(allowed: {', '.join(sorted(fields))})",
                )
            fields[key](item, f"{path}.{key}", policy)
        for key in required:
            if key not in value:
                raise refuse(f"{path}.{key}", f"{key} is required")

    return check


def listing(item: Check, *, most: int = MAX_LIST, least: int = 0) -> Check:
    def check(value: Any, path: str, policy: ManifestPolicy) -> None:
        if not isinstance(value, list):
            raise refuse(path, f"must be a list, not {type_name(value)}")
        if not least <= len(value) <= most:
            raise refuse(path, f"must have {least} to {most} items; has {len(value)}")
        for index, entry in enumerate(value):
            item(entry, f"{path}[{index}]", policy)

    return check


def text(pattern: re.Pattern[str] | None = None, *, most: int = 1024) -> Check:
    def check(value: Any, path: str, policy: ManifestPolicy) -> None:
        del policy
        if not isinstance(value, str):
            raise refuse(path, f"must be a string, not {type_name(value)}")
        if len(value) > most or "\0" in value:
            raise refuse(path, f"must be at most {most} characters, without NUL")
        if pattern is not None and not pattern.match(value):
            raise refuse(path, f"{value[:80]!r} is not allowed here")

    return check


def number(least: int, most: int) -> Check:
    def check(value: Any, path: str, policy: ManifestPolicy) -> None:
        del policy
        if isinstance(value, bool) or not isinstance(value, int):
            raise refuse(path, f"must be a whole number, not {type_name(value)}")
        if not least <= value <= most:
            raise refuse(path, f"must be between {least} and {most}")

    return check


def one_of(*allowed: object) -> Check:
    def check(value: Any, path: str, policy: ManifestPolicy) -> None:
        del policy
        if isinstance(value, bool) != any(isinstance(a, bool) for a in allowed) or (
            value not in allowed
        ):
            shown = ", ".join(repr(a) for a in allowed)
            raise refuse(path, f"{str(value)[:60]!r} is not allowed here; only {shown}")

    return check


def boolean(value: Any, path: str, policy: ManifestPolicy) -> None:
    del policy
    if not isinstance(value, bool):
        raise refuse(path, f"must be true or false, not {type_name(value)}")


def text_map(value: Any, path: str, policy: ManifestPolicy) -> None:
    """Labels, annotations, a selector: string keys to string values."""
    del policy
    if not isinstance(value, dict):
        raise refuse(path, f"must be a mapping, not {type_name(value)}")
    if len(value) > MAX_LIST:
        raise refuse(path, f"at most {MAX_LIST} entries")
    for key, item in value.items():
        if not isinstance(key, str) or not LABEL_KEY.match(key):
            raise refuse(f"{path}[{key!r}]", "keys must be label-style strings")
        if not isinstance(item, str) or len(item) > 4096:
            raise refuse(f"{path}.{key}", "values must be strings of at most 4096 characters")


def port_ref(value: Any, path: str, policy: ManifestPolicy) -> None:
    """A port number or a port name."""
    if isinstance(value, str):
        text(PORT_NAME, most=15)(value, path, policy)
    else:
        number(1, 65535)(value, path, policy)


def int_or_percent(value: Any, path: str, policy: ManifestPolicy) -> None:
    if isinstance(value, str):
        text(re.compile(r"^[0-9]{1,3}%$"))(value, path, policy)
    else:
        number(0, 1000)(value, path, policy)
