"""Expected failures of use cases.

``resolvers/errors.py`` is the one place that turns each (and ``Forbidden``, and the storage
layer's ``Contended``) into a GraphQL union member or a coded error; a service raises, it
never builds a GraphQL answer.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base: a message written for the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServiceError):
    """An input field is wrong; ``field`` is its path in the GraphQL input (``source.url``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Conflict(ServiceError):
    """The request clashes with existing state (a duplicate name, say)."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


class Missing(ServiceError):
    """No such resource in the caller's organisation (or it is in another one)."""

    def __init__(self, resource_id: str, message: str | None = None) -> None:
        super().__init__(message or f"{resource_id} not found")
        self.resource_id = resource_id
