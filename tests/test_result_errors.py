"""The one mapping of service refusals to GraphQL: a table, and the resolvers that use it."""

from __future__ import annotations

from typing import Any

import pytest

from resolvers import root
from resolvers.errors import (
    REFUSALS,
    Refusal,
    answers,
    coded_error,
    query_errors,
    result_members,
    user_error,
)
from schema.building import ExpectedError
from schema.enums import RoleEnum
from schema.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from schema.models import DeleteModelResult, Model, UpdateModelResult
from services.errors import Conflict, InvalidInput, Missing
from services.principals import Forbidden
from storage.documents import Role
from storage.errors import Contended


@pytest.mark.parametrize(
    ("refusal", "member", "fields", "code"),
    [
        (
            InvalidInput("source.url", "not a URL"),
            ValidationError,
            {"message": "not a URL", "field": "source.url"},
            "BAD_USER_INPUT",
        ),
        (
            Missing("model-a1b2c", "model model-a1b2c not found"),
            NotFoundError,
            {"message": "model model-a1b2c not found", "id": "model-a1b2c"},
            "NOT_FOUND",
        ),
        (
            Conflict("name", "a model named 'q' already exists"),
            ConflictError,
            {"message": "a model named 'q' already exists", "field": "name"},
            "CONFLICT",
        ),
        (
            Contended("models", "model-a1b2c", 8),
            ConflictError,
            {"message": "model-a1b2c is changing too often; try again", "field": None},
            "CONFLICT",
        ),
        (
            Forbidden("needs the editor role", required=Role.EDITOR),
            ForbiddenError,
            {"message": "needs the editor role", "required_role": RoleEnum.EDITOR},
            "FORBIDDEN",
        ),
        (
            Forbidden("no"),
            ForbiddenError,
            {"message": "no", "required_role": None},
            "FORBIDDEN",
        ),
    ],
)
def test_each_refusal_has_one_member_and_one_code(
    refusal: Refusal, member: type, fields: dict[str, Any], code: str
) -> None:
    error = user_error(refusal)
    assert type(error) is member
    assert {name: getattr(error, name) for name in fields} == fields
    coded = coded_error(refusal)
    assert coded.code == code
    assert str(coded) == fields["message"]
    assert coded.field == fields.get("field")


def test_every_refusal_is_in_the_table() -> None:
    assert set(REFUSALS) == {InvalidInput, Missing, Conflict, Contended, Forbidden}


async def _refuse_update(refusal: Exception) -> UpdateModelResult:
    raise refusal


async def _refuse_delete(refusal: Exception) -> DeleteModelResult:
    raise refusal


async def test_a_refusal_becomes_a_member_of_the_resolvers_own_union() -> None:
    update = answers(_refuse_update)
    result = await update(Contended("models", "model-x", 8))
    assert isinstance(result, ConflictError)
    result = await update(Missing("model-x"))
    assert isinstance(result, NotFoundError)


async def test_a_refusal_the_union_cannot_hold_is_a_coded_graphql_error() -> None:
    """deleteModel's union has no ConflictError: a contended delete says CONFLICT anyway."""
    delete = answers(_refuse_delete)
    with pytest.raises(ExpectedError) as caught:
        await delete(Contended("models", "model-x", 8))
    assert caught.value.code == "CONFLICT"
    assert isinstance(await delete(Forbidden("no")), ForbiddenError)


async def test_a_fault_is_not_a_refusal() -> None:
    with pytest.raises(ZeroDivisionError):
        await answers(_refuse_update)(ZeroDivisionError())


def test_queries_use_the_same_table() -> None:
    with pytest.raises(ExpectedError) as caught, query_errors():
        raise Missing("inf-1")
    assert caught.value.code == "NOT_FOUND"


def test_the_union_is_read_from_the_annotation() -> None:
    assert result_members(_refuse_update) == {
        Model,
        ValidationError,
        NotFoundError,
        ConflictError,
        ForbiddenError,
    }


def _resolvers(*types: Any) -> list[tuple[str, Any]]:
    return [
        (field.python_name, field.base_resolver.wrapped_func)
        for root_type in types
        for field in root_type.__strawberry_definition__.fields
        if field.base_resolver is not None
    ]


@pytest.mark.parametrize(("name", "resolver"), _resolvers(root.Mutation))
def test_every_mutation_answers_a_result_union_through_the_one_mapping(
    name: str, resolver: Any
) -> None:
    assert result_members(resolver) & {ValidationError, ForbiddenError, NotFoundError}, name
    assert getattr(resolver, "__wrapped__", None) is not None, f"{name} is not wrapped in answers"


@pytest.mark.parametrize(("name", "resolver"), _resolvers(root.Query))
def test_every_query_answering_a_result_union_maps_through_the_one_mapping(
    name: str, resolver: Any
) -> None:
    if not result_members(resolver) & {ValidationError, NotFoundError, ForbiddenError}:
        return  # a plain query: its refusals go through query_errors
    assert getattr(resolver, "__wrapped__", None) is not None, f"{name} is not wrapped in answers"
