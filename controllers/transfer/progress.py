"""Progress of one download: bytes per file, a rate, an ETA, emitted at most once per interval.

One record shape for every target (:class:`~storage.documents.Progress`); the downloader
feeds it as bytes arrive and a flusher hands snapshots to the caller's progress sink.
"""

from __future__ import annotations

import time

from storage.documents import FileProgress, FileState, Progress, WeightsFile, WeightsStage, utcnow


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
        self.resumed = 0
        """Bytes already stored when this run began (set once the downloader surveyed)."""

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
            bytes_resumed=self.resumed,
        )
