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


@strawberry.enum(name="AccessMode", description="How a model is reached.")
class AccessModeEnum(Enum):
    """REMOTE_API or LOCAL."""

    REMOTE_API = strawberry.enum_value(
        "REMOTE_API", description="An OpenAI-compatible API elsewhere, proxied; nothing downloaded."
    )
    LOCAL = strawberry.enum_value(
        "LOCAL", description="A Hugging Face repository downloaded to a target and served here."
    )


@strawberry.enum(
    name="ModelPhase",
    description=(
        "Where a model's weights stand: PENDING -> PULLING -> READY, or FAILED with a message. "
        "REMOTE_API models are READY at once."
    ),
)
class ModelPhaseEnum(Enum):
    """Model lifecycle phase."""

    PENDING = strawberry.enum_value("PENDING", description="Accepted; the download has not begun.")
    PULLING = strawberry.enum_value("PULLING", description="Weights are being downloaded.")
    READY = strawberry.enum_value("READY", description="Weights are in place (or not needed).")
    FAILED = strawberry.enum_value("FAILED", description="The download failed; see `message`.")
