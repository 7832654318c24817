"""Every committed client operation is valid against the schema; every type is documented."""

from __future__ import annotations

import pytest

from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLObjectType,
    OperationDefinitionNode,
    parse,
    validate,
)
from modelplane.schema_root import make_schema
from tests.operations import all_operations


@pytest.mark.parametrize(("name", "text"), sorted(all_operations().items()))
def test_operation_is_valid(name: str, text: str) -> None:
    document = parse(text)
    errors = validate(make_schema()._schema, document)
    assert errors == [], f"{name}: {errors}"
    definition = document.definitions[0]
    assert isinstance(definition, OperationDefinitionNode)
    assert definition.name is not None
    assert definition.name.value == name  # file name = operation name


def test_every_type_field_and_argument_has_a_description() -> None:
    schema = make_schema()._schema
    missing: list[str] = []
    for name, graphql_type in schema.type_map.items():
        if name.startswith("__") or name in {"String", "Int", "Float", "Boolean", "ID"}:
            continue
        if not graphql_type.description:
            missing.append(name)
        if isinstance(graphql_type, GraphQLObjectType | GraphQLInputObjectType):
            for field_name, field in graphql_type.fields.items():
                if not field.description:
                    missing.append(f"{name}.{field_name}")
                for arg_name, arg in getattr(field, "args", {}).items():
                    if not arg.description:
                        missing.append(f"{name}.{field_name}({arg_name})")
        if isinstance(graphql_type, GraphQLEnumType):
            missing.extend(
                f"{name}.{value_name}"
                for value_name, value in graphql_type.values.items()
                if not value.description
            )
    assert missing == []
