"""The GraphQL limits of ``schema/limits.py`` in the schema, without a server: what the
committed operations cost, how fragments and pages count, that the document cache is bounded
by bytes, and that a mutation of many fields runs without recursion. The attacker-style
reproducers over HTTP and WebSocket are in ``tests/security/test_limits.py``."""

from __future__ import annotations

import pytest
import strawberry

from graphql import get_introspection_query, parse, validate
from modelplane.schema_root import make_schema
from schema.building import build_schema
from schema.limits import (
    BYTES_PER_TOKEN,
    LIMIT_CODE,
    DocumentGate,
    GraphQLLimits,
    field_weights,
    operation_limits_rule,
)
from tests.operations import all_operations

SCHEMA = make_schema()


def limit_errors(text: str, limits: GraphQLLimits | None = None) -> list[str]:
    """The messages of the limits rule for ``text`` against the modelplane schema."""
    schema = SCHEMA._schema
    rule = operation_limits_rule(limits or GraphQLLimits(), field_weights(schema))
    return [error.message for error in validate(schema, parse(text), [rule])]


@pytest.mark.parametrize(("name", "text"), sorted(all_operations().items()))
def test_every_committed_operation_is_within_the_default_limits(name: str, text: str) -> None:
    assert limit_errors(text) == [], name
    admitted = DocumentGate(GraphQLLimits()).admit(text, None)
    assert not isinstance(admitted, Exception), admitted


def test_graphiql_introspection_is_within_the_default_limits() -> None:
    text = get_introspection_query(
        descriptions=True,
        specified_by_url=True,
        directive_is_repeatable=True,
        schema_description=True,
        input_value_deprecation=True,
    )
    assert limit_errors(text) == []


def test_each_limit_names_its_setting() -> None:
    many = " ".join(f"a{i}: serverInfo {{ version }}" for i in range(40))
    assert limit_errors(f"{{ {many} }}") == [
        "The operation has 40 aliases, more than 30 (limit: MODELPLANE_GRAPHQL_MAX_ALIASES)"
    ]
    fields = "{ serverInfo { " + "version " * 600 + "} }"
    assert limit_errors(fields) == [
        "The operation has 601 fields, more than 500 (limit: MODELPLANE_GRAPHQL_MAX_FIELDS)"
    ]
    directives = "{ serverInfo { version" + " @include(if: true)" * 60 + " } }"
    assert limit_errors(directives) == [
        "The operation has 60 directives, more than 50 (limit: MODELPLANE_GRAPHQL_MAX_DIRECTIVES)"
    ]
    fits = " ".join(f'f{i}: gpuFit(repoId: "a/b") {{ __typename }}' for i in range(11))
    [message] = limit_errors(f"{{ {fits} }}")
    assert message.startswith("The operation costs 1100, more than 1000")
    assert message.endswith("(limit: MODELPLANE_GRAPHQL_MAX_COST)")


def test_a_page_costs_its_limit_times_its_selection() -> None:
    tight = GraphQLLimits(max_cost=100)
    # models: 1, each item's weights and inference resolvers: 1 each
    page = "{ models(limit: %s) { items { id weights { id } inference { id } } } }"
    assert limit_errors(page % 49, tight) == []  # 1 + 49 * 2
    assert limit_errors(page % 50, tight) != []  # 1 + 50 * 2
    by_variable = "query($n: Int!) { models(limit: $n) { items { weights { id } } } }"
    [message] = limit_errors(by_variable, tight)  # a variable counts as the largest page
    assert "costs 101" in message
    default = "{ models { items { weights { id } } } }"  # the argument's default, 10
    assert limit_errors(default, GraphQLLimits(max_cost=11)) == []


def test_fragments_count_expanded_but_are_walked_once() -> None:
    # Each level spreads the one below ten times: 10^6 fields expanded, counted in linear time.
    levels = [f"fragment F0 on ServerInfo {{ {'version ' * 10} }}"]
    for level in range(1, 6):
        spreads = f"...F{level - 1} " * 10
        levels.append(f"fragment F{level} on ServerInfo {{ {spreads} }}")
    text = "{ serverInfo { ...F5 } } " + " ".join(levels)
    assert limit_errors(text) == [
        "The operation has 1000001 fields, more than 500 (limit: MODELPLANE_GRAPHQL_MAX_FIELDS)"
    ]


def test_the_gate_refuses_size_tokens_and_lone_surrogates() -> None:
    gate = DocumentGate(GraphQLLimits(max_document_bytes=2048, max_tokens=200))
    big = gate.admit("{ serverInfo { version } }" + " " * 3000, None)
    assert isinstance(big, Exception)
    assert big.extensions == {"code": LIMIT_CODE, "limit": "MODELPLANE_GRAPHQL_MAX_DOCUMENT_BYTES"}
    tokens = gate.admit("{ " + "a " * 300 + "}", None)
    assert isinstance(tokens, Exception)
    assert str(tokens).startswith("The document has more than 200 tokens")
    inline = gate.admit('{ model(id: "\ud800") { id } }', None)
    assert isinstance(inline, Exception)
    assert "lone UTF-16 surrogate at line 1, column 14" in str(inline)
    variable = gate.admit(
        "query($f: ModelFilter) { models(filter: $f) { total } }",
        {"f": {"tags": ["ok", "bad\udfff"]}},
    )
    assert isinstance(variable, Exception)
    assert (
        str(variable)
        == "Variable `$f` is not valid Unicode: a lone UTF-16 surrogate in `f.tags.1`."
    )


def test_the_document_cache_is_bounded_by_bytes() -> None:
    budget = 2 * 1024 * 1024
    gate = DocumentGate(GraphQLLimits(cache_bytes=budget))
    small = "{ serverInfo { version } }"
    assert not isinstance(gate.admit(small, None), Exception)
    for index in range(100):  # distinct documents of about 300 tokens each
        text = f"query Q{index} {{ serverInfo {{ {'version ' * 300} }} }}"
        assert not isinstance(gate.admit(text, None), Exception)
        assert gate.cache.bytes <= budget
    assert 5 < len(gate.cache) < 15
    assert gate.cache.get(small) is None  # the oldest went first
    assert gate.cache.bytes > budget - 310 * BYTES_PER_TOKEN  # and the budget is used
    huge = f"{{ serverInfo {{ {'version ' * 1000} }} }}"  # more than a quarter of the budget
    assert not isinstance(gate.admit(huge, None), Exception)
    assert gate.cache.get(huge) is None


def test_a_document_seen_before_is_parsed_and_validated_once() -> None:
    text = "{ serverInfo { version } }"
    schema = build_schema(query=_Query)
    first = schema.execute_sync(text)
    entry = schema.gate.cache.get(text)  # type: ignore[attr-defined]  # our schema class
    assert first.errors is None
    assert entry is not None
    assert entry.errors == []
    again = schema.execute_sync(text)
    assert again.data == first.data
    assert schema.gate.cache.get(text) is entry  # type: ignore[attr-defined]


@strawberry.type
class _ServerInfo:
    version: str = "1"


@strawberry.type
class _Query:
    @strawberry.field
    def server_info(self) -> _ServerInfo:
        return _ServerInfo()


@strawberry.type
class _Mutation:
    @strawberry.mutation
    async def bump(self) -> int:
        return 1


async def test_a_mutation_of_many_fields_runs_without_recursion() -> None:
    """graphql-core chained serial fields recursively: about 330 fields exceeded the recursion
    limit. With the limits out of the way, 1,000 fields now run one after the other."""
    unlimited = GraphQLLimits(max_fields=10**6, max_aliases=10**6, max_cost=10**9)
    schema = build_schema(query=_Query, mutation=_Mutation, limits=unlimited)
    text = "mutation { " + " ".join(f"b{i}: bump" for i in range(1000)) + " }"
    result = await schema.execute(text)
    assert result.errors is None
    assert result.data is not None
    assert len(result.data) == 1000
    refused = await build_schema(query=_Query, mutation=_Mutation).execute(text)
    assert refused.errors is not None
    assert {error.extensions["limit"] for error in refused.errors if error.extensions} == {
        "MODELPLANE_GRAPHQL_MAX_FIELDS",
        "MODELPLANE_GRAPHQL_MAX_ALIASES",
        "MODELPLANE_GRAPHQL_MAX_COST",
    }
