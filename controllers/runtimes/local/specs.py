"""What a supervised engine process is, and the pure checks around its spawn.

:class:`ProcessSpec` (what to run and how to tell it is ready), :class:`ProcessPhase` and
:class:`ProcessStatus` (what :class:`~controllers.runtimes.local.processes.ProcessSupervisor`
reports), and the helpers it spawns with:

- **The child's environment** is an allow-list of the server's variables (PATH, HOME, locale,
  GPU selection, CA bundles...) plus the spec's own: the server's environment holds its own
  secrets (``MODELPLANE_SECRET_KEY``, database credentials) which an engine must not see.
  ``PYTHONUNBUFFERED=1`` is added unless the spec sets it, so Python engines' logs arrive as
  they are written rather than in 8 KiB blocks.
- **The engine user.** A server running as root runs its engines as another user
  (:class:`EngineUser`, setting ``MODELPLANE_ENGINE_USER``, default ``nobody``): its uid, its
  primary group and no supplementary groups, ``HOME`` set to the engine's working directory, which
  is handed to that user. So an engine cannot read what only root may: the state directory's keys
  (``keys/`` is 0700, see :mod:`modelplane.keyfiles`), the server's environment
  (``/proc/<pid>/environ``) or memory. Weights stay readable: the downloader writes them
  world-readable. What the downloader does not own is checked before each spawn
  (:func:`engine_user_problem`): a state directory under a 0700 folder (root's home, pytest's
  temporary root) or an engine installed there (a virtual environment under ``/root``, whose
  interpreter may be root's pyenv) ends in FAILED, reason ``PermissionDenied``, naming the folder in
  the way, instead of a crash loop on the engine's own "Permission denied". A server that is not
  root cannot switch users; its engines run as its own user, and :func:`protect_server_process`
  makes the server non-dumpable so a same-user engine cannot read its environment
  (``MODELPLANE_SECRET_KEY``, the database URI) or memory through ``/proc``. Key files generated in
  development stay readable to such engines: set ``MODELPLANE_SECRET_KEY`` (production requires it)
  so none exists.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

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
    reads: tuple[Path, ...] = ()
    """Directories the engine reads (its weights): an engine user that cannot is refused
    before the spawn (see :func:`engine_user_problem`)."""

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
    ``PermissionDenied``, ``InvalidSpec``, ``StartError``); ``message`` is for people and quotes the
    engine's last output line after an exit. ``last_exit_code`` is negative for a signal (-9:
    SIGKILL). ``started_at`` is when the current process started, None while none runs.
    """

    phase: ProcessPhase
    ready: bool
    pid: int | None
    restarts: int
    last_exit_code: int | None
    reason: str | None
    message: str | None
    started_at: datetime | None


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


def _blocked(path: Path, user: EngineUser, last: int) -> tuple[Path, str] | None:
    """The first of ``path``'s folders that ``user`` may not search (``x``), or ``path``
    itself when it lacks ``last`` (as mode bits of ``stat.S_IRWXO``), with its mode and
    owner; None when everything is allowed or a part does not exist (the engine says so).
    Mode bits only: the user has its primary group and no other (ACLs are not read)."""
    import grp  # noqa: PLC0415  POSIX only, and only here
    import pwd  # noqa: PLC0415
    import stat  # noqa: PLC0415

    parts = [*reversed(path.parents), path]
    for index, part in enumerate(parts):
        try:
            info = part.stat()
        except OSError:
            return None
        wanted = last if index == len(parts) - 1 else 0o1
        shift = 6 if info.st_uid == user.uid else 3 if info.st_gid == user.gid else 0
        if (info.st_mode >> shift) & wanted != wanted:
            owner = _name(pwd.getpwuid, info.st_uid), _name(grp.getgrgid, info.st_gid)
            return part, f"{stat.filemode(info.st_mode)} {owner[0]}:{owner[1]}"
    return None


def _name(lookup: Callable[[int], Any], number: int) -> str:
    try:
        return str(lookup(number)[0])
    except KeyError:
        return str(number)


def engine_user_problem(spec: ProcessSpec, program: str, user: EngineUser) -> str | None:
    """Why ``user`` cannot run ``spec``: a folder on the way to its working directory, its
    program (and what a symlink points at) or the directories it reads (its weights) that
    the user may not enter, or a program it may not execute. None when nothing stands in the
    way. The kernel would refuse the same later, as a bare "Permission denied" (the
    ``chdir``, the ``exec``) or an engine's own error about its model file; this names the
    folder and its mode, which is what the operator has to change."""
    program_path = Path(program).absolute()
    checks = [(spec.cwd, 0o1, "enter its working directory")]
    checks += [(program_path, 0o1, "run"), (program_path.resolve(), 0o1, "run")]
    checks += [(path, 0o5, "read") for path in spec.reads]
    for path, last, verb in checks:
        blocked = _blocked(path, user, last)
        if blocked is not None:
            part, mode = blocked
            return (
                f"the engine user {user.name} cannot {verb} {path}: {part} is {mode} "
                f"(let others {'read and ' if last == 0o5 and part == path else ''}search it, "
                "or set MODELPLANE_ENGINE_USER)"
            )
    return None


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
