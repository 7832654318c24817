"""What the downloader writes through, and how it fails: the :class:`Sink` protocol, the
download errors every sink and the downloader raise, the tuning knobs.

A sink is where one download's bytes go: a directory (LOCAL and PVC targets,
:mod:`controllers.transfer.local_sink`) or an S3 prefix (:mod:`controllers.transfer.s3_sink`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from storage.documents import LedgerDocument, Progress, WeightsFile

MiB = 1024 * 1024
GiB = 1024 * MiB


class DownloadError(Exception):
    """The download cannot go on; the message is the reason shown on the Weights/Model."""


class PreflightError(DownloadError):
    """Refused before any byte moved."""


class MissingChunks(DownloadError):
    """The target lost chunks the ledger recorded (e.g. an S3 part gone after a restart)."""

    def __init__(self, path: str, chunks: set[int]) -> None:
        super().__init__(f"{path}: {len(chunks)} stored chunk(s) went missing")
        self.chunks = chunks


class SinkUnavailable(DownloadError):
    """The target failed in a way that may pass (a storage server restarting): retried."""


class CleanupRefused(DownloadError):
    """Removing a download's files was refused (a symlink on the way, another download's
    directory): nothing was removed."""


class ChecksumMismatch(DownloadError):
    """The bytes on disk are not what the hub promised."""

    def __init__(self, path: str, kind: str, expected: str, actual: str) -> None:
        super().__init__(f"{path}: {kind} mismatch (expected {expected[:12]}…, got {actual[:12]}…)")


@dataclass(frozen=True, slots=True)
class DownloadOptions:
    """Tuning knobs; defaults suit a hub over the internet."""

    parallel_files: int = 4
    chunk_size: int = 32 * MiB
    stall_seconds: float = 30.0
    max_retries: int = 5
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    progress_interval: float = 1.0
    checkpoint_bytes: int = 4 * MiB
    """Within a chunk, a sink that can (a local file) makes what arrived durable and records it
    after each ``checkpoint_bytes``, so a killed process resumes there, not at the chunk's
    first byte (which, for files smaller than a chunk, is the file's first byte)."""


def human_bytes(value: float) -> str:
    """``14.2 GiB`` style."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - the loop always returns


ProgressSink = Callable[[Progress], Awaitable[None]]


class Sink(Protocol):
    """Where a download's bytes go: a directory (``LocalSink``) or S3 (``S3Sink``)."""

    def describe(self) -> str:
        """Where, for messages."""

    @property
    def overlapped(self) -> bool:
        """True when storing a chunk is slow enough (an upload) that each file fetches its next
        chunk meanwhile: two chunks per file in flight, two buffers per file in memory."""

    def connected(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Keep connections to the target open for the calls made inside (one download)."""

    async def preflight(self, *, needed: int) -> None:
        """Raise :class:`PreflightError` unless ``needed`` more bytes can be written."""

    async def is_complete(self, file: WeightsFile) -> bool:
        """True when the verified file is already in place."""

    async def done_chunks(
        self, file: WeightsFile, ledger: LedgerDocument, chunk_size: int
    ) -> set[int]:
        """Chunks already stored (agreeing with the ledger) that a restart may skip."""

    def write_block(self, file: WeightsFile, offset: int, data: memoryview) -> None:
        """Blocking, in a worker thread: the bytes of the chunk being fetched, in order, as
        they arrive (``offset`` is where they start in the file; a chunk that is fetched again
        starts again at its first byte, or at its :meth:`resume_point`). A file sink writes
        them here, so that the whole chunk is already written when :meth:`write_chunk` is
        called."""

    def checkpoint(self, file: WeightsFile, index: int, chunk_size: int, length: int) -> None:
        """Blocking, in a worker thread: the first ``length`` bytes of chunk ``index`` were
        passed to :meth:`write_block`; make them durable and record it, so that a restart
        resumes there. A no-op where a chunk is all or nothing (an S3 part)."""

    async def resume_point(self, file: WeightsFile, chunk_size: int) -> tuple[int, int] | None:
        """``(chunk index, bytes)``: where a restart may resume inside a chunk, or None."""

    async def write_chunk(
        self, file: WeightsFile, index: int, chunk_size: int, data: memoryview
    ) -> None:
        """Store one chunk durably; ``data`` is all of it, already passed to
        :meth:`write_block`."""

    async def record_chunks(self, file: WeightsFile, chunks: set[int], chunk_size: int) -> None:
        """Write the sidecar ledger (where the target has one)."""

    async def verify_and_place(self, file: WeightsFile, *, known_sha256: str | None) -> None:
        """Check the stored bytes against the hub's hash and publish the file.
        ``known_sha256`` is the digest computed while the bytes streamed through, when every
        chunk passed through this process in order (no re-read needed then)."""

    async def discard(self, file: WeightsFile) -> None:
        """Drop a file's partial data."""

    async def discard_partials(self, ledgers: list[LedgerDocument]) -> None:
        """Drop every partial (cancelDownload); ``ledgers`` are the download's stored ones."""

    async def remove_all(self) -> None:
        """Delete everything of this download, verified files included (deleteWeights)."""

    async def finish(self) -> None:
        """Tidy up after every file is in place."""
