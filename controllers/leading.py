"""Leader election over a MongoDB lease document, and the periodic resync (decision 4).

One replica leads each controller: it takes the lease, renews it every third of its duration,
and gives it up on shutdown. Losing it (a pause longer than the lease, a partition) calls
``on_loss`` so the controller stops what would otherwise run twice; gaining it calls
``resync``, which also runs every ``resync_seconds`` while this replica leads -- the backstop
behind the watches and the event log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from storage.cancellation import raise_if_cancelled
from storage.repositories import LeaseRepository

log = logging.getLogger(__name__)


class Leadership:
    """Holds one named lease for this replica while it can; without leases it always leads."""

    def __init__(
        self,
        leases: LeaseRepository | None,
        *,
        name: str,
        holder: str,
        seconds: float,
        resync: Callable[[], Awaitable[None]],
        resync_seconds: float,
        on_loss: Callable[[], Awaitable[None]],
    ) -> None:
        self._leases = leases
        self._name = name
        self._holder = holder
        self._seconds = seconds
        self._resync = resync
        self._resync_seconds = resync_seconds
        self._on_loss = on_loss
        self.leading = leases is None
        self._task: asyncio.Task[None] | None = None
        self._resyncing: asyncio.Task[None] | None = None
        self._resync_now = asyncio.Event()

    def start(self) -> None:
        """Start competing for the lease (always leading without leases) and resyncing."""
        if self._leases is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"lease-{self._name}")
        if self._resyncing is None:
            self._resyncing = asyncio.create_task(self._resync_loop(), name=f"resync-{self._name}")

    def resync_soon(self) -> None:
        """Resync now rather than at the end of the period (the event log lost events this
        controller would have been fed; see ``Broker.on_trimmed``). Never awaits."""
        self._resync_now.set()

    async def _resync_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._resync_seconds):
                    await self._resync_now.wait()
            self._resync_now.clear()
            if self.leading:
                await self._resync()
                raise_if_cancelled()

    async def _run(self) -> None:
        assert self._leases is not None  # noqa: S101  only started with leases
        while True:
            held = await self._leases.try_acquire(
                self._name, holder=self._holder, duration=timedelta(seconds=self._seconds)
            )
            if held and not self.leading:
                self.leading = True
                log.info("leading", extra={"lease": self._name, "holder": self._holder})
                await self._resync()
            elif not held and self.leading:
                self.leading = False
                log.warning("lost the lease", extra={"lease": self._name})
                await self._on_loss()
            raise_if_cancelled()  # a stop PyMongo swallowed while renewing
            await asyncio.sleep(self._seconds / 3)

    async def stop(self) -> None:
        """Stop resyncing and competing, and release the lease if held; idempotent."""
        for task in (self._resyncing, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._resyncing = None
        if self._task is None:
            return
        self._task = None
        if self._leases is not None and self.leading:
            await self._leases.release(self._name, holder=self._holder)
        self.leading = self._leases is None
