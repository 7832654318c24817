"""Organisation API keys in GraphQL: the key, its page, and the results of create and revoke.

The secret part of a key appears exactly once, in :class:`CreatedApiKey`; every other view
shows its ``prefix`` only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import strawberry

from schema.enums import RoleEnum
from schema.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from storage.documents import ApiKeyDocument


@strawberry.type(
    description=(
        "An organisation API key: a credential for `/v1` (the OpenAI-compatible gateway) and "
        "for this API, with a fixed role. The key itself is never shown again after creation."
    )
)
class ApiKey:
    """A key as listed: name, role, visible prefix, lifecycle."""

    id: strawberry.ID = strawberry.field(description="Key id (not the key).")
    name: str = strawberry.field(description="What the key is for, as its creator named it.")
    role: RoleEnum = strawberry.field(description="What requests made with the key may do.")
    prefix: str = strawberry.field(
        description="The key's first characters (`mp_` and 8 more), to tell keys apart."
    )
    created_at: datetime = strawberry.field(description="When the key was created (UTC).")
    created_by: str | None = strawberry.field(description="Subject that created the key.")
    revoked_at: datetime | None = strawberry.field(
        description="When the key was revoked (UTC); null while it is valid."
    )
    revoked_by: str | None = strawberry.field(description="Subject that revoked the key.")

    @classmethod
    def from_document(cls, document: ApiKeyDocument) -> ApiKey:
        """API view of a stored key (its hash stays behind)."""
        return cls(
            id=strawberry.ID(document.id),
            name=document.name,
            role=RoleEnum(document.role.value),
            prefix=document.prefix,
            created_at=document.created_at,
            created_by=document.created_by,
            revoked_at=document.revoked_at,
            revoked_by=document.revoked_by,
        )


@strawberry.type(description="A new API key, with the key itself: shown this once only.")
class CreatedApiKey:
    """The outcome of createApiKey."""

    api_key: ApiKey = strawberry.field(description="The stored key, as listings show it.")
    key: str = strawberry.field(
        description=(
            "The key (`mp_...`): send it as `Authorization: Bearer <key>`. It is stored only "
            "as a hash and cannot be shown again; keep it now."
        )
    )


@strawberry.type(description="One page of API keys and the number of all matches.")
class ApiKeyPage:
    """A `limit`/`offset` page."""

    total: int = strawberry.field(description="Matches across all pages.")
    items: list[ApiKey] = strawberry.field(description="This page, newest first.")
    limit: int = strawberry.field(description="Page size asked for.")
    offset: int = strawberry.field(description="Matches skipped before this page.")


CreateApiKeyResult = Annotated[
    CreatedApiKey | ValidationError | ForbiddenError,
    strawberry.union("CreateApiKeyResult", description="The new key, or why not."),
]
RevokeApiKeyResult = Annotated[
    ApiKey | NotFoundError | ConflictError | ForbiddenError,
    strawberry.union("RevokeApiKeyResult", description="The revoked key, or why not."),
]
