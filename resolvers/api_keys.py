"""Resolvers of organisation API keys: call ApiKeyService, map outcomes to union members."""

from __future__ import annotations

from typing import Annotated

import strawberry

from resolvers.context import Info
from resolvers.errors import answers, query_errors
from schema.api_keys import (
    ApiKey,
    ApiKeyPage,
    CreateApiKeyResult,
    CreatedApiKey,
    RevokeApiKeyResult,
)
from schema.enums import RoleEnum
from storage.documents import Role


async def resolve_api_keys(
    info: Info,
    limit: Annotated[int, strawberry.argument(description="Page size, 0 to 100.")] = 20,
    offset: Annotated[int, strawberry.argument(description="Matches to skip.")] = 0,
    include_revoked: Annotated[
        bool, strawberry.argument(description="Also list revoked keys.")
    ] = False,
) -> ApiKeyPage:
    """A page of the organisation's API keys (admin only)."""
    principal = info.context.require_principal()
    with query_errors():
        page = await info.context.services.api_keys.page(
            principal, include_revoked=include_revoked, limit=limit, offset=offset
        )
    return ApiKeyPage(
        total=page.total,
        items=[ApiKey.from_document(doc) for doc in page.items],
        limit=limit,
        offset=offset,
    )


@answers
async def create_api_key(
    info: Info,
    name: Annotated[str, strawberry.argument(description="What the key is for (1-100 chars).")],
    role: Annotated[
        RoleEnum,
        strawberry.argument(description="The key's role; at most the caller's own."),
    ],
) -> CreateApiKeyResult:
    """Create a key; the key itself is in the result and nowhere else, ever."""
    principal = info.context.require_principal()
    created = await info.context.services.api_keys.create(
        principal, name=name, role=Role[role.name]
    )
    return CreatedApiKey(api_key=ApiKey.from_document(created.document), key=created.key)


@answers
async def revoke_api_key(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="Key id.")],
) -> RevokeApiKeyResult:
    """Revoke a key: requests made with it are refused from now on."""
    principal = info.context.require_principal()
    revoked = await info.context.services.api_keys.revoke(principal, str(id))
    return ApiKey.from_document(revoked)
