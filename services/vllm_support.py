"""Which model architectures vLLM serves, and since which release: the table kept in the repo.

vLLM picks the code that runs a checkpoint from the ``architectures`` list of its ``config.json``
(``LlamaForCausalLM``, ``BertModel``...); a name it does not know is refused at start-up. The
table of names vLLM knows is data, not code: ``services/vllm_architectures.toml``, with its source
(vLLM's "Supported Models" documentation, the snapshots read) and the date it was checked, so an
update is a reviewed diff of one file. :func:`parse_table` refuses a malformed file with one line
naming the row and field; ``tests/test_vllm.py`` parses the committed one.

A name missing from the table is "not known to be supported", not "refused by vLLM": the table
lags vLLM's releases, and the answer says which release it was checked against.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

TABLE_PATH = Path(__file__).with_name("vllm_architectures.toml")
_VERSION = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class VllmTask(StrEnum):
    """What vLLM does with the architecture: generate text, or pool hidden states."""

    GENERATE = "GENERATE"
    EMBED = "EMBED"


class TableError(ValueError):
    """The architectures table is malformed (the message names the row and field)."""


def version_key(version: str) -> tuple[int, int, int]:
    """``"0.6.4"`` -> ``(0, 6, 4)``; :class:`TableError` for anything else."""
    found = _VERSION.match(version)
    if found is None:
        raise TableError(f"{version!r} is not a release number like 0.6.4")
    major, minor, patch = found.groups()
    return int(major), int(minor), int(patch)


@dataclass(frozen=True, slots=True)
class ArchitectureSupport:
    """One architecture vLLM serves."""

    name: str
    family: str
    """The model families that use it, for a person."""
    task: VllmTask
    since: str
    """First vLLM release known to serve it (an upper bound where ``evidence`` says so)."""
    evidence: str

    @property
    def versions(self) -> str:
        """The releases that serve it, as a requirement: ``>=0.3.0``."""
        return f">={self.since}"


@dataclass(frozen=True, slots=True)
class SupportTable:
    """The parsed table and where it came from."""

    architectures: Mapping[str, ArchitectureSupport]
    documentation: str
    snapshots: tuple[str, ...]
    checked: date
    latest_checked: str
    """The newest vLLM release whose documentation was read."""

    def find(self, names: Iterable[str]) -> ArchitectureSupport | None:
        """The first of ``names`` (a config's ``architectures``, in order) vLLM serves."""
        for name in names:
            found = self.architectures.get(name)
            if found is not None:
                return found
        return None


def _text(row: Mapping[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise TableError(f"{where}: {key} must be a non-empty string")
    return value.strip()


def _row(row: Mapping[str, Any], index: int) -> ArchitectureSupport:
    where = f"architecture[{index}]"
    unknown = sorted(set(row) - {"name", "family", "task", "since", "evidence"})
    if unknown:
        raise TableError(f"{where}: unknown field {unknown[0]!r}")
    name = _text(row, "name", where)
    if not _NAME.match(name):
        raise TableError(f"{where}: name {name!r} is not a Python class name")
    where = f"architecture {name}"
    task = _text(row, "task", where)
    if task not in VllmTask.__members__:
        raise TableError(f"{where}: task must be one of {', '.join(VllmTask)}, not {task!r}")
    since = _text(row, "since", where)
    try:
        version_key(since)
    except TableError as exc:
        raise TableError(f"{where}: since {exc}") from None
    return ArchitectureSupport(
        name=name,
        family=_text(row, "family", where),
        task=VllmTask(task),
        since=since,
        evidence=_text(row, "evidence", where),
    )


def _source(data: Mapping[str, Any]) -> tuple[str, tuple[str, ...], date, str]:
    source = data.get("source")
    if not isinstance(source, dict):
        raise TableError("[source] is missing")
    documentation = _text(source, "documentation", "source")
    snapshots = source.get("snapshots")
    if not isinstance(snapshots, list) or not snapshots:
        raise TableError("source: snapshots must list the documentation pages read")
    if not all(isinstance(s, str) and s.startswith("https://") for s in snapshots):
        raise TableError("source: every snapshot must be an https:// address")
    try:
        checked = date.fromisoformat(_text(source, "checked", "source"))
    except ValueError:
        raise TableError("source: checked must be a date like 2026-12-05") from None
    latest = _text(source, "latest_checked", "source")
    try:
        version_key(latest)
    except TableError as exc:
        raise TableError(f"source: latest_checked {exc}") from None
    return documentation, tuple(snapshots), checked, latest


def parse_table(text: str) -> SupportTable:
    """The table in ``text`` (TOML); :class:`TableError` naming the first problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TableError(f"not TOML: {exc}") from None
    documentation, snapshots, checked, latest = _source(data)
    rows: Sequence[Any] = data.get("architecture") or []
    if not isinstance(rows, list) or not rows:
        raise TableError("no [[architecture]] rows")
    found: dict[str, ArchitectureSupport] = {}
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TableError(f"architecture[{index}] is not a table")
        entry = _row(row, index)
        if entry.name in found:
            raise TableError(f"architecture {entry.name} is listed twice")
        if version_key(entry.since) > version_key(latest):
            raise TableError(
                f"architecture {entry.name}: since {entry.since} is newer than "
                f"latest_checked {latest}"
            )
        found[entry.name] = entry
    return SupportTable(
        architectures=dict(sorted(found.items())),
        documentation=documentation,
        snapshots=snapshots,
        checked=checked,
        latest_checked=latest,
    )


@cache
def support_table() -> SupportTable:
    """The committed table, parsed once per process."""
    return parse_table(TABLE_PATH.read_text(encoding="utf-8"))
