"""Expected failures as data: the members of every mutation's result union.

A client switches on ``__typename``; each error names the offending input ``field`` where one
applies, with its path in the input (``downloadTarget.local.localPath``).
"""

from __future__ import annotations

import strawberry

from schema.enums import RoleEnum


@strawberry.interface(description="Something the caller can fix; always has a message.")
class UserError:
    """Base of every union error member."""

    message: str = strawberry.field(description="What went wrong, written for a person.")


@strawberry.type(description="An input value was refused; nothing was changed.")
class ValidationError(UserError):
    """A field failed validation."""

    field: str | None = strawberry.field(
        description="Path of the offending input field, e.g. `source.url`; null if general."
    )


@strawberry.type(description="No such resource in your organisation.")
class NotFoundError(UserError):
    """Absent, deleted, or in another organisation (never says which)."""

    id: strawberry.ID = strawberry.field(description="The id that was asked for.")


@strawberry.type(description="The request clashes with existing state; nothing was changed.")
class ConflictError(UserError):
    """A duplicate name, or a resource changing too fast."""

    field: str | None = strawberry.field(description="The clashing input field, if any.")


@strawberry.type(description="Your role does not allow this; nothing was changed.")
class ForbiddenError(UserError):
    """The caller is authenticated but lacks the role."""

    required_role: RoleEnum | None = strawberry.field(
        description="The least role that may do this."
    )
