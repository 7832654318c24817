"""The embedded FerretDB: a MongoDB-compatible server started as a child process.

``make run`` with nothing configured, and the test suite, both need a database without
installing one. FerretDB 1.x with its SQLite backend is a single static binary built by
``deploy/testbed/build.sh``; this module finds it, starts it on a free loopback port with its
data in a directory of ours, waits until it answers ``ping``, and stops it (SIGTERM, then
SIGKILL) when done. Telemetry is disabled.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

FERRETDB_VERSION = "v1.24.2"
CAPPED_CLEANUP_SECONDS = 5
"""How often the embedded FerretDB trims capped collections (its default: every 60 s)."""


class EmbeddedError(Exception):
    """The embedded server could not be found or started; the message says what to do."""


def _die_with_parent() -> None:
    """In the child: ask Linux to send SIGTERM when the parent dies, even by SIGKILL."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def default_cache_dir() -> Path:
    """Where deploy/testbed/build.sh puts the servers (``MODELPLANE_TESTBED_CACHE`` overrides)."""
    configured = os.environ.get("MODELPLANE_TESTBED_CACHE")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "modelplane" / "testbed"


def default_ferretdb_binary() -> Path:
    """The FerretDB binary the build script produces."""
    return default_cache_dir() / f"ferretdb-{FERRETDB_VERSION}" / "bin" / "ferretdb"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class FerretDBProcess:
    """One FerretDB child process serving ``uri`` with data under ``data_dir``."""

    binary: Path
    data_dir: Path
    port: int = field(default_factory=free_port)
    _process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """Connection string for clients."""
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self) -> None:
        """Launch the process (returns at once; call :meth:`wait_ready`)."""
        if not self.binary.is_file():
            raise EmbeddedError(
                f"MODELPLANE_FERRETDB_BINARY: no FerretDB binary at {self.binary}; "
                "build it with `deploy/testbed/build.sh` (or `make testbed`)"
            )
        sqlite_dir = self.data_dir / "sqlite"
        sqlite_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # the database is the server's alone, not engines'
        log_path = self.data_dir / "ferretdb.log"
        env = {**os.environ, "FERRETDB_TELEMETRY": "disable"}
        with log_path.open("ab") as log_file:
            self._process = subprocess.Popen(  # noqa: S603  fixed argv, no shell
                [
                    str(self.binary),
                    "--handler=sqlite",
                    f"--sqlite-url=file:{sqlite_dir}/",
                    f"--state-dir={self.data_dir}",
                    f"--listen-addr=127.0.0.1:{self.port}",
                    f"--debug-addr=127.0.0.1:{free_port()}",
                    "--log-level=warn",
                    "--telemetry=disable",
                    # FerretDB trims capped collections on a timer, not on insert (1 minute by
                    # default): between trims a busy event log grows past its cap, and every
                    # read of it scans it whole (see live/ferretdb.py).
                    f"--test-capped-cleanup-interval={CAPPED_CLEANUP_SECONDS}s",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509  only calls prctl, no locks taken
            )

    async def wait_ready(self, within: float = 30.0) -> None:
        """Return once the server answers ``ping``; raise :class:`EmbeddedError` otherwise."""
        deadline = time.monotonic() + within
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
            self.uri, serverSelectionTimeoutMS=500
        )
        try:
            while True:
                if self._process is not None and self._process.poll() is not None:
                    raise EmbeddedError(
                        f"FerretDB exited with code {self._process.returncode}; "
                        f"see {self.data_dir / 'ferretdb.log'}"
                    )
                try:
                    await client.admin.command("ping")
                except PyMongoError:
                    if time.monotonic() > deadline:
                        raise EmbeddedError(
                            f"FerretDB did not answer on port {self.port} within {within:.0f} s"
                        ) from None
                    await asyncio.sleep(0.1)
                else:
                    return
        finally:
            await client.close()

    @property
    def pid(self) -> int | None:
        """The running FerretDB's process id (None when not started or stopped)."""
        return None if self._process is None else self._process.pid

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the process and reap it; idempotent."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
