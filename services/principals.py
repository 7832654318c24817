"""Who is calling: the subject, their organisation and their role."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from storage.documents import Role


class Forbidden(Exception):
    """The caller's role does not allow the action; the message says which role is needed."""

    def __init__(self, message: str, *, required: Role | None = None) -> None:
        super().__init__(message)
        self.required = required


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. Every repository call is scoped to ``organization_id``."""

    subject: str
    organization_id: str
    role: Role
    expires_at: datetime | None = None

    @property
    def scope(self) -> dict[str, str]:
        """The filter that confines queries to the caller's organisation."""
        return {"organization_id": self.organization_id}

    def require(self, role: Role) -> None:
        """Raise :class:`Forbidden` unless the caller has at least ``role``."""
        if not self.role.allows(role):
            raise Forbidden(
                f"this needs the {role.value} role; you are {self.role.value}", required=role
            )
