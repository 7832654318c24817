"""Where weights live on a filesystem, and how they are removed (issue 15, finding 1).

Rationale: a LOCAL download path used to be any directory under an allowed root, and deleting
the weights removed that directory tree. One organisation could name the root itself, or another
organisation's weights, and ``deleteWeights(force: true)`` wiped them all. Two rules close it:

* **Each organisation owns one area per allowed root**, ``<root>/<area name>``
  (:func:`organization_area`). A LOCAL target's directory must lie strictly inside the caller's
  area, resolved (so a symlink cannot point elsewhere), and must not be an ancestor or
  descendant of another download's directory (:func:`overlaps`). The service refuses any
  other path before anything is written.
* **Deletion removes only what a download wrote** (:func:`remove_weights`): its recorded files,
  the ``.modelplane-partial`` sidecar and the marker, then, bottom-up and only when empty, the
  directories the download created (recorded in the marker). Every step walks from ``/`` one
  component at a time with ``O_NOFOLLOW`` and acts relative to the opened directory, so a
  symlink anywhere on the way (placed before or after the download) makes the step refuse or
  skip, never reach outside the weights' directory. A file that is no longer a regular file
  (replaced by a symlink, a directory...) is left alone. Nothing is ever removed recursively
  except the sidecar, which only modelplane writes.

The marker (``.modelplane-weights``) is written when a download first prepares its directory:
the weights id, the recorded file paths and which directories it created. A directory holding
another download's marker is refused; the cleanup Job of the kubernetes runtime (PVC and
hostPath targets) reads the marker because it has no database, and removes nothing unless the
marker names the weights it was asked to delete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

MARKER = ".modelplane-weights"
SIDECAR = ".modelplane-partial"
PROBE = ".modelplane-write-probe"
AREA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MARKER_LIMIT = 16 * 1024 * 1024
"""A marker is read whole; a larger one is not ours."""
DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeLocation(Exception):
    """The weights' directory cannot be reached without following a symlink, or belongs to
    other weights; the message says which."""


def area_name(organization_id: str) -> str:
    """The directory name of an organisation's area: its id when that is a plain name, else a
    digest (``_`` + hex, which no plain name starts with), so ids with ``/`` or ``..`` stay one
    component and two organisations never share a name."""
    if AREA_NAME.match(organization_id) and organization_id not in (".", ".."):
        return organization_id
    return "_" + hashlib.sha256(organization_id.encode()).hexdigest()[:32]


def organization_area(root: Path, organization_id: str) -> Path:
    """``<root, resolved>/<area name>``: where the organisation's LOCAL weights may go."""
    return root.resolve(strict=False) / area_name(organization_id)


def inside(path: PurePosixPath | Path, area: PurePosixPath | Path) -> bool:
    """True when ``path`` lies strictly below ``area`` (the area itself is not inside)."""
    return PurePosixPath(area) in PurePosixPath(path).parents


def overlaps(first: str, second: str) -> bool:
    """True when two directories are the same, or one contains the other."""
    a, b = PurePosixPath(first), PurePosixPath(second)
    return a == b or a in b.parents or b in a.parents


def relative_parts(path: str) -> tuple[str, ...] | None:
    """The components of a recorded file path, or None when it could leave its directory."""
    pure = PurePosixPath(path)
    parts = pure.parts
    if pure.is_absolute() or not parts or any(p in ("", ".", "..") for p in parts):
        return None
    return parts


# -- the marker ------------------------------------------------------------------------------


@dataclass
class Marker:
    """What a download recorded about its directory."""

    weights_id: str
    files: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    """Directories the download created, relative to the weights directory ("." is itself)."""
    ancestors: int = 0
    """How many directories above the weights directory the download created."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "weights_id": self.weights_id,
                "files": self.files,
                "created": self.created,
                "ancestors": self.ancestors,
            }
        )

    @classmethod
    def parse(cls, text: str) -> Marker | None:
        try:
            data = json.loads(text)
            return cls(
                weights_id=str(data["weights_id"]),
                files=[str(f) for f in data.get("files", [])],
                created=[str(d) for d in data.get("created", [])],
                ancestors=int(data.get("ancestors", 0)),
            )
        except (ValueError, KeyError, TypeError):
            return None


def _read_marker(directory_fd: int) -> Marker | None:
    try:
        fd = os.open(MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        data = handle.read(MARKER_LIMIT + 1)
    if len(data) > MARKER_LIMIT:
        return None
    return Marker.parse(data.decode(errors="replace"))


def _write_marker(directory_fd: int, marker: Marker) -> None:
    tmp = MARKER + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=directory_fd)
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=directory_fd
    )
    with os.fdopen(fd, "w") as handle:
        handle.write(marker.to_json())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, MARKER, src_dir_fd=directory_fd, dst_dir_fd=directory_fd)


# -- walking without following symlinks -------------------------------------------------------


@dataclass
class _Chain:
    """Open descriptors of ``/`` and each component of a directory, the directory last."""

    fds: list[int]
    names: list[str]

    @property
    def fd(self) -> int:
        return self.fds[-1]


@contextlib.contextmanager
def _opened_chain(directory: Path) -> Iterator[_Chain]:
    """Open ``/`` and each component of the absolute ``directory`` in turn, refusing symlinks.
    Raises :class:`UnsafeLocation` for a symlink or non-directory on the way,
    FileNotFoundError when a component is missing."""
    if not directory.is_absolute():
        raise UnsafeLocation(f"{directory} is not an absolute path")
    chain = _Chain(fds=[os.open("/", DIRECTORY_FLAGS)], names=[""])
    try:
        for part in directory.parts[1:]:
            if part in (".", ".."):
                raise UnsafeLocation(f"{directory} contains {part!r}")
            try:
                chain.fds.append(os.open(part, DIRECTORY_FLAGS, dir_fd=chain.fd))
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafeLocation(
                        f"{directory} passes through a symlink or a file ({part}); refused"
                    ) from None
                raise
            chain.names.append(part)
        yield chain
    finally:
        for fd in reversed(chain.fds):
            os.close(fd)


def check_reachable(directory: Path) -> None:
    """Raise :class:`UnsafeLocation` when an existing part of ``directory`` is a symlink."""
    existing = directory
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    with _opened_chain(existing):
        pass


def _open_below(directory_fd: int, parts: Sequence[str]) -> int | None:
    """Open a subdirectory (no symlinks); None when missing or not a plain directory."""
    fd = os.dup(directory_fd)
    for part in parts:
        try:
            child = os.open(part, DIRECTORY_FLAGS, dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = child
    return fd


# -- preparing a directory --------------------------------------------------------------------


def prepare_directory(directory: Path, *, weights_id: str, files: Sequence[str]) -> None:
    """Create the weights directory and its subdirectories, and record in the marker what was
    created. Raises :class:`UnsafeLocation` on a symlink on the way or another download's
    marker; OSError as is (not writable...)."""
    check_reachable(directory)
    missing = []
    probe = directory
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir()
    with _opened_chain(directory) as chain:
        fd = chain.fd
        marker = _read_marker(fd)
        if marker is not None and marker.weights_id != weights_id:
            raise UnsafeLocation(
                f"{directory} holds other weights ({marker.weights_id}); choose another path"
            )
        if marker is None:
            marker = Marker(
                weights_id=weights_id,
                created=["."] if missing else [],
                ancestors=max(0, len(missing) - 1),
            )
        marker.files = list(files)
        for sub in _subdirectories(files):
            if _make_below(fd, sub) and sub not in marker.created:
                marker.created.append(sub)
        _write_marker(fd, marker)


def _subdirectories(files: Sequence[str]) -> list[str]:
    """Every parent directory of the recorded files, parents first."""
    found: set[str] = set()
    for path in files:
        parts = relative_parts(path)
        if parts is None:
            continue
        for depth in range(1, len(parts)):
            found.add("/".join(parts[:depth]))
    return sorted(found, key=lambda d: (d.count("/"), d))


def _make_below(directory_fd: int, sub: str) -> bool:
    """mkdir one subdirectory whose parents exist; True when this call created it."""
    parts = sub.split("/")
    parent = _open_below(directory_fd, parts[:-1])
    if parent is None:
        raise UnsafeLocation(f"{sub} cannot be reached without following a symlink")
    try:
        os.mkdir(parts[-1], 0o755, dir_fd=parent)
    except FileExistsError:
        return False
    finally:
        os.close(parent)
    return True


# -- removal ----------------------------------------------------------------------------------


@dataclass
class Removal:
    """What :func:`remove_weights` did."""

    removed_files: int = 0
    kept: list[str] = field(default_factory=list)
    """Recorded paths left alone (not a regular file any more, or behind a symlink)."""
    removed_directories: int = 0


def remove_partials(directory: Path) -> None:
    """Remove the sidecar of in-flight parts (only modelplane writes there)."""
    try:
        with _opened_chain(directory) as chain:
            _remove_sidecar(chain.fd)
    except FileNotFoundError:
        return


def _remove_sidecar(directory_fd: int) -> None:
    try:
        mode = os.lstat(SIDECAR, dir_fd=directory_fd).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(SIDECAR, dir_fd=directory_fd)  # fd-based: never follows a symlink
    else:
        os.unlink(SIDECAR, dir_fd=directory_fd)


def remove_weights(
    directory: Path, *, weights_id: str | None, files: Sequence[str] | None
) -> Removal:
    """Remove what the download wrote in ``directory`` (see the module docstring). ``files``
    are the recorded files (None: the marker's); with ``weights_id``, a marker naming other
    weights means nothing here is ours. Raises :class:`UnsafeLocation` when the directory cannot
    be reached without following a symlink."""
    try:
        with _opened_chain(directory) as chain:
            return _remove_in(chain, directory, weights_id=weights_id, files=files)
    except FileNotFoundError:
        return Removal()


def _remove_in(
    chain: _Chain, directory: Path, *, weights_id: str | None, files: Sequence[str] | None
) -> Removal:
    removal = Removal()
    fd = chain.fd
    marker = _read_marker(fd)
    if marker is not None and weights_id is not None and marker.weights_id != weights_id:
        raise UnsafeLocation(f"{directory} holds other weights ({marker.weights_id})")
    recorded = list(files) if files is not None else (marker.files if marker else [])
    for path in recorded:
        outcome = _unlink_recorded(fd, path)
        if outcome == "removed":
            removal.removed_files += 1
        elif outcome == "kept":
            removal.kept.append(path)
    _remove_sidecar(fd)
    for name in (PROBE, MARKER, MARKER + ".tmp"):
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(os.lstat(name, dir_fd=fd).st_mode):
                os.unlink(name, dir_fd=fd)
    if marker is not None:
        removal.removed_directories = _remove_created(chain, marker)
    return removal


def _unlink_recorded(directory_fd: int, path: str) -> Literal["removed", "kept", "absent"]:
    """Unlink one recorded file if it is still a regular file inside the directory; "kept"
    when something else stands there now (a symlink, a directory), "absent" when nothing."""
    parts = relative_parts(path)
    parent = None if parts is None else _open_below(directory_fd, parts[:-1])
    if parts is None or parent is None:
        return "absent"
    try:
        if not stat.S_ISREG(os.lstat(parts[-1], dir_fd=parent).st_mode):
            return "kept"
        os.unlink(parts[-1], dir_fd=parent)
    except FileNotFoundError:
        return "absent"
    finally:
        os.close(parent)
    return "removed"


def _remove_created(chain: _Chain, marker: Marker) -> int:
    """rmdir, deepest first and only when empty, the directories the download created."""
    removed = 0
    for sub in sorted((d for d in marker.created if d != "."), key=lambda d: -d.count("/")):
        parts = relative_parts(sub)
        parent = None if parts is None else _open_below(chain.fd, parts[:-1])
        if parts is None or parent is None:
            continue
        try:
            os.rmdir(parts[-1], dir_fd=parent)
            removed += 1
        except OSError:
            pass  # not empty (someone else's files), already gone, or a symlink: kept
        finally:
            os.close(parent)
    if "." not in marker.created:
        return removed
    # The directory itself, then the ancestors it created, each by name from its parent.
    for level in range(marker.ancestors + 1):
        index = len(chain.fds) - 1 - level
        if index < 2:  # never "/" nor a directory right below it
            break
        try:
            os.rmdir(chain.names[index], dir_fd=chain.fds[index - 1])
        except OSError:
            break  # not empty: it and everything above stay
        removed += 1
    return removed
