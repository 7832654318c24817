"""A git remote over HTTP(S), driven through Debian's ``git`` binary, with typed errors.

The catalogue (``services/catalogue/``) keeps one *bare* repository per organisation in a
cache directory and never checks out a working tree: it fetches the branch, lists the tree of
the fetched commit (``ls-tree``, so symlinks and odd paths are seen as what they are, never
followed on disk) and reads blobs by id (``cat-file --batch``). A proposal is written with
plumbing too (a temporary index, ``commit-tree``) and pushed to a new branch. Without a working
tree there is nothing a half-finished refresh can leave half-written: refs move atomically,
and the caller serialises fetches into one repository (:class:`RepositoryLock`).

Credentials: the password (or token) travels only as an ``http.extraHeader`` set through
``GIT_CONFIG_*`` environment variables of the child process: never in argv (``ps``), never in
``.git/config``, never in a URL, never logged. Every child runs with ``GIT_TERMINAL_PROMPT=0``,
no system or global configuration and an empty ``HOME``, so nothing on the host (a credential
helper, an ``insteadOf``) changes what is fetched; only the http and https transports, and no
redirects (the outbound policy judged the configured host, not a redirect's target). Not
covered: the host's address is checked when the source is configured, not again when git
connects (as for the other processes that connect by themselves; see the README's
"Outbound connections").

Errors: :class:`GitAuthRefused` (401/403: the credential is wrong), :class:`GitUnreachable`
(DNS, refused connection, timeout, 5xx), :class:`GitBranchMissing`, :class:`GitPushRejected`;
anything else is :class:`GitError` with git's first lines (which carry no secret: the URL
never holds one).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import logging
import os
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

GIT = "git"
ZERO = "0" * 40
_SHA = re.compile(r"^[0-9a-f]{40}$")


class GitError(Exception):
    """git failed; the message is safe to show (no credential, no header)."""


class GitAuthRefused(GitError):
    """The remote refused the credential (or asked for one and none was given)."""


class GitUnreachable(GitError):
    """The remote could not be reached or answered with a server error."""


class GitBranchMissing(GitError):
    """The remote has no such branch."""


class GitMissing(GitError):
    """The ``git`` program is not installed on this server."""


class GitPushRejected(GitError):
    """The remote refused a push (the branch exists already, a hook said no)."""


@dataclass(frozen=True, slots=True)
class Remote:
    """Where and how: an http(s) URL without credentials, a branch, optional basic auth."""

    url: str
    branch: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def environment(self) -> dict[str, str]:
        """The child's git configuration: the auth header, only when there is a password."""
        if not self.password:
            return _config(FIXED_CONFIG)
        pair = f"{self.username or 'git'}:{self.password}".encode()
        header = "Authorization: Basic " + base64.b64encode(pair).decode()
        return _config({**FIXED_CONFIG, "http.extraHeader": header})


FIXED_CONFIG = {"http.followRedirects": "false", "credential.helper": ""}
"""Every child's configuration: no redirects (the outbound policy checked the configured host,
not wherever a remote might send git next) and no credential helper."""


def _config(values: Mapping[str, str]) -> dict[str, str]:
    """``values`` as ``GIT_CONFIG_*`` environment variables (not argv: ``ps`` shows argv)."""
    env = {"GIT_CONFIG_COUNT": str(len(values))}
    for index, (key, value) in enumerate(values.items()):
        env[f"GIT_CONFIG_KEY_{index}"] = key
        env[f"GIT_CONFIG_VALUE_{index}"] = value
    return env


@dataclass(frozen=True, slots=True)
class TreeItem:
    """One entry of ``git ls-tree -r``: mode, object type, object id, path."""

    mode: str
    kind: str
    sha: str
    path: str

    @property
    def is_symlink(self) -> bool:
        return self.mode == "120000"

    @property
    def is_file(self) -> bool:
        return self.kind == "blob" and self.mode in ("100644", "100755")


def _base_env(home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ALLOW_PROTOCOL": "http:https",
        "GIT_CONFIG_NOSYSTEM": "1",
        "LC_ALL": "C",
    }


def classify(stderr: str, *, what: str) -> GitError:
    """The typed error for git's complaint (the text never holds a credential)."""
    text = stderr.strip()
    lines = [line for line in text.splitlines() if line.strip()]
    summary = "; ".join(lines[-3:])[:500] or "no output"
    lower = text.lower()
    if any(
        s in lower
        for s in (
            "authentication failed",
            "could not read username",
            "could not read password",
            "the requested url returned error: 401",
            "the requested url returned error: 403",
            "terminal prompts disabled",
        )
    ):
        return GitAuthRefused(f"{what}: the remote refused the credential ({summary})")
    if "couldn't find remote ref" in lower or ("remote branch" in lower and "not found" in lower):
        return GitBranchMissing(f"{what}: {summary}")
    if any(
        s in lower
        for s in (
            "could not resolve host",
            "failed to connect",
            "connection refused",
            "couldn't connect",
            "timed out",
            "operation timed out",
            "the requested url returned error: 5",
            "empty reply from server",
            "connection reset",
            "recv failure",
        )
    ):
        return GitUnreachable(f"{what}: the remote is unreachable ({summary})")
    if "[rejected]" in lower or "remote rejected" in lower or "stale info" in lower:
        return GitPushRejected(f"{what}: {summary}")
    return GitError(f"{what}: {summary}")


class Repository:
    """A bare repository in ``path`` tracking one remote; every call runs one git child."""

    def __init__(self, path: Path, *, timeout: float = 60.0) -> None:
        self.path = path
        self._timeout = timeout
        self._home = path.parent / ".git-home"

    async def _git(
        self,
        args: Sequence[str],
        *,
        remote: Remote | None = None,
        what: str,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        ok_codes: tuple[int, ...] = (0,),
    ) -> tuple[int, bytes]:
        child_env = _base_env(self._home)
        child_env.update(remote.environment() if remote else _config(FIXED_CONFIG))
        child_env.update(env or {})
        try:
            process = await asyncio.create_subprocess_exec(
                GIT,
                "--git-dir",
                str(self.path),
                *args,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=child_env,
            )
        except FileNotFoundError:
            raise GitMissing(f"{what}: git is not installed on this server") from None
        try:
            async with asyncio.timeout(self._timeout):
                out, err = await process.communicate(stdin)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise GitUnreachable(f"{what}: no answer within {self._timeout:g} s") from None
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await asyncio.shield(process.wait())
            raise
        code = process.returncode or 0
        if code not in ok_codes:
            raise classify(err.decode(errors="replace"), what=what)
        return code, out

    async def ensure(self) -> None:
        """Create the bare repository if it is not there (idempotent)."""
        self._home.mkdir(parents=True, exist_ok=True)
        if (self.path / "HEAD").is_file():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        await self._git(["init", "--bare", "--quiet"], what="git init")

    async def remote_head(self, remote: Remote) -> str:
        """The commit the remote's branch points at (checks URL, credential and branch)."""
        _, out = await self._git(
            ["ls-remote", "--heads", "--", remote.url, f"refs/heads/{remote.branch}"],
            remote=remote,
            what=f"git ls-remote {remote.url}",
        )
        for line in out.decode().splitlines():
            sha, _, ref = line.partition("\t")
            if ref == f"refs/heads/{remote.branch}" and _SHA.match(sha):
                return sha
        raise GitBranchMissing(f"the remote has no branch {remote.branch!r}")

    async def fetch(self, remote: Remote) -> str:
        """Fetch the branch (forced: a rewritten branch is fetched too, and judged by the
        caller with :meth:`is_ancestor`) into ``refs/modelplane/fetched``; its commit."""
        await self._git(
            [
                "fetch",
                "--quiet",
                "--no-tags",
                "--force",
                "--",
                remote.url,
                f"+refs/heads/{remote.branch}:refs/modelplane/fetched",
            ],
            remote=remote,
            what=f"git fetch {remote.url} {remote.branch}",
        )
        return await self.resolve("refs/modelplane/fetched")

    async def resolve(self, ref: str) -> str:
        _, out = await self._git(["rev-parse", "--verify", "--quiet", ref], what="git rev-parse")
        return out.decode().strip()

    async def has_commit(self, sha: str) -> bool:
        code, _ = await self._git(
            ["cat-file", "-e", f"{sha}^{{commit}}"], what="git cat-file", ok_codes=(0, 1, 128)
        )
        return code == 0

    async def is_ancestor(self, older: str, newer: str) -> bool:
        """Whether ``older`` is in ``newer``'s history (False if it is not in the repository:
        a full fetch of the branch holds every commit of its history)."""
        if not await self.has_commit(older):
            return False
        code, _ = await self._git(
            ["merge-base", "--is-ancestor", older, newer], what="git merge-base", ok_codes=(0, 1)
        )
        return code == 0

    async def keep(self, sha: str) -> None:
        """Pin a commit (the last accepted one) so that its objects are never collected."""
        await self._git(["update-ref", "refs/modelplane/accepted", sha], what="git update-ref")

    async def tree(self, commit: str, folder: str) -> list[TreeItem]:
        """Every file under ``folder`` of ``commit`` (recursively; ``""`` for the root)."""
        args = ["ls-tree", "-r", "-z", "--full-tree", commit]
        if folder:
            args += ["--", folder.rstrip("/") + "/"]
        _, out = await self._git(args, what="git ls-tree")
        items: list[TreeItem] = []
        for record in out.split(b"\0"):
            if not record:
                continue
            meta, _, raw_path = record.partition(b"\t")
            mode, kind, sha = meta.decode().split(" ")
            items.append(TreeItem(mode, kind, sha, raw_path.decode(errors="surrogateescape")))
        return items

    async def blobs(self, shas: Sequence[str]) -> dict[str, bytes]:
        """The contents of the given blobs, read in one ``cat-file --batch``."""
        if not shas:
            return {}
        unique = list(dict.fromkeys(shas))
        _, out = await self._git(
            ["cat-file", "--batch"], what="git cat-file", stdin="\n".join(unique).encode() + b"\n"
        )
        found: dict[str, bytes] = {}
        offset = 0
        for sha in unique:
            end = out.index(b"\n", offset)
            header = out[offset:end].decode().split(" ")
            offset = end + 1
            if len(header) != 3:
                continue
            size = int(header[2])
            found[sha] = out[offset : offset + size]
            offset += size + 1
        return found

    async def commit_file(
        self,
        *,
        parent: str,
        path: str,
        content: bytes,
        message: str,
        author: tuple[str, str],
    ) -> str:
        """A new commit: ``parent``'s tree with ``path`` set to ``content``; its id."""
        _, blob = await self._git(
            ["hash-object", "-w", "--stdin"], what="git hash-object", stdin=content
        )
        index = self.path / f"modelplane-index-{os.getpid()}-{id(content)}"
        env = {"GIT_INDEX_FILE": str(index)}
        try:
            await self._git(["read-tree", parent], what="git read-tree", env=env)
            await self._git(
                ["update-index", "--add", "--cacheinfo", f"100644,{blob.decode().strip()},{path}"],
                what="git update-index",
                env=env,
            )
            _, tree = await self._git(["write-tree"], what="git write-tree", env=env)
        finally:
            index.unlink(missing_ok=True)
        name, email = author
        identity = {
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email,
        }
        _, commit = await self._git(
            ["commit-tree", tree.decode().strip(), "-p", parent, "-F", "-"],
            what="git commit-tree",
            env=identity,
            stdin=message.encode(),
        )
        return commit.decode().strip()

    async def push_new_branch(self, remote: Remote, commit: str, branch: str) -> None:
        """Push ``commit`` as a new branch; refused (GitPushRejected) if it exists already."""
        await self._git(
            [
                "push",
                "--quiet",
                "--porcelain",
                f"--force-with-lease=refs/heads/{branch}:",
                "--",
                remote.url,
                f"{commit}:refs/heads/{branch}",
            ],
            remote=remote,
            what=f"git push {remote.url} {branch}",
        )


@contextlib.asynccontextmanager
async def locked(path: Path) -> AsyncIterator[None]:
    """Hold ``flock`` on ``<path>.lock``: one writer of a repository across the processes that
    share the cache directory (the caller also holds an asyncio lock per repository, so that
    one process's tasks queue without tying up threads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.05)  # another process fetches; cancellable while waiting
        yield
    finally:
        os.close(fd)  # closing releases the flock
