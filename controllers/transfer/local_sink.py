"""The directory sink: LOCAL and PVC targets.

Parts and ledgers live under ``.modelplane-partial`` beside the data; verified files are
renamed into place. Blocking file work runs in worker threads. With a ``weights_id`` the
directory carries a marker of what the download created and wrote, and removal touches only
that (:mod:`controllers.transfer.locations`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from controllers.transfer import locations
from controllers.transfer.sinks import (
    ChecksumMismatch,
    CleanupRefused,
    DownloadError,
    PreflightError,
    human_bytes,
)
from storage.documents import LedgerDocument, WeightsDocument, WeightsFile

log = logging.getLogger(__name__)

SIDECAR = locations.SIDECAR
MiB = 1024 * 1024


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
