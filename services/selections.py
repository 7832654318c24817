"""File patterns asked for with a download, checked before anything is written.

``allowPatterns`` / ``ignorePatterns`` (huggingface_hub's names and semantics, see
:mod:`storage.selection`) are refused when malformed (empty, absolute, with a ``..`` segment,
control characters, too long, too many) and, once the hub's file list is known, when they make
no sense for the repo: an allow pattern that matches no file is almost always a typo (the
download would silently lack what the user wanted), and a selection that keeps no file would
download nothing. An ignore pattern that matches nothing is accepted: "never the ``*.bin``
copies" is a sensible standing rule for a repo that happens to have none. Every refusal names
the field (``source.allowPatterns``) and comes before the secret, the document or the download.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePosixPath

from integrations.huggingface import HubModel
from services.errors import InvalidInput
from storage.selection import ALL_FILES, FileSelection

MAX_PATTERNS = 64
MAX_PATTERN = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_pattern(field: str, pattern: str) -> str:
    text = pattern.strip()
    if not text:
        raise InvalidInput(field, f"{field} holds an empty pattern")
    if len(text) > MAX_PATTERN:
        raise InvalidInput(field, f"{field}: a pattern is at most {MAX_PATTERN} characters")
    if _CONTROL.search(text):
        raise InvalidInput(field, f"{field}: a pattern must not hold control characters")
    if text.startswith("/") or ".." in PurePosixPath(text).parts:
        raise InvalidInput(
            field,
            f"{field}: {text!r} must be relative to the repository (no leading '/', no '..')",
        )
    return text


def check_patterns(field: str, patterns: Sequence[str] | None) -> list[str]:
    """Well-formed patterns (stripped), at most :data:`MAX_PATTERNS` of them."""
    if not patterns:
        return []
    if len(patterns) > MAX_PATTERNS:
        raise InvalidInput(field, f"{len(patterns)} patterns given; at most {MAX_PATTERNS}")
    return [_check_pattern(field, p) for p in patterns]


def checked_selection(
    prefix: str, allow: Sequence[str] | None, ignore: Sequence[str] | None
) -> FileSelection:
    """The normalised selection of well-formed patterns (the hub not asked yet)."""
    return FileSelection.of(
        check_patterns(f"{prefix}allowPatterns", allow),
        check_patterns(f"{prefix}ignorePatterns", ignore),
    )


def check_against_repo(prefix: str, selection: FileSelection, hub: HubModel) -> None:
    """Refuse allow patterns that match no file of the repo, and a selection keeping none."""
    if selection.everything:
        return
    paths = [f.path for f in hub.files]
    for pattern in selection.allow:
        if not selection.matching(pattern, paths):
            raise InvalidInput(
                f"{prefix}allowPatterns",
                f"allow pattern {pattern!r} matches no file of {hub.repo_id} at "
                f"{hub.sha[:12]} ({len(paths)} files); check the pattern",
            )
    if not any(selection.takes(p) for p in paths):
        raise InvalidInput(
            f"{prefix}ignorePatterns",
            f"the patterns leave no file of {hub.repo_id} to download",
        )


__all__ = ["ALL_FILES", "check_against_repo", "check_patterns", "checked_selection"]
