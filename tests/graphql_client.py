"""A small GraphQL-over-HTTP client for tests, speaking to a running modelplane."""

from __future__ import annotations

from typing import Any

import httpx

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
