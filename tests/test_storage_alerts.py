"""Storage alerts against real servers: FerretDB (the alert states, the event log), a webhook
receiver on loopback, modelplane served in-process, and the settings refused at start-up.

A local root's real disk cannot be filled in a test, so the watcher is handed the figures of
its filesystem (``usage=``, the seam ``shutil.disk_usage`` sits behind), or the served app is
given a tiny threshold (0.0001: any real disk is over it)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from controllers.alerts.deciding import AlertPolicy
from controllers.alerts.watching import StorageWatch, WatchConfig
from integrations.webhooks import WebhookPolicy
from live import Event, EventLog, Recorder, ResourceKind
from modelplane.settings import SettingsError, load_settings
from storage.alerts import StorageAlertDocument, StorageAlertRepository
from storage.client import Client, Database
from storage.documents import TargetKind
from storage.repositories import WeightsRepository
from testbed.hub import RunningHub
from tests.conftest import make_settings, serve_app
from tests.graphql_client import Subscription, run
from tests.helpers import first_seen
from tests.test_cli import BASE_ENV
from tests.test_webhooks import Receiver, ok, receiver

FAST = WebhookPolicy(attempts=3, timeout=2.0, backoff_base=0.05, backoff_cap=0.2)


@dataclass
class Disk:
    """The figures a test gives the watcher for its root's filesystem."""

    total: int = 1000
    used: int = 100

    def __call__(self, _path: Path) -> tuple[int, int, int]:
        return self.total, self.used, self.total - self.used


@pytest.fixture
async def log(database: Database) -> EventLog:
    event_log = EventLog(database, size_bytes=1024 * 1024, poll_interval=0.05)
    await event_log.ensure()
    return event_log


@pytest.fixture
async def hook() -> AsyncIterator[Receiver]:
    async with receiver(ok) as running:
        yield running


def _watch(
    database: Database, log: EventLog, root: Path, disk: Disk, url: str | None
) -> StorageWatch:
    return StorageWatch(
        weights=WeightsRepository(database),
        alerts=StorageAlertRepository(database),
        recorder=Recorder(log),
        config=WatchConfig(
            roots=(root,),
            policy=AlertPolicy(threshold=0.85, hysteresis=0.05),
            interval=3600,  # the test calls tick(): no pass of its own
            webhook_url=url,
            webhook=FAST,
        ),
        leases=None,  # always leading: the lease is tests/test_storage_alert_replicas.py's
        holder="test",
        lease_seconds=15,
        usage=disk,
    )


async def _alerts(log: EventLog) -> list[Event]:
    every = await log.after(0, limit=1000, organization_id="any-organisation")
    return [e for e in every if e.resource_kind is ResourceKind.ALERT]


async def _settled(database: Database, location: str) -> StorageAlertDocument:
    """The location's state once nothing is owed any more."""
    alerts = StorageAlertRepository(database)

    async def done() -> bool:
        state = await alerts.get(location)
        return state is not None and not state.owed_event and not state.owed_webhook

    assert await first_seen(done, timeout=20) is not None
    found = await alerts.get(location)
    assert found is not None
    return found


async def test_each_crossing_is_recorded_once_and_survives_a_restart(
    tmp_path: Path, database: Database, log: EventLog, hook: Receiver
) -> None:
    root = tmp_path / "models"
    root.mkdir()
    disk = Disk(used=100)
    first = _watch(database, log, root, disk, hook.url)
    first.start()
    try:
        await first.tick()
        assert await StorageAlertRepository(database).all() == {}  # clear: nothing stored
        assert [(s.usage.used, s.alerting) for s in first.locations] == [(100, False)]

        disk.used = 900  # 90 % >= 85 %: up
        await first.tick()
        state = await _settled(database, str(root))
        assert (state.alerting, state.transition, state.kind) == (True, 1, TargetKind.LOCAL)
        await first.tick()  # still over: nothing again
        await first.tick()
        assert first.locations[0].alerting
    finally:
        await first.stop()
    (raised,) = await _alerts(log)
    assert (raised.phase, raised.resource_id) == ("ALERTING", str(root))
    assert raised.message is not None
    assert "90.0 % used" in raised.message
    assert [b["text"] for b in hook.bodies] == [raised.message]

    # a restart (or a new leader): the stored state is read first, so nothing fires again
    second = _watch(database, log, root, disk, hook.url)
    second.start()
    try:
        await second.tick()
        disk.used = 830  # inside the hysteresis band: still alerting
        await second.tick()
        assert len(await _alerts(log)) == 1
        assert len(hook.bodies) == 1
        disk.used = 790  # below 85 % - 5 %: the clear, which the new watcher does not miss
        await second.tick()
        state = await _settled(database, str(root))
        assert (state.alerting, state.transition) == (False, 2)
    finally:
        await second.stop()
    raised, cleared = await _alerts(log)
    assert cleared.phase == "CLEAR"
    assert cleared.message is not None
    assert "back under" in cleared.message
    assert [b["text"] for b in hook.bodies] == [raised.message, cleared.message]


async def test_a_new_leader_finishes_what_a_dead_one_owed(
    tmp_path: Path, database: Database, log: EventLog, hook: Receiver
) -> None:
    """A leader killed after its crossing's write (and here after the event's append too):
    the next one appends nothing twice and sends the message it owed, once."""
    root = tmp_path / "models"
    root.mkdir()
    message = f"Storage {root} is over its alert threshold of 85 %"
    await StorageAlertRepository(database).insert(
        StorageAlertDocument.model_validate(
            {
                "_id": str(root),
                "kind": TargetKind.LOCAL,
                "alerting": True,
                "transition": 1,
                "threshold": 0.85,
                "message": message,
                "owed_event": True,
                "owed_webhook": True,
            }
        )
    )
    assert await Recorder(log).storage_alert(
        location=str(root), transition=1, phase="ALERTING", message=message
    )
    watch = _watch(database, log, root, Disk(used=950), hook.url)
    watch.start()
    try:
        await watch.tick()
        state = await _settled(database, str(root))
        await watch.tick()
    finally:
        await watch.stop()
    assert (state.alerting, state.transition) == (True, 1)
    assert len(await _alerts(log)) == 1
    assert [b["text"] for b in hook.bodies] == [message]


async def test_without_a_webhook_nothing_is_owed_to_one(
    tmp_path: Path, database: Database, log: EventLog
) -> None:
    root = tmp_path / "models"
    root.mkdir()
    watch = _watch(database, log, root, Disk(used=999), None)
    watch.start()
    try:
        await watch.tick()
        state = await _settled(database, str(root))
    finally:
        await watch.stop()
    assert state.alerting
    assert not state.owed_webhook
    assert len(await _alerts(log)) == 1


async def test_served_alert_reaches_the_query_the_subscription_the_gauges_and_the_hook(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub, hook: Receiver
) -> None:
    settings = make_settings(
        tmp_path,
        mongo_uri,
        hf_endpoint=hub.endpoint,
        storage_alert_threshold=0.0001,  # any real disk is over it
        storage_alert_interval_seconds=0.2,
        storage_alert_webhook_url=hook.url,
        metrics_token="metrics-token-for-the-storage-test",
    )
    root = str(settings.local_roots[0])
    async with serve_app(settings, mongo_client) as app:
        token = app.token(organization="org-a")

        async def alerting() -> bool:
            data = await run(app.graphql_url, "WeightsList", {}, token=token)
            (usage,) = [u for u in data["weightsUsage"] if u["root"] == root]
            return bool(usage["alerting"])

        assert await first_seen(alerting, timeout=30) is not None
        data = await run(app.graphql_url, "WeightsList", {}, token=token)
        (usage,) = [u for u in data["weightsUsage"] if u["root"] == root]
        assert usage["kind"] == "LOCAL"
        assert usage["alertThreshold"] == 0.0001
        assert "secret-path" not in json.dumps(data)

        # server-wide: another organisation's subscriber gets it too, replayed from the log
        other = app.token(organization="org-b")
        async with Subscription(app.ws_url, "StorageAlerts", {"after": "0"}, token=other) as sub:
            event = await sub.next()
        assert event is not None
        alert = event["storageAlerts"]
        assert (alert["type"], alert["resourceKind"]) == ("PHASE_CHANGED", "ALERT")
        assert (alert["resourceId"], alert["phase"]) == (root, "ALERTING")

        async with httpx.AsyncClient(base_url=app.base_url) as http:
            bearer = {"Authorization": "Bearer metrics-token-for-the-storage-test"}
            metrics = (await http.get("/metrics", headers=bearer)).text
        labels = f'{{kind="LOCAL",location="{root}"}}'
        assert f"modelplane_storage_alerting{labels} 1.0" in metrics
        assert f"modelplane_storage_alert_threshold{labels} 0.0001" in metrics
        assert f"modelplane_storage_used_bytes{labels}" in metrics
        assert f"modelplane_storage_capacity_bytes{labels}" in metrics
        assert "secret-path" not in metrics

        async def posted() -> bool:
            return len(hook.bodies) >= 1

        assert await first_seen(posted, timeout=20) is not None
        await asyncio.sleep(1.0)  # five more passes: still one message
    assert len(hook.bodies) == 1
    assert root in hook.bodies[0]["text"]


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("MODELPLANE_STORAGE_ALERT_THRESHOLD", "0", "greater than 0"),
        ("MODELPLANE_STORAGE_ALERT_THRESHOLD", "1.5", "less than or equal to 1"),
        ("MODELPLANE_STORAGE_ALERT_THRESHOLD", "ninety", "valid number"),
        ("MODELPLANE_STORAGE_ALERT_THRESHOLDS", '{"pvc://m": 0}', "above 0 and at most 1"),
        ("MODELPLANE_STORAGE_ALERT_THRESHOLDS", '{"pvc://m": "x"}', "must be a number"),
        ("MODELPLANE_STORAGE_ALERT_THRESHOLDS", "[0.5]", "JSON object"),
        ("MODELPLANE_STORAGE_ALERT_S3_QUOTAS", '{"https://b/p": 10}', "s3://"),
        ("MODELPLANE_STORAGE_ALERT_S3_QUOTAS", '{"s3://b/p": -1}', "whole number"),
        ("MODELPLANE_STORAGE_ALERT_WEBHOOK_URL", "ftp://hooks.example/T0/secret", "http"),
        ("MODELPLANE_STORAGE_ALERT_WEBHOOK_URL", "hooks.example/T0/secret", "http"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(setting: str, value: str, says: str) -> None:
    field = setting.removeprefix("MODELPLANE_").lower()
    with pytest.raises(SettingsError) as refused:
        load_settings(**{field: value})
    text = str(refused.value)
    assert text.startswith(f"{setting}: "), text
    assert says in text
    assert "secret" not in text  # a webhook URL is never echoed


def test_serve_refuses_a_bad_webhook_url_at_start_up(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "modelplane", "serve"],
        env={
            **BASE_ENV,
            "MODELPLANE_STATE_DIR": str(tmp_path),
            "MODELPLANE_STORAGE_ALERT_WEBHOOK_URL": "file:///etc/secret-hook",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "MODELPLANE_STORAGE_ALERT_WEBHOOK_URL" in result.stderr
    assert "secret-hook" not in result.stderr + result.stdout
