"""A small GraphQL-over-HTTP client for tests, speaking to a running modelplane."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from tests.operations import operation


async def execute(
    url: str,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    token: str | None = None,
) -> dict[str, Any]:
    """POST one operation; returns the JSON body (``data`` and maybe ``errors``)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            url, json={"query": query, "variables": variables or {}}, headers=headers
        )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def run(
    url: str, name: str, variables: dict[str, Any] | None = None, *, token: str | None = None
) -> dict[str, Any]:
    """Execute the committed operation ``name`` and return its ``data`` (errors fail the test)."""
    body = await execute(url, operation(name), variables, token=token)
    assert "errors" not in body, body["errors"]
    data: dict[str, Any] = body["data"]
    return data


class Subscription:
    """One ``graphql-transport-ws`` connection running one committed subscription operation."""

    def __init__(self, ws_url: str, name: str, variables: dict[str, Any], *, token: str) -> None:
        self._url = ws_url
        self._name = name
        self._variables = variables
        self._token = token
        self._socket: ClientConnection | None = None

    async def __aenter__(self) -> Subscription:
        self._socket = await websockets.connect(
            self._url,
            subprotocols=[Subprotocol("graphql-transport-ws")],
        )
        await self._socket.send(
            json.dumps({"type": "connection_init", "payload": {"Authorization": self._token}})
        )
        ack = json.loads(await self._socket.recv())
        assert ack["type"] == "connection_ack", ack
        await self._socket.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {"query": operation(self._name), "variables": self._variables},
                }
            )
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._socket is not None:
            await self._socket.close()

    @property
    def socket(self) -> ClientConnection:
        """The WebSocket (for tests that cut it)."""
        assert self._socket is not None
        return self._socket

    async def next(self, timeout: float = 30) -> dict[str, Any] | None:
        """The next payload's ``data`` (None once the server completed the subscription);
        GraphQL errors fail the test."""
        while True:
            message = json.loads(await asyncio.wait_for(self.socket.recv(), timeout))
            if message["type"] == "ping":
                await self.socket.send(json.dumps({"type": "pong"}))
                continue
            if message["type"] == "complete":
                return None
            assert message["type"] == "next", message
            payload = message["payload"]
            assert "errors" not in payload, payload["errors"]
            data: dict[str, Any] = payload["data"]
            return data

    async def error(self, timeout: float = 30) -> list[dict[str, Any]]:
        """The errors the server answered the subscription with."""
        message = json.loads(await asyncio.wait_for(self.socket.recv(), timeout))
        if message["type"] == "next":
            errors: list[dict[str, Any]] = message["payload"].get("errors", [])
            return errors
        assert message["type"] == "error", message
        found: list[dict[str, Any]] = message["payload"]
        return found
