"""Storage alerts on two ``modelplane serve`` replicas sharing one database and one weights
root (``tests/test_replicas.py``'s fixture): the replica that does not lead serves the alert
state (query and gauges), only the leader of ``storage-alerts`` posts the webhook, once, and a
leader killed with ``kill -9`` is replaced by one that fires nothing again."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from controllers.alerts.watching import LEASE
from tests.graphql_client import run
from tests.helpers import first_seen
from tests.test_replicas import Replica, Replicas, replicas
from tests.test_webhooks import ok, receiver

__all__ = ["replicas"]  # the fixture, used by name

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

LEASE_SECONDS = 3.0
METRICS_TOKEN = "metrics-token-for-the-replica-storage-test"


async def _usage(group: Replicas, replica: Replica, root: str) -> dict[str, object]:
    data = await run(replica.graphql_url, "WeightsList", {}, token=group.token())
    (usage,) = [u for u in data["weightsUsage"] if u["root"] == root]
    assert isinstance(usage, dict)
    return usage


async def _alert_events(group: Replicas) -> int:
    return await group.database["events"].count_documents({"resource_kind": "ALERT"})


async def test_the_follower_serves_the_alert_and_only_the_leader_posts_once(
    replicas: Replicas,
) -> None:
    root = str((replicas.state_dir / "models").resolve())
    async with receiver(ok) as hook:
        await replicas.start(
            MODELPLANE_STORAGE_ALERT_THRESHOLD="0.0001",  # any real disk is over it
            MODELPLANE_STORAGE_ALERT_INTERVAL_SECONDS="0.3",
            MODELPLANE_STORAGE_ALERT_WEBHOOK_URL=hook.url,
            MODELPLANE_CONTROLLER_LEASE_SECONDS=f"{LEASE_SECONDS:g}",
            MODELPLANE_METRICS_TOKEN=METRICS_TOKEN,
        )
        leader, follower = await replicas.roles(LEASE)
        with replicas.explained():

            async def alerting_on_follower() -> bool:
                return (await _usage(replicas, follower, root))["alerting"] is True

            assert await first_seen(alerting_on_follower, timeout=30) is not None
            usage = await _usage(replicas, follower, root)
            assert usage["alertThreshold"] == 0.0001

            async def posted() -> bool:
                return len(hook.bodies) >= 1

            assert await first_seen(posted, timeout=30) is not None
            await asyncio.sleep(2.0)  # several passes on both replicas
            assert len(hook.bodies) == 1, hook.bodies
            assert root in hook.bodies[0]["text"]
            assert await _alert_events(replicas) == 1

            async def follower_gauge() -> bool:
                async with httpx.AsyncClient() as http:
                    text = (
                        await http.get(
                            f"http://127.0.0.1:{follower.port}/metrics",
                            headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
                        )
                    ).text
                return f'modelplane_storage_alerting{{kind="LOCAL",location="{root}"}} 1.0' in text

            assert await first_seen(follower_gauge, timeout=10) is not None

            # the leader dies without a word; the follower takes the lease and fires nothing
            leader.process.send_signal(signal.SIGKILL)
            leader.process.wait()
            killed = time.monotonic()
            took = await replicas.wait_holding(follower, LEASE, timeout=LEASE_SECONDS * 2 + 10)
            replicas.figures.add(
                "kill -9 leader -> storage-alerts lease taken over",
                took - killed,
                LEASE_SECONDS * 4 / 3 + 2,
            )
            await asyncio.sleep(2.0)  # several passes as the new leader
            assert len(hook.bodies) == 1, hook.bodies
            assert await _alert_events(replicas) == 1
            state = await replicas.database["storage_alerts"].find_one({"_id": root})
            assert state is not None
            assert state["alerting"] is True
            assert state["transition"] == 1
            assert not state["owed_event"]
            assert not state["owed_webhook"]
            assert (await _usage(replicas, follower, root))["alerting"] is True
