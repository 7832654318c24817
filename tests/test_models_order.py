"""``models(orderBy:)``: newest (the default), oldest, or by name either way; ties broken by id
so consecutive pages never overlap, and an unknown order is refused by GraphQL itself."""

from __future__ import annotations

from typing import Any

from storage.documents import Role
from tests.conftest import RunningApp
from tests.graphql_client import execute, run
from tests.operations import operation
from tests.test_models_api import create, remote


async def test_models_are_listed_in_the_order_asked_for(running_app: RunningApp) -> None:
    for name in ("bravo", "alpha", "charlie", "delta"):
        assert (await create(running_app, remote(name=name)))["__typename"] == "Model"
    token = running_app.token(role=Role.VIEWER, organization="org-a")

    async def names(limit: int = 50, offset: int = 0, **order: Any) -> list[str]:
        variables = {"limit": limit, "offset": offset, **order}
        data = await run(running_app.graphql_url, "Models", variables, token=token)
        assert data["models"]["total"] == 4
        return [m["name"] for m in data["models"]["items"]]

    assert await names() == ["delta", "charlie", "alpha", "bravo"]  # newest first by default
    assert await names(orderBy="NEWEST") == ["delta", "charlie", "alpha", "bravo"]
    assert await names(orderBy="OLDEST") == ["bravo", "alpha", "charlie", "delta"]
    assert await names(orderBy="NAME") == ["alpha", "bravo", "charlie", "delta"]
    assert await names(orderBy="NAME_DESC") == ["delta", "charlie", "bravo", "alpha"]
    pages = [await names(limit=3, offset=0, orderBy="NAME"), await names(3, 3, orderBy="NAME")]
    assert pages == [["alpha", "bravo", "charlie"], ["delta"]]

    body = await execute(
        running_app.graphql_url, operation("Models"), {"orderBy": "SIZE"}, token=token
    )
    assert body.get("data") is None, body
    assert "ModelOrder" in body["errors"][0]["message"], body
