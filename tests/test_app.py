"""The service end to end over real HTTP and WebSocket connections to uvicorn."""

from __future__ import annotations

import json
import shutil
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from storage.documents import Role
from tests.conftest import RunningApp
from tests.graphql_client import execute

WS = "graphql-transport-ws"


async def gql(app: RunningApp, query: str, token: str | None = None) -> dict[str, Any]:
    return await execute(app.graphql_url, query, token=token)


async def test_query_typename_and_server_info(running_app: RunningApp) -> None:
    body = await gql(running_app, "{ __typename serverInfo { version runtime namespace } }")
    assert body == {
        "data": {
            "__typename": "Query",
            "serverInfo": {"version": "0.1.0", "runtime": "local", "namespace": None},
        }
    }


async def test_viewer_needs_a_valid_token(running_app: RunningApp) -> None:
    anonymous = await gql(running_app, "{ viewer { subject } }")
    assert anonymous["data"] is None
    assert "authentication required" in anonymous["errors"][0]["message"]

    forged = running_app.token()[:-4] + "AAAA"
    rejected = await gql(running_app, "{ viewer { subject } }", token=forged)
    assert "authentication required" in rejected["errors"][0]["message"]

    token = running_app.token(role=Role.EDITOR, organization="org-x", subject="sam")
    body = await gql(running_app, "{ viewer { subject organizationId role } }", token=token)
    assert body["data"]["viewer"] == {"subject": "sam", "organizationId": "org-x", "role": "EDITOR"}


async def test_graphiql_is_served(running_app: RunningApp) -> None:
    async with httpx.AsyncClient() as http:
        page = await http.get(running_app.graphql_url, headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert "graphiql" in page.text.lower()


async def _init(ws: ClientConnection, token: str) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": token}}))
    ack: dict[str, Any] = json.loads(await ws.recv())
    return ack


async def test_subscription_streams_heartbeats(running_app: RunningApp) -> None:
    token = running_app.token()
    async with websockets.connect(running_app.ws_url, subprotocols=[WS]) as ws:  # type: ignore[list-item]
        ack = await _init(ws, f"Bearer {token}")
        assert ack == {"type": "connection_ack", "payload": {"organizationId": "default"}}
        await ws.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {
                        "query": "subscription { heartbeat(intervalSeconds: 0.1, count: 3) "
                        "{ sequence serverTime } }"
                    },
                }
            )
        )
        messages = [json.loads(await ws.recv()) for _ in range(4)]
    sequences = [m["payload"]["data"]["heartbeat"]["sequence"] for m in messages[:3]]
    assert sequences == [1, 2, 3]
    assert messages[3] == {"id": "1", "type": "complete"}


async def test_websocket_without_valid_token_is_rejected(running_app: RunningApp) -> None:
    async with websockets.connect(running_app.ws_url, subprotocols=[WS]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": "x"}}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4403


async def test_subscribe_before_init_is_unauthorized(running_app: RunningApp) -> None:
    async with websockets.connect(running_app.ws_url, subprotocols=[WS]) as ws:  # type: ignore[list-item]
        await ws.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {"query": "subscription { heartbeat { sequence } }"},
                }
            )
        )
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401


async def test_legacy_graphql_ws_protocol_is_not_served(running_app: RunningApp) -> None:
    async with websockets.connect(running_app.ws_url, subprotocols=["graphql-ws"]) as ws:  # type: ignore[list-item]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4406  # "Subprotocol not acceptable"


async def test_health_readiness_and_metrics(running_app: RunningApp) -> None:
    async with httpx.AsyncClient(base_url=running_app.base_url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"
        response = await http.get("/healthz", headers={"X-Request-Id": "abc123"})
        assert response.headers["x-request-id"] == "abc123"
        admin = {"Authorization": f"Bearer {running_app.token()}"}
        metrics = (await http.get("/metrics", headers=admin)).text
    assert (
        'modelplane_http_requests_total{method="GET",route="/healthz",status="200"} 2.0' in metrics
    )
    assert "modelplane_http_request_duration_seconds_bucket" in metrics


async def test_readyz_is_503_with_the_reason_when_the_runtime_breaks(
    running_app: RunningApp,
) -> None:
    state_dir = running_app.resources.settings.state_dir
    shutil.rmtree(state_dir)
    async with httpx.AsyncClient(base_url=running_app.base_url) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert any("state directory" in reason for reason in body["reasons"])


async def test_unexpected_errors_are_masked_and_expected_ones_are_not() -> None:
    import strawberry

    from schema.building import NotAuthenticated, build_schema

    def broken() -> int:
        raise KeyError("internal-detail-xyz")

    def guarded() -> int:
        raise NotAuthenticated("authentication required")

    def echo(n: int) -> int:
        return n

    @strawberry.type(description="test root")
    class Query:
        broken_field: int = strawberry.field(resolver=broken, name="broken")
        guarded_field: int = strawberry.field(resolver=guarded, name="guarded")
        echo_field: int = strawberry.field(resolver=echo, name="echo")

    schema = build_schema(query=Query)
    masked = await schema.execute("{ broken }")
    assert masked.errors is not None
    assert masked.errors[0].message == "Unexpected error."
    passed = await schema.execute("{ guarded }")
    assert passed.errors is not None
    assert passed.errors[0].message == "authentication required"
    # A variable of the wrong type is the caller's mistake: said as it is, not masked.
    refused = await schema.execute("query ($n: Int!) { echo(n: $n) }", variable_values={"n": "x"})
    assert refused.errors is not None
    assert "Int cannot represent" in refused.errors[0].message
