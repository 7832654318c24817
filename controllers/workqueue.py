"""A work queue keyed by resource id: per-key serialisation, collapsed repeats, backoff.

``add(key)`` marks a key dirty; a key being processed is not handed out twice, and adding it
meanwhile makes it run once more afterwards. ``add_after(key, seconds)`` requeues later
(observation without sleeping inside a reconcile). Failures are retried with jittered
exponential backoff; ``forget`` (implicit on success) resets the backoff. The queue owns its
workers and delayed timers and cancels them all on :meth:`stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Awaitable, Callable

from controllers.ids import reconcile_scope

log = logging.getLogger(__name__)

Reconcile = Callable[[str], Awaitable[float | None]]
"""Returns seconds after which to look again (``requeue_after``), or None."""


class WorkQueue:
    """Feeds keys to ``reconcile`` with at most one in flight per key."""

    def __init__(
        self,
        reconcile: Reconcile,
        *,
        name: str,
        workers: int = 2,
        backoff_base: float = 0.5,
        backoff_cap: float = 60.0,
    ) -> None:
        self._reconcile = reconcile
        self._name = name
        self._workers = workers
        self._base = backoff_base
        self._cap = backoff_cap
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._dirty: set[str] = set()
        self._failures: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        """Start the workers (owned; cancelled by :meth:`stop`)."""
        for index in range(self._workers):
            task = asyncio.create_task(self._work(), name=f"{self._name}-worker-{index}")
            self._tasks.add(task)

    async def stop(self) -> None:
        """Cancel workers and pending timers; waits for them to end."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def add(self, key: str) -> None:
        """Mark ``key`` for reconciliation (collapses with a pending one)."""
        if key in self._active:
            self._dirty.add(key)
            return
        if key not in self._queued:
            self._queued.add(key)
            self._idle.clear()
            self._ready.put_nowait(key)

    def add_after(self, key: str, seconds: float) -> None:
        """Reconcile ``key`` again after ``seconds`` (an earlier request wins)."""
        loop = asyncio.get_running_loop()
        existing = self._timers.get(key)
        due = loop.time() + seconds
        if existing is not None and existing.when() <= due:
            return
        if existing is not None:
            existing.cancel()
        self._timers[key] = loop.call_at(due, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def wait_idle(self) -> None:
        """Return once nothing is queued or running (for tests and shutdown)."""
        await self._idle.wait()

    async def _work(self) -> None:
        while True:
            key = await self._ready.get()
            self._queued.discard(key)
            self._active.add(key)
            requeue: float | None = None
            try:
                with reconcile_scope(uuid.uuid4().hex[:12]):
                    requeue = await self._reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = min(self._cap, self._base * 2 ** (failures - 1))
                delay *= 0.5 + random.random()  # noqa: S311  jitter
                log.exception(
                    "reconcile failed; retrying", extra={"key": key, "retry_in": round(delay, 2)}
                )
                requeue = delay
            else:
                self._failures.pop(key, None)
            finally:
                self._active.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
            elif requeue is not None:
                self.add_after(key, requeue)
            if not self._queued and not self._active:
                self._idle.set()
