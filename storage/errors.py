"""Errors raised by repositories; callers map them to GraphQL results or controller retries."""

from __future__ import annotations


class StorageError(Exception):
    """Base class for expected storage failures."""


class NotFound(StorageError):
    """No document with that id exists in the caller's organisation."""

    def __init__(self, collection: str, document_id: str) -> None:
        super().__init__(f"{collection} {document_id!r} not found")
        self.collection = collection
        self.document_id = document_id


class RevisionConflict(StorageError):
    """The document changed since it was read: re-read it and try again."""

    def __init__(self, collection: str, document_id: str, expected: int) -> None:
        super().__init__(
            f"{collection} {document_id!r} was modified concurrently (expected revision {expected})"
        )
        self.collection = collection
        self.document_id = document_id
        self.expected = expected


class DuplicateKey(StorageError):
    """A unique index refused the write; ``field`` names the clashing field when known."""

    def __init__(self, collection: str, field: str | None) -> None:
        super().__init__(f"{collection}: a document with that {field or 'key'} already exists")
        self.collection = collection
        self.field = field


class DatabaseUnavailable(StorageError):
    """MongoDB could not be reached within the configured timeout."""


class Contended(StorageError):
    """A read-modify-write lost the compare-and-set race every time it was allowed to try
    (:data:`~storage.repositories.CAS_ATTEMPTS`); the caller reports "try again"."""

    def __init__(self, collection: str, document_id: str, attempts: int) -> None:
        super().__init__(
            f"{collection} {document_id!r} is changing too often ({attempts} tries); try again"
        )
        self.collection = collection
        self.document_id = document_id
