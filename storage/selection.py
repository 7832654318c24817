"""Which files of a hub repository a download takes: allow and ignore patterns.

The semantics are huggingface_hub's ``allow_patterns`` / ``ignore_patterns``
(``huggingface_hub.utils.filter_repo_objects``): a file is taken when it matches at least one
allow pattern (no allow patterns: every file) and no ignore pattern; patterns are
``fnmatch`` globs over the whole path (``*`` crosses ``/``), and a pattern ending in ``/``
means everything under that folder. Matching is case-sensitive, as paths on the hub are.

A selection is part of the identity of a weights copy (with the organisation, location and
commit): two models asking for different subsets of one repo never share one copy, and the
same subset asked for twice is downloaded once. It is stored normalised (deduplicated,
sorted), so the order patterns were given in does not make a different copy. Documents written
before selections existed have none: every file, exactly what :data:`ALL_FILES` means.
Validation of what a user asks for is the service's (``services/selections.py``); this type
trusts what it is given.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Iterable

from pydantic import BaseModel, Field


def _expanded(pattern: str) -> str:
    return pattern + "*" if pattern.endswith("/") else pattern


class FileSelection(BaseModel):
    """Allow and ignore patterns; both empty: every file of the repo."""

    allow: list[str] = Field(default_factory=list)
    ignore: list[str] = Field(default_factory=list)

    @classmethod
    def of(cls, allow: Iterable[str] = (), ignore: Iterable[str] = ()) -> FileSelection:
        """The normalised selection (sorted, without duplicates)."""
        return cls(allow=sorted(set(allow)), ignore=sorted(set(ignore)))

    @property
    def everything(self) -> bool:
        """True when every file is taken (no patterns at all)."""
        return not self.allow and not self.ignore

    def takes(self, path: str) -> bool:
        """Whether the download takes the file at ``path``."""
        if self.allow and not any(fnmatch.fnmatchcase(path, _expanded(p)) for p in self.allow):
            return False
        return not any(fnmatch.fnmatchcase(path, _expanded(p)) for p in self.ignore)

    def matching(self, pattern: str, paths: Iterable[str]) -> list[str]:
        """The paths one pattern matches (for refusing a pattern that matches nothing)."""
        return [path for path in paths if fnmatch.fnmatchcase(path, _expanded(pattern))]

    def key(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """What two selections are compared by (normalised patterns)."""
        return tuple(sorted(set(self.allow))), tuple(sorted(set(self.ignore)))

    def digest(self) -> str:
        """A short stable name of the selection (12 hex digits), for object prefixes."""
        allow, ignore = self.key()
        text = json.dumps({"allow": allow, "ignore": ignore}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


ALL_FILES = FileSelection()
"""Every file: the selection of a download that named no patterns."""
