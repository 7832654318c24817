"""A small in-process cache for hot lookups: bounded, expiring, one load per key at a time.

The gateway resolves the same few credentials and model names for every request. Each
resolution is a database (or Secret) read; with a cache the read happens once per key per
``ttl`` — and, because concurrent misses of one key share a single load, an expiry under load
costs one read, not one per request in flight at that moment.

A value in the second half of its life is reloaded in the background when a caller sees it
(that caller, and all others, still get the current value), so busy keys are refreshed before
they expire and no request waits for them. :meth:`ExpiringCache.close` cancels refreshes still
running.

Only successful loads are kept. A failed load's exception reaches every caller that was waiting
for it; a failed refresh drops the value, so the next caller loads again and hears the failure.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _LoaderCancelled(Exception):
    """The caller running a load was cancelled; waiters load for themselves."""


class ExpiringCache(Generic[K, V]):
    """Values by key for ``ttl`` seconds, at most ``size`` of them (least recent dropped)."""

    def __init__(
        self, *, ttl: float, size: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._values: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._pending: dict[K, asyncio.Future[V]] = {}
        self._refreshes: set[asyncio.Task[None]] = set()

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The cached value, or ``await load()`` (shared with concurrent callers)."""
        while True:
            found = self._values.get(key)
            now = self._clock()
            if found is not None and found[0] > now:
                if found[0] - now < self._ttl / 2 and key not in self._pending:
                    self._start_refresh(key, load)
                return found[1]
            pending = self._pending.get(key)
            if pending is None:
                return await self._load(key, load, self._begin(key))
            try:
                return await asyncio.shield(pending)
            except _LoaderCancelled:
                continue

    def forget(self, key: K) -> None:
        """Drop a key (after a change known here, such as a revocation)."""
        self._values.pop(key, None)

    def forget_where(self, predicate: Callable[[V], bool]) -> None:
        """Drop every value ``predicate`` holds for (a change known only by the value)."""
        for key in [key for key, (_, value) in self._values.items() if predicate(value)]:
            del self._values[key]

    async def close(self) -> None:
        """Cancel the background refreshes still running."""
        for task in list(self._refreshes):
            task.cancel()
        await asyncio.gather(*self._refreshes, return_exceptions=True)

    def _start_refresh(self, key: K, load: Callable[[], Awaitable[V]]) -> None:
        future = self._begin(key)  # registered now: later callers do not start another

        async def refresh() -> None:
            try:
                await self._load(key, load, future)
            except Exception:  # noqa: BLE001  the next caller loads again and gets the error
                self.forget(key)

        def settle(task: asyncio.Task[None]) -> None:
            self._refreshes.discard(task)
            if not future.done():  # cancelled before it ran: let waiters load themselves
                future.set_exception(_LoaderCancelled())
                future.exception()
                if self._pending.get(key) is future:
                    del self._pending[key]

        task = asyncio.create_task(refresh(), name="cache-refresh")
        self._refreshes.add(task)
        task.add_done_callback(settle)

    def _begin(self, key: K) -> asyncio.Future[V]:
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        return future

    async def _load(self, key: K, load: Callable[[], Awaitable[V]], future: asyncio.Future[V]) -> V:
        try:
            value = await load()
        except asyncio.CancelledError:
            future.set_exception(_LoaderCancelled())
            future.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()
            raise
        finally:
            del self._pending[key]
        future.set_result(value)
        if self._ttl > 0:
            self._values[key] = (self._clock() + self._ttl, value)
            self._values.move_to_end(key)
            while len(self._values) > self._size:
                self._values.popitem(last=False)
        return value
