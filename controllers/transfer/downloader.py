"""The downloader (ARCHITECTURE.md decision 7): resumable, verified, observable.

Files are fetched in parallel (``parallel_files``, default 4); each file in ranged chunks
(``chunk_size``) one after another, so at most one chunk per file is in flight (two for a sink
whose store is an upload, :attr:`Sink.overlapped`: the next chunk is fetched while the last is
sent). A chunk's bytes land in a reused buffer and are hashed and written in worker threads as
they arrive. A chunk counts as done only once its bytes are on disk (flushed and fsynced) and
recorded in the ledger, in MongoDB and in the ``.modelplane-partial`` sidecar beside the data.
Inside a chunk, a local file is also fsynced every ``checkpoint_bytes`` (4 MiB) and the offset
recorded in the sidecar (``<file>.resume.json``), so a process killed at any moment loses at
most that much per file in flight, even for files smaller than a chunk, which used to restart
from their first byte (61 MB fetched for a 23.5 MB repo over three kills, issue 15). An S3
part is stored whole or not at all, so there the grain stays one chunk (16 MiB by default, at
least S3's 5 MiB minimum part). Each chunk
is retried with jittered exponential backoff; a read that brings no byte for ``stall_seconds``
is a stall and is retried the same way. A file counts only after it is verified against the
hub's sha256 (LFS files) or git blob id (small files), and is renamed into place only then.

huggingface_hub provides the URLs and auth headers; the transfer is ours (huggingface_hub no
longer keeps partial files between calls). Progress is one record shape for every target,
written at most once per ``progress_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp
from huggingface_hub import hf_hub_url
from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]  # re-exported lazily

from controllers.transfer import locations
from storage.documents import (
    FileProgress,
    FileState,
    LedgerDocument,
    Progress,
    WeightsDocument,
    WeightsFile,
    WeightsStage,
    utcnow,
)
from storage.repositories import LedgerRepository

log = logging.getLogger(__name__)
T = TypeVar("T")

SIDECAR = locations.SIDECAR
MiB = 1024 * 1024
GiB = 1024 * MiB
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
READ_BUFFER = 4 * MiB
"""aiohttp's per-response buffer: the socket is read in big gulps, without pausing often."""
HAND_OFF = 2 * MiB
"""Bytes gathered before a worker thread hashes and writes them (more if it is still busy)."""


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


def git_blob_sha1(path: Path) -> str:
    """The git blob id of a file: what the hub's ETag is for non-LFS files."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())  # noqa: S324  git's id
    with path.open("rb") as handle:
        while block := handle.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    """sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


class ProgressTracker:
    """Aggregates bytes per file; emits a :class:`Progress` snapshot at most once per interval."""

    def __init__(self, files: list[WeightsFile], *, interval: float) -> None:
        self._files = {f.path: f for f in files}
        self._done: dict[str, int] = {f.path: 0 for f in files}
        self._state: dict[str, FileState] = {f.path: FileState.PENDING for f in files}
        self.stage = WeightsStage.PREFLIGHT
        self._interval = interval
        self._rate = 0.0
        self._last_sample = (time.monotonic(), 0)
        self._last_emit = 0.0
        self.current_file: str | None = None

    @property
    def bytes_done(self) -> int:
        return sum(self._done.values())

    @property
    def bytes_total(self) -> int:
        return sum(f.size for f in self._files.values())

    def set(self, path: str, *, state: FileState, bytes_done: int | None = None) -> None:
        self._state[path] = state
        if bytes_done is not None:
            self._done[path] = bytes_done
        if state in (FileState.DOWNLOADING, FileState.VERIFYING):
            self.current_file = path

    def add(self, path: str, count: int) -> None:
        self._done[path] += count
        self.current_file = path

    def due(self) -> bool:
        return time.monotonic() - self._last_emit >= self._interval

    def snapshot(self) -> Progress:
        now = time.monotonic()
        then, before = self._last_sample
        done = self.bytes_done
        if now - then >= 0.2:
            instant = (done - before) / (now - then)
            self._rate = instant if self._rate == 0 else 0.3 * instant + 0.7 * self._rate
            self._last_sample = (now, done)
        self._last_emit = now
        remaining = self.bytes_total - done
        return Progress(
            stage=self.stage,
            bytes_done=done,
            bytes_total=self.bytes_total,
            files_done=sum(1 for s in self._state.values() if s is FileState.DONE),
            files_total=len(self._files),
            bytes_per_second=round(self._rate, 1),
            eta_seconds=round(remaining / self._rate, 1) if self._rate > 0 else None,
            files=[
                FileProgress(
                    path=path,
                    bytes_done=self._done[path],
                    bytes_total=f.size,
                    state=self._state[path],
                )
                for path, f in self._files.items()
            ],
            current_file=self.current_file,
            updated_at=utcnow(),
        )


ProgressSink = Callable[[Progress], Awaitable[None]]


class Sink(Protocol):
    """Where a download's bytes go: a directory (:class:`LocalSink`) or S3 (``S3Sink``)."""

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


@dataclass
class LocalSink:
    """Writes into ``directory``: parts and ledgers under ``.modelplane-partial``, verified
    files renamed into place. Blocking file work runs in worker threads. With ``weights_id``
    the directory carries a marker of what the download created and wrote, and removal
    (:meth:`remove_all`) touches only that (:mod:`controllers.transfer.locations`)."""

    directory: Path
    weights_id: str | None = None
    files: tuple[str, ...] | None = None
    """The recorded files (None: the marker's, as a cleanup Job without a database reads)."""
    sidecar: Path = field(init=False)

    def __post_init__(self) -> None:
        self.sidecar = self.directory / SIDECAR

    @classmethod
    def for_weights(cls, weights: WeightsDocument, directory: Path | None = None) -> LocalSink:
        """The sink of a LOCAL (or, with ``directory``, PVC) download."""
        return cls(
            directory if directory is not None else Path(weights.location),
            weights_id=weights.id,
            files=tuple(f.path for f in weights.files),
        )

    def describe(self) -> str:
        return str(self.directory)

    @property
    def overlapped(self) -> bool:
        return False  # a chunk is already written when it arrives: only an fsync is left

    def connected(self) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext()

    def final_path(self, file: WeightsFile) -> Path:
        return self.directory / file.path

    def part_path(self, file: WeightsFile) -> Path:
        return self.sidecar / (file.path + ".part")

    def ledger_path(self, file: WeightsFile) -> Path:
        return self.sidecar / (file.path + ".chunks.json")

    def resume_path(self, file: WeightsFile) -> Path:
        return self.sidecar / (file.path + ".resume.json")

    def checkpoint(self, file: WeightsFile, index: int, chunk_size: int, length: int) -> None:
        """fsync the part, then record how far the chunk is durable (atomically replaced)."""
        self._sync(file)
        path = self.resume_path(file)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"chunk_size": chunk_size, "index": index, "bytes": length}))
        os.replace(tmp, path)

    async def resume_point(self, file: WeightsFile, chunk_size: int) -> tuple[int, int] | None:
        return await asyncio.to_thread(self._resume_point, file, chunk_size)

    def _resume_point(self, file: WeightsFile, chunk_size: int) -> tuple[int, int] | None:
        """The recorded checkpoint, when the part file still holds those bytes."""
        try:
            data = json.loads(self.resume_path(file).read_text())
            index, length = int(data["index"]), int(data["bytes"])
            if data.get("chunk_size") != chunk_size:
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        start = index * chunk_size
        if index < 0 or not 0 < length < min(chunk_size, file.size - start):
            return None
        try:
            covered = self.part_path(file).stat().st_size
        except OSError:
            return None
        return (index, length) if covered >= start + length else None

    async def preflight(self, *, needed: int) -> None:
        await asyncio.to_thread(self._preflight, needed)

    def _preflight(self, needed: int) -> None:
        """Writable, and enough free space for what is still missing."""
        try:
            if self.weights_id is None:
                locations.check_reachable(self.directory)
                self.directory.mkdir(parents=True, exist_ok=True)
            else:
                locations.prepare_directory(
                    self.directory, weights_id=self.weights_id, files=self.files or ()
                )
            probe = self.directory / locations.PROBE
            probe.write_bytes(b"")
            probe.unlink()
        except locations.UnsafeLocation as exc:
            raise PreflightError(f"target refused: {exc}") from None
        except OSError as exc:
            raise PreflightError(
                f"target {self.directory} is not writable: {exc.strerror}"
            ) from exc
        stats = os.statvfs(self.directory)
        free = stats.f_bavail * stats.f_frsize
        if needed > free:
            raise PreflightError(
                f"needs {human_bytes(needed)}, {human_bytes(free)} free at {self.directory}"
            )

    async def done_chunks(
        self, file: WeightsFile, ledger: LedgerDocument, chunk_size: int
    ) -> set[int]:
        return await asyncio.to_thread(self._done_chunks, file, set(ledger.chunks), chunk_size)

    def _done_chunks(self, file: WeightsFile, ledger_chunks: set[int], chunk_size: int) -> set[int]:
        """Chunks either ledger recorded that the part file covers."""
        part = self.part_path(file)
        if not part.exists():
            return set()
        sidecar: set[int] = set()
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(self.ledger_path(file).read_text())
            if data.get("chunk_size") == chunk_size:
                sidecar = {int(c) for c in data.get("chunks", [])}
        covered = part.stat().st_size
        return {
            c for c in (ledger_chunks | sidecar) if min((c + 1) * chunk_size, file.size) <= covered
        }

    def write_block(self, file: WeightsFile, offset: int, data: memoryview) -> None:
        """pwrite the bytes at their offset; raises OSError (ENOSPC...) as is."""
        part = self.part_path(file)
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o644)
        except FileNotFoundError:
            part.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            start = offset
            while data:
                written = os.pwrite(fd, data, offset)
                data = data[written:]
                offset += written
            if hasattr(os, "posix_fadvise"):
                # Linux starts writing these pages back now, so the fsync at the chunk's end
                # has little left to wait for (measured: a quarter of the wait), and drops them
                # from the cache once clean: hundreds of GB do not evict everything else.
                os.posix_fadvise(fd, start, offset - start, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    async def write_chunk(
        self, file: WeightsFile, index: int, chunk_size: int, data: memoryview
    ) -> None:
        del index, chunk_size, data  # written block by block as the bytes came
        await asyncio.to_thread(self._sync, file)

    def _sync(self, file: WeightsFile) -> None:
        """fsync the part: the chunk is durable before the ledger may claim it."""
        fd = os.open(self.part_path(file), os.O_WRONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    async def record_chunks(self, file: WeightsFile, chunks: set[int], chunk_size: int) -> None:
        await asyncio.to_thread(self._record_chunks, file, sorted(chunks), chunk_size)

    def _record_chunks(self, file: WeightsFile, chunks: list[int], chunk_size: int) -> None:
        path = self.ledger_path(file)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"chunk_size": chunk_size, "chunks": chunks}))
        os.replace(tmp, path)

    async def is_complete(self, file: WeightsFile) -> bool:
        final = self.final_path(file)
        return await asyncio.to_thread(
            lambda: final.is_file() and final.stat().st_size == file.size
        )

    async def verify_and_place(self, file: WeightsFile, *, known_sha256: str | None) -> None:
        await asyncio.to_thread(self._verify_and_place, file, known_sha256)

    def _verify_and_place(self, file: WeightsFile, known_sha256: str | None) -> None:
        """Check the part against the hub's hash, then rename it into place."""
        part = self.part_path(file)
        if file.size == 0:
            part.parent.mkdir(parents=True, exist_ok=True)
            part.touch()
        if part.stat().st_size != file.size:
            raise DownloadError(
                f"{file.path}: {part.stat().st_size} bytes on disk, the hub said {file.size}"
            )
        if file.sha256 is not None:
            actual = known_sha256 or sha256_of(part)
            if actual != file.sha256:
                raise ChecksumMismatch(file.path, "sha256", file.sha256, actual)
        elif file.blob_id is not None:
            actual = git_blob_sha1(part)
            if actual != file.blob_id:
                raise ChecksumMismatch(file.path, "git blob id", file.blob_id, actual)
        final = self.final_path(file)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)
        self.ledger_path(file).unlink(missing_ok=True)
        self.resume_path(file).unlink(missing_ok=True)

    async def discard(self, file: WeightsFile) -> None:
        await asyncio.to_thread(self.part_path(file).unlink, missing_ok=True)
        await asyncio.to_thread(self.ledger_path(file).unlink, missing_ok=True)
        await asyncio.to_thread(self.resume_path(file).unlink, missing_ok=True)

    async def discard_partials(self, ledgers: list[LedgerDocument]) -> None:
        del ledgers  # every partial of this target lives in the sidecar
        try:
            await asyncio.to_thread(locations.remove_partials, self.directory)
        except locations.UnsafeLocation as exc:
            raise CleanupRefused(str(exc)) from None

    async def finish(self) -> None:
        await self.discard_partials([])

    async def remove_all(self) -> None:
        """Remove the recorded files, the partials and the directories the download created;
        nothing else (see :func:`controllers.transfer.locations.remove_weights`)."""
        try:
            removal = await asyncio.to_thread(
                locations.remove_weights,
                self.directory,
                weights_id=self.weights_id,
                files=self.files,
            )
        except locations.UnsafeLocation as exc:
            raise CleanupRefused(str(exc)) from None
        except OSError as exc:
            raise CleanupRefused(
                f"cannot remove files at {self.directory}: {exc.strerror}"
            ) from exc
        log.info(
            "weights files removed",
            extra={
                "directory": str(self.directory),
                "files": removal.removed_files,
                "kept": len(removal.kept),
                "directories": removal.removed_directories,
            },
        )


class ChecksumMismatch(DownloadError):
    """The bytes on disk are not what the hub promised."""

    def __init__(self, path: str, kind: str, expected: str, actual: str) -> None:
        super().__init__(f"{path}: {kind} mismatch (expected {expected[:12]}…, got {actual[:12]}…)")


class Downloader:
    """Fetches one repo at one commit into a :class:`LocalSink`."""

    def __init__(
        self,
        *,
        endpoint: str,
        ledgers: LedgerRepository,
        options: DownloadOptions | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.ledgers = ledgers
        self.options = options or DownloadOptions()

    async def run(
        self,
        *,
        weights_id: str,
        repo_id: str,
        commit_sha: str,
        files: list[WeightsFile],
        sink: Sink,
        token: str | None,
        on_progress: ProgressSink,
    ) -> Progress:
        """Download everything not yet in place; return the final progress record."""
        async with sink.connected():
            return await self._run(
                weights_id=weights_id,
                repo_id=repo_id,
                commit_sha=commit_sha,
                files=files,
                sink=sink,
                token=token,
                on_progress=on_progress,
            )

    async def _run(
        self,
        *,
        weights_id: str,
        repo_id: str,
        commit_sha: str,
        files: list[WeightsFile],
        sink: Sink,
        token: str | None,
        on_progress: ProgressSink,
    ) -> Progress:
        options = self.options
        tracker = ProgressTracker(files, interval=options.progress_interval)
        pending, chunk_ledgers, already = await self._survey(weights_id, files, sink, tracker)
        resumes = await self._resume_points(pending, sink, already)
        missing = 0
        for f in pending:
            done_bytes = _bytes_of(already[f.path], f.size, options.chunk_size)
            point = resumes[f.path]
            done_bytes += point[1] if point is not None else 0
            tracker.set(f.path, state=FileState.PENDING, bytes_done=done_bytes)
            missing += f.size - done_bytes
        tracker.stage = WeightsStage.PREFLIGHT
        await on_progress(tracker.snapshot())
        await sink.preflight(needed=missing)

        tracker.stage = WeightsStage.DOWNLOADING
        headers = build_hf_headers(token=token or False, library_name="modelplane")
        timeout = aiohttp.ClientTimeout(
            total=None, connect=10.0, sock_connect=10.0, sock_read=options.stall_seconds
        )
        connector = aiohttp.TCPConnector(limit=options.parallel_files * 2)
        semaphore = asyncio.Semaphore(options.parallel_files)
        pool = _BufferPool(options.chunk_size)
        flusher = asyncio.create_task(self._flush_loop(tracker, on_progress), name="progress")
        try:
            # aiohttp: its C parser streams several times faster than httpx here, and it drops
            # Authorization on a cross-origin redirect (the hub's CDN never sees the token).
            async with aiohttp.ClientSession(
                headers=headers,
                timeout=timeout,
                connector=connector,
                auto_decompress=False,
                read_bufsize=READ_BUFFER,
            ) as http:

                async def one(file: WeightsFile) -> None:
                    async with semaphore:
                        buffer = pool.take(min(file.size, options.chunk_size))
                        job = _FileJob(
                            http=http,
                            weights_id=weights_id,
                            url=hf_hub_url(
                                repo_id, file.path, revision=commit_sha, endpoint=self.endpoint
                            ),
                            file=file,
                            sink=sink,
                            tracker=tracker,
                            ledger=chunk_ledgers[file.path],
                            done=already[file.path],
                            buffer=buffer,
                            resume=resumes[file.path],
                            checkpoint_bytes=options.checkpoint_bytes,
                        )
                        if sink.overlapped and file.size > options.chunk_size:
                            job.spare = pool.take(options.chunk_size)
                        await self._file(job)
                        pool.give(job.buffer, job.spare)  # after success only: no step reads them

                async with asyncio.TaskGroup() as group:
                    for file in pending:
                        group.create_task(one(file), name=f"download:{file.path}")
        except* DownloadError as group_error:
            raise group_error.exceptions[0] from None
        except* OSError as group_error:
            raise _disk_error(group_error.exceptions[0], sink) from None
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        tracker.stage = WeightsStage.FINALIZING
        await sink.finish()
        await self.ledgers.forget(weights_id)
        final = tracker.snapshot()
        await on_progress(final)
        return final

    async def _survey(
        self, weights_id: str, files: list[WeightsFile], sink: Sink, tracker: ProgressTracker
    ) -> tuple[list[WeightsFile], dict[str, LedgerDocument], dict[str, set[int]]]:
        """The files still to fetch, their ledgers and the chunks already stored: one round
        trip per file and step, all files at once."""
        chunk_size = self.options.chunk_size
        complete = await _gather_all(*(sink.is_complete(f) for f in files))
        pending = [f for f, is_done in zip(files, complete, strict=True) if not is_done]
        for f, is_done in zip(files, complete, strict=True):
            if is_done:
                tracker.set(f.path, state=FileState.DONE, bytes_done=f.size)
        loaded = await _gather_all(
            *(self.ledgers.load(weights_id, f.path, chunk_size=chunk_size) for f in pending)
        )
        chunk_ledgers = {f.path: ledger for f, ledger in zip(pending, loaded, strict=True)}
        found = await _gather_all(
            *(sink.done_chunks(f, chunk_ledgers[f.path], chunk_size) for f in pending)
        )
        return pending, chunk_ledgers, dict(zip((f.path for f in pending), found, strict=True))

    async def _resume_points(
        self, pending: list[WeightsFile], sink: Sink, already: dict[str, set[int]]
    ) -> dict[str, tuple[int, int] | None]:
        """Where each pending file may resume inside a chunk (not in a chunk already done)."""
        chunk_size = self.options.chunk_size
        found = await _gather_all(*(sink.resume_point(f, chunk_size) for f in pending))
        return {
            f.path: point if point is not None and point[0] not in already[f.path] else None
            for f, point in zip(pending, found, strict=True)
        }

    async def _flush_loop(self, tracker: ProgressTracker, on_progress: ProgressSink) -> None:
        while True:
            await asyncio.sleep(self.options.progress_interval)
            try:
                await on_progress(tracker.snapshot())
            except Exception:  # a progress write must never kill the download
                log.warning("progress could not be stored", exc_info=True)

    async def _file(self, job: _FileJob) -> None:
        file = job.file
        job.tracker.set(file.path, state=FileState.DOWNLOADING)
        for _ in range(3):
            await self._fetch_missing(job)
            job.tracker.set(file.path, state=FileState.VERIFYING)
            count = max(1, math.ceil(file.size / self.options.chunk_size))
            known = (
                job.hasher.hexdigest()
                if job.hasher is not None and job.hashed_through == count
                else None
            )
            try:
                await self._with_sink_retries(
                    job, functools.partial(job.sink.verify_and_place, file, known_sha256=known)
                )
            except MissingChunks as missing:
                log.warning(
                    "stored chunks went missing; fetching them again",
                    extra={"file": file.path, "chunks": sorted(missing.chunks)},
                )
                job.done -= missing.chunks
                job.hasher = None
                await self.ledgers.unmark_chunks(job.ledger, missing.chunks)
                job.tracker.set(
                    file.path,
                    state=FileState.DOWNLOADING,
                    bytes_done=_bytes_of(job.done, file.size, self.options.chunk_size),
                )
                continue
            except ChecksumMismatch:
                await job.sink.discard(file)
                await self.ledgers.forget(job.weights_id, file.path)
                job.tracker.set(file.path, state=FileState.FAILED, bytes_done=0)
                raise
            job.tracker.set(file.path, state=FileState.DONE, bytes_done=file.size)
            await self.ledgers.forget(job.weights_id, file.path)
            return
        raise DownloadError(
            f"{file.path}: stored chunks kept disappearing at {job.sink.describe()}"
        )

    async def _fetch_missing(self, job: _FileJob) -> None:
        chunk_size = self.options.chunk_size
        file = job.file
        if not job.done and job.resume is None and file.sha256 is not None:
            job.hasher, job.hashed_through = hashlib.sha256(), 0
        storing: asyncio.Task[None] | None = None  # the previous chunk's store (overlapped)
        try:
            for index in range(max(1, math.ceil(file.size / chunk_size))):
                if index in job.done or file.size == 0:
                    continue
                if index != job.hashed_through:
                    job.hasher = None  # the bytes no longer stream through in order
                start = index * chunk_size
                end = min(file.size, start + chunk_size) - 1
                skip = 0
                if job.resume is not None and job.resume[0] == index:
                    skip, job.resume, job.hasher = job.resume[1], None, None
                # Hashed and written (LocalSink) in worker threads as the bytes arrive.
                data = await self._chunk(job, index, start + skip, end)
                if job.hasher is not None:
                    job.hashed_through += 1
                if storing is not None:
                    await storing  # one store at a time per file, in order
                    storing = None
                if job.spare is None:
                    await self._store(job, index, data)
                else:  # fetch the next chunk into the other buffer while this one is sent
                    storing = asyncio.create_task(self._store(job, index, data))
                    job.buffer, job.spare = job.spare, job.buffer
            if storing is not None:
                await storing
                storing = None
        finally:
            if storing is not None:  # the fetch failed: stop sending, and wait for it to stop
                storing.cancel()
                await asyncio.wait([storing])

    async def _store(self, job: _FileJob, index: int, data: memoryview) -> None:
        """Make a fetched chunk durable in the sink, then record it in both ledgers."""
        chunk_size = self.options.chunk_size
        write = functools.partial(job.sink.write_chunk, job.file, index, chunk_size, data)
        await self._with_sink_retries(job, write)
        job.done.add(index)
        await _gather_all(
            self.ledgers.mark_chunk(job.ledger, index),
            job.sink.record_chunks(job.file, job.done, chunk_size),
        )

    async def _with_sink_retries(
        self, job: _FileJob, action: Callable[[], Awaitable[None]]
    ) -> None:
        """Run a sink step, retrying with backoff while the target is unavailable."""
        options = self.options
        for attempt in range(options.max_retries + 1):
            try:
                await action()
            except SinkUnavailable as exc:
                if attempt == options.max_retries:
                    raise DownloadError(
                        f"{job.sink.describe()} kept failing while writing {job.file.path}: {exc}"
                    ) from None
                delay = min(options.backoff_cap, options.backoff_base * 2**attempt)
                log.info("target unavailable; retrying", extra={"file": job.file.path})
                await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311  jitter
            else:
                return

    async def _chunk(self, job: _FileJob, index: int, start: int, end: int) -> memoryview:
        """GET one range (all of chunk ``index`` or, resuming, its rest) with retries into the
        file's buffer; progress counts bytes as they arrive."""
        options = self.options
        attempt = 0
        hashed_before = job.hasher
        while True:
            stream = _ChunkStream(
                job,
                start,
                end - start + 1,
                None if hashed_before is None else hashed_before.copy(),
                chunk=(index, options.chunk_size),
            )
            try:
                try:
                    async with job.http.get(
                        job.url, headers={"Range": f"bytes={start}-{end}"}
                    ) as response:
                        _check_status(response.status, job.file.path)
                        await _read_range(response, stream)
                finally:
                    await stream.settle()  # no worker step reads the buffer any more
            except (_Retry, aiohttp.ClientError, TimeoutError) as exc:
                job.tracker.add(job.file.path, -stream.filled)
                attempt += 1
                reason = _describe(exc)
                if attempt > options.max_retries:
                    raise _gave_up(job, exc, reason, options.max_retries) from None
                delay = min(options.backoff_cap, options.backoff_base * 2 ** (attempt - 1))
                delay *= 0.5 + random.random()  # noqa: S311  jitter, not crypto
                log.info(
                    "retrying a chunk",
                    extra={
                        "file": job.file.path,
                        "start": start,
                        "attempt": attempt,
                        "why": reason,
                    },
                )
                await asyncio.sleep(delay)
            else:
                job.hasher = stream.hasher
                return stream.view


class _BufferPool:
    """Chunk-sized buffers, reused from file to file (fresh memory costs page faults)."""

    def __init__(self, chunk_size: int) -> None:
        self._chunk_size = chunk_size
        self._free: list[bytearray] = []

    def take(self, size: int) -> bytearray:
        """A buffer of ``size`` bytes (a file smaller than a chunk gets its own)."""
        if size == self._chunk_size and self._free:
            return self._free.pop()
        return bytearray(size)

    def give(self, *buffers: bytearray | None) -> None:
        self._free.extend(b for b in buffers if b is not None and len(b) == self._chunk_size)


class _ChunkStream:
    """One attempt at one chunk. The bytes land in the file's reusable buffer; in order, a
    worker thread feeds them to the hasher and to :meth:`Sink.write_block` while the next bytes
    arrive, so neither hashing nor writing runs on the event loop (hashlib and os.pwrite drop
    the GIL). One worker step at a time per chunk; the bytes that come meanwhile wait for the
    next step, which is then bigger."""

    def __init__(
        self, job: _FileJob, start: int, length: int, hasher: Any, *, chunk: tuple[int, int]
    ) -> None:
        self.job = job
        self.start = start
        self.view = memoryview(job.buffer)[:length]
        self.hasher = hasher
        self.filled = 0
        self._handed = 0
        self._step: asyncio.Future[None] | None = None
        self._index, self._chunk_size = chunk
        self._checkpointed = 0

    def put(self, block: bytes) -> int:
        """Copy in what fits of ``block``; returns how many bytes were taken."""
        taken = min(len(block), len(self.view) - self.filled)
        self.view[self.filled : self.filled + taken] = memoryview(block)[:taken]
        self.filled += taken
        if self.filled - self._handed >= HAND_OFF and (self._step is None or self._step.done()):
            if self._step is not None:
                self._step.result()  # a failed write (ENOSPC...) stops the chunk now
            self._hand_off()
        return taken

    def _hand_off(self) -> asyncio.Future[None]:
        low, high = self._handed, self.filled
        self._handed = high
        self._step = asyncio.get_running_loop().run_in_executor(None, self._absorb, low, high)
        return self._step

    def _absorb(self, low: int, high: int) -> None:
        """In a worker thread: hash and write ``view[low:high]``."""
        block = self.view[low:high]
        if self.hasher is not None:
            self.hasher.update(block)
        job = self.job
        job.sink.write_block(job.file, self.start + low, block)
        every = job.checkpoint_bytes
        if every > 0 and high - self._checkpointed >= every and high < len(self.view):
            # Durable progress inside the chunk (the chunk's end is stored and recorded anyway).
            into_chunk = self.start - self._index * self._chunk_size + high
            job.sink.checkpoint(job.file, self._index, self._chunk_size, into_chunk)
            self._checkpointed = high

    async def complete(self) -> None:
        """Every byte arrived: hand off the rest and wait until all is hashed and written."""
        if self._step is not None:
            await self._step
        if self._handed < self.filled:
            await self._hand_off()
        self._step = None

    async def settle(self) -> None:
        """Wait for the running step (its error, if any, is the one already raised or lost
        with the chunk), so that the buffer may be filled again."""
        step, self._step = self._step, None
        if step is not None:
            await asyncio.wait([step])
            if not step.cancelled():
                step.exception()  # retrieved: not logged as never retrieved


@dataclass
class _FileJob:
    """Everything one file's transfer needs."""

    http: aiohttp.ClientSession
    weights_id: str
    url: str
    file: WeightsFile
    sink: Sink
    tracker: ProgressTracker
    ledger: LedgerDocument
    done: set[int]
    buffer: bytearray
    """Where each chunk of the file is received (chunk-sized, reused chunk after chunk)."""
    spare: bytearray | None = None
    """A second buffer when the sink overlaps storing a chunk with fetching the next."""
    hasher: Any = None
    """sha256 of the bytes so far, while chunks stream through in order from the first."""
    hashed_through: int = 0
    resume: tuple[int, int] | None = None
    """A chunk stored in part by an earlier process: (index, bytes durable), fetched from there."""
    checkpoint_bytes: int = 0
    """Record durable progress inside a chunk after this many bytes (0: only whole chunks)."""


async def _gather_all(*calls: Awaitable[T]) -> list[T]:
    """Like :func:`asyncio.gather`, but the first failure cancels the other calls and waits
    for them before it is raised: no call outlives the connections it uses. (With a plain
    gather, one failed S3 HEAD ended the download while the others went on with a client
    being closed, and each failed download left an unclosed HTTP session, issue 15.)"""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _bytes_of(chunks: set[int], size: int, chunk_size: int) -> int:
    return sum(min(chunk_size, size - c * chunk_size) for c in chunks)


def _check_status(status: int, path: str) -> None:
    if status in (401, 403):
        raise DownloadError(
            f"{path}: the hub refused access (HTTP {status}); "
            "the token does not grant access to this repo"
        )
    if status == 404:
        raise DownloadError(f"{path}: not found on the hub at this commit")
    if status in RETRYABLE_STATUS:
        raise _Retry(f"HTTP {status}")
    if status not in (200, 206):
        raise DownloadError(f"{path}: unexpected HTTP {status} from the hub")


async def _read_range(response: aiohttp.ClientResponse, stream: _ChunkStream) -> None:
    """The body of a range response (or the slice of a full 200 body), counted as it comes."""
    job, expected = stream.job, len(stream.view)
    skip = stream.start if response.status == 200 else 0
    content = response.content
    while stream.filled < expected:
        received, end_of_http_chunk = await content.readchunk()
        if not received:
            if end_of_http_chunk:
                continue
            break
        block = received
        if skip:
            cut = min(skip, len(block))
            block, skip = block[cut:], skip - cut
        taken = stream.put(block)
        job.tracker.add(job.file.path, taken)
    if stream.filled != expected:
        raise _Retry(f"short body ({stream.filled} of {expected} bytes)")
    await stream.complete()


def _gave_up(job: _FileJob, exc: Exception, reason: str, retries: int) -> DownloadError:
    tracker = job.tracker
    percent = int(100 * tracker.bytes_done / tracker.bytes_total) if tracker.bytes_total else 0
    verb = "stalled" if isinstance(exc, TimeoutError) else "failed"
    return DownloadError(
        f"{verb} at {percent}% on {job.file.path} after {retries} retries ({reason})"
    )


class _Retry(Exception):
    """A transient failure of one chunk."""


def _describe(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return "no bytes received within the stall window"
    if isinstance(exc, _Retry):
        return str(exc)
    return type(exc).__name__


def _disk_error(exc: BaseException, sink: Sink) -> DownloadError:
    where = sink.describe()
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        free = ""
        with contextlib.suppress(OSError):
            stats = os.statvfs(where)
            free = f" ({human_bytes(stats.f_bavail * stats.f_frsize)} free)"
        return DownloadError(
            f"no space left on device at {where}{free}; "
            "verified files are kept: free space and retry"
        )
    if isinstance(exc, OSError):
        return DownloadError(f"cannot write to {where}: {exc.strerror}")
    return DownloadError(str(exc))
