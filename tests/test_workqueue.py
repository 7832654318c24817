"""The work queue classifies failures (controllers/errors.py) and the one backoff policy."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from controllers.backoff import Backoff
from controllers.errors import PermanentError, TemporaryError, retry_message
from controllers.looping import OwnWrites
from controllers.workqueue import WorkQueue


@pytest.mark.parametrize(
    ("failures", "jitter", "expected"),
    [
        (0, 0.5, 0.0),  # no failure, no wait
        (1, 0.5, 1.0),  # base, jitter in the middle: unchanged
        (2, 0.5, 2.0),
        (3, 0.0, 3.0),  # 4 s spread down by 25 %
        (3, 0.999999, 5.0),  # ... and up, just under 25 %
        (7, 0.5, 30.0),  # 64 s capped at 30
        (7, 0.999999, 30.0),  # never above the cap, jitter included
        (500, 0.5, 30.0),  # no overflow for a key failing for days
    ],
)
def test_backoff_table(failures: int, jitter: float, expected: float) -> None:
    delay = Backoff(base=1.0, cap=30.0).delay(failures, jitter=jitter)
    assert delay == pytest.approx(expected, rel=1e-5)


def test_retry_message_says_when() -> None:
    assert retry_message("hub answered 503", 8.4) == "hub answered 503; retrying in 8 s"
    assert retry_message("hub answered 503", 0.2) == "hub answered 503; retrying"


async def _run(queue: WorkQueue, seconds: float) -> None:
    queue.start()
    try:
        await asyncio.sleep(seconds)
    finally:
        await queue.stop()


async def test_temporary_error_is_retried_after_its_own_delay() -> None:
    calls: list[float] = []
    loop = asyncio.get_running_loop()

    async def reconcile(key: str) -> float | None:
        calls.append(loop.time())
        if len(calls) < 3:
            raise TemporaryError("hub answered 503", delay=0.05)
        return None

    queue = WorkQueue(reconcile, name="t", backoff_base=10.0)
    queue.add("k")
    await _run(queue, 0.5)
    assert len(calls) == 3  # the base backoff of 10 s would have allowed one call
    assert all(b - a >= 0.045 for a, b in itertools.pairwise(calls))


async def test_permanent_error_is_not_retried_until_added_again() -> None:
    calls = 0

    async def reconcile(key: str) -> float | None:
        nonlocal calls
        calls += 1
        raise PermanentError("Forbidden", "deployments.apps is forbidden")

    queue = WorkQueue(reconcile, name="p", backoff_base=0.01)
    queue.start()
    try:
        queue.add("k")
        await asyncio.sleep(0.3)
        assert calls == 1
        queue.add("k")  # a person changed something
        await asyncio.sleep(0.1)
        assert calls == 2
    finally:
        await queue.stop()


async def test_unexpected_error_backs_off_and_next_delay_grows() -> None:
    calls = 0

    async def reconcile(key: str) -> float | None:
        nonlocal calls
        calls += 1
        raise RuntimeError("bug")

    queue = WorkQueue(reconcile, name="u", backoff_base=0.02, backoff_cap=0.04)
    first = queue.next_delay("k")
    queue.add("k")
    await _run(queue, 0.4)
    assert calls >= 3  # retried, capped at 40 ms (+50 %)
    assert 0.01 <= first <= 0.03
    assert 0.02 <= queue.next_delay("k") <= 0.04


def test_own_writes_remembers_the_newest_keys_only() -> None:
    own = OwnWrites(size=2)
    for key in ("a", "b", "c"):
        own.remember(key)
    assert "a" not in own
    assert "b" in own
    assert "c" in own
    own.remember("d")  # keys are unique per write (they carry the revision): oldest goes
    assert "b" not in own
    assert "d" in own
