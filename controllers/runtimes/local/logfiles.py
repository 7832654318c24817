"""Engine log files of the local runtime: appended by the supervisor, read by any replica.

Each key's output goes to ``<log_dir>/<key>.log`` (mode 0600, rotated once to ``.log.1`` at a
size cap), written unbuffered a chunk at a time. :func:`tail_lines` reads the last lines back
from the files, so the API answers ``inferenceLogs`` from the files on every replica sharing the
state directory, not from the leader's memory.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)
_TAIL_READ_BYTES = 4 * 1024 * 1024
"""At most this much of the end of the log files is read for a tail."""


def tail_lines(path: Path, tail: int) -> list[str]:
    """The last ``tail`` lines of ``path`` (continuing into ``path.1`` when the current file is
    shorter); empty when there is no such file."""
    if tail <= 0:
        return []
    lines: deque[str] = deque(maxlen=tail)
    for candidate in (path.with_name(path.name + ".1"), path):
        try:
            with candidate.open("rb") as file:
                size = file.seek(0, os.SEEK_END)
                file.seek(max(0, size - _TAIL_READ_BYTES))
                data = file.read()
        except OSError:
            continue
        text = data.decode("utf-8", errors="replace")
        lines.extend(text.splitlines())
    return list(lines)


class LogFile:
    """Appends a key's output to ``<dir>/<key>.log``; past ``max_bytes`` the file moves to
    ``<key>.log.1`` (replacing the previous one) and a new one starts. A write error is
    logged once and turns the file off: the in-memory ring still works."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self._max = max_bytes
        self._file: BinaryIO | None = None
        self._size = 0
        self._broken = False

    def write(self, lines: list[str]) -> None:
        if self._broken or not lines:
            return
        data = "".join(f"{line}\n" for line in lines).encode("utf-8", errors="replace")
        try:
            if self._file is None:
                self._open()
            if self._size > 0 and self._size + len(data) > self._max:
                self._rotate()
            assert self._file is not None  # noqa: S101  _open set it
            self._file.write(data)
            self._size += len(data)
        except OSError:
            log.warning(
                "cannot write the process log; keeping it in memory only",
                extra={"path": str(self.path)},
                exc_info=True,
            )
            self._broken = True
            self.close()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = os.fdopen(fd, "ab", buffering=0)
        self._size = os.fstat(fd).st_size

    def _rotate(self) -> None:
        self.close()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._open()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def remove(self) -> None:
        self.close()
        for path in (self.path, self.path.with_name(self.path.name + ".1")):
            path.unlink(missing_ok=True)
