"""What every reconciler runs on: its work queue and its lease, started and stopped together.

Both controllers (downloads, inference) are one :class:`ControllerLoop` plus their own
reconcile: the queue hands each key to one worker at a time and classifies failures
(:mod:`controllers.workqueue`); the lease makes one replica the leader and runs the periodic
resync while it leads (:mod:`controllers.leading`). See docs/architecture.md, "Reconcilers".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from controllers.leading import Leadership
from controllers.workqueue import Reconcile, WorkQueue
from storage.repositories import LeaseRepository


class ControllerLoop:
    """A reconciler's queue (``queue``) and lease, owned together."""

    def __init__(
        self,
        reconcile: Reconcile,
        *,
        name: str,
        workers: int,
        leases: LeaseRepository | None,
        lease_name: str,
        holder: str,
        lease_seconds: float,
        resync: Callable[[], Awaitable[None]],
        resync_seconds: float,
        on_loss: Callable[[], Awaitable[None]],
    ) -> None:
        self.queue = WorkQueue(reconcile, name=name, workers=workers)
        self._leadership = Leadership(
            leases,
            name=lease_name,
            holder=holder,
            seconds=lease_seconds,
            resync=resync,
            resync_seconds=resync_seconds,
            on_loss=on_loss,
        )

    def start(self) -> None:
        """Start the workers, the resync loop and (with leases) the competition for the lease."""
        self.queue.start()
        self._leadership.start()

    async def stop(self) -> None:
        """Give the lease up, then cancel the workers and their timers."""
        await self._leadership.stop()
        await self.queue.stop()

    @property
    def leading(self) -> bool:
        """True while this replica holds the lease (or runs without leases)."""
        return self._leadership.leading

    def resync_soon(self) -> None:
        """Look at everything now rather than at the end of the resync period."""
        self._leadership.resync_soon()
