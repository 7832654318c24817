"""The storage watcher: every replica measures each weights location on a period (for its
gauges); the replica leading the ``storage-alerts`` lease also decides each crossing and records
it. Shaped like the catalogue's schedule (``modelplane/catalogue_wiring.py``): the lease's
callbacks only wake the owned task, so a slow database never delays the lease's renewal, and
nothing sleeps inside a pass.

One pass (:meth:`StorageWatch.tick`): read the READY weights of every organisation and the
stored alert states, :func:`~controllers.alerts.measuring.measure`; when leading, for each
location :func:`~controllers.alerts.deciding.decide` the crossing from the *stored* state and
write it (compare-and-set: a replica that still believes it leads after a hand-over loses the
race instead of recording the crossing twice), marking the ALERT event and the webhook message
as owed in the same write; then settle whatever is owed (this pass's crossings, or a dead
leader's): the event appended under its crossing's key (the log holds it once), the message
handed to the :class:`~integrations.webhooks.WebhookNotifier`, which delivers from its own task
and clears the mark afterwards. So a restart or a new leader neither fires an alert again nor
misses the clear; a webhook message may be sent twice only if its sender died between the
receiver's 2xx and the clearing write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pymongo.errors import PyMongoError

from controllers.alerts.deciding import AlertPolicy, Crossing, decide, describe
from controllers.alerts.measuring import (
    DiskUsage,
    LocationStatus,
    RootUsage,
    claim_holders,
    disk_usage,
    measure,
)
from controllers.leading import Leadership
from integrations.webhooks import WebhookNotifier, WebhookPolicy
from live import SERVER_WIDE, Recorder
from storage.alerts import StorageAlertDocument, StorageAlertRepository
from storage.cancellation import raise_if_cancelled
from storage.documents import TargetKind, WeightsState, utcnow
from storage.errors import StorageError
from storage.repositories import LeaseRepository, WeightsRepository

log = logging.getLogger(__name__)

LEASE = "storage-alerts"


@dataclass(frozen=True, slots=True)
class WatchConfig:
    """What the watcher measures and how it decides."""

    roots: tuple[Path, ...]
    policy: AlertPolicy = field(default_factory=AlertPolicy)
    s3_quotas: Mapping[str, int] = field(default_factory=dict)
    interval: float = 60.0
    webhook_url: str | None = field(default=None, repr=False)
    """A secret (its own credential): kept out of the repr."""
    webhook: WebhookPolicy = field(default_factory=WebhookPolicy)


class StorageWatch:
    """The measuring task of one replica, and the alerting of the leading one."""

    def __init__(
        self,
        *,
        weights: WeightsRepository,
        alerts: StorageAlertRepository,
        recorder: Recorder,
        config: WatchConfig,
        leases: LeaseRepository | None,
        holder: str,
        lease_seconds: float,
        usage: DiskUsage = disk_usage,
    ) -> None:
        self._weights = weights
        self._alerts = alerts
        self._recorder = recorder
        self._config = config
        self._usage = usage
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._leadership = Leadership(
            leases,
            name=LEASE,
            holder=holder,
            seconds=lease_seconds,
            resync=self._kick,
            resync_seconds=config.interval,
            on_loss=self._lost,
        )
        self._notifier = (
            None
            if config.webhook_url is None
            else WebhookNotifier(config.webhook_url, policy=config.webhook, delivered=self._sent)
        )
        self.locations: tuple[LocationStatus, ...] = ()
        """What the last pass measured (read by the gauges at scrape time)."""

    @property
    def leading(self) -> bool:
        """True while this replica holds the ``storage-alerts`` lease."""
        return self._leadership.leading

    def start(self) -> None:
        """Start measuring, competing for the lease and (with a URL) delivering."""
        if self._notifier is not None:
            self._notifier.start()
        self._leadership.start()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="storage-watch")

    async def stop(self) -> None:
        """Stop the task, give the lease up, cancel any delivery in flight; idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._leadership.stop()
        if self._notifier is not None:
            await self._notifier.stop()

    async def _kick(self) -> None:
        self._wake.set()

    async def _lost(self) -> None:
        """Messages not yet started are the next leader's to send; what is in flight ends."""
        if self._notifier is not None:
            self._notifier.drop_queued()
        self._wake.set()

    async def _run(self) -> None:
        while True:
            # the leader is woken by its lease every period; the others keep their own time
            timeout = None if self._leadership.leading else self._config.interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.tick()
            except (StorageError, PyMongoError, OSError) as exc:  # the database, a root: next pass
                log.warning("storage watch pass failed", extra={"error": type(exc).__name__})
            except Exception:  # a bug: logged with its traceback, tried next period
                log.exception("storage watch pass failed")
            raise_if_cancelled()

    async def tick(self) -> None:
        """One pass: measure; when leading, record the crossings and settle what is owed."""
        ready = await self._weights.find(where={"state": WeightsState.READY.value}, limit=10_000)
        measured = measure(
            ready.items,
            roots=self._config.roots,
            s3_quotas=self._config.s3_quotas,
            usage=self._usage,
        )
        states = await self._alerts.all()
        if self._leadership.leading:
            for usage in measured:
                written = await self._cross(usage, states.get(usage.root))
                if written is not None:
                    states[usage.root] = written
            await self._settle(states.values(), claim_holders(ready.items))
        policy = self._config.policy
        self.locations = tuple(
            LocationStatus(
                usage=u,
                threshold=policy.threshold_for(u.root),
                alerting=states[u.root].alerting if u.root in states else False,
            )
            for u in measured
        )

    async def _cross(
        self, usage: RootUsage, state: StorageAlertDocument | None
    ) -> StorageAlertDocument | None:
        """Write the crossing ``usage`` makes from the stored state; the new state, or None."""
        threshold = self._config.policy.threshold_for(usage.root)
        hysteresis = self._config.policy.hysteresis

        def crossing(alerting: bool) -> Crossing | None:
            return decide(
                alerting=alerting,
                used=usage.used,
                total=usage.total,
                threshold=threshold,
                hysteresis=hysteresis,
            )

        def change(current: StorageAlertDocument) -> dict[str, object]:
            found = crossing(current.alerting)
            if found is None:
                return {}
            return {
                "alerting": found is Crossing.RAISED,
                "transition": current.transition + 1,
                "threshold": threshold,
                "used": usage.used,
                "total": usage.total,
                "message": describe(
                    usage.root, found, used=usage.used, total=usage.total, threshold=threshold
                ),
                "changed_at": usage.measured_at or utcnow(),
                "owed_event": True,
                "owed_webhook": self._notifier is not None,
            }

        try:
            if state is None:
                changes = change(
                    StorageAlertDocument(id=usage.root, kind=usage.kind, threshold=threshold)
                )
                if not changes:
                    return None
                new = StorageAlertDocument.model_validate(
                    {"_id": usage.root, "kind": usage.kind, **changes}
                )
                written = await self._alerts.insert(new)
            else:
                written = await self._alerts.modify(state.id, change, current=state)
                if written.transition == state.transition:
                    return None
        except StorageError as exc:  # another writer won (a hand-over): its state stands
            log.warning(
                "storage alert not recorded",
                extra={"location": usage.root, "error": type(exc).__name__},
            )
            return None
        log.info(
            "storage alert crossing",
            extra={"location": usage.root, "alerting": written.alerting},
        )
        return written

    async def _settle(
        self, states: Iterable[StorageAlertDocument], holders: Mapping[str, frozenset[str]]
    ) -> None:
        """Append the owed events (a PVC's to each organisation holding weights on it, any
        other location's server-wide), hand the owed messages to the notifier."""
        for state in states:
            if state.owed_event:
                audience = (
                    sorted(holders.get(state.id, ()))
                    if state.kind is TargetKind.PVC
                    else [SERVER_WIDE]
                )
                phase = (Crossing.RAISED if state.alerting else Crossing.CLEARED).value
                held = [
                    await self._recorder.storage_alert(
                        location=state.id,
                        transition=state.transition,
                        phase=phase,
                        message=state.message,
                        organization_id=organization,
                    )
                    for organization in audience
                ]
                if all(held):
                    await self._clear(state.id, state.transition, "owed_event")
            if state.owed_webhook:
                if self._notifier is None:  # the URL was removed since: nobody to tell
                    await self._clear(state.id, state.transition, "owed_webhook")
                else:
                    self._notifier.submit((state.id, state.transition), state.message)

    async def _sent(self, key: Hashable, delivered: bool) -> None:
        """The notifier is done with a message (delivered or given up): not owed any more."""
        assert isinstance(key, tuple)  # noqa: S101  submitted as (location, transition)
        location, transition = key
        del delivered  # a message given up was logged by the notifier; it is not retried
        await self._clear(location, transition, "owed_webhook")

    async def _clear(self, location: str, transition: int, mark: str) -> None:
        """Clear ``mark`` of crossing ``transition`` (not of a newer one)."""

        def change(current: StorageAlertDocument) -> dict[str, object]:
            owed = getattr(current, mark)
            return {mark: False} if owed and current.transition == transition else {}

        try:
            await self._alerts.modify(location, change)
        except StorageError as exc:  # still owed: settled by a later pass
            log.warning(
                "storage alert mark not cleared",
                extra={"location": location, "error": type(exc).__name__},
            )
