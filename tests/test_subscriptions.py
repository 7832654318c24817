"""Subscriptions over graphql-transport-ws against a running modelplane: downloadProgress to the
end, modelEvents live and resumed with ``after``, organisation isolation, two API processes
sharing one MongoDB, token expiry (4401) and bad input."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from bson.int64 import Int64
from pymongo.errors import BulkWriteError

from schema import sharing
from storage.client import Client
from storage.documents import Role, utcnow
from testbed.hub import RunningHub
from tests.conftest import RunningApp, make_settings, serve_app
from tests.graphql_client import Subscription, run

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def slow_hub(hub: RunningHub) -> Iterator[None]:
    """Weights at 1 MiB/s, so a 2 MB download lasts long enough to report progress."""
    hub.hub.faults.clear()
    hub.hub.faults.throttle("*.safetensors", 1 * MiB)
    yield
    hub.hub.faults.clear()


async def _create(app: RunningApp, repo: str, organization: str = "org-a") -> dict[str, Any]:
    root = app.resources.settings.local_roots[0]
    value = {
        "source": {"url": repo, "accessMode": "LOCAL"},
        "downloadTarget": {"local": {"localPath": str(root / organization / repo)}},
    }
    data = await run(
        app.graphql_url,
        "CreateModel",
        {"input": value},
        token=app.token(role=Role.EDITOR, organization=organization),
    )
    created: dict[str, Any] = data["createModel"]
    assert created["__typename"] == "Model", created
    return created


async def _events_until(
    subscription: Subscription, done: Any, *, limit: int = 200
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for _ in range(limit):
        data = await subscription.next()
        assert data is not None, "the stream ended early"
        events.append(data["modelEvents"])
        if done(events[-1]):
            return events
    raise AssertionError(f"no final event in {events}")


def _model_ready(event: dict[str, Any]) -> bool:
    return (
        event["resourceKind"] == "MODEL"
        and event["type"] == "PHASE_CHANGED"
        and event["phase"] in ("READY", "FAILED")
    )


async def test_download_progress_streams_to_ready_then_completes(running_app: RunningApp) -> None:
    created = await _create(running_app, "tiny-org/tiny-model")
    token = running_app.token(role=Role.VIEWER, organization="org-a")
    seen: list[dict[str, Any]] = []
    async with Subscription(
        running_app.ws_url, "DownloadProgress", {"modelId": created["id"]}, token=token
    ) as subscription:
        while (data := await subscription.next()) is not None:
            seen.append(data["downloadProgress"])
    assert seen, "nothing streamed"
    assert seen[-1]["state"] == "READY"
    progressed = [w["progress"]["bytesDone"] for w in seen if w["progress"]]
    assert len(progressed) >= 2, seen
    assert progressed == sorted(progressed)
    assert progressed[-1] == seen[-1]["progress"]["bytesTotal"]


async def test_model_events_live_then_resumed_after_a_cursor(running_app: RunningApp) -> None:
    token = running_app.token(role=Role.VIEWER, organization="org-a")
    async with Subscription(running_app.ws_url, "ModelEvents", {}, token=token) as subscription:
        created = await _create(running_app, "tiny-org/tiny-model")
        live = await _events_until(subscription, _model_ready)
    mine = [e for e in live if created["id"] in e["modelIds"]]
    assert mine[0]["type"] == "CREATED"
    assert mine[0]["phase"] == "PENDING"
    kinds = [(e["resourceKind"], e["type"], e["phase"]) for e in mine]
    assert ("MODEL", "PHASE_CHANGED", "PULLING") in kinds
    assert ("WEIGHTS", "PHASE_CHANGED", "READY") in kinds
    assert any(e["type"] == "PROGRESS" and e["progress"]["bytesDone"] > 0 for e in mine)
    assert mine[-1]["phase"] == "READY"
    cursors = [int(e["cursor"]) for e in live]
    assert cursors == sorted(set(cursors)), "cursors are increasing and unique"

    # A client that lost its socket after the third event resumes with `after` and gets
    # exactly the rest, in order, without a gap or a duplicate.
    after = live[2]["cursor"]
    async with Subscription(
        running_app.ws_url, "ModelEvents", {"after": after, "modelId": created["id"]}, token=token
    ) as resumed:
        replayed = await _events_until(resumed, _model_ready)
    assert [e["cursor"] for e in replayed] == [
        e["cursor"] for e in mine if int(e["cursor"]) > int(after)
    ]


async def test_other_organisations_events_are_never_delivered(running_app: RunningApp) -> None:
    token_b = running_app.token(role=Role.VIEWER, organization="org-b")
    async with Subscription(running_app.ws_url, "ModelEvents", {}, token=token_b) as org_b:
        await _create(running_app, "tiny-org/tiny-model", organization="org-a")
        mine = await _create(running_app, "tiny-org/sharded-model", organization="org-b")
        first = await org_b.next()
    assert first is not None
    assert first["modelEvents"]["resourceId"] == mine["id"]
    assert first["modelEvents"]["type"] == "CREATED"


async def test_two_api_processes_deliver_each_others_events(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> None:
    shared = make_settings(tmp_path / "one", mongo_uri, hf_endpoint=hub.endpoint)
    other = make_settings(
        tmp_path / "two",
        mongo_uri,
        hf_endpoint=hub.endpoint,
        mongodb_database=shared.mongodb_database,
        secret_key=shared.secret_key,
    )
    async with serve_app(shared, mongo_client) as one, serve_app(other, mongo_client) as two:
        token = one.token(role=Role.VIEWER, organization="org-a")
        async with (
            Subscription(one.ws_url, "ModelEvents", {}, token=token) as on_one,
            Subscription(two.ws_url, "ModelEvents", {}, token=token) as on_two,
        ):
            written_on_one = await _create(one, "tiny-org/tiny-model")
            got = [await on_one.next(), await on_two.next()]
            written_on_two = await _create(two, "tiny-org/sharded-model")
            created_two = [await _next_created(s) for s in (on_one, on_two)]
    assert all(
        g is not None and g["modelEvents"]["resourceId"] == written_on_one["id"] for g in got
    )
    assert created_two == [written_on_two["id"], written_on_two["id"]]


async def _next_created(subscription: Subscription) -> str:
    while True:
        data = await subscription.next()
        assert data is not None
        if data["modelEvents"]["type"] == "CREATED":
            return str(data["modelEvents"]["resourceId"])


async def test_an_expired_token_closes_the_socket_with_4401(running_app: RunningApp) -> None:
    token = running_app.token(role=Role.VIEWER, organization="org-a", ttl_seconds=2)
    async with Subscription(running_app.ws_url, "ModelEvents", {}, token=token) as subscription:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await _drain(subscription)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401


async def _drain(subscription: Subscription) -> None:
    """Read until the server closes (events of other tests' models may arrive meanwhile)."""
    while await subscription.next(timeout=10) is not None:
        pass


@pytest.mark.parametrize(
    ("operation", "variables", "needle"),
    [
        ("ModelEvents", {"after": "not-a-cursor"}, "invalid event cursor"),
        ("ModelEvents", {"modelId": "model-nope"}, "not found"),
        ("DownloadProgress", {"modelId": "model-nope"}, "not found"),
    ],
)
async def test_bad_subscription_input_is_a_clear_error(
    running_app: RunningApp, operation: str, variables: dict[str, Any], needle: str
) -> None:
    token = running_app.token(role=Role.VIEWER, organization="org-a")
    async with Subscription(running_app.ws_url, operation, variables, token=token) as bad:
        errors = await bad.error()
    assert needle in errors[0]["message"], errors


async def test_subscribers_leave_no_queue_behind(running_app: RunningApp) -> None:
    token = running_app.token(role=Role.VIEWER, organization="org-a")
    broker = running_app.resources.services.broker
    before = broker.subscribers
    async with Subscription(running_app.ws_url, "ModelEvents", {}, token=token):
        for _ in range(50):
            if broker.subscribers == before + 1:
                break
            await asyncio.sleep(0.05)
        assert broker.subscribers == before + 1
    for _ in range(50):
        if broker.subscribers == before:
            break
        await asyncio.sleep(0.05)
    assert broker.subscribers == before


async def test_download_progress_outlives_an_overflow(running_app: RunningApp) -> None:
    """A burst of events larger than a subscriber's queue ends its broker stream with OVERFLOW;
    downloadProgress opens a new one and still ends on READY (it never completes early)."""
    created = await _create(running_app, "tiny-org/tiny-model")
    token = running_app.token(role=Role.VIEWER, organization="org-a")
    database = running_app.resources.database
    seen: list[dict[str, Any]] = []
    async with Subscription(
        running_app.ws_url, "DownloadProgress", {"modelId": created["id"]}, token=token
    ) as subscription:
        first = await subscription.next()
        assert first is not None
        seen.append(first["downloadProgress"])
        # 400 events for the model at once, as another process would append them.
        head = await database["event_head"].find_one({"_id": "head"})
        start = int(head["cursor"]) + 1 if head else 1
        burst = [
            {
                "_id": Int64(cursor),
                "organization_id": "org-a",
                "resource_kind": "MODEL",
                "resource_id": created["id"],
                "model_ids": [created["id"]],
                "type": "UPDATED",
                "phase": "PULLING",
                "message": None,
                "progress": None,
                "at": utcnow(),
            }
            for cursor in range(start, start + 400)
        ]
        with contextlib.suppress(BulkWriteError):  # a concurrent append may own a cursor
            await database["events"].insert_many(burst, ordered=False)
        await database["event_head"].update_one(
            {"_id": "head"}, {"$max": {"cursor": Int64(start + 399)}}, upsert=True
        )
        while (data := await subscription.next()) is not None:
            seen.append(data["downloadProgress"])
    assert seen[-1]["state"] == "READY", seen[-1]


async def test_subscribers_of_one_event_share_one_execution(
    running_app: RunningApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Subscribers with the same selection get one shared view per event, executed once (the
    others reuse the result or its JSON); other variables execute apart."""
    executed: dict[tuple[str, int], int] = {}
    original = sharing.SharingExecutor.build_per_event_executor

    def counting(self: sharing.SharingExecutor, payload: Any) -> Any:
        built = original(self, payload)
        if not isinstance(built, sharing._Executed):  # a real execution over this payload
            key = (str(self._share_key), id(payload))
            executed[key] = executed.get(key, 0) + 1
        return built

    monkeypatch.setattr(sharing.SharingExecutor, "build_per_event_executor", counting)
    token = running_app.token(role=Role.VIEWER, organization="org-a")
    url = running_app.ws_url
    async with (
        Subscription(url, "ModelEvents", {}, token=token) as one,
        Subscription(url, "ModelEvents", {}, token=token) as two,
        Subscription(url, "ModelEvents", {"after": None, "modelId": None}, token=token) as three,
    ):
        created = await _create(running_app, "tiny-org/tiny-model")
        got = [await s.next() for s in (one, two, three)]
    events = [g["modelEvents"] for g in got if g is not None]
    assert [e["resourceId"] for e in events] == [created["id"]] * 3
    assert events[0] == events[1] == events[2]
    views = running_app.resources.services.event_views
    view = views.view(await _stored(running_app, int(events[0]["cursor"])))
    assert len(view.shared_results) == 2  # {} and {after: null, modelId: null}
    mine = {key: count for key, count in executed.items() if key[1] == id(view)}
    assert sorted(mine.values()) == [1, 1], executed  # once per selection, not per subscriber


async def _stored(app: RunningApp, cursor: int) -> Any:
    (event,) = [
        e
        for e in await app.resources.services.broker.log.after(cursor - 1, limit=1)
        if e.cursor == cursor
    ]
    return event


def _direct_deliveries(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith('modelplane_subscription_events_total{path="direct"}'):
            return float(line.split()[-1])
    raise AssertionError("no direct delivery counter in /metrics")


async def test_live_events_take_the_fast_lane_in_order(running_app: RunningApp) -> None:
    """Idle live subscribers get events written to their connection by the broker (the fast
    lane of modelplane/direct.py): identical streams, in cursor order, and counted as such."""
    token = running_app.token(role=Role.VIEWER, organization="org-a")
    url = running_app.ws_url
    admin = {"Authorization": f"Bearer {running_app.token()}"}
    async with httpx.AsyncClient(base_url=running_app.base_url, headers=admin) as http:
        before = _direct_deliveries((await http.get("/metrics")).text)
        async with (
            Subscription(url, "ModelEvents", {}, token=token) as one,
            Subscription(url, "ModelEvents", {}, token=token) as two,
        ):
            await _create(running_app, "tiny-org/tiny-model")
            first = await _events_until(one, _model_ready)
            second = await _events_until(two, _model_ready)
        after = _direct_deliveries((await http.get("/metrics")).text)
    assert first == second
    cursors = [int(e["cursor"]) for e in first]
    assert cursors == sorted(set(cursors))
    assert after - before >= len(first), (before, after)
