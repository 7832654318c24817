"""The one mapping of expected failures to GraphQL: union members for mutations, coded errors
for queries.

Services refuse with :mod:`services.errors` exceptions (and :class:`Forbidden`); a
read-modify-write that lost every compare-and-set race raises :class:`Contended`.
:func:`user_error` is the table from those to the members every result union draws from:

=====================  =====================  ==================
exception              union member           code (queries)
=====================  =====================  ==================
``InvalidInput``       ``ValidationError``    ``BAD_USER_INPUT``
``Missing``            ``NotFoundError``      ``NOT_FOUND``
``Conflict``           ``ConflictError``      ``CONFLICT``
``Contended``          ``ConflictError``      ``CONFLICT``
``Forbidden``          ``ForbiddenError``     ``FORBIDDEN``
=====================  =====================  ==================

A mutation resolver is wrapped in :func:`answers`: it calls the service and returns its
success; a refusal comes back as the member of the resolver's own result union (read from its
return annotation). A refusal the union has no member for (a ``Contended`` delete, say: the
schema has no ``ConflictError`` there) is raised as an unmasked GraphQL error with the code
instead, as a query's refusals are by :func:`query_errors`. Anything else is a fault, masked.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar, cast

import strawberry

from schema.building import ExpectedError
from schema.enums import RoleEnum
from schema.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from services.errors import Conflict, InvalidInput, Missing
from services.principals import Forbidden
from storage.errors import Contended

P = ParamSpec("P")
R = TypeVar("R")

UserError = ValidationError | NotFoundError | ConflictError | ForbiddenError
"""Every expected failure a mutation's result union may hold."""
Refusal = InvalidInput | Missing | Conflict | Contended | Forbidden
"""Every exception :func:`user_error` maps."""
REFUSALS = (InvalidInput, Missing, Conflict, Contended, Forbidden)

CODES: dict[type[UserError], str] = {
    ValidationError: "BAD_USER_INPUT",
    NotFoundError: "NOT_FOUND",
    ConflictError: "CONFLICT",
    ForbiddenError: "FORBIDDEN",
}
"""The GraphQL error code of each member, for refusals outside a result union."""


def user_error(exc: Refusal) -> UserError:
    """The union member for an expected failure: the one mapping."""
    match exc:
        case InvalidInput():
            return ValidationError(message=exc.message, field=exc.field)
        case Missing():
            return NotFoundError(message=exc.message, id=strawberry.ID(exc.resource_id))
        case Conflict():
            return ConflictError(message=exc.message, field=exc.field)
        case Contended():
            return ConflictError(
                message=f"{exc.document_id} is changing too often; try again", field=None
            )
        case Forbidden():
            return ForbiddenError(
                message=str(exc),
                required_role=RoleEnum(exc.required.value) if exc.required else None,
            )


def coded_error(exc: Refusal) -> ExpectedError:
    """An expected failure as a GraphQL error with a code (and the field, if any)."""
    error = user_error(exc)
    field = getattr(error, "field", None)
    return ExpectedError(error.message, code=CODES[type(error)], field=field)


def answers(resolver: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Wrap a mutation resolver: its refusals become members of its result union.

    strawberry reads the wrapped resolver's signature and annotations (``__wrapped__``,
    ``__module__``), so the schema is unchanged."""

    @functools.wraps(resolver)
    async def answer(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await resolver(*args, **kwargs)
        except REFUSALS as exc:
            error = user_error(exc)
            if type(error) not in result_members(resolver):
                raise coded_error(exc) from None
            return cast(R, error)

    return answer


@functools.cache
def result_members(resolver: Callable[..., object]) -> frozenset[type]:
    """The member types of the union a resolver returns (empty for a plain type)."""
    hint = typing.get_type_hints(resolver, include_extras=True).get("return")
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    return frozenset(t for t in typing.get_args(hint) if isinstance(t, type))


@contextmanager
def query_errors() -> Iterator[None]:
    """A query's refusals as GraphQL errors with a code (queries have no result union)."""
    try:
        yield
    except REFUSALS as exc:
        raise coded_error(exc) from None
