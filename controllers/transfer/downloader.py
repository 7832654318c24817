"""The downloader (docs/architecture.md decision 7): resumable, verified, observable.

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
import logging
import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from huggingface_hub import hf_hub_url
from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]  # re-exported lazily

from controllers.backoff import Backoff
from controllers.transfer.chunks import (
    BufferPool,
    ChunkStream,
    FileJob,
    Retry,
    bytes_of,
    check_status,
    describe_failure,
    gather_all,
    gave_up,
    read_range,
)
from controllers.transfer.local_sink import SIDECAR, LocalSink
from controllers.transfer.progress import ProgressTracker
from controllers.transfer.sinks import (
    ChecksumMismatch,
    CleanupRefused,
    DownloadError,
    DownloadOptions,
    MissingChunks,
    PreflightError,
    ProgressSink,
    Sink,
    SinkUnavailable,
    human_bytes,
)
from storage.documents import FileState, LedgerDocument, Progress, WeightsFile, WeightsStage
from storage.repositories import LedgerRepository

__all__ = [
    "SIDECAR",
    "ChecksumMismatch",
    "CleanupRefused",
    "DownloadError",
    "DownloadOptions",
    "Downloader",
    "LocalSink",
    "MissingChunks",
    "PreflightError",
    "ProgressSink",
    "Sink",
    "SinkUnavailable",
]

log = logging.getLogger(__name__)

READ_BUFFER = 4 * 1024 * 1024
"""aiohttp's per-response buffer: the socket is read in big gulps, without pausing often."""


@dataclass(frozen=True, slots=True)
class _Left:
    """What a download has left to do when it starts (or resumes)."""

    tracker: ProgressTracker
    pending: list[WeightsFile]
    chunk_ledgers: dict[str, LedgerDocument]
    already: dict[str, set[int]]
    """Chunks stored already, per pending file."""
    resumes: dict[str, tuple[int, int] | None]
    """Where a pending file resumes inside a chunk, if it does."""
    pool: BufferPool
    slots: asyncio.Semaphore
    """One per file fetched at a time (``parallel_files``)."""


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
        self._backoff = Backoff(
            base=self.options.backoff_base, cap=self.options.backoff_cap, spread=0.5
        )

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
        left = await self._prepare(weights_id, files, sink, on_progress)
        tracker = left.tracker
        options = self.options
        tracker.stage = WeightsStage.DOWNLOADING
        headers = build_hf_headers(token=token or False, library_name="modelplane")
        timeout = aiohttp.ClientTimeout(
            total=None, connect=10.0, sock_connect=10.0, sock_read=options.stall_seconds
        )
        connector = aiohttp.TCPConnector(limit=options.parallel_files * 2)
        flusher = asyncio.create_task(self._flush_loop(tracker, on_progress), name="progress")
        try:
            # aiohttp: its C parser streams several times faster than httpx here, and it drops
            # Authorization on a cross-origin redirect (the hub's CDN never sees the token).
            async with (
                aiohttp.ClientSession(
                    headers=headers,
                    timeout=timeout,
                    connector=connector,
                    auto_decompress=False,
                    read_bufsize=READ_BUFFER,
                ) as http,
                asyncio.TaskGroup() as group,
            ):
                for file in left.pending:
                    url = hf_hub_url(
                        repo_id, file.path, revision=commit_sha, endpoint=self.endpoint
                    )
                    fetch = self._one_file(http, weights_id, url, file, sink=sink, left=left)
                    group.create_task(fetch, name=f"download:{file.path}")
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

    async def _one_file(
        self,
        http: aiohttp.ClientSession,
        weights_id: str,
        url: str,
        file: WeightsFile,
        *,
        sink: Sink,
        left: _Left,
    ) -> None:
        """Fetch, verify and place one file, at most ``parallel_files`` at a time."""
        options = self.options
        async with left.slots:
            job = FileJob(
                http=http,
                weights_id=weights_id,
                url=url,
                file=file,
                sink=sink,
                tracker=left.tracker,
                ledger=left.chunk_ledgers[file.path],
                done=left.already[file.path],
                buffer=left.pool.take(min(file.size, options.chunk_size)),
                resume=left.resumes[file.path],
                checkpoint_bytes=options.checkpoint_bytes,
            )
            if sink.overlapped and file.size > options.chunk_size:
                job.spare = left.pool.take(options.chunk_size)
            await self._file(job)
            left.pool.give(job.buffer, job.spare)  # after success only: no step reads them

    async def _prepare(
        self, weights_id: str, files: list[WeightsFile], sink: Sink, on_progress: ProgressSink
    ) -> _Left:
        """What is left to fetch and where each file resumes; the sink checked for room."""
        options = self.options
        tracker = ProgressTracker(files, interval=options.progress_interval)
        pending, chunk_ledgers, already = await self._survey(weights_id, files, sink, tracker)
        resumes = await self._resume_points(pending, sink, already)
        missing = 0
        for f in pending:
            done_bytes = bytes_of(already[f.path], f.size, options.chunk_size)
            point = resumes[f.path]
            done_bytes += point[1] if point is not None else 0
            tracker.set(f.path, state=FileState.PENDING, bytes_done=done_bytes)
            missing += f.size - done_bytes
        tracker.resumed = tracker.bytes_done  # what this run does not fetch again
        tracker.stage = WeightsStage.PREFLIGHT
        await on_progress(tracker.snapshot())
        await sink.preflight(needed=missing)
        return _Left(
            tracker,
            pending,
            chunk_ledgers,
            already,
            resumes,
            pool=BufferPool(options.chunk_size),
            slots=asyncio.Semaphore(options.parallel_files),
        )

    async def _survey(
        self, weights_id: str, files: list[WeightsFile], sink: Sink, tracker: ProgressTracker
    ) -> tuple[list[WeightsFile], dict[str, LedgerDocument], dict[str, set[int]]]:
        """The files still to fetch, their ledgers and the chunks already stored: one round
        trip per file and step, all files at once."""
        chunk_size = self.options.chunk_size
        complete = await gather_all(*(sink.is_complete(f) for f in files))
        pending = [f for f, is_done in zip(files, complete, strict=True) if not is_done]
        for f, is_done in zip(files, complete, strict=True):
            if is_done:
                tracker.set(f.path, state=FileState.DONE, bytes_done=f.size)
        loaded = await gather_all(
            *(self.ledgers.load(weights_id, f.path, chunk_size=chunk_size) for f in pending)
        )
        chunk_ledgers = {f.path: ledger for f, ledger in zip(pending, loaded, strict=True)}
        found = await gather_all(
            *(sink.done_chunks(f, chunk_ledgers[f.path], chunk_size) for f in pending)
        )
        return pending, chunk_ledgers, dict(zip((f.path for f in pending), found, strict=True))

    async def _resume_points(
        self, pending: list[WeightsFile], sink: Sink, already: dict[str, set[int]]
    ) -> dict[str, tuple[int, int] | None]:
        """Where each pending file may resume inside a chunk (not in a chunk already done)."""
        chunk_size = self.options.chunk_size
        found = await gather_all(*(sink.resume_point(f, chunk_size) for f in pending))
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

    async def _file(self, job: FileJob) -> None:
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
                    bytes_done=bytes_of(job.done, file.size, self.options.chunk_size),
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

    async def _fetch_missing(self, job: FileJob) -> None:
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

    async def _store(self, job: FileJob, index: int, data: memoryview) -> None:
        """Make a fetched chunk durable in the sink, then record it in both ledgers."""
        chunk_size = self.options.chunk_size
        write = functools.partial(job.sink.write_chunk, job.file, index, chunk_size, data)
        await self._with_sink_retries(job, write)
        job.done.add(index)
        await gather_all(
            self.ledgers.mark_chunk(job.ledger, index),
            job.sink.record_chunks(job.file, job.done, chunk_size),
        )

    async def _with_sink_retries(self, job: FileJob, action: Callable[[], Awaitable[None]]) -> None:
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
                log.info("target unavailable; retrying", extra={"file": job.file.path})
                await asyncio.sleep(self._backoff.delay(attempt + 1))
            else:
                return

    async def _chunk(self, job: FileJob, index: int, start: int, end: int) -> memoryview:
        """GET one range (all of chunk ``index`` or, resuming, its rest) with retries into the
        file's buffer; progress counts bytes as they arrive."""
        options = self.options
        attempt = 0
        hashed_before = job.hasher
        while True:
            stream = ChunkStream(
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
                        check_status(response.status, job.file.path)
                        await read_range(response, stream)
                finally:
                    await stream.settle()  # no worker step reads the buffer any more
            except (Retry, aiohttp.ClientError, TimeoutError) as exc:
                job.tracker.add(job.file.path, -stream.filled)
                attempt += 1
                reason = describe_failure(exc)
                if attempt > options.max_retries:
                    raise gave_up(job, exc, reason, options.max_retries) from None
                delay = self._backoff.delay(attempt)
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
