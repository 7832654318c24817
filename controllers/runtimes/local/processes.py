"""Supervised engine subprocesses for the local runtime (docs/architecture.md decision 3).

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
- **Permanent failures** (an invalid spec, a program that is not on PATH, an engine user that
  may not reach the program, working directory or weights, an exec error) end in
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
- **Changes are announced** by calling ``on_change(key)`` whenever :meth:`status` would answer
  something different; the inference controller enqueues the key. The callback must be cheap;
  its exceptions are logged and dropped.

What a process is (spec, phases, the environment allow-list, the engine user) lives in
:mod:`controllers.runtimes.local.specs`; the supervisor's per-key records, pid records and
signal helpers in :mod:`controllers.runtimes.local.supervision`; log files in
:mod:`controllers.runtimes.local.logfiles`. Restart pauses follow the one backoff policy,
:class:`controllers.backoff.Backoff`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from controllers.backoff import Backoff
from controllers.runtimes.local.logfiles import LogFile
from controllers.runtimes.local.specs import (
    DEFAULT_INHERITED_ENV,
    INHERITED_ENV_PREFIXES,
    EngineUser,
    EngineUserError,
    ProcessPhase,
    ProcessSpec,
    ProcessStatus,
    child_environment,
    describe_exit,
    engine_user,
    engine_user_problem,
    live_start_time,
    port_in_use,
    protect_server_process,
    resolve_program,
    spec_problem,
)
from controllers.runtimes.local.supervision import (
    Entry,
    Exit,
    PidRecords,
    Run,
    cancel_all,
    display_line,
    exit_report,
    health_check,
    terminate,
)

__all__ = [
    "DEFAULT_INHERITED_ENV",
    "INHERITED_ENV_PREFIXES",
    "EngineUser",
    "EngineUserError",
    "ProcessPhase",
    "ProcessSpec",
    "ProcessStatus",
    "ProcessSupervisor",
    "child_environment",
    "describe_exit",
    "engine_user",
    "live_start_time",
    "port_in_use",
    "protect_server_process",
    "resolve_program",
    "spec_problem",
]

log = logging.getLogger(__name__)

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TRANSIENT_SPAWN_ERRORS = frozenset({errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE})
_READ_CHUNK = 64 * 1024


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
        self._pids = PidRecords(log_dir)
        self._on_change = on_change
        self._max_log_lines = max_log_lines
        self._log_file_max_bytes = log_file_max_bytes
        self._max_line_bytes = max_line_bytes
        self._backoff = Backoff(base=backoff_base, cap=backoff_max, spread=0.25)
        self._backoff_reset_after = backoff_reset_after
        self._crash_loop_after = crash_loop_after
        self._crash_loop_window = crash_loop_window
        self._health_interval = health_interval
        self._ready_failure_threshold = ready_failure_threshold
        self._drain_seconds = drain_seconds
        self._inherit_env = frozenset(inherit_env)
        self._parent_env = parent_env
        self._run_as = run_as
        self._entries: dict[str, Entry] = {}
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
            self._pids.path(key).unlink(missing_ok=True)

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

    def _new_entry(self, key: str, spec: ProcessSpec) -> Entry:
        entry = Entry(
            key=key,
            spec=spec,
            lines=deque(maxlen=self._max_log_lines),
            file=LogFile(self.log_path(key), self._log_file_max_bytes),
        )
        self._entries[key] = entry
        return entry

    def _start(self, entry: Entry) -> None:
        """Check the spec, then start the key's supervising task (or fail for good)."""
        entry.retire()
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
        denied = None if self._run_as is None else engine_user_problem(spec, program, self._run_as)
        if denied is not None:
            self._fail(entry, "PermissionDenied", denied)
            return
        entry.phase = ProcessPhase.STARTING
        entry.ready = False
        entry.reason = None
        entry.message = None
        entry.task = asyncio.create_task(
            self._supervise(entry, program), name=f"process:{entry.key}"
        )
        self._publish(entry)

    async def _halt(self, entry: Entry) -> None:
        """Cancel the key's task (its clean-up terminates the process) and wait for it."""
        task = entry.task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        entry.retire()
        entry.settle(ProcessPhase.STOPPED, None, "stopped")
        self._publish(entry)

    def _fail(self, entry: Entry, reason: str, message: str) -> None:
        entry.settle(ProcessPhase.FAILED, reason, message)
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

    def _publish(self, entry: Entry) -> None:
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

    async def _supervise(self, entry: Entry, program: str) -> None:
        """Run, wait for the exit, back off, run again; ends only on a permanent failure or
        cancellation."""
        await self._pids.stop_orphan(entry.key, grace=entry.spec.stop_grace_seconds)
        while True:
            try:
                ended = await self._run_once(entry, program)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("process supervision error; restarting", extra={"key": entry.key})
                ended = Exit(None, "Error", "supervisor error (see the server log)", None, 0.0)
            if ended is None:
                return
            await asyncio.sleep(self._after_exit(entry, ended))
            entry.restarts += 1

    async def _run_once(self, entry: Entry, program: str) -> Exit | None:
        """One process lifetime, from spawn to exit (or to its termination on cancellation,
        whose clean-up runs here). None: it cannot start, and the key is FAILED."""
        spawned = await self._spawn(entry, program)
        if not isinstance(spawned, asyncio.subprocess.Process):
            return spawned
        proc, spec = spawned, entry.spec
        loop = asyncio.get_running_loop()
        run = Run(started=loop.time())
        self._announce(entry, proc)
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
                await cancel_all([prober])
                await terminate(entry.key, proc, waiter, grace=spec.stop_grace_seconds)
                await self._drain(pumps)
            finally:
                for task in (prober, waiter, *pumps):
                    task.cancel()
                await cancel_all([waiter])
                if proc.returncode is not None:
                    self._pids.path(entry.key).unlink(missing_ok=True)
        return exit_report(spec, run, proc.returncode, timed_out=timed_out, now=loop.time())

    async def _spawn(self, entry: Entry, program: str) -> asyncio.subprocess.Process | Exit | None:
        """Start the process; an Exit for a temporary refusal (the port is busy, EAGAIN), None
        for a permanent one (the key is FAILED: permission denied, exec format error)."""
        spec = entry.spec
        if port_in_use(spec.port):
            text = f"port {spec.port} on 127.0.0.1 is already in use by another process"
            return Exit(None, "PortInUse", text, None, 0.0)
        try:
            return await asyncio.create_subprocess_exec(
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
                return Exit(None, "StartError", text, None, 0.0)
            self._fail(entry, "StartError", text)
            return None

    def _announce(self, entry: Entry, proc: asyncio.subprocess.Process) -> None:
        """A process started: record its pid, publish STARTING."""
        self._pids.record(entry.key, proc.pid)
        entry.started(proc.pid)
        self._publish(entry)
        log.info(
            "process started",
            extra={
                "key": entry.key,
                "pid": proc.pid,
                "program": entry.spec.argv[0],
                "restarts": entry.restarts,
            },
        )

    async def _drain(self, pumps: list[asyncio.Task[None]]) -> None:
        """Let the pumps read a dead process's last output, for ``drain_seconds`` at most."""
        pending = {pump for pump in pumps if not pump.done()}
        if pending:
            await asyncio.wait(pending, timeout=self._drain_seconds)
        await cancel_all(pumps)

    def _after_exit(self, entry: Entry, ended: Exit) -> float:
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
        delay = self._backoff.delay(entry.failures)
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
        self, entry: Entry, run: Run, stream: asyncio.StreamReader, *, is_stderr: bool
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

    def _record(self, entry: Entry, run: Run, raw: list[bytes], *, is_stderr: bool) -> None:
        lines = [display_line(line[: self._max_line_bytes]) for line in raw]
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

    async def _probe(self, entry: Entry, run: Run) -> None:
        """Poll the health endpoint until cancelled; returns when the startup timeout passes
        without readiness."""
        spec = entry.spec
        url = f"http://127.0.0.1:{spec.port}{spec.health_path}"
        loop = asyncio.get_running_loop()
        deadline = run.started + spec.startup_timeout_seconds
        await asyncio.sleep(spec.initial_delay_seconds)
        failures = 0
        while True:
            problem = await health_check(self._http, url)
            if problem is None:
                failures = 0
                if not entry.ready:
                    if run.first_ready is None:
                        run.first_ready = loop.time()
                        log.info("process ready", extra={"key": entry.key, "pid": entry.pid})
                    entry.became_ready()
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
