"""Stopping never waits forever, though PyMongo may swallow a cancellation
(storage/cancellation.py).

PyMongo's async lock returns normally to a task cancelled while it waited, when the lock is
free by then. The event recovery task, cancelled while its first pass read the database,
went on to its 30 s pause: a ``modelplane serve`` that failed at start-up (the kubernetes
runtime without a kubeconfig) hung instead of printing its one line: one round in 150
never closed.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from modelplane.graph import open_resources
from modelplane.settings import RuntimeKind
from modelplane.startup import StartupError
from tests.conftest import make_settings

ROUNDS = 150


async def test_a_failed_start_up_always_closes_what_it_opened(
    tmp_path: Path, mongo_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(os.environ, "KUBERNETES_SERVICE_HOST", raising=False)
    settings = make_settings(tmp_path, mongo_uri, runtime=RuntimeKind.KUBERNETES, kubeconfig=None)

    async def start_up() -> None:
        with pytest.raises(StartupError, match="kubeconfig"):
            async with open_resources(settings):
                pass

    loop = asyncio.get_running_loop()
    slowest = 0.0
    for round_ in range(ROUNDS):
        began = loop.time()
        try:
            await asyncio.wait_for(start_up(), timeout=20)
        except TimeoutError:
            pytest.fail(f"round {round_}: closing after a failed start-up hung")
        slowest = max(slowest, loop.time() - began)
    print(f"slowest of {ROUNDS} failed start-ups: {slowest:.2f} s")  # noqa: T201  the figure
    assert slowest < 10, f"a failed start-up took {slowest:.1f} s to close"
