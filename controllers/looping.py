"""What every reconciler runs on: its work queue and its lease, started and stopped together.

Both controllers (downloads, inference) are one :class:`ControllerLoop` plus their own
reconcile: the queue hands each key to one worker at a time and classifies failures
(:mod:`controllers.workqueue`); the lease makes one replica the leader and runs the periodic
resync while it leads (:mod:`controllers.leading`). See docs/architecture.md, "Reconcilers".
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable

from controllers.leading import Leadership
from controllers.workqueue import Reconcile, WorkQueue
from storage.repositories import LeaseRepository

OWN_WRITES = 4096
"""How many of a controller's own recent event keys it remembers."""


class OwnWrites:
    """The event keys of a controller's own recent writes (the newest :data:`OWN_WRITES`), so
    that its ``on_event`` skips them: its own status writes are nothing new to act on, and
    acting on them (a "retrying in N s" message) would short-circuit the queue's backoff.
    Remember a key before recording its event: the broker may hand it back first."""

    def __init__(self, size: int = OWN_WRITES) -> None:
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def remember(self, key: str) -> None:
        """Note one event key of this controller's own write."""
        self._keys[key] = None
        while len(self._keys) > self._size:
            self._keys.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._keys


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
