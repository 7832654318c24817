"""What teams coming from the four REST model APIs rely on (docs/coming-from-rest.md).

Two halves: every GraphQL example in the guide parses and validates against the committed
schema (so the guide cannot drift from the contract), and the gaps the guide's table closed
hold against a running modelplane: the organisation API addresses a model by its name
(``GET /v1/organization/models/{name}`` -> ``models(filter: {name})``), and the playground API
says why a remote model is Ready.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from graphql import OperationDefinitionNode, build_schema, parse, validate
from storage.documents import Role
from tests.conftest import RunningApp
from tests.graphql_client import execute, run
from tests.operations import operation

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "coming-from-rest.md"
SCHEMA = ROOT / "graphql" / "schema.graphql"
_BLOCK = re.compile(r"```graphql( planned)?\n(.*?)```", re.DOTALL)


def guide_examples() -> list[tuple[str, str, bool]]:
    """(operation name, text, planned) of every ```graphql block of the guide; a block fenced
    ```graphql planned shows the shape of a contract change not merged yet."""
    found: list[tuple[str, str, bool]] = []
    for planned, text in _BLOCK.findall(GUIDE.read_text()):
        definition = parse(text).definitions[0]
        assert isinstance(definition, OperationDefinitionNode)
        assert definition.name is not None, f"an example has no operation name:\n{text}"
        found.append((definition.name.value, text, bool(planned)))
    return found


def test_the_guide_has_an_example_for_each_rest_operation() -> None:
    names = [name for name, _, _ in guide_examples()]
    assert len(names) >= 20
    assert len(names) == len(set(names)), "example operation names repeat"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        pytest.param(
            name,
            text,
            marks=pytest.mark.xfail(
                strict=True,
                reason="planned shape: once it validates, drop 'planned' from its fence",
            )
            if planned
            else (),
        )
        for name, text, planned in guide_examples()
    ],
)
def test_each_guide_example_is_valid_against_the_schema(name: str, text: str) -> None:
    schema = build_schema(SCHEMA.read_text())
    errors = validate(schema, parse(text))
    assert errors == [], f"{name}: {[e.message for e in errors]}"


def remote(name: str, **overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "source": {"url": "https://api.deepseek.com/v1", "accessMode": "REMOTE_API"},
        "displayName": f"Remote {name}",
        "name": name,
    }
    value.update(overrides)
    return value


async def test_a_model_is_found_by_its_exact_name(running_app: RunningApp) -> None:
    """The organisation API's id is the model's name; ``filter: {name}`` is an exact match
    (not a substring like ``search``), live models only unless ``includeDeleted``."""
    url = running_app.graphql_url
    editor = running_app.token(role=Role.EDITOR, organization="org-a")
    created = {}
    for name in ("llama-7b", "llama-7b-chat"):
        data = await run(url, "CreateModel", {"input": remote(name)}, token=editor)
        created[name] = data["createModel"]
    await run(
        url,
        "CreateModel",
        {"input": remote("llama-7b")},
        token=running_app.token(role=Role.EDITOR, organization="org-b"),
    )

    async def names(token: str, **filter_: Any) -> list[tuple[str, str]]:
        data = await run(url, "Models", {"filter": filter_, "limit": 50}, token=token)
        return [(m["name"], m["id"]) for m in data["models"]["items"]]

    assert await names(editor, name="llama-7b") == [("llama-7b", created["llama-7b"]["id"])]
    assert await names(editor, name="llama-7") == []
    assert await names(editor, search="llama-7b") != await names(editor, name="llama-7b")

    await run(url, "DeleteModel", {"id": created["llama-7b"]["id"]}, token=editor)
    assert await names(editor, name="llama-7b") == []
    again = await run(url, "CreateModel", {"input": remote("llama-7b")}, token=editor)
    admin = running_app.token(role=Role.ADMIN, organization="org-a")
    assert await names(admin, name="llama-7b") == [("llama-7b", again["createModel"]["id"])]
    assert sorted(await names(admin, name="llama-7b", includeDeleted=True)) == sorted(
        [("llama-7b", again["createModel"]["id"]), ("llama-7b", created["llama-7b"]["id"])]
    )

    body = await execute(url, operation("Models"), {"filter": {"name": "Llama 7B"}}, token=editor)
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "filter.name"}
    assert "DNS-1123" in body["errors"][0]["message"]


async def test_a_remote_model_says_why_it_is_ready(running_app: RunningApp) -> None:
    """The playground API answers a remote model with ``phase: Ready`` and a message saying
    nothing is downloaded; modelplane's message said nothing."""
    editor = running_app.token(role=Role.EDITOR, organization="org-a")
    data = await run(
        running_app.graphql_url, "CreateModel", {"input": remote("deepseek")}, token=editor
    )
    model = data["createModel"]
    assert model["phase"] == "READY"
    assert model["message"] == "ready: a REMOTE_API model is proxied, nothing is downloaded"
