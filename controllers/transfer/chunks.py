"""One file's transfer, chunk by chunk: buffers, the stream of one ranged GET, the job state.

A chunk's bytes land in a reused buffer and are hashed and written in worker threads as they
arrive (:class:`ChunkStream`); a failed attempt is a :class:`Retry` or a
:class:`~controllers.transfer.sinks.DownloadError` (:func:`check_status`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from controllers.transfer.progress import ProgressTracker
from controllers.transfer.sinks import DownloadError, Sink
from storage.documents import LedgerDocument, WeightsFile

T = TypeVar("T")
MiB = 1024 * 1024
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
HAND_OFF = 2 * MiB
"""Bytes gathered before a worker thread hashes and writes them (more if it is still busy)."""


class BufferPool:
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


class ChunkStream:
    """One attempt at one chunk. The bytes land in the file's reusable buffer; in order, a
    worker thread feeds them to the hasher and to :meth:`Sink.write_block` while the next bytes
    arrive, so neither hashing nor writing runs on the event loop (hashlib and os.pwrite drop
    the GIL). One worker step at a time per chunk; the bytes that come meanwhile wait for the
    next step, which is then bigger."""

    def __init__(
        self, job: FileJob, start: int, length: int, hasher: Any, *, chunk: tuple[int, int]
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
class FileJob:
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


async def gather_all(*calls: Awaitable[T]) -> list[T]:
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


def bytes_of(chunks: set[int], size: int, chunk_size: int) -> int:
    return sum(min(chunk_size, size - c * chunk_size) for c in chunks)


def check_status(status: int, path: str) -> None:
    if status in (401, 403):
        raise DownloadError(
            f"{path}: the hub refused access (HTTP {status}); "
            "the token does not grant access to this repo"
        )
    if status == 404:
        raise DownloadError(f"{path}: not found on the hub at this commit")
    if status in RETRYABLE_STATUS:
        raise Retry(f"HTTP {status}")
    if status not in (200, 206):
        raise DownloadError(f"{path}: unexpected HTTP {status} from the hub")


async def read_range(response: aiohttp.ClientResponse, stream: ChunkStream) -> None:
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
        raise Retry(f"short body ({stream.filled} of {expected} bytes)")
    await stream.complete()


def gave_up(job: FileJob, exc: Exception, reason: str, retries: int) -> DownloadError:
    tracker = job.tracker
    percent = int(100 * tracker.bytes_done / tracker.bytes_total) if tracker.bytes_total else 0
    verb = "stalled" if isinstance(exc, TimeoutError) else "failed"
    return DownloadError(
        f"{verb} at {percent}% on {job.file.path} after {retries} retries ({reason})"
    )


class Retry(Exception):
    """A transient failure of one chunk."""


def describe_failure(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return "no bytes received within the stall window"
    if isinstance(exc, Retry):
        return str(exc)
    return type(exc).__name__
