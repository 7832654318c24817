"""A real git server on loopback: Debian's ``git http-backend`` behind a tiny HTTP server that
asks for basic auth, for the catalogue tests.

:class:`GitServer` serves every bare repository under its root at
``http://127.0.0.1:<port>/<name>.git``, both fetch and push (smart HTTP), to the one user it
knows; any other credential, or none, gets 401. ``offline()`` makes it answer 503 for a
while (the remote is down), ``redirecting()`` sends requests for one repository to
another. :class:`Author` is a working clone the tests commit and
(force-)push with, straight to the bare repository on disk.
"""

from __future__ import annotations

import os
import subprocess
import threading
from base64 import b64decode
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"
GIT_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "LC_ALL": "C",
}


def git(*args: str, cwd: Path | None = None, home: Path | None = None) -> str:
    """Run git (no user configuration), return stdout; raise with stderr on failure."""
    env = {**GIT_ENV, "HOME": str(home or cwd or "/nonexistent")}
    result = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: ARG002  the stdlib hook
        self.server.requests.append(f"{self.command} {self.path}")

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        user, _, password = b64decode(header[6:]).decode(errors="replace").partition(":")
        return (user, password) == (self.server.username, self.server.password)

    def _serve(self) -> None:
        body = self._body()
        if self.server.down:
            self.send_error(503, "down for maintenance")
            return
        source, target = self.server.redirect or ("", "")
        if source and self.path.startswith(f"/{source}.git/"):
            self.send_response(302)
            self.send_header("Location", target + self.path.split(".git", 1)[-1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if not self._authorised():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="catalogue"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        env = {
            **GIT_ENV,
            "GIT_PROJECT_ROOT": str(self.server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REMOTE_USER": self.server.username,
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "REMOTE_ADDR": self.client_address[0],
        }
        result = subprocess.run(
            [HTTP_BACKEND], input=body, env=env, capture_output=True, check=False
        )
        head, _, payload = result.stdout.partition(b"\r\n\r\n")
        status = 200
        headers: list[tuple[str, str]] = []
        for line in head.decode(errors="replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split(" ")[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, username: str, password: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.username = username
        self.password = password
        self.down = False
        self.redirect: tuple[str, str] | None = None
        self.requests: list[str] = []


@dataclass
class GitServer:
    """The running server: its root, the one credential, and URLs of its repositories."""

    root: Path
    username: str
    password: str
    _server: _Server

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}.git"

    def create(self, name: str, *, branch: str = "main") -> Path:
        """A new empty bare repository ``<name>.git`` whose HEAD is ``branch``."""
        path = self.root / f"{name}.git"
        git("init", "--bare", "--quiet", f"--initial-branch={branch}", str(path), home=self.root)
        return path

    @contextmanager
    def redirecting(self, name: str, url: str) -> Iterator[None]:
        """Redirect requests for repository ``name`` to the same path under ``url``."""
        self._server.redirect = (name, url)
        try:
            yield
        finally:
            self._server.redirect = None

    @contextmanager
    def offline(self) -> Iterator[None]:
        """Answer every request with 503 inside the block."""
        self._server.down = True
        try:
            yield
        finally:
            self._server.down = False


@contextmanager
def git_server(root: Path, *, username: str = "catalogue", password: str) -> Iterator[GitServer]:
    """Serve the bare repositories under ``root`` until the block exits."""
    root.mkdir(parents=True, exist_ok=True)
    server = _Server(root, username, password)
    thread = threading.Thread(target=server.serve_forever, name="git-server", daemon=True)
    thread.start()
    try:
        yield GitServer(root, username, password, server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class Author:
    """A working clone of a bare repository that tests commit to and push from (on disk)."""

    def __init__(self, bare: Path, workdir: Path, *, branch: str = "main") -> None:
        self.bare = bare
        self.dir = workdir
        self.branch = branch
        git("init", "--quiet", f"--initial-branch={branch}", str(workdir), home=workdir)
        git("config", "user.name", "Catalogue Author", cwd=workdir)
        git("config", "user.email", "author@example.test", cwd=workdir)
        git("remote", "add", "origin", str(bare), cwd=workdir)

    def write(self, files: Mapping[str, str | None]) -> None:
        """Write (or, for None, delete) files relative to the clone."""
        for name, text in files.items():
            path = self.dir / name
            if text is None:
                path.unlink(missing_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def symlink(self, name: str, target: str) -> None:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)

    def commit(self, message: str, files: Mapping[str, str | None] | None = None) -> str:
        """Commit everything (after writing ``files``) and push; the new commit."""
        self.write(files or {})
        git("add", "-A", cwd=self.dir)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.dir)
        git("push", "--quiet", "origin", f"HEAD:refs/heads/{self.branch}", cwd=self.dir)
        return self.head()

    def rewrite(self, message: str, files: Mapping[str, str | None]) -> str:
        """Replace the last commit with another and force-push it; the new commit."""
        self.write(files)
        git("add", "-A", cwd=self.dir)
        git("commit", "--quiet", "--amend", "--allow-empty", "-m", message, cwd=self.dir)
        git("push", "--quiet", "--force", "origin", f"HEAD:refs/heads/{self.branch}", cwd=self.dir)
        return self.head()

    def head(self) -> str:
        return git("rev-parse", "HEAD", cwd=self.dir).strip()

    def remote_branches(self) -> dict[str, str]:
        """Branch name -> commit, as the bare repository holds them now."""
        out = git(
            "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads", cwd=self.bare
        )
        return dict(line.split(" ", 1) for line in out.splitlines())

    def show(self, commit: str, path: str) -> str:
        return git("show", f"{commit}:{path}", cwd=self.bare)
