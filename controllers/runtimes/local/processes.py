"""Supervised engine subprocesses for the local runtime (ARCHITECTURE.md decision 3).

On the ``local`` runtime an inference engine (vLLM, Ollama, a LiteLLM proxy, any command) runs
as a child of the server. :class:`ProcessSupervisor` is to those children what the kubelet is to
a pod's container, and borrows its vocabulary so both runtimes report alike:

- **One owned task per key.** :meth:`ProcessSupervisor.ensure` starts a supervising task that
  spawns the process, pumps its output, probes its health and restarts it when it exits. The
  task's output pumps and prober are its own sub-tasks, cancelled and awaited with it; stopping
  a key cancels its task, whose clean-up terminates the process, so whoever cancels it (stop,
  close, loop shutdown) leaves no process behind.
- **Process groups.** Every child leads a session of its own (``start_new_session``), so
  SIGTERM and SIGKILL go to the whole group: vLLM's workers and a shell's children die with it.
  Stragglers left in the group when the leader exits are killed before a restart, so they cannot
  hold the port, the GPU or the output pipes.
- **Readiness is an HTTP GET** on ``127.0.0.1:{port}{health_path}``, polled after the spec's
  initial delay: the first 2xx makes the process ready, ``ready_failure_threshold`` failures in
  a row make it unready again (it is not restarted for that: there is no liveness probe). A
  process that never becomes ready within ``startup_timeout_seconds`` is terminated and counts
  as an exit.
- **Orphans.** A child survives a server that dies without closing the supervisor (it runs in
  its own session). Each running child is recorded in ``<log_dir>/<key>.pid`` with its kernel
  start time; the first start of a key stops a recorded process that still runs with that
  start time (so a reused pid is never hit; Linux only, elsewhere there is no record). And
  every spawn first checks the port: anything else listening there would answer the new
  engine's health checks, so the start waits in backoff (reason ``PortInUse``) instead.
- **Restarts** follow Kubernetes' ``restartPolicy: Always``: every exit (even code 0) restarts
  after a jittered exponential backoff. ``crash_loop_after`` exits within
  ``crash_loop_window`` seconds, or as many in a row without ever becoming ready, make the
  phase CRASH_LOOP (reason ``CrashLoopBackOff``) while it keeps retrying; a run that stayed up
  ``backoff_reset_after`` seconds after becoming ready resets the backoff.
- **Permanent failures** (an invalid spec, a program that is not on PATH, an exec error) end in
  FAILED without a retry loop. ``ensure`` with the same spec leaves a FAILED key alone (a
  reconcile triggered by the failure must not retry it at once); a new spec, or
  :meth:`ProcessSupervisor.stop` then ``ensure``, tries again.
- **Output** (stdout and stderr, read continuously so the child never blocks on a full pipe)
  is kept line by line in a bounded ring per key, across restarts, and appended to
  ``<log_dir>/<key>.log`` (mode 0600, rotated once to ``.log.1`` at a size cap). Appends are
  plain blocking writes of one chunk at a time: engine output is small and a write to the page
  cache costs less than a hop to a thread. The supervisor stores the engine's lines as they
  are; it never logs them, nor the spec's arguments or environment values (an API key may be
  among them), only the program's name.
- **The child's environment** is an allow-list of the server's variables (PATH, HOME, locale,
  GPU selection, CA bundles...) plus the spec's own: the server's environment holds its own
  secrets (``MODELPLANE_SECRET_KEY``, database credentials) which an engine must not see.
  ``PYTHONUNBUFFERED=1`` is added unless the spec sets it, so Python engines' logs arrive as
  they are written rather than in 8 KiB blocks.
- **The engine user.** A server running as root runs its engines as another user
  (:class:`EngineUser`, setting ``MODELPLANE_ENGINE_USER``, default ``nobody``): its uid, its
  primary group and no supplementary groups, ``HOME`` set to the engine's working directory,
  which is handed to that user. So an engine cannot read what only root may: the state
  directory's keys (``keys/`` is 0700, see :mod:`modelplane.keyfiles`), the server's
  environment (``/proc/<pid>/environ``) or memory. Weights stay readable: the downloader writes
  them world-readable. A server that is not root cannot switch users; its engines run as its
  own user, and :func:`protect_server_process` makes the server non-dumpable so a same-user
  engine cannot read its environment (``MODELPLANE_SECRET_KEY``, the database URI) or memory
  through ``/proc``. Key files generated in development stay readable to such engines: set
  ``MODELPLANE_SECRET_KEY`` (production requires it) so none exists.
- **Changes are announced** by calling ``on_change(key)`` whenever :meth:`status` would answer
  something different; the inference controller enqueues the key. The callback must be cheap;
  its exceptions are logged and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import re
import shutil
import signal
import socket
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx

from controllers.runtimes.local.logfiles import LogFile

log = logging.getLogger(__name__)

DEFAULT_INHERITED_ENV: frozenset[str] = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "XDG_CACHE_HOME",
        "LD_LIBRARY_PATH",
        "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES",
        "NVIDIA_DRIVER_CAPABILITIES",
        "HIP_VISIBLE_DEVICES",
        "ROCR_VISIBLE_DEVICES",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
    }
)
"""Server variables a child inherits (plus every ``LC_*``). Proxy variables are left out: their
URLs may carry credentials; a deployment that needs them passes ``inherit_env``."""

INHERITED_ENV_PREFIXES = ("LC_",)

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TRANSIENT_SPAWN_ERRORS = frozenset({errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE})
_READ_CHUNK = 64 * 1024
_MESSAGE_LINE_CHARS = 300
"""How much of the engine's last output line a status message quotes."""


@dataclass(frozen=True, slots=True, repr=False)
class ProcessSpec:
    """What to run and how to tell it is ready. Compared whole: any change restarts it.

    ``argv[0]`` is looked up on the child's PATH (``shutil.which``), or taken as a path when it
    holds a slash (relative to ``cwd``). ``env`` is added to the inherited allow-list. The
    repr shows neither arguments nor environment values: either may hold an API key.
    """

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    port: int
    """The engine listens here on 127.0.0.1."""
    health_path: str = "/health"
    """Ready when ``GET http://127.0.0.1:{port}{health_path}`` answers 2xx."""
    initial_delay_seconds: float = 0.0
    """No health checks before this."""
    startup_timeout_seconds: float = 600.0
    """Not ready this long after it started: terminated, counted as an exit, restarted."""
    stop_grace_seconds: float = 10.0
    """Between SIGTERM and SIGKILL when stopping."""

    def __repr__(self) -> str:
        program = self.argv[0] if self.argv else ""
        return (
            f"ProcessSpec(program={program!r}, args={max(len(self.argv) - 1, 0)}, "
            f"env_keys={sorted(self.env)}, cwd={str(self.cwd)!r}, port={self.port})"
        )


class ProcessPhase(StrEnum):
    """Where a supervised process stands.

    ::

        ensure --> STARTING --(health 2xx)--> RUNNING   (ready flips with health checks)
                     ^  |                        |
                     |  +--(exit / not ready by the startup timeout)--+
                     |                                                 v
                     +----------(backoff elapsed)------------ BACKOFF | CRASH_LOOP
        ensure --(invalid spec, program not found, exec error)--> FAILED
        any --(stop)--> STOPPED --(ensure)--> STARTING
    """

    STARTING = "STARTING"
    """The process runs and has not answered a health check since it started."""
    RUNNING = "RUNNING"
    """The process runs and has been ready since it started (``ready`` says if it still is)."""
    BACKOFF = "BACKOFF"
    """The process exited; it restarts after a delay."""
    CRASH_LOOP = "CRASH_LOOP"
    """Like BACKOFF, after repeated exits (reason ``CrashLoopBackOff``)."""
    FAILED = "FAILED"
    """It cannot start and is not retried: invalid spec, program missing, exec error."""
    STOPPED = "STOPPED"
    """Stopped on request (or not started yet)."""


@dataclass(frozen=True, slots=True)
class ProcessStatus:
    """The supervisor's account of one key, as the inference controller reads it.

    ``reason`` is a short CamelCase word (``NotReady``, ``Error``, ``Completed``,
    ``StartupTimeout``, ``PortInUse``, ``CrashLoopBackOff``, ``ProgramNotFound``,
    ``InvalidSpec``, ``StartError``); ``message`` is for people and quotes the engine's last
    output line after an exit. ``last_exit_code`` is negative for a signal (-9: SIGKILL).
    ``started_at`` is when the current process started, None while none runs.
    """

    phase: ProcessPhase
    ready: bool
    pid: int | None
    restarts: int
    last_exit_code: int | None
    reason: str | None
    message: str | None
    started_at: datetime | None


# -- pure helpers -----------------------------------------------------------------------------


def backoff_delay(failures: int, *, base: float, cap: float, jitter: float) -> float:
    """Seconds before restart number ``failures`` (1 for the first): ``base * 2**(failures-1)``
    spread by +-25 % with ``jitter`` in [0, 1), never above ``cap``."""
    raw = base * 2.0 ** min(max(failures - 1, 0), 62)
    return min(cap, raw * (0.75 + jitter / 2))


def describe_exit(returncode: int) -> str:
    """``exited with code 1`` or ``killed by SIGKILL``."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


def child_environment(
    spec_env: Mapping[str, str],
    *,
    parent: Mapping[str, str],
    inherit: Iterable[str] = DEFAULT_INHERITED_ENV,
) -> dict[str, str]:
    """The allow-listed part of ``parent`` (never a ``MODELPLANE_*`` variable),
    ``PYTHONUNBUFFERED=1``, then ``spec_env``."""
    allowed = frozenset(inherit)
    env = {
        name: value
        for name, value in parent.items()
        if (name in allowed or name.startswith(INHERITED_ENV_PREFIXES))
        and not name.upper().startswith("MODELPLANE_")  # the server's own, secrets among them
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(spec_env)
    return env


@dataclass(frozen=True, slots=True)
class EngineUser:
    """Who engine processes run as when the server is root."""

    name: str
    uid: int
    gid: int


class EngineUserError(Exception):
    """The configured engine user does not exist on this host."""


def engine_user(name: str | None) -> EngineUser | None:
    """The user engines run as: ``name`` when this process is root, else None (engines run
    as the server's own user: only root can switch). Raises EngineUserError for an unknown
    name."""
    if name is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd  # noqa: PLC0415  POSIX only, and only here

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise EngineUserError(f"no user named {name!r} on this host") from None
    if entry.pw_uid == 0:
        return None  # "root" asked for: nothing to drop
    return EngineUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


def protect_server_process() -> bool:
    """Make this process non-dumpable (Linux ``prctl(PR_SET_DUMPABLE, 0)``): processes of the
    same user without CAP_SYS_PTRACE can then neither read ``/proc/<pid>/environ`` and
    ``mem`` nor attach to it. Engines started later are dumpable again (``execve`` resets it).
    False where it is not available."""
    import ctypes  # noqa: PLC0415  Linux only, and only here
    import ctypes.util  # noqa: PLC0415

    name = ctypes.util.find_library("c")
    if name is None or not os.path.exists("/proc/self"):
        return False
    pr_set_dumpable = 4
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        return int(libc.prctl(pr_set_dumpable, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def spec_problem(spec: ProcessSpec) -> str | None:
    """Why ``spec`` cannot be run as written (its working directory aside), or None."""
    checks = (
        (not spec.argv or not spec.argv[0], "argv is empty"),
        (any("\0" in arg for arg in spec.argv), "argv holds a NUL character"),
        (
            any(not name or "=" in name or "\0" in name for name in spec.env),
            "an environment variable name is empty or holds '=' or NUL",
        ),
        (
            any("\0" in value for value in spec.env.values()),
            "an environment variable value holds a NUL character",
        ),
        (not 1 <= spec.port <= 65535, f"port {spec.port} is outside 1-65535"),
        (
            not spec.health_path.startswith("/") or any(c.isspace() for c in spec.health_path),
            f"health path {spec.health_path!r} must start with '/' and hold no spaces",
        ),
        (
            spec.initial_delay_seconds < 0 or spec.stop_grace_seconds < 0,
            "delays must not be negative",
        ),
        (spec.startup_timeout_seconds <= 0, "the startup timeout must be positive"),
    )
    return next((problem for failed, problem in checks if failed), None)


def resolve_program(argv0: str, *, path: str | None, cwd: Path) -> str | None:
    """The executable ``argv0`` names: looked up on ``path``, or a path (relative to ``cwd``)
    when it holds a slash. None when there is no such executable file."""
    if os.sep not in argv0:
        return shutil.which(argv0, path=path or os.defpath)
    candidate = Path(argv0) if os.path.isabs(argv0) else cwd / argv0
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return None


def port_in_use(port: int) -> bool:
    """True when something already listens on (or holds) ``127.0.0.1:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def live_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of ``/proc/<pid>/stat``), which tells it
    from a later process reusing the pid; None when it is gone, a zombie, or there is no
    ``/proc`` (not Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if len(fields) < 20 or fields[0] in {"Z", "X"}:
        return None
    return fields[19]


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal a process group; one that is gone already is fine. (After the leader is reaped
    its pid stays reserved while any member lives; an empty group answers ESRCH.)"""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _display_line(raw: bytes) -> str:
    """One output line as a terminal would leave it: the text after the last carriage return
    (progress bars redraw with ``\\r``), decoded leniently."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r")
    return text.rsplit("\r", 1)[-1]


# -- supervisor state -------------------------------------------------------------------------


@dataclass(slots=True)
class _Run:
    """One process lifetime: what its exit report needs."""

    started: float
    first_ready: float | None = None
    last_stderr: str | None = None
    last_stdout: str | None = None
    last_probe_problem: str | None = None

    def last_line(self) -> str | None:
        line = self.last_stderr or self.last_stdout
        return None if line is None else line[:_MESSAGE_LINE_CHARS]


@dataclass(frozen=True, slots=True)
class _Exit:
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
class _Entry:
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


# -- the supervisor ---------------------------------------------------------------------------


class ProcessSupervisor:
    """Runs engine processes by key: starts, probes, restarts with backoff, stops, keeps logs.

    Every wait is cancellable; :meth:`close` stops every process (the stops run concurrently,
    each bounded by its spec's ``stop_grace_seconds``) and leaves no task behind.
    """

    def __init__(
        self,
        *,
        log_dir: Path,
        on_change: Callable[[str], None],
        max_log_lines: int = 5000,
        log_file_max_bytes: int = 10 * 1024 * 1024,
        max_line_bytes: int = 16 * 1024,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
        backoff_reset_after: float = 120.0,
        crash_loop_after: int = 3,
        crash_loop_window: float = 60.0,
        health_interval: float = 1.0,
        health_timeout: float = 2.0,
        ready_failure_threshold: int = 3,
        drain_seconds: float = 2.0,
        inherit_env: Iterable[str] = DEFAULT_INHERITED_ENV,
        parent_env: Mapping[str, str] | None = None,
        run_as: EngineUser | None = None,
    ) -> None:
        """``parent_env`` is the environment children inherit from (``os.environ`` by
        default, read at each spawn); ``drain_seconds`` bounds the wait for a dead process's
        last output (a daemonised grandchild may hold the pipes open); ``run_as`` is the user
        children run as (see :func:`engine_user`), None for this process's own."""
        self._log_dir = log_dir
        self._on_change = on_change
        self._max_log_lines = max_log_lines
        self._log_file_max_bytes = log_file_max_bytes
        self._max_line_bytes = max_line_bytes
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._backoff_reset_after = backoff_reset_after
        self._crash_loop_after = crash_loop_after
        self._crash_loop_window = crash_loop_window
        self._health_interval = health_interval
        self._ready_failure_threshold = ready_failure_threshold
        self._drain_seconds = drain_seconds
        self._inherit_env = frozenset(inherit_env)
        self._parent_env = parent_env
        self._run_as = run_as
        self._entries: dict[str, _Entry] = {}
        self._closed = False
        # No keep-alive: a pooled connection to an engine that restarted would fail one probe.
        self._http = httpx.AsyncClient(
            timeout=health_timeout,
            trust_env=False,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    # -- public API ---------------------------------------------------------------------------

    async def ensure(self, key: str, spec: ProcessSpec) -> ProcessStatus:
        """Make ``key`` run ``spec``; idempotent. Starts it when it is not running (after a
        stop, or for a new key); stops and restarts it when the spec differs from the running
        one; leaves a running or FAILED key with the same spec alone. Returns the status (a
        fresh start answers STARTING with no pid yet: the spawn happens in the key's task).

        Raises ValueError for a key that is not a safe file name, RuntimeError after close.
        """
        if not _KEY.fullmatch(key):
            raise ValueError(f"process key {key!r} must match {_KEY.pattern}")
        spec = replace(spec, argv=list(spec.argv), env=dict(spec.env))  # the caller's lists
        while True:
            if self._closed:
                raise RuntimeError("the process supervisor is closed")
            entry = self._entries.get(key)
            if entry is None:
                entry = self._new_entry(key, spec)
            async with entry.lock:
                if self._entries.get(key) is not entry:
                    continue  # removed while we waited for the lock
                if self._closed:
                    raise RuntimeError("the process supervisor is closed")
                if entry.spec == spec and (entry.running() or entry.phase is ProcessPhase.FAILED):
                    return entry.status()
                if entry.running():
                    log.info("process spec changed; restarting", extra={"key": key})
                    await self._halt(entry)
                entry.spec = spec
                self._start(entry)
                return entry.status()

    async def stop(self, key: str) -> None:
        """Stop ``key``'s process (SIGTERM to its group, SIGKILL after the spec's grace) and
        wait until it is gone; the key stays known as STOPPED, with its logs. Idempotent."""
        entry = self._entries.get(key)
        if entry is None:
            return
        async with entry.lock:
            await self._halt(entry)

    async def remove(self, key: str) -> None:
        """Stop ``key`` and forget it: its status, in-memory logs and log files."""
        entry = self._entries.get(key)
        if entry is None:
            return
        async with entry.lock:
            await self._halt(entry)
            if self._entries.get(key) is entry:
                del self._entries[key]
            entry.file.remove()
            self._pid_path(key).unlink(missing_ok=True)

    def status(self, key: str) -> ProcessStatus | None:
        """The current status of ``key``, or None for a key never ensured (or removed)."""
        entry = self._entries.get(key)
        return None if entry is None else entry.status()

    def logs(self, key: str, tail: int) -> list[str]:
        """The last ``tail`` lines of ``key``'s combined stdout and stderr, across restarts
        (at most ``max_log_lines``); empty for an unknown key."""
        entry = self._entries.get(key)
        if entry is None or tail <= 0:
            return []
        lines = list(entry.lines)
        return lines[-tail:]

    def log_path(self, key: str) -> Path:
        """Where ``key``'s output is appended (the previous file is ``<path>.1``)."""
        return self._log_dir / f"{key}.log"

    def keys(self) -> list[str]:
        """Every key known (running or not), sorted."""
        return sorted(self._entries)

    async def close(self) -> None:
        """Stop every process concurrently, then close the HTTP client and log files. Later
        ``ensure`` calls raise RuntimeError; ``stop`` and ``status`` still work."""
        self._closed = True
        entries = list(self._entries.values())
        await asyncio.gather(*(self.stop(entry.key) for entry in entries))
        for entry in entries:
            entry.file.close()
        if not self._http.is_closed:
            await self._http.aclose()

    # -- lifecycle of one key -----------------------------------------------------------------

    def _new_entry(self, key: str, spec: ProcessSpec) -> _Entry:
        entry = _Entry(
            key=key,
            spec=spec,
            lines=deque(maxlen=self._max_log_lines),
            file=LogFile(self.log_path(key), self._log_file_max_bytes),
        )
        self._entries[key] = entry
        return entry

    def _start(self, entry: _Entry) -> None:
        """Check the spec, then start the key's supervising task (or fail for good)."""
        self._retire(entry)
        entry.reset_history()
        spec = entry.spec
        problem = spec_problem(spec)
        if problem is None and not spec.cwd.is_dir():
            problem = f"working directory {spec.cwd} does not exist"
        if problem is not None:
            self._fail(entry, "InvalidSpec", f"invalid process spec: {problem}")
            return
        env = self._environment(spec)
        program = resolve_program(spec.argv[0], path=env.get("PATH"), cwd=spec.cwd)
        if program is None:
            where = "on PATH" if os.sep not in spec.argv[0] else "(no such executable file)"
            self._fail(entry, "ProgramNotFound", f"{spec.argv[0]}: command not found {where}")
            return
        entry.phase = ProcessPhase.STARTING
        entry.ready = False
        entry.reason = None
        entry.message = None
        entry.task = asyncio.create_task(
            self._supervise(entry, program), name=f"process:{entry.key}"
        )
        self._publish(entry)

    async def _halt(self, entry: _Entry) -> None:
        """Cancel the key's task (its clean-up terminates the process) and wait for it."""
        task = entry.task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        self._retire(entry)
        entry.phase = ProcessPhase.STOPPED
        entry.reason = None
        entry.message = "stopped"
        entry.ready = False
        entry.pid = None
        entry.started_at = None
        self._publish(entry)

    @staticmethod
    def _retire(entry: _Entry) -> None:
        """Forget the key's finished task, logging how it failed if it did (a bug: the task
        handles every failure of the process itself)."""
        task, entry.task = entry.task, None
        if task is not None and task.done() and not task.cancelled():
            error = task.exception()
            if error is not None:
                log.error("process supervision failed", extra={"key": entry.key}, exc_info=error)

    def _fail(self, entry: _Entry, reason: str, message: str) -> None:
        entry.phase = ProcessPhase.FAILED
        entry.ready = False
        entry.pid = None
        entry.started_at = None
        entry.reason = reason
        entry.message = message
        log.warning(
            "process cannot start",
            extra={"key": entry.key, "reason": reason, "program": next(iter(entry.spec.argv), "")},
        )
        self._publish(entry)

    def _environment(self, spec: ProcessSpec) -> dict[str, str]:
        parent = os.environ if self._parent_env is None else self._parent_env
        env = child_environment(spec.env, parent=parent, inherit=self._inherit_env)
        if self._run_as is not None:
            # The server's HOME is root's; the engine's caches go to its own directory.
            env["HOME"] = spec.env.get("HOME", str(spec.cwd))
            env["USER"] = env["LOGNAME"] = self._run_as.name
        return env

    def _identity(self, spec: ProcessSpec) -> dict[str, Any]:
        """``create_subprocess_exec`` arguments that drop to the engine user (and hand it the
        working directory); none when children run as this process's user."""
        user = self._run_as
        if user is None:
            return {}
        os.chown(spec.cwd, user.uid, user.gid)
        return {"user": user.uid, "group": user.gid, "extra_groups": []}

    def _publish(self, entry: _Entry) -> None:
        """Call ``on_change`` when the status differs from the last one announced."""
        current = entry.status()
        if current == entry.published:
            return
        entry.published = current
        try:
            self._on_change(entry.key)
        except Exception:
            log.exception("process change callback failed", extra={"key": entry.key})

    # -- the supervising task -----------------------------------------------------------------

    async def _supervise(self, entry: _Entry, program: str) -> None:
        """Run, wait for the exit, back off, run again; ends only on a permanent failure or
        cancellation."""
        await self._stop_orphan(entry)
        while True:
            try:
                ended = await self._run_once(entry, program)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("process supervision error; restarting", extra={"key": entry.key})
                ended = _Exit(None, "Error", "supervisor error (see the server log)", None, 0.0)
            if ended is None:
                return
            await asyncio.sleep(self._after_exit(entry, ended))
            entry.restarts += 1

    async def _run_once(self, entry: _Entry, program: str) -> _Exit | None:
        """One process lifetime, from spawn to exit (or to its termination on cancellation,
        whose clean-up runs here). None: it cannot start, and the key is FAILED."""
        spec = entry.spec
        if port_in_use(spec.port):
            text = f"port {spec.port} on 127.0.0.1 is already in use by another process"
            return _Exit(None, "PortInUse", text, None, 0.0)
        loop = asyncio.get_running_loop()
        try:
            proc = await asyncio.create_subprocess_exec(
                program,
                *spec.argv[1:],
                cwd=spec.cwd,
                env=self._environment(spec),
                **self._identity(spec),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            text = f"{spec.argv[0]}: cannot start: {exc.strerror or exc}"
            if exc.errno in _TRANSIENT_SPAWN_ERRORS:
                return _Exit(None, "StartError", text, None, 0.0)
            self._fail(entry, "StartError", text)
            return None
        run = _Run(started=loop.time())
        self._record_pid(entry.key, proc.pid)
        entry.phase = ProcessPhase.STARTING
        entry.ready = False
        entry.pid = proc.pid
        entry.started_at = datetime.now(UTC)
        entry.reason = None
        entry.message = (
            None
            if entry.last_exit_text is None
            else f"restart {entry.restarts} after: {entry.last_exit_text}"
        )
        self._publish(entry)
        log.info(
            "process started",
            extra={
                "key": entry.key,
                "pid": proc.pid,
                "program": spec.argv[0],
                "restarts": entry.restarts,
            },
        )
        if proc.stdout is None or proc.stderr is None:  # pragma: no cover  PIPE was asked
            raise RuntimeError("subprocess pipes missing")
        pumps = [
            asyncio.create_task(
                self._pump(entry, run, proc.stdout, is_stderr=False),
                name=f"process:{entry.key}:stdout",
            ),
            asyncio.create_task(
                self._pump(entry, run, proc.stderr, is_stderr=True),
                name=f"process:{entry.key}:stderr",
            ),
        ]
        waiter = asyncio.create_task(proc.wait(), name=f"process:{entry.key}:wait")
        prober = asyncio.create_task(self._probe(entry, run), name=f"process:{entry.key}:health")
        timed_out = False
        try:
            done, _ = await asyncio.wait({waiter, prober}, return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                timed_out = True
                prober.result()  # a prober that crashed is a bug: let it be seen
                log.warning(
                    "process not ready by its startup timeout; restarting",
                    extra={"key": entry.key, "pid": proc.pid},
                )
        finally:
            # On an exit, a timeout and a cancellation alike: the process (and its group)
            # never outlives its task, nor do the sub-tasks.
            try:
                await _cancel_all([prober])
                await self._terminate(entry, proc, waiter, grace=spec.stop_grace_seconds)
                await self._drain(pumps)
            finally:
                for task in (prober, waiter, *pumps):
                    task.cancel()
                await _cancel_all([waiter])
                if proc.returncode is not None:
                    self._pid_path(entry.key).unlink(missing_ok=True)
        return self._exit_report(spec, run, proc.returncode, timed_out=timed_out, now=loop.time())

    # -- pid records (orphans of an earlier server) ------------------------------------------

    def _pid_path(self, key: str) -> Path:
        return self._log_dir / f"{key}.pid"

    def _record_pid(self, key: str, pid: int) -> None:
        """Note a running child and its start time, for a later server to find."""
        started = live_start_time(pid)
        if started is None:
            return
        path = self._pid_path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(f"{pid} {started}\n")
        except OSError:
            log.warning("cannot record the process id", extra={"key": key}, exc_info=True)

    def _recorded_orphan(self, key: str) -> tuple[int, str] | None:
        """The recorded process of ``key`` if it still runs (same pid, same start time)."""
        path = self._pid_path(key)
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

    async def _stop_orphan(self, entry: _Entry) -> None:
        """Stop a process a previous server left running for this key: SIGTERM to its
        group, SIGKILL after the spec's grace, then wait (5 s at most) until it is gone."""
        found = self._recorded_orphan(entry.key)
        if found is None:
            return
        pid, started = found
        log.warning(
            "stopping a process left running by an earlier server",
            extra={"key": entry.key, "pid": pid},
        )
        _signal_group(pid, signal.SIGTERM)
        await _until_gone(pid, started, seconds=entry.spec.stop_grace_seconds)
        _signal_group(pid, signal.SIGKILL)
        await _until_gone(pid, started, seconds=5.0)
        self._pid_path(entry.key).unlink(missing_ok=True)

    def _exit_report(
        self, spec: ProcessSpec, run: _Run, code: int | None, *, timed_out: bool, now: float
    ) -> _Exit:
        ready_for = 0.0 if run.first_ready is None else now - run.first_ready
        if timed_out:
            problem = run.last_probe_problem
            why = f" ({spec.health_path}: {problem})" if problem else ""
            text = f"not ready within {spec.startup_timeout_seconds:g} s{why}"
            return _Exit(code, "StartupTimeout", text, None, ready_for)
        text = "exited" if code is None else describe_exit(code)
        reason = "Completed" if code == 0 else "Error"
        return _Exit(code, reason, text, run.last_line(), ready_for)

    async def _terminate(
        self,
        entry: _Entry,
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
                _signal_group(proc.pid, signal.SIGTERM)
                await asyncio.wait({waiter}, timeout=grace)
                if not waiter.done():
                    log.warning(
                        "process ignored SIGTERM; killing it",
                        extra={"key": entry.key, "pid": proc.pid, "grace": grace},
                    )
        finally:
            _signal_group(proc.pid, signal.SIGKILL)
        await asyncio.wait({waiter})

    async def _drain(self, pumps: list[asyncio.Task[None]]) -> None:
        """Let the pumps read a dead process's last output, for ``drain_seconds`` at most."""
        pending = {pump for pump in pumps if not pump.done()}
        if pending:
            await asyncio.wait(pending, timeout=self._drain_seconds)
        await _cancel_all(pumps)

    def _after_exit(self, entry: _Entry, ended: _Exit) -> float:
        """Record an exit; returns the backoff before the next start."""
        now = asyncio.get_running_loop().time()
        if ended.ready_for >= self._backoff_reset_after:
            entry.failures = 0
            entry.exits.clear()
            entry.unready_exits = 0
        entry.failures += 1
        entry.exits.append(now)
        while entry.exits and now - entry.exits[0] > self._crash_loop_window:
            entry.exits.popleft()
        entry.unready_exits = 0 if ended.ready_for > 0 else entry.unready_exits + 1
        delay = backoff_delay(
            entry.failures,
            base=self._backoff_base,
            cap=self._backoff_max,
            jitter=random.random(),  # noqa: S311  jitter, not secrecy
        )
        count = ""
        if len(entry.exits) >= self._crash_loop_after:
            count = f" ({len(entry.exits)} times in {self._crash_loop_window:g} s)"
        elif entry.unready_exits >= self._crash_loop_after:
            count = f" ({entry.unready_exits} times in a row without becoming ready)"
        crash_loop = bool(count)
        message = f"{ended.text}{count}; restarting in {delay:.1f} s"
        entry.phase = ProcessPhase.CRASH_LOOP if crash_loop else ProcessPhase.BACKOFF
        entry.reason = "CrashLoopBackOff" if crash_loop else ended.reason
        entry.message = message if ended.line is None else f"{message}: {ended.line}"
        entry.ready = False
        entry.pid = None
        entry.started_at = None
        if ended.code is not None:  # a start that failed before a process existed
            entry.last_exit_code = ended.code
        entry.last_exit_text = ended.summary()
        self._publish(entry)
        log.warning(
            "process ended; restarting after a backoff",
            extra={
                "key": entry.key,
                "exit_code": ended.code,
                "reason": ended.reason,
                "restarts": entry.restarts,
                "retry_in": round(delay, 2),
                "crash_loop": crash_loop,
            },
        )
        return delay

    # -- output and health --------------------------------------------------------------------

    async def _pump(
        self, entry: _Entry, run: _Run, stream: asyncio.StreamReader, *, is_stderr: bool
    ) -> None:
        """Read one pipe until EOF, splitting it into lines (overlong ones are cut)."""
        pending = b""
        while chunk := await stream.read(_READ_CHUNK):
            pending += chunk
            *complete, pending = pending.split(b"\n")
            if len(pending) > self._max_line_bytes:
                complete.append(pending[: self._max_line_bytes])
                pending = b""
            self._record(entry, run, complete, is_stderr=is_stderr)
        if pending:
            self._record(entry, run, [pending], is_stderr=is_stderr)

    def _record(self, entry: _Entry, run: _Run, raw: list[bytes], *, is_stderr: bool) -> None:
        lines = [_display_line(line[: self._max_line_bytes]) for line in raw]
        if not lines:
            return
        entry.lines.extend(lines)
        entry.file.write(lines)
        last = next((line for line in reversed(lines) if line.strip()), None)
        if last is None:
            return
        if is_stderr:
            run.last_stderr = last.strip()
        else:
            run.last_stdout = last.strip()

    async def _probe(self, entry: _Entry, run: _Run) -> None:
        """Poll the health endpoint until cancelled; returns when the startup timeout passes
        without readiness."""
        spec = entry.spec
        url = f"http://127.0.0.1:{spec.port}{spec.health_path}"
        loop = asyncio.get_running_loop()
        deadline = run.started + spec.startup_timeout_seconds
        await asyncio.sleep(spec.initial_delay_seconds)
        failures = 0
        while True:
            problem = await self._check(url)
            if problem is None:
                failures = 0
                if not entry.ready:
                    if run.first_ready is None:
                        run.first_ready = loop.time()
                        log.info("process ready", extra={"key": entry.key, "pid": entry.pid})
                    entry.phase = ProcessPhase.RUNNING
                    entry.ready = True
                    entry.reason = None
                    entry.message = None
                    self._publish(entry)
            else:
                failures += 1
                run.last_probe_problem = problem
                if not entry.ready or failures >= self._ready_failure_threshold:
                    if entry.ready:
                        log.warning(
                            "process no longer ready",
                            extra={"key": entry.key, "pid": entry.pid, "failures": failures},
                        )
                    entry.ready = False
                    entry.reason = "NotReady"
                    entry.message = f"health check {spec.health_path}: {problem}"
                    self._publish(entry)
            if run.first_ready is None and loop.time() >= deadline:
                return
            await asyncio.sleep(self._health_interval)

    async def _check(self, url: str) -> str | None:
        """None when ``url`` answers 2xx, else a short stable description of why not."""
        try:
            response = await self._http.get(url)
        except httpx.TimeoutException:
            return "no answer in time"
        except httpx.ConnectError:
            return "cannot connect"
        except httpx.HTTPError as exc:
            return type(exc).__name__
        if response.is_success:
            return None
        return f"HTTP {response.status_code}"


async def _until_gone(pid: int, started: str, *, seconds: float) -> None:
    """Poll until ``pid`` (started at ``started``) is gone, for ``seconds`` at most. An orphan
    is not our child: there is nothing to wait on but its ``/proc`` entry."""
    for _ in range(max(1, round(seconds / 0.05))):
        if live_start_time(pid) != started:
            return
        await asyncio.sleep(0.05)


async def _cancel_all(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Cancel sub-tasks and wait for them, without swallowing our own cancellation."""
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.error("process sub-task failed", exc_info=task.exception())
