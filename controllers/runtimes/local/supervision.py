"""The process supervisor's records: each key's state, each run's, and pid files.

:class:`Entry` is the supervisor's mutable record of one key (kept after a stop, for status and
logs), :class:`Run` one process lifetime, :class:`Exit` how it ended. :class:`PidRecords` keeps
``<log_dir>/<key>.pid`` with the child's kernel start time, so a later server can stop a child
an earlier one left running without ever hitting a reused pid. The signal and wait helpers are
shared by the supervisor's start, stop and orphan handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from controllers.runtimes.local.logfiles import LogFile
from controllers.runtimes.local.specs import (
    ProcessPhase,
    ProcessSpec,
    ProcessStatus,
    describe_exit,
    live_start_time,
)

log = logging.getLogger(__name__)

MESSAGE_LINE_CHARS = 300
"""How much of the engine's last output line a status message quotes."""


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal a process group; one that is gone already is fine. (After the leader is reaped
    its pid stays reserved while any member lives; an empty group answers ESRCH.)"""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def display_line(raw: bytes) -> str:
    """One output line as a terminal would leave it: the text after the last carriage return
    (progress bars redraw with ``\\r``), decoded leniently."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r")
    return text.rsplit("\r", 1)[-1]


@dataclass(slots=True)
class Run:
    """One process lifetime: what its exit report needs."""

    started: float
    first_ready: float | None = None
    last_stderr: str | None = None
    last_stdout: str | None = None
    last_probe_problem: str | None = None

    def last_line(self) -> str | None:
        line = self.last_stderr or self.last_stdout
        return None if line is None else line[:MESSAGE_LINE_CHARS]


@dataclass(frozen=True, slots=True)
class Exit:
    """How a run ended, for the restart decision."""

    code: int | None
    reason: str
    text: str
    """``exited with code 1``, ``not ready within 5 s (/health: HTTP 500)``..."""
    line: str | None
    """The engine's last output line (stderr's, else stdout's)."""
    ready_for: float
    """Seconds between becoming ready and the exit; 0 when never ready."""

    def summary(self) -> str:
        return self.text if self.line is None else f"{self.text}: {self.line}"


@dataclass(slots=True)
class Entry:
    """The supervisor's mutable record of one key (kept after stop, for status and logs)."""

    key: str
    spec: ProcessSpec
    lines: deque[str]
    file: LogFile
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None
    phase: ProcessPhase = ProcessPhase.STOPPED
    ready: bool = False
    pid: int | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    started_at: datetime | None = None
    exits: deque[float] = field(default_factory=deque)
    unready_exits: int = 0
    failures: int = 0
    last_exit_text: str | None = None
    published: ProcessStatus | None = None

    def status(self) -> ProcessStatus:
        return ProcessStatus(
            phase=self.phase,
            ready=self.ready,
            pid=self.pid,
            restarts=self.restarts,
            last_exit_code=self.last_exit_code,
            reason=self.reason,
            message=self.message,
            started_at=self.started_at,
        )

    def settle(self, phase: ProcessPhase, reason: str | None, message: str | None) -> None:
        """No process runs now (FAILED, STOPPED): say why."""
        self.phase = phase
        self.ready = False
        self.pid = None
        self.started_at = None
        self.reason = reason
        self.message = message

    def started(self, pid: int) -> None:
        """A process was spawned: STARTING, naming the exit it restarts after."""
        self.phase = ProcessPhase.STARTING
        self.ready = False
        self.pid = pid
        self.started_at = datetime.now(UTC)
        self.reason = None
        self.message = (
            None
            if self.last_exit_text is None
            else f"restart {self.restarts} after: {self.last_exit_text}"
        )

    def became_ready(self) -> None:
        """The health check answered 2xx."""
        self.phase = ProcessPhase.RUNNING
        self.ready = True
        self.reason = None
        self.message = None

    def retire(self) -> None:
        """Forget the key's finished task, logging how it failed if it did (a bug: the task
        handles every failure of the process itself)."""
        task, self.task = self.task, None
        if task is not None and task.done() and not task.cancelled():
            error = task.exception()
            if error is not None:
                log.error("process supervision failed", extra={"key": self.key}, exc_info=error)

    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def reset_history(self) -> None:
        """A fresh start (new spec, or ensure after stop): counters as for a new pod."""
        self.restarts = 0
        self.last_exit_code = None
        self.exits.clear()
        self.unready_exits = 0
        self.failures = 0
        self.last_exit_text = None


class PidRecords:
    """``<dir>/<key>.pid``: a running child's pid and kernel start time."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def path(self, key: str) -> Path:
        """Where ``key``'s record is."""
        return self._dir / f"{key}.pid"

    def record(self, key: str, pid: int) -> None:
        """Note a running child and its start time, for a later server to find."""
        started = live_start_time(pid)
        if started is None:
            return
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(f"{pid} {started}\n")
        except OSError:
            log.warning("cannot record the process id", extra={"key": key}, exc_info=True)

    def orphan(self, key: str) -> tuple[int, str] | None:
        """The recorded process of ``key`` if it still runs (same pid, same start time)."""
        path = self.path(key)
        try:
            pid_text, started = path.read_text().split()
            pid = int(pid_text)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            return None
        if pid in {0, 1, os.getpid(), os.getpgrp()} or live_start_time(pid) != started:
            path.unlink(missing_ok=True)
            return None
        return pid, started

    async def stop_orphan(self, key: str, *, grace: float) -> None:
        """Stop a process a previous server left running for ``key``: SIGTERM to its group,
        SIGKILL after ``grace`` s, then wait (5 s at most) until it is gone."""
        found = self.orphan(key)
        if found is None:
            return
        pid, started = found
        log.warning(
            "stopping a process left running by an earlier server", extra={"key": key, "pid": pid}
        )
        signal_group(pid, signal.SIGTERM)
        await until_gone(pid, started, seconds=grace)
        signal_group(pid, signal.SIGKILL)
        await until_gone(pid, started, seconds=5.0)
        self.path(key).unlink(missing_ok=True)


async def until_gone(pid: int, started: str, *, seconds: float) -> None:
    """Poll until ``pid`` (started at ``started``) is gone, for ``seconds`` at most. An orphan
    is not our child: there is nothing to wait on but its ``/proc`` entry."""
    for _ in range(max(1, round(seconds / 0.05))):
        if live_start_time(pid) != started:
            return
        await asyncio.sleep(0.05)


async def cancel_all(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancel sub-tasks and wait for them, without swallowing our own cancellation."""
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.error("process sub-task failed", exc_info=task.exception())


def exit_report(
    spec: ProcessSpec, run: Run, code: int | None, *, timed_out: bool, now: float
) -> Exit:
    ready_for = 0.0 if run.first_ready is None else now - run.first_ready
    if timed_out:
        problem = run.last_probe_problem
        why = f" ({spec.health_path}: {problem})" if problem else ""
        text = f"not ready within {spec.startup_timeout_seconds:g} s{why}"
        return Exit(code, "StartupTimeout", text, None, ready_for)
    text = "exited" if code is None else describe_exit(code)
    reason = "Completed" if code == 0 else "Error"
    return Exit(code, reason, text, run.last_line(), ready_for)


async def terminate(
    key: str,
    proc: asyncio.subprocess.Process,
    waiter: asyncio.Task[int],
    *,
    grace: float,
) -> None:
    """SIGTERM the process group, wait ``grace`` s for the leader, then SIGKILL the group
    (stragglers too, whether or not the leader went quietly); returns once it is reaped.
    The waits use ``asyncio.wait``, which, unlike ``asyncio.timeout`` on Python 3.11,
    still times out inside a task that is being cancelled."""
    try:
        if not waiter.done():
            signal_group(proc.pid, signal.SIGTERM)
            await asyncio.wait({waiter}, timeout=grace)
            if not waiter.done():
                log.warning(
                    "process ignored SIGTERM; killing it",
                    extra={"key": key, "pid": proc.pid, "grace": grace},
                )
    finally:
        signal_group(proc.pid, signal.SIGKILL)
    await asyncio.wait({waiter})


async def health_check(http: httpx.AsyncClient, url: str) -> str | None:
    """None when ``url`` answers 2xx, else a short stable description of why not."""
    try:
        response = await http.get(url)
    except httpx.TimeoutException:
        return "no answer in time"
    except httpx.ConnectError:
        return "cannot connect"
    except httpx.HTTPError as exc:
        return type(exc).__name__
    if response.is_success:
        return None
    return f"HTTP {response.status_code}"
