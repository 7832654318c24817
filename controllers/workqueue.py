"""A work queue keyed by resource id: per-key serialisation, collapsed repeats, backoff.

``add(key)`` marks a key dirty; a key being processed is not handed out twice, and adding it
meanwhile makes it run once more afterwards. ``add_after(key, seconds)`` requeues later
(observation without sleeping inside a reconcile). Failures are classified
(:mod:`controllers.errors`): a temporary one is retried after its own delay or the jittered
exponential backoff (:mod:`controllers.backoff`), a permanent one is not retried, anything else
is logged with its traceback and retried; success resets the backoff. The queue owns its
workers and delayed timers and cancels them all on :meth:`stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable

from controllers.backoff import Backoff
from controllers.errors import PermanentError, TemporaryError
from controllers.ids import reconcile_scope
from storage.cancellation import raise_if_cancelled

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
        self._backoff = Backoff(base=backoff_base, cap=backoff_cap, spread=0.5)
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

    def next_delay(self, key: str) -> float:
        """The delay the queue would wait after one more failure of ``key``: what a reconciler
        puts in a :class:`~controllers.errors.TemporaryError` and its status message."""
        return self._backoff.delay(self._failures.get(key, 0) + 1)

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
            except Exception as exc:  # noqa: BLE001  every failure is classified below
                requeue = self._failed(key, exc)
            else:
                self._failures.pop(key, None)
            finally:
                self._active.discard(key)
            raise_if_cancelled()  # a stop PyMongo swallowed inside the reconcile
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
            elif requeue is not None:
                self.add_after(key, requeue)
            if not self._queued and not self._active:
                self._idle.set()

    def _failed(self, key: str, exc: Exception) -> float | None:
        """Classify a failed reconcile: the delay before the next try, or None for never."""
        if isinstance(exc, PermanentError):
            self._failures.pop(key, None)
            log.warning(
                "reconcile failed for good; not retrying until something changes",
                extra={"key": key, "reason": exc.reason, "error": exc.message},
            )
            return None
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        if isinstance(exc, TemporaryError):
            delay = exc.delay if exc.delay is not None else self._backoff.delay(failures)
            log.warning(
                "reconcile failed; retrying",
                extra={"key": key, "error": exc.message, "retry_in": round(delay, 2)},
            )
            return delay
        delay = self._backoff.delay(failures)
        log.error(
            "reconcile failed unexpectedly; retrying",
            extra={"key": key, "retry_in": round(delay, 2)},
            exc_info=exc,
        )
        return delay
