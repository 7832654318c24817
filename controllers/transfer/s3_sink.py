"""Streaming weights into S3: hub bytes go straight into a multipart upload, no local disk.

Each chunk of a file is one part (so chunks must be at least 5 MiB, S3's minimum part size,
except the last). Each file uploads one part while it fetches the next (two chunk buffers per
file), so memory is bounded by 2 x parallel files x part size, and a process killed mid-way
fetches again at most those two chunks per file. The multipart upload id
is kept in the file's ledger, so a restarted process resumes from ``ListParts`` and sends only
the parts S3 does not have. An upload whose listed parts fall short when it is completed is
abandoned for a new one, never filled again (a completion interrupted by a cancel leaves
MinIO dropping the parts sent into that upload). A file counts once the upload is completed
and the object, read back, matches the hub's sha256 (or git blob id). Layout:
``s3://bucket/prefix/<repo>/<commit>/<file>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections.abc import Awaitable
from typing import Any, NoReturn, TypeVar

from controllers.transfer.sinks import (
    ChecksumMismatch,
    DownloadError,
    MissingChunks,
    PreflightError,
    SinkUnavailable,
)
from integrations.s3 import S3Client, S3Error
from storage.documents import LedgerDocument, WeightsFile
from storage.repositories import LedgerRepository
from storage.targets import object_prefix as object_prefix  # noqa: PLC0414  re-exported

log = logging.getLogger(__name__)

MIN_PART = 5 * 1024 * 1024
PROBE = ".modelplane-write-probe"


T = TypeVar("T")


async def _s3_call(awaitable: Awaitable[T]) -> T:
    """Await an S3 call; a failure that may pass becomes :class:`SinkUnavailable`, which the
    downloader retries with backoff (an S3 server restarting mid-upload), then reports; one
    that cannot (403, 404, a refused endpoint) fails the download at once."""
    try:
        return await awaitable
    except S3Error as exc:
        raise sink_error(exc) from exc


def sink_error(exc: S3Error) -> DownloadError:
    """What an S3 failure means for a download (see :func:`_s3_call`)."""
    return SinkUnavailable(str(exc)) if exc.temporary else DownloadError(str(exc))


class S3Sink:
    """A :class:`~controllers.transfer.downloader.Sink` writing to one bucket prefix."""

    def __init__(
        self, client: S3Client, *, prefix: str, ledgers: LedgerRepository, chunk_size: int
    ) -> None:
        if chunk_size < MIN_PART:
            raise ValueError("S3 targets need chunks of at least 5 MiB (S3's minimum part)")
        self._s3 = client
        self._prefix = prefix
        self._ledgers = ledgers
        self._chunk_size = chunk_size
        self._ledger_of: dict[str, LedgerDocument] = {}
        self._md5_of: dict[tuple[str, int], Any] = {}
        """Per file and part index, the MD5 of the part (its Content-MD5) until it is sent."""

    def describe(self) -> str:
        return f"s3://{self._s3.location.bucket}/{self._prefix}"

    @property
    def overlapped(self) -> bool:
        return True  # a part's upload takes as long as its fetch: overlap the two

    def connected(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self._s3.connected()

    def key(self, file: WeightsFile) -> str:
        """Object key of a file."""
        return f"{self._prefix}/{file.path}"

    async def preflight(self, *, needed: int) -> None:
        del needed  # buckets have no free-space figure to check against
        probe = f"{self._prefix}/{PROBE}"
        try:
            await self._s3.put_bytes(probe, b"")
            await self._s3.delete(probe)
        except S3Error as exc:
            raise PreflightError(f"{self.describe()} is not writable: {exc}") from None

    async def is_complete(self, file: WeightsFile) -> bool:
        head = await _s3_call(self._s3.head(self.key(file)))
        if head is None:
            return False
        size, metadata = head
        if size != file.size or metadata.get("sha256", "") != (file.sha256 or ""):
            return False
        if file.sha256 is not None:
            return True  # completed only after its parts came from the hub for that sha256
        # Small git files carry no hash in metadata: read back and check the blob id.
        blob = hashlib.sha1(f"blob {file.size}\0".encode())  # noqa: S324  git's blob id
        try:
            async for block in self._s3.stream(self.key(file)):
                blob.update(block)
        except S3Error as exc:
            raise sink_error(exc) from exc
        return file.blob_id is None or blob.hexdigest() == file.blob_id

    async def done_chunks(
        self, file: WeightsFile, ledger: LedgerDocument, chunk_size: int
    ) -> set[int]:
        self._ledger_of[file.path] = ledger
        if ledger.upload_id is None:
            return set()
        parts = await _s3_call(self._s3.list_parts(self.key(file), ledger.upload_id))
        if parts is None:
            head = await _s3_call(self._s3.head(self.key(file)))
            if head is not None and head[0] == file.size:
                # Completed just as the last process stopped: only verification is left.
                return set(range(math.ceil(file.size / chunk_size)))
            ledger.upload_id = None  # aborted or expired: start over
            await self._ledgers.set_upload(ledger, None)
            return set()
        done = set()
        for number, (size, _) in parts.items():
            index = number - 1
            if size == min(chunk_size, file.size - index * chunk_size):
                done.add(index)
        return done

    def write_block(self, file: WeightsFile, offset: int, data: memoryview) -> None:
        """In a worker thread: MD5 the part as it arrives; the bytes stay in the chunk buffer
        until :meth:`write_chunk` sends them as one part."""
        index, into = divmod(offset, self._chunk_size)
        if into == 0:  # a part's first bytes (again, when it is fetched again)
            self._md5_of[file.path, index] = hashlib.md5(usedforsecurity=False)
        self._md5_of[file.path, index].update(data)

    def checkpoint(self, file: WeightsFile, index: int, chunk_size: int, length: int) -> None:
        """A part is stored whole or not at all (S3 keeps no half part): nothing to record.
        So the resume grain is one part, at least 5 MiB (S3's minimum part size)."""
        del file, index, chunk_size, length

    async def resume_point(self, file: WeightsFile, chunk_size: int) -> tuple[int, int] | None:
        del file, chunk_size
        return None

    async def write_chunk(
        self, file: WeightsFile, index: int, chunk_size: int, data: memoryview
    ) -> None:
        del chunk_size
        ledger = self._ledger_of[file.path]
        if ledger.upload_id is None:
            ledger.upload_id = await _s3_call(
                self._s3.start_upload(self.key(file), metadata={"sha256": file.sha256 or ""})
            )
            await self._ledgers.set_upload(ledger, ledger.upload_id)
        md5 = self._md5_of[file.path, index].digest()
        # A view of the chunk buffer: aiohttp sends it as is (a bytearray it would copy).
        await _s3_call(
            self._s3.upload_part(self.key(file), ledger.upload_id, index + 1, data, md5=md5)
        )
        del self._md5_of[file.path, index]

    async def record_chunks(self, file: WeightsFile, chunks: set[int], chunk_size: int) -> None:
        del file, chunks, chunk_size  # S3 itself is the sidecar: ListParts says what is there

    async def verify_and_place(self, file: WeightsFile, *, known_sha256: str | None) -> None:
        key = self.key(file)
        if file.size == 0:
            await _s3_call(self._s3.put_bytes(key, b""))
        else:
            await self._complete(file, key)
        if known_sha256 is not None and file.sha256 is not None:
            # Every part streamed through this process in order and was hashed on the way.
            if known_sha256 != file.sha256:
                await self._s3.delete(key)
                raise ChecksumMismatch(file.path, "sha256", file.sha256, known_sha256)
            return
        await self._read_back(file, key)

    async def _complete(self, file: WeightsFile, key: str) -> None:
        ledger = self._ledger_of.get(file.path)
        if ledger is None or ledger.upload_id is None:
            raise DownloadError(f"{file.path}: no upload to complete")
        parts = await _s3_call(self._s3.list_parts(key, ledger.upload_id))
        if parts is None:
            # Completed by an earlier attempt whose read-back was interrupted.
            head = await _s3_call(self._s3.head(key))
            if head is None or head[0] != file.size:
                # The upload is gone (a server restart mid-completion, or expired): its parts
                # with it. Start a new upload and fetch every chunk again.
                await self._start_over(file, ledger, key, abort=False)
            return
        expected = math.ceil(file.size / ledger.chunk_size)
        if any(n not in parts for n in range(1, expected + 1)):
            # Parts this process (or the last) stored are not listed: the upload is broken, e.g.
            # a completion interrupted by a cancel (MinIO then drops the parts, and goes on
            # dropping the ones sent again into that upload). Never reuse it: a new upload.
            await self._start_over(file, ledger, key, abort=True)
        await _s3_call(self._s3.complete_upload(key, ledger.upload_id, parts))

    async def _start_over(
        self, file: WeightsFile, ledger: LedgerDocument, key: str, *, abort: bool
    ) -> NoReturn:
        """Forget the file's upload (aborting it first when asked, best effort) and raise
        :class:`MissingChunks` for every chunk: parts never move from one upload to another."""
        if abort and ledger.upload_id is not None:
            with contextlib.suppress(S3Error):
                await self._s3.abort_upload(key, ledger.upload_id)
        ledger.upload_id = None
        await self._ledgers.set_upload(ledger, None)
        raise MissingChunks(file.path, set(range(math.ceil(file.size / ledger.chunk_size))))

    async def _read_back(self, file: WeightsFile, key: str) -> None:
        sha = hashlib.sha256()
        blob = hashlib.sha1(f"blob {file.size}\0".encode())  # noqa: S324  git's blob id
        try:
            async for block in self._s3.stream(key):
                sha.update(block)
                blob.update(block)
        except S3Error as exc:
            raise sink_error(exc) from exc
        if file.sha256 is not None and sha.hexdigest() != file.sha256:
            await self._s3.delete(key)
            raise ChecksumMismatch(file.path, "sha256", file.sha256, sha.hexdigest())
        if file.sha256 is None and file.blob_id is not None and blob.hexdigest() != file.blob_id:
            await self._s3.delete(key)
            raise ChecksumMismatch(file.path, "git blob id", file.blob_id, blob.hexdigest())

    async def discard(self, file: WeightsFile) -> None:
        ledger = self._ledger_of.get(file.path)
        if ledger is not None and ledger.upload_id is not None:
            await _s3_call(self._s3.abort_upload(self.key(file), ledger.upload_id))
            ledger.upload_id = None

    async def discard_partials(self, ledgers: list[LedgerDocument]) -> None:
        """Abort the multipart uploads the stored ledgers (and this sink) know of."""
        for ledger in ledgers:
            self._ledger_of.setdefault(ledger.path, ledger)
        for ledger in self._ledger_of.values():
            if ledger.upload_id is not None:
                await _s3_call(
                    self._s3.abort_upload(f"{self._prefix}/{ledger.path}", ledger.upload_id)
                )

    async def finish(self) -> None:
        return None

    async def remove_all(self) -> None:
        """Delete every object of this download (deleteWeights)."""
        await _s3_call(self._s3.delete_prefix(self._prefix))
