"""ExpiringCache: expiry, bounds, one load per key at a time, failures not kept."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from services.caching import ExpiringCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_values_expire_and_the_least_recent_is_dropped() -> None:
    clock = Clock()
    cache: ExpiringCache[str, int] = ExpiringCache(ttl=2, size=2, clock=clock)
    loads: list[str] = []

    def loader(key: str, value: int) -> Callable[[], Awaitable[int]]:
        async def load() -> int:
            loads.append(key)
            return value

        return load

    assert await cache.get("a", loader("a", 1)) == 1
    assert await cache.get("a", loader("a", 2)) == 1
    clock.now += 2.5
    assert await cache.get("a", loader("a", 3)) == 3
    await cache.get("b", loader("b", 1))
    await cache.get("c", loader("c", 1))  # "a" is the least recent of three: dropped
    assert await cache.get("a", loader("a", 4)) == 4
    cache.forget("a")
    assert await cache.get("a", loader("a", 5)) == 5
    assert loads == ["a", "a", "b", "c", "a", "a"]


async def test_concurrent_misses_share_one_load_and_failures_are_not_kept() -> None:
    cache: ExpiringCache[str, int] = ExpiringCache(ttl=10, size=10)
    started = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def slow() -> int:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return 7

    waiters = [asyncio.create_task(cache.get("k", slow)) for _ in range(5)]
    await started.wait()
    release.set()
    assert await asyncio.gather(*waiters) == [7] * 5
    assert calls == 1

    async def broken() -> int:
        raise LookupError("no such thing")

    for _ in range(2):
        with pytest.raises(LookupError):
            await cache.get("missing", broken)


async def test_waiters_load_themselves_when_the_loading_caller_is_cancelled() -> None:
    cache: ExpiringCache[str, int] = ExpiringCache(ttl=10, size=10)
    started = asyncio.Event()

    async def never() -> int:
        started.set()
        await asyncio.Event().wait()
        return 0

    async def quick() -> int:
        return 3

    first = asyncio.create_task(cache.get("k", never))
    await started.wait()
    second = asyncio.create_task(cache.get("k", quick))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second == 3


async def test_a_value_is_refreshed_in_the_background_before_it_expires() -> None:
    clock = Clock()
    cache: ExpiringCache[str, int] = ExpiringCache(ttl=10, size=10, clock=clock)
    release = asyncio.Event()
    values = iter([1, 2])

    async def load() -> int:
        if value := next(values, None):
            if value == 2:
                await release.wait()
            return value
        raise LookupError("gone")

    assert await cache.get("k", load) == 1
    clock.now += 6  # second half of its life: a refresh starts, nobody waits for it
    assert await cache.get("k", load) == 1
    assert await cache.get("k", load) == 1
    release.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert await cache.get("k", load) == 2
    clock.now += 6
    assert await cache.get("k", load) == 2  # the refresh fails in the background...
    for _ in range(10):
        await asyncio.sleep(0)
    with pytest.raises(LookupError):  # ...so the value is dropped and the next caller hears it
        await cache.get("k", load)
    await cache.close()


async def test_close_cancels_refreshes_still_running() -> None:
    clock = Clock()
    cache: ExpiringCache[str, int] = ExpiringCache(ttl=10, size=10, clock=clock)
    first = True

    async def load() -> int:
        nonlocal first
        if first:
            first = False
            return 1
        await asyncio.Event().wait()
        return 2

    await cache.get("k", load)
    clock.now += 6
    await cache.get("k", load)
    await cache.close()
