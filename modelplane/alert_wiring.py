"""Where the storage watcher is built from the settings and started (stopped with the stack).

Every replica that runs controllers runs one: each measures every location on the period (its
gauges at ``/metrics``), and the one leading the ``storage-alerts`` lease records the crossings
and owns the webhook deliveries (``controllers/alerts/watching.py``)."""

from __future__ import annotations

from contextlib import AsyncExitStack

from controllers.alerts.watching import StorageWatch, WatchConfig
from integrations.webhooks import WebhookPolicy
from live import Recorder
from modelplane.controller_wiring import lease_holder
from modelplane.settings import Settings
from storage.alerts import StorageAlertRepository
from storage.client import Database
from storage.repositories import LeaseRepository, WeightsRepository


def watch_config(settings: Settings) -> WatchConfig:
    """The watcher's locations, thresholds, period and webhook from the settings."""
    url = settings.storage_alert_webhook_url
    return WatchConfig(
        roots=tuple(settings.local_roots),
        policy=settings.storage_alert_policy(),
        s3_quotas=dict(settings.storage_alert_s3_quotas),
        interval=settings.storage_alert_interval_seconds,
        webhook_url=None if url is None else url.get_secret_value().strip(),
        webhook=WebhookPolicy(
            attempts=settings.storage_alert_webhook_attempts,
            timeout=settings.storage_alert_webhook_timeout_seconds,
        ),
    )


def start_storage_watch(
    stack: AsyncExitStack, settings: Settings, database: Database, *, recorder: Recorder
) -> StorageWatch | None:
    """The storage watcher, started (stopped with the stack); None when this process runs no
    controllers."""
    if not settings.run_controllers:
        return None
    watch = StorageWatch(
        weights=WeightsRepository(database),
        alerts=StorageAlertRepository(database),
        recorder=recorder,
        config=watch_config(settings),
        leases=LeaseRepository(database),
        holder=lease_holder(),
        lease_seconds=settings.controller_lease_seconds,
    )
    watch.start()
    stack.push_async_callback(watch.stop)
    return watch
