"""A PVC's storage alert on the Kubernetes testbed: a download Job's pod measures the claim's
filesystem, and the watcher holds that measurement against the claim's own threshold (a
per-location override, ``MODELPLANE_STORAGE_ALERT_THRESHOLDS``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.client import Client
from storage.documents import Role
from testbed import kubelet, servers
from testbed.hub import RunningHub
from tests.conftest import HUB_TOKEN, RunningApp, kube_settings, serve_app
from tests.graphql_client import Subscription, run
from tests.helpers import first_seen
from tests.test_download_jobs import _api, _create_pvc_model, _jobs, _mongo_secret, _wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CLAIM = "pvc://alerts-a"


@pytest.fixture
async def alerting_kube_app(
    tmp_path: Path,
    mongo_uri: str,
    mongo_client: Client,
    hub: RunningHub,
    kube: servers.KubeCluster,
    kube_namespace: str,
) -> AsyncIterator[RunningApp]:
    settings = kube_settings(
        tmp_path,
        mongo_uri,
        hub,
        kube,
        kube_namespace,
        storage_alert_thresholds=f'{{"{CLAIM}": 0.0001}}',  # any real filesystem is over it
        storage_alert_interval_seconds=0.2,
    )
    async with serve_app(settings, mongo_client) as running:
        yield running


async def test_a_pvc_over_its_threshold_alerts(
    alerting_kube_app: RunningApp, hub: RunningHub, mongo_uri: str, tmp_path: Path
) -> None:
    app = alerting_kube_app
    await _mongo_secret(app, mongo_uri)
    await _create_pvc_model(
        app, "gated-org/gated-model", claim="alerts-a", size_gi=5, token=HUB_TOKEN
    )
    (job,) = await _wait_for(lambda: _jobs(app), what="the download Job")
    code = await kubelet.run_job_pod(
        _api(app),
        app.resources.settings.namespace,
        job.metadata.name,
        volumes={"weights": tmp_path / "pvc"},
    )
    assert code == 0
    token = app.token(role=Role.VIEWER, organization="org-a")

    async def claim_alerting() -> bool:
        listing = await run(app.graphql_url, "WeightsList", {}, token=token)
        claims = [u for u in listing["weightsUsage"] if u["root"] == CLAIM]
        return bool(claims) and claims[0]["alerting"] is True

    assert await first_seen(claim_alerting, timeout=60) is not None
    listing = await run(app.graphql_url, "WeightsList", {}, token=token)
    (usage,) = [u for u in listing["weightsUsage"] if u["root"] == CLAIM]
    assert usage["kind"] == "PVC"
    assert usage["alertThreshold"] == 0.0001
    default = [u for u in listing["weightsUsage"] if u["root"] != CLAIM]
    assert all(u["alertThreshold"] == 0.85 for u in default)
    events = app.resources.database["events"]
    stored = await events.find_one({"resource_kind": "ALERT", "resource_id": CLAIM})
    assert stored is not None
    assert stored["phase"] == "ALERTING"
    # the claim's name is org-a's: its alert goes to org-a only, never server-wide
    holders = await events.distinct(
        "organization_id", {"resource_kind": "ALERT", "resource_id": CLAIM}
    )
    assert holders == ["org-a"]
    mine = app.token(role=Role.VIEWER, organization="org-a")
    async with Subscription(app.ws_url, "StorageAlerts", {"after": "0"}, token=mine) as sub:
        event = await sub.next()
    assert event is not None
    assert event["storageAlerts"]["resourceId"] == CLAIM
    other = app.token(role=Role.VIEWER, organization="org-b")
    seen = []  # a local root's alerts are server-wide and may come; the claim's must not
    async with Subscription(app.ws_url, "StorageAlerts", {"after": "0"}, token=other) as sub:
        with contextlib.suppress(TimeoutError):
            while (payload := await sub.next(timeout=3)) is not None:
                seen.append(payload["storageAlerts"]["resourceId"])
    assert CLAIM not in seen, seen
