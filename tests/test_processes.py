"""The process supervisor against real subprocesses: small Python scripts run with
``sys.executable`` (HTTP servers on loopback ports, scripts that crash, ignore SIGTERM or fork
a grandchild). Backoffs and probe intervals are shrunk through the constructor; every wait
polls against a deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from controllers.backoff import Backoff
from controllers.runtimes.local.processes import (
    ProcessPhase,
    ProcessSpec,
    ProcessStatus,
    ProcessSupervisor,
    child_environment,
    describe_exit,
    live_start_time,
    port_in_use,
    spec_problem,
)
from modelplane.embedded import free_port

DEADLINE = 30.0

SERVER = """
import http.server, pathlib, sys
port, mode = int(sys.argv[1]), sys.argv[2]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if mode == "500":
            code = 500
        elif mode == "file":
            code = 200 if pathlib.Path("healthy").exists() else 503
        else:
            code = 200
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
print(f"listening on {port} mode {mode}")
print("a line on stderr", file=sys.stderr)
server.serve_forever()
"""

CRASH = """
import sys
print("starting up")
print("boom: config missing", file=sys.stderr)
sys.exit(1)
"""

SERVE_THEN_EXIT = """
import http.server, os, sys, threading, time
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
time.sleep(float(sys.argv[2]))
print("leaving", file=sys.stderr)
os._exit(3)
"""

GRANDPARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(f"grandchild {child.pid}")
time.sleep(600)
"""

STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ignoring SIGTERM")
time.sleep(600)
"""

ENVIRONMENT = """
import os, time
print("secret=" + ("present" if "MODELPLANE_SECRET_KEY" in os.environ else "absent"))
print("given=" + os.environ.get("GIVEN", ""))
print("path=" + ("present" if os.environ.get("PATH") else "absent"))
time.sleep(600)
"""

CHATTY = """
import sys, time
for i in range(400):
    print(f"line {i:03d} " + "x" * 40)
    if i % 40 == 39:
        time.sleep(0.05)  # several reads, so the file rotates between two of them
print("progress 1\\rprogress 2\\rprogress 3")
print("done")
time.sleep(600)
"""


class Recorder:
    """on_change: records each announced status (read back synchronously, as it was then)."""

    def __init__(self) -> None:
        self.supervisor: ProcessSupervisor | None = None
        self.seen: list[tuple[str, ProcessStatus]] = []
        self.fail = False

    def __call__(self, key: str) -> None:
        assert self.supervisor is not None
        status = self.supervisor.status(key)
        assert status is not None
        self.seen.append((key, status))
        if self.fail:
            raise RuntimeError("the callback broke")

    def phases(self, key: str) -> list[ProcessPhase]:
        return [status.phase for k, status in self.seen if k == key]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def make_supervisor(tmp_path: Path, recorder: Recorder, **overrides: object) -> ProcessSupervisor:
    options: dict[str, object] = {
        "backoff_base": 0.05,
        "backoff_max": 0.5,
        "health_interval": 0.05,
        "health_timeout": 1.0,
        "crash_loop_window": 60.0,
        **overrides,
    }
    supervisor = ProcessSupervisor(
        log_dir=tmp_path / "logs",
        on_change=recorder,
        **options,  # type: ignore[arg-type]
    )
    recorder.supervisor = supervisor
    return supervisor


@pytest.fixture
async def supervisor(tmp_path: Path, recorder: Recorder) -> AsyncIterator[ProcessSupervisor]:
    running = make_supervisor(tmp_path, recorder)
    try:
        yield running
    finally:
        await running.close()


def script(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    return path


def python_spec(path: Path, *args: str, port: int | None = None, **options: object) -> ProcessSpec:
    cwd = options.pop("cwd", path.parent)
    assert isinstance(cwd, Path)
    return ProcessSpec(
        argv=[sys.executable, str(path), *args],
        env=dict(options.pop("env", {})),  # type: ignore[call-overload]
        cwd=cwd,
        port=port if port is not None else free_port(),
        **options,  # type: ignore[arg-type]
    )


def server_spec(tmp_path: Path, mode: str = "ok", **options: object) -> ProcessSpec:
    port = free_port()
    return python_spec(script(tmp_path, "server", SERVER), str(port), mode, port=port, **options)


async def eventually(check: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def status_of(supervisor: ProcessSupervisor, key: str) -> ProcessStatus:
    status = supervisor.status(key)
    assert status is not None
    return status


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (killed, not yet reaped by whoever adopted it)
    counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def logged(supervisor: ProcessSupervisor, key: str, text: str) -> bool:
    return any(text in line for line in supervisor.logs(key, 10_000))


# -- pure helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "jitter", "expected"),
    [
        (1, 0.5, 1.0),
        (2, 0.5, 2.0),
        (3, 0.5, 4.0),
        (1, 0.0, 0.75),
        (1, 0.999999, 1.25),
        (20, 0.5, 300.0),
        (10_000, 0.0, 225.0),  # capped, then spread: the one backoff policy (controllers.backoff)
    ],
)
def test_backoff_delay(failures: int, jitter: float, expected: float) -> None:
    """The supervisor's restart pauses: the one backoff policy with a 25 % spread."""
    delay = Backoff(base=1.0, cap=300.0, spread=0.25).delay(failures, jitter=jitter)
    assert delay == pytest.approx(expected)


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0, "exited with code 0"),
        (1, "exited with code 1"),
        (-signal.SIGKILL, "killed by SIGKILL"),
        (-signal.SIGTERM, "killed by SIGTERM"),
        (-200, "killed by signal 200"),
    ],
)
def test_describe_exit(code: int, text: str) -> None:
    assert describe_exit(code) == text


def test_child_environment_is_an_allow_list_plus_the_spec() -> None:
    parent = {
        "PATH": "/usr/bin",
        "HOME": "/home/mp",
        "LC_ALL": "C.UTF-8",
        "MODELPLANE_SECRET_KEY": "server-secret",
        "MONGODB_URI": "mongodb://user:pw@db/",
        "HTTPS_PROXY": "http://user:pw@proxy:3128",
    }
    env = child_environment({"HF_TOKEN": "hf_x", "PATH": "/opt/bin"}, parent=parent)
    assert env == {
        "PATH": "/opt/bin",
        "HOME": "/home/mp",
        "LC_ALL": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "HF_TOKEN": "hf_x",
    }
    with_proxy = child_environment({}, parent=parent, inherit={"HTTPS_PROXY"})
    assert with_proxy["HTTPS_PROXY"] == parent["HTTPS_PROXY"]
    assert "PATH" not in with_proxy


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({}, None),
        ({"argv": []}, "argv is empty"),
        ({"argv": [""]}, "argv is empty"),
        ({"argv": ["x", "a\0b"]}, "argv holds a NUL character"),
        ({"env": {"A=B": "1"}}, "an environment variable name is empty or holds '=' or NUL"),
        ({"port": 0}, "port 0 is outside 1-65535"),
        ({"port": 70000}, "port 70000 is outside 1-65535"),
        ({"health_path": "health"}, "health path 'health' must start with '/' and hold no spaces"),
        ({"startup_timeout_seconds": 0}, "the startup timeout must be positive"),
        ({"stop_grace_seconds": -1}, "delays must not be negative"),
    ],
)
def test_spec_problem(changes: dict[str, object], problem: str | None) -> None:
    values: dict[str, object] = {"argv": ["vllm"], "env": {}, "cwd": Path("/"), "port": 8000}
    values.update(changes)
    assert spec_problem(ProcessSpec(**values)) == problem  # type: ignore[arg-type]


def test_spec_repr_hides_arguments_and_environment_values() -> None:
    spec = ProcessSpec(
        argv=["litellm", "--api-key", "sk-very-secret"],
        env={"OPENAI_API_KEY": "sk-other-secret"},
        cwd=Path("/srv"),
        port=4000,
    )
    text = repr(spec)
    assert "secret" not in text
    assert "litellm" in text
    assert "OPENAI_API_KEY" in text


# -- real processes ---------------------------------------------------------------------------


async def test_healthy_server_runs_ready_with_logs(
    supervisor: ProcessSupervisor, recorder: Recorder, tmp_path: Path
) -> None:
    spec = server_spec(tmp_path)
    first = await supervisor.ensure("engine-a", spec)
    assert first.phase is ProcessPhase.STARTING
    await eventually(lambda: status_of(supervisor, "engine-a").ready, "readiness")
    status = status_of(supervisor, "engine-a")
    assert status.phase is ProcessPhase.RUNNING
    assert status.pid is not None
    assert alive(status.pid)
    assert status.restarts == 0
    assert status.reason is None
    assert status.started_at is not None
    assert supervisor.keys() == ["engine-a"]
    await eventually(lambda: logged(supervisor, "engine-a", "a line on stderr"), "stderr line")
    assert logged(supervisor, "engine-a", f"listening on {spec.port} mode ok")
    assert supervisor.logs("engine-a", 1) == supervisor.logs("engine-a", 100)[-1:]
    assert supervisor.logs("engine-a", 0) == []
    assert supervisor.logs("nobody", 10) == []
    assert supervisor.status("nobody") is None
    log_file = supervisor.log_path("engine-a")
    assert "a line on stderr" in log_file.read_text()
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600

    # idempotent: the same spec again leaves the process alone
    again = await supervisor.ensure("engine-a", spec)
    assert again.pid == status.pid
    assert again.ready
    phases = recorder.phases("engine-a")
    assert phases[0] is ProcessPhase.STARTING
    assert phases[-1] is ProcessPhase.RUNNING


async def test_crashing_program_backs_off_then_crash_loops(
    supervisor: ProcessSupervisor, recorder: Recorder, tmp_path: Path
) -> None:
    spec = python_spec(script(tmp_path, "crash", CRASH))
    await supervisor.ensure("crasher", spec)
    await eventually(lambda: ProcessPhase.CRASH_LOOP in recorder.phases("crasher"), "a crash loop")
    phases = recorder.phases("crasher")
    assert phases.index(ProcessPhase.BACKOFF) < phases.index(ProcessPhase.CRASH_LOOP)
    looping = next(s for k, s in recorder.seen if s.phase is ProcessPhase.CRASH_LOOP)
    assert looping.reason == "CrashLoopBackOff"
    assert looping.restarts >= 2
    assert looping.last_exit_code == 1
    assert looping.pid is None
    assert looping.message is not None
    assert looping.message.startswith("exited with code 1 (3 times in 60 s); restarting in ")
    assert looping.message.endswith(": boom: config missing")
    first_backoff = next(s for k, s in recorder.seen if s.phase is ProcessPhase.BACKOFF)
    assert first_backoff.reason == "Error"
    assert first_backoff.message is not None
    assert first_backoff.message.startswith("exited with code 1; restarting in ")
    restarted = next(s for k, s in recorder.seen if s.phase is ProcessPhase.STARTING and s.pid)
    assert restarted.restarts == 0  # the first start
    again = next(s for k, s in recorder.seen if s.restarts == 1 and s.pid)
    assert again.phase is ProcessPhase.STARTING
    assert again.message == "restart 1 after: exited with code 1: boom: config missing"
    # it keeps retrying, as Kubernetes does
    restarts = looping.restarts
    await eventually(lambda: status_of(supervisor, "crasher").restarts > restarts, "a retry")
    assert sum(1 for line in supervisor.logs("crasher", 1000) if line == "starting up") >= 3


async def test_missing_program_fails_without_retrying(
    supervisor: ProcessSupervisor, recorder: Recorder, tmp_path: Path
) -> None:
    spec = ProcessSpec(argv=["vllm-not-installed-here", "serve"], env={}, cwd=tmp_path, port=1)
    status = await supervisor.ensure("missing", spec)
    assert status.phase is ProcessPhase.FAILED
    assert status.reason == "ProgramNotFound"
    assert status.message == "vllm-not-installed-here: command not found on PATH"
    assert status.pid is None
    assert not status.ready
    # a reconcile prompted by the failure ensures again: nothing is retried, nothing announced
    again = await supervisor.ensure("missing", spec)
    assert again == status
    await asyncio.sleep(0.2)
    assert status_of(supervisor, "missing") == status
    assert len(recorder.seen) == 1
    # stop then ensure tries again
    await supervisor.stop("missing")
    assert status_of(supervisor, "missing").phase is ProcessPhase.STOPPED
    assert (await supervisor.ensure("missing", spec)).reason == "ProgramNotFound"

    relative = ProcessSpec(argv=["./bin/engine"], env={}, cwd=tmp_path, port=1)
    failed = await supervisor.ensure("relative", relative)
    assert failed.reason == "ProgramNotFound"
    assert failed.message == "./bin/engine: command not found (no such executable file)"


async def test_invalid_spec_fails(supervisor: ProcessSupervisor, tmp_path: Path) -> None:
    spec = ProcessSpec(argv=[sys.executable], env={}, cwd=tmp_path / "absent", port=8000)
    status = await supervisor.ensure("bad", spec)
    assert status.phase is ProcessPhase.FAILED
    assert status.reason == "InvalidSpec"
    assert status.message == f"invalid process spec: working directory {spec.cwd} does not exist"
    with pytest.raises(ValueError, match="process key"):
        await supervisor.ensure("../escape", spec)


async def test_unhealthy_server_is_not_ready(supervisor: ProcessSupervisor, tmp_path: Path) -> None:
    await supervisor.ensure("sick", server_spec(tmp_path, "500"))
    await eventually(
        lambda: status_of(supervisor, "sick").message == "health check /health: HTTP 500",
        "a failed health check",
    )
    status = status_of(supervisor, "sick")
    assert status.phase is ProcessPhase.STARTING
    assert not status.ready
    assert status.reason == "NotReady"
    assert status.pid is not None
    assert alive(status.pid)


async def test_readiness_follows_the_health_check(
    supervisor: ProcessSupervisor, recorder: Recorder, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    await supervisor.ensure("flappy", server_spec(tmp_path, "file", cwd=work))
    await eventually(
        lambda: status_of(supervisor, "flappy").message == "health check /health: HTTP 503",
        "a failed health check",
    )
    (work / "healthy").touch()
    await eventually(lambda: status_of(supervisor, "flappy").ready, "readiness")
    (work / "healthy").unlink()
    await eventually(lambda: not status_of(supervisor, "flappy").ready, "readiness lost")
    status = status_of(supervisor, "flappy")
    assert status.phase is ProcessPhase.RUNNING
    assert status.reason == "NotReady"
    assert status.restarts == 0
    readiness = [s.ready for k, s in recorder.seen]
    assert readiness.count(True) == 1


async def test_startup_timeout_restarts(
    supervisor: ProcessSupervisor, recorder: Recorder, tmp_path: Path
) -> None:
    spec = server_spec(tmp_path, "500", startup_timeout_seconds=1.0, stop_grace_seconds=2.0)
    await supervisor.ensure("slow", spec)
    await eventually(
        lambda: any(s.reason == "StartupTimeout" for _, s in recorder.seen), "a startup timeout"
    )
    timed_out = next(s for _, s in recorder.seen if s.reason == "StartupTimeout")
    assert timed_out.phase is ProcessPhase.BACKOFF
    assert timed_out.last_exit_code == -signal.SIGTERM
    assert timed_out.message is not None
    assert timed_out.message.startswith("not ready within 1 s (/health: HTTP 500); restarting")
    await eventually(lambda: status_of(supervisor, "slow").restarts >= 1, "a restart")


async def test_port_in_use_waits_for_the_port(
    supervisor: ProcessSupervisor, recorder: Recorder, tmp_path: Path
) -> None:
    spec = server_spec(tmp_path)
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.bind(("127.0.0.1", spec.port))
    squatter.listen()
    try:
        await supervisor.ensure("squatted", spec)
        await eventually(
            lambda: any(s.reason == "PortInUse" for _, s in recorder.seen), "the port check"
        )
        blocked = next(s for _, s in recorder.seen if s.reason == "PortInUse")
        assert blocked.message is not None
        assert blocked.message.startswith(
            f"port {spec.port} on 127.0.0.1 is already in use by another process"
        )
    finally:
        squatter.close()
    await eventually(lambda: status_of(supervisor, "squatted").ready, "readiness once free")


async def test_ready_run_resets_backoff(tmp_path: Path, recorder: Recorder) -> None:
    supervisor = make_supervisor(tmp_path, recorder, backoff_reset_after=0.2, crash_loop_after=2)
    try:
        port = free_port()
        spec = python_spec(script(tmp_path, "brief", SERVE_THEN_EXIT), str(port), "1.0", port=port)
        await supervisor.ensure("brief", spec)
        await eventually(lambda: status_of(supervisor, "brief").restarts >= 3, "three restarts")
        phases = recorder.phases("brief")
        assert ProcessPhase.CRASH_LOOP not in phases
        assert phases.count(ProcessPhase.RUNNING) >= 3
        exits = [s for _, s in recorder.seen if s.phase is ProcessPhase.BACKOFF]
        assert all(s.last_exit_code == 3 for s in exits)
        assert all(s.message and s.message.endswith(": leaving") for s in exits)
    finally:
        await supervisor.close()


async def test_stop_kills_the_process_group(
    supervisor: ProcessSupervisor, recorder: Recorder, tmp_path: Path
) -> None:
    await supervisor.ensure("family", python_spec(script(tmp_path, "family", GRANDPARENT)))
    await eventually(lambda: logged(supervisor, "family", "grandchild "), "the grandchild's pid")
    line = next(x for x in supervisor.logs("family", 100) if x.startswith("grandchild "))
    grandchild = int(line.split()[1])
    parent = status_of(supervisor, "family").pid
    assert parent is not None
    assert alive(parent)
    assert alive(grandchild)
    pid_file = tmp_path / "logs" / "family.pid"
    assert pid_file.read_text().split()[0] == str(parent)
    await supervisor.stop("family")
    assert not alive(parent)
    assert not pid_file.exists()
    await eventually(lambda: not alive(grandchild), "the grandchild's end", timeout=5)
    status = status_of(supervisor, "family")
    assert status.phase is ProcessPhase.STOPPED
    assert status.pid is None
    assert status.message == "stopped"
    assert recorder.phases("family")[-1] is ProcessPhase.STOPPED
    assert logged(supervisor, "family", "grandchild ")  # logs outlive the process
    await supervisor.stop("family")  # idempotent
    await supervisor.stop("never-started")


async def test_stop_kills_a_process_ignoring_sigterm(
    supervisor: ProcessSupervisor, tmp_path: Path
) -> None:
    spec = python_spec(script(tmp_path, "stubborn", STUBBORN), stop_grace_seconds=0.3)
    await supervisor.ensure("stubborn", spec)
    await eventually(lambda: logged(supervisor, "stubborn", "ignoring SIGTERM"), "the handler")
    pid = status_of(supervisor, "stubborn").pid
    assert pid is not None
    started = time.monotonic()
    await supervisor.stop("stubborn")
    assert not alive(pid)
    assert time.monotonic() - started < 5


async def test_spec_change_restarts_with_the_new_spec(
    supervisor: ProcessSupervisor, tmp_path: Path
) -> None:
    first = server_spec(tmp_path)
    await supervisor.ensure("engine", first)
    await eventually(lambda: status_of(supervisor, "engine").ready, "readiness")
    old_pid = status_of(supervisor, "engine").pid
    assert old_pid is not None
    second = server_spec(tmp_path, "file")
    (tmp_path / "healthy").touch()
    restarted = await supervisor.ensure("engine", second)
    assert restarted.phase is ProcessPhase.STARTING
    assert not alive(old_pid)
    await eventually(lambda: status_of(supervisor, "engine").ready, "readiness of the new spec")
    status = status_of(supervisor, "engine")
    assert status.pid not in (None, old_pid)
    assert status.restarts == 0
    assert logged(supervisor, "engine", f"listening on {second.port} mode file")
    assert logged(supervisor, "engine", f"listening on {first.port} mode ok")


async def test_close_stops_everything(tmp_path: Path, recorder: Recorder) -> None:
    supervisor = make_supervisor(tmp_path, recorder)
    try:
        await supervisor.ensure("one", server_spec(tmp_path))
        stubborn = python_spec(script(tmp_path, "stubborn", STUBBORN), stop_grace_seconds=1.0)
        await supervisor.ensure("two", stubborn)
        await eventually(
            lambda: all(status_of(supervisor, k).pid is not None for k in ("one", "two")),
            "both processes",
        )
        pids = [status_of(supervisor, k).pid for k in ("one", "two")]
        await eventually(lambda: logged(supervisor, "two", "ignoring SIGTERM"), "the handler")
    finally:
        started = time.monotonic()
        await supervisor.close()
    assert time.monotonic() - started < 6  # one grace period, not a sum
    assert all(pid is not None and not alive(pid) for pid in pids)
    assert all(status_of(supervisor, k).phase is ProcessPhase.STOPPED for k in ("one", "two"))
    with pytest.raises(RuntimeError, match="closed"):
        await supervisor.ensure("three", server_spec(tmp_path))
    await supervisor.close()  # idempotent


async def test_child_sees_only_the_allow_listed_environment(
    supervisor: ProcessSupervisor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLANE_SECRET_KEY", "server-only-secret-value")
    spec = python_spec(script(tmp_path, "env", ENVIRONMENT), env={"GIVEN": "yes"})
    await supervisor.ensure("env", spec)
    await eventually(lambda: logged(supervisor, "env", "path="), "the report")
    assert supervisor.logs("env", 3) == ["secret=absent", "given=yes", "path=present"]


async def test_logs_are_bounded_in_memory_and_on_disk(tmp_path: Path, recorder: Recorder) -> None:
    supervisor = make_supervisor(tmp_path, recorder, max_log_lines=50, log_file_max_bytes=4000)
    try:
        await supervisor.ensure("chatty", python_spec(script(tmp_path, "chatty", CHATTY)))
        await eventually(lambda: logged(supervisor, "chatty", "done"), "the last line")
        lines = supervisor.logs("chatty", 1000)
        assert len(lines) == 50
        assert lines[-2:] == ["progress 3", "done"]
        assert lines[-3].startswith("line 399 ")
        path = supervisor.log_path("chatty")
        rotated = path.with_name(path.name + ".1")
        assert rotated.exists()
        assert path.stat().st_size <= 4000 + 64 * 1024
        assert rotated.stat().st_size <= 4000 + 64 * 1024
        assert path.read_text().endswith("progress 3\ndone\n")
    finally:
        await supervisor.close()
    await supervisor.remove("chatty")
    assert supervisor.status("chatty") is None
    assert supervisor.keys() == []
    assert not path.exists()
    assert not rotated.exists()


async def test_a_failing_callback_does_not_stop_supervision(
    supervisor: ProcessSupervisor, recorder: Recorder, tmp_path: Path
) -> None:
    recorder.fail = True
    await supervisor.ensure("engine", server_spec(tmp_path))
    await eventually(lambda: status_of(supervisor, "engine").ready, "readiness")
    assert len(recorder.seen) >= 2


async def test_an_orphan_of_an_earlier_server_is_stopped_first(
    supervisor: ProcessSupervisor, tmp_path: Path
) -> None:
    spec = server_spec(tmp_path)
    orphan = subprocess.Popen(
        spec.argv,
        cwd=spec.cwd,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await eventually(lambda: port_in_use(spec.port), "the orphan listening")
        started = live_start_time(orphan.pid)
        assert started is not None
        (tmp_path / "logs").mkdir()
        (tmp_path / "logs" / "engine.pid").write_text(f"{orphan.pid} {started}\n")
        await supervisor.ensure("engine", spec)
        await eventually(lambda: orphan.poll() is not None, "the orphan's end")
        assert orphan.returncode == -signal.SIGTERM
        await eventually(lambda: status_of(supervisor, "engine").ready, "readiness")
        assert status_of(supervisor, "engine").pid != orphan.pid
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


async def test_a_stale_pid_record_spares_the_process_now_holding_the_pid(
    supervisor: ProcessSupervisor, tmp_path: Path
) -> None:
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    try:
        (tmp_path / "logs").mkdir()
        (tmp_path / "logs" / "engine.pid").write_text(f"{bystander.pid} 1\n")
        spec = server_spec(tmp_path)
        await supervisor.ensure("engine", spec)
        await eventually(lambda: status_of(supervisor, "engine").ready, "readiness")
        assert bystander.poll() is None
        pid = status_of(supervisor, "engine").pid
        assert (tmp_path / "logs" / "engine.pid").read_text().split()[0] == str(pid)
    finally:
        bystander.kill()
        bystander.wait()
