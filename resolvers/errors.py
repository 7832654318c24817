"""Turning service exceptions into the union members every mutation shares, and into the
GraphQL errors of queries."""

from __future__ import annotations

from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import strawberry

from schema.building import ExpectedError
from schema.enums import RoleEnum
from schema.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from services.errors import Conflict, InvalidInput, Missing
from services.principals import Forbidden

T = TypeVar("T")

UserError = ValidationError | NotFoundError | ConflictError | ForbiddenError
"""Every expected failure a mutation's result union may hold."""


def forbidden(exc: Forbidden) -> ForbiddenError:
    """The ForbiddenError member for a refused role check."""
    return ForbiddenError(
        message=str(exc), required_role=RoleEnum(exc.required.value) if exc.required else None
    )


async def attempt(call: Awaitable[T]) -> T | UserError:
    """Await a service call, turning its expected failures into union members."""
    try:
        return await call
    except InvalidInput as exc:
        return ValidationError(message=exc.message, field=exc.field)
    except Missing as exc:
        return NotFoundError(message=exc.message, id=strawberry.ID(exc.resource_id))
    except Conflict as exc:
        return ConflictError(message=exc.message, field=exc.field)
    except Forbidden as exc:
        return forbidden(exc)


@contextmanager
def query_errors() -> Iterator[None]:
    """A query's refusals as GraphQL errors with a code (queries have no result union)."""
    try:
        yield
    except Forbidden as exc:
        raise ExpectedError(str(exc), code="FORBIDDEN") from None
    except InvalidInput as exc:
        raise ExpectedError(exc.message, code="BAD_USER_INPUT", field=exc.field) from None
