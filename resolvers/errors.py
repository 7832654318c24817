"""Turning service exceptions into the union members every mutation shares."""

from __future__ import annotations

from schema.enums import RoleEnum
from schema.errors import ForbiddenError
from services.principals import Forbidden


def forbidden(exc: Forbidden) -> ForbiddenError:
    """The ForbiddenError member for a refused role check."""
    return ForbiddenError(
        message=str(exc), required_role=RoleEnum(exc.required.value) if exc.required else None
    )
