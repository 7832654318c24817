"""Typed documents stored in MongoDB: desired state and observed status in one document each.

Documents are pydantic models whose ``id`` maps to Mongo's ``_id``. ``revision`` starts at 1
and is bumped by every compare-and-set update. Timestamps are timezone-aware UTC.
"""

from __future__ import annotations

import secrets
import string
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field

_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_id(prefix: str, length: int = 5) -> str:
    """Short, random, URL-safe ids such as ``model-a3k9x``."""
    return f"{prefix}-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def utcnow() -> datetime:
    """The current time, UTC, truncated to milliseconds as MongoDB stores it."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class Document(BaseModel):
    """Fields every stored document has."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    id: str = Field(alias="_id")
    revision: int = 1
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    def to_mongo(self) -> dict[str, Any]:
        """The document as stored: ``_id`` instead of ``id``, enums as their values."""
        return self.model_dump(by_alias=True, mode="python", exclude_none=False)

    @classmethod
    def from_mongo(cls, raw: dict[str, Any]) -> Self:
        """Parse a raw MongoDB document (extra fields written by newer versions are ignored)."""
        return cls.model_validate(raw)


class Role(StrEnum):
    """What a member may do in an organisation; each role includes the ones before it."""

    VIEWER = "viewer"
    EDITOR = "editor"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        """True when this role is at least ``needed``."""
        order = [Role.VIEWER, Role.EDITOR, Role.ADMIN]
        return order.index(self) >= order.index(needed)


class OrganizationDocument(Document):
    """A tenant: every other resource belongs to exactly one organisation."""

    name: str
    display_name: str = ""


class LeaseDocument(Document):
    """Leader election for controllers: one holder at a time until ``expires_at``."""

    holder: str
    expires_at: datetime
