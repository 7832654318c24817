"""The loopback git server (``testbed/git.py``: git http-backend behind basic auth) for the
catalogue tests, one per session; each test makes its own repositories on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.git import GitServer, git_server

GIT_PASSWORD = "catalogue-pass-0001"


@pytest.fixture(scope="session")
def git_remote(session_dir: Path) -> Iterator[GitServer]:
    """A smart-HTTP git server on 127.0.0.1 that knows one user (``catalogue``)."""
    with git_server(session_dir / "git", password=GIT_PASSWORD) as server:
        yield server
