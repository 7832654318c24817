"""Which files of a catalogue commit are entries, and which paths are refused (pure).

The tree comes from ``git ls-tree`` (``integrations/git.py``), so nothing is followed on
disk: a symlink is a blob holding its target, resolved here against the tree itself. Refused,
each as an invalid entry naming the file: a path that is absolute or has ``.``/``..``
components (git itself refuses most, a crafted pack might not), a symlink whose target is
absolute or leaves the checkout, a symlink to something that is not an entry file in the tree.
A symlink to another file inside the checkout is read as that file.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence

from integrations.git import TreeItem
from services.catalogue.entries import ENTRY_SUFFIXES, Entry, invalid
from services.errors import InvalidInput

MAX_ENTRIES = 1000
MAX_PATH = 512
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")


def path_problem(path: str) -> str | None:
    """Why a repository path is unsafe, or None."""
    if not path or path.startswith("/") or _CONTROL.search(path) or len(path) > MAX_PATH:
        return "an absolute, empty, over-long path or one with control characters"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "a path with '.', '..' or empty components"
    return None


def check_folder(field: str, value: str | None) -> str:
    """The catalogue folder inside the repository: relative, without '.' or '..'; "" is the
    root."""
    text = (value or "").strip()
    if not text.startswith("/"):
        text = text.rstrip("/")  # "models/" is "models"; "/models" stays absolute: refused
    if not text:
        return ""
    problem = path_problem(text)
    if problem is not None:
        raise InvalidInput(field, f"{field} {value!r} is refused: {problem}")
    return text


def check_entry_path(field: str, value: str, *, folder: str) -> str:
    """A new entry file's path relative to the folder: safe and ending in .yaml or .yml;
    returned relative to the repository root."""
    text = value.strip()
    problem = path_problem(text)
    if problem is not None:
        raise InvalidInput(field, f"{field} {value!r} is refused: {problem}")
    if not text.endswith(ENTRY_SUFFIXES):
        raise InvalidInput(field, f"{field} must end in .yaml or .yml")
    return f"{folder}/{text}" if folder else text


def in_folder(path: str, folder: str) -> bool:
    return not folder or path.startswith(folder + "/")


def select(
    items: Sequence[TreeItem], folder: str, link_targets: Mapping[str, bytes]
) -> tuple[list[tuple[str, str]], list[Entry]]:
    """The entry files under ``folder`` as (path, blob id) and the refused ones as invalid
    entries. ``link_targets`` holds the contents (targets) of the tree's symlink blobs."""
    files = {item.path: item for item in items if item.is_file}
    chosen: list[tuple[str, str]] = []
    refused: list[Entry] = []
    for item in items:
        if not in_folder(item.path, folder) or not item.path.endswith(ENTRY_SUFFIXES):
            continue
        if len(chosen) + len(refused) >= MAX_ENTRIES:
            refused.append(invalid(item.path, f"more than {MAX_ENTRIES} entry files; ignored"))
            break
        problem = path_problem(item.path)
        if problem is not None:
            refused.append(invalid(item.path, f"unsafe path refused: {problem}", name="path"))
        elif item.is_symlink:
            target = _link_target(item, files, link_targets)
            if isinstance(target, str):
                refused.append(invalid(item.path, target, name="path"))
            else:
                chosen.append((item.path, target.sha))
        elif item.is_file:
            chosen.append((item.path, item.sha))
        else:
            refused.append(invalid(item.path, f"not a regular file ({item.kind} {item.mode})"))
    return chosen, refused


def _link_target(
    item: TreeItem, files: Mapping[str, TreeItem], link_targets: Mapping[str, bytes]
) -> TreeItem | str:
    """The file a symlink points at inside the checkout, or why it is refused."""
    raw = link_targets.get(item.sha, b"")
    try:
        target = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "unsafe symlink refused: its target is not UTF-8"
    if target.startswith("/"):
        return f"unsafe symlink refused: {target!r} is an absolute path out of the checkout"
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(item.path), target))
    if resolved == ".." or resolved.startswith(("../", "/")):
        return f"unsafe symlink refused: {target!r} points out of the checkout"
    found = files.get(resolved)
    if found is None:
        return f"symlink to {resolved!r}, which is not a file in the checkout"
    return found
