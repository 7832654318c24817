"""Enums exposed in the schema."""

from __future__ import annotations

from enum import Enum

import strawberry


@strawberry.enum(
    name="Role", description="A member's role in an organisation; each includes the ones above."
)
class RoleEnum(Enum):
    """viewer < editor < admin."""

    VIEWER = strawberry.enum_value("viewer", description="Read everything in the organisation.")
    EDITOR = strawberry.enum_value(
        "editor", description="Also create, change, start and stop models and inference."
    )
    ADMIN = strawberry.enum_value(
        "admin", description="Also manage keys and see deleted resources."
    )
