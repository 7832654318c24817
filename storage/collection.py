"""What every collection needs: :class:`Repository`, the base of the per-collection
repositories (``storage/repositories.py``).

Insert, get, paged find with a total, compare-and-set update on ``{_id, revision}``, the one
read-modify-compare-and-set loop (:meth:`Repository.modify`, with the one retry policy
:data:`CAS_ATTEMPTS`), delete and index creation. Tenancy is enforced by callers passing
``scope`` (``{"organization_id": ...}``), which is merged into every filter, so a document of
another organisation is indistinguishable from a missing one.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from storage.client import Database
from storage.documents import (
    Document,
    pending_marker,
    utcnow,
)
from storage.errors import (
    Contended,
    DuplicateKey,
    NotFound,
    RevisionConflict,
)
from storage.locks import document_lock

D = TypeVar("D", bound=Document)

log = logging.getLogger(__name__)

INDEX_ATTEMPTS = 3
"""How often start-up lists and creates a collection's missing indexes before giving up."""

CAS_ATTEMPTS = 8
"""The one retry policy of :meth:`Repository.modify`: re-read and re-decide at most this often
(eight writers racing on one document within one read each is already pathological)."""

Change = Callable[[D], Mapping[str, Any] | None]
"""Decides a write from the current document: the fields to set, or None/empty for none. It
may raise to refuse (the service's own error reaches its caller unchanged)."""
Filter = Mapping[str, Any]


def _plain(scope: Filter) -> bool:
    """Whether ``scope`` only pins top-level fields to strings, which :func:`_matches` checks
    exactly as the server would (no operators or dotted paths to interpret)."""
    return all(
        isinstance(value, str) and not key.startswith("$") and "." not in key
        for key, value in scope.items()
    )


def _matches(raw: Mapping[str, Any], scope: Filter) -> bool:
    """Whether a stored document lies inside a :func:`_plain` scope (an array field matches
    when it holds the value, as in a MongoDB equality filter)."""
    for key, value in scope.items():
        held = raw.get(key)
        if held != value and not (isinstance(held, list) and value in held):
            return False
    return True


_DUP_FIELD = re.compile(r"index: (?:\S+\.\$)?(\w+?)(?:_-?1)*(?:_\w+)? dup key|dup key: \{ ?(\w+):")


@dataclass(frozen=True, slots=True)
class Page(Generic[D]):
    """One page of a listing and the number of matches across all pages."""

    items: list[D]
    total: int


class Repository(Generic[D]):
    """Base repository: subclasses set ``collection_name``, ``document_type`` and ``indexes``."""

    collection_name: ClassVar[str]
    document_type: type[D]
    indexes: ClassVar[Sequence[IndexModel]] = ()
    unique_fields: ClassVar[Sequence[str]] = ()
    history_fields: ClassVar[frozenset[str]] = frozenset()
    """Fields whose change :meth:`derived` records (:mod:`storage.history`)."""

    def __init__(self, database: Database) -> None:
        self._collection = database[self.collection_name]

    async def ensure_indexes(self) -> None:
        """Create the declared indexes that do not exist yet (run at start-up).

        Only missing ones are sent: FerretDB 1.24 panics when ``createIndexes`` repeats an
        existing compound index of three or more fields, and MongoDB would do nothing anyway.
        Two replicas starting together both find them missing; the loser's connection is
        dropped, so it lists again (at most :data:`INDEX_ATTEMPTS` times).
        """
        for attempt in range(INDEX_ATTEMPTS):
            cursor = await self._collection.list_indexes()
            existing = {index["name"] async for index in cursor}
            missing = [index for index in self.indexes if index.document["name"] not in existing]
            if not missing:
                return
            try:
                await self._collection.create_indexes(missing)
            except PyMongoError as exc:
                # Another replica starting at the same moment created them between our list and
                # our create: FerretDB drops the connection on the repeat. List again.
                if attempt == INDEX_ATTEMPTS - 1:
                    raise
                log.info(
                    "index creation raced another process; listing again",
                    extra={"collection": self.collection_name, "error": type(exc).__name__},
                )
            else:
                return

    async def insert(self, document: D, *, event: str | None = None) -> D:
        """Store a new document; a unique-index clash raises :class:`DuplicateKey`.

        ``event`` (an event type) marks in the same write that the log is owed that event for
        this revision (``pending_events``); the recorder clears the mark once it appended it.
        """
        if event is not None:
            document.pending_events = [
                *document.pending_events,
                pending_marker(document.revision, event, utcnow()),
            ]
        document = self.seeded(document)
        try:
            await self._collection.insert_one(document.to_mongo())
        except DuplicateKeyError as exc:
            raise DuplicateKey(self.collection_name, self._duplicate_field(exc)) from exc
        return document

    async def get(self, document_id: str, *, scope: Filter | None = None) -> D | None:
        """The document with that id inside ``scope``, or None.

        A scope of plain field values is checked here, after a read by ``_id`` alone: FerretDB
        1.24 hands only a bare ``_id`` filter down to SQLite, so with the scope's fields in the
        query each get read the whole collection (about 11 ms of FerretDB CPU at 1,000
        documents, against 1 ms by ``_id``). MongoDB uses the ``_id`` index either way.
        """
        if scope and not _plain(scope):
            raw = await self._collection.find_one({**scope, "_id": document_id})
        else:
            raw = await self._collection.find_one({"_id": document_id})
            if raw is not None and scope and not _matches(raw, scope):
                raw = None
        return None if raw is None else self.document_type.from_mongo(raw)

    async def require(self, document_id: str, *, scope: Filter | None = None) -> D:
        """Like :meth:`get` but raises :class:`NotFound`."""
        found = await self.get(document_id, scope=scope)
        if found is None:
            raise NotFound(self.collection_name, document_id)
        return found

    async def find_one(self, *, where: Filter) -> D | None:
        """The first document matching ``where``, or None."""
        raw = await self._collection.find_one(dict(where))
        return None if raw is None else self.document_type.from_mongo(raw)

    async def find(
        self,
        *,
        where: Filter,
        limit: int,
        offset: int = 0,
        sort: Sequence[tuple[str, int]] = (("created_at", ASCENDING), ("_id", ASCENDING)),
    ) -> Page[D]:
        """A page of matches (``limit`` 0 returns only the total) and the total count."""
        total = await self._collection.count_documents(dict(where))
        items: list[D] = []
        if limit > 0 and offset < total:
            cursor = self._collection.find(dict(where)).sort(list(sort)).skip(offset).limit(limit)
            items = [self.document_type.from_mongo(raw) async for raw in cursor]
        return Page(items=items, total=total)

    async def update(
        self,
        document_id: str,
        *,
        expected_revision: int,
        changes: Mapping[str, Any],
        scope: Filter | None = None,
        event: str | None = None,
        current: D | None = None,
    ) -> D:
        """Compare-and-set: apply ``changes`` only if the stored revision is still the one read.

        ``event`` (an event type) marks, in the same write, that the log is owed that event for
        the new revision (see :meth:`insert`). A change of a :attr:`history_fields` field also
        writes what :meth:`derived` says it implies, from ``current`` when it is the revision
        expected, else from one read of it. Raises :class:`RevisionConflict` when someone
        else wrote first, :class:`NotFound` when the document is gone.
        """
        query = {**(scope or {}), "_id": document_id, "revision": expected_revision}
        now = utcnow()
        update: dict[str, Any] = {
            "$set": {**changes, "updated_at": now},
            "$inc": {"revision": 1},
        }
        if event is not None:
            marker = pending_marker(expected_revision + 1, event, now)
            update["$push"] = {"pending_events": marker}
        try:
            async with self._lock(document_id):
                if self.history_fields.intersection(changes):
                    base = await self._at_revision(document_id, expected_revision, current)
                    if base is not None:
                        update["$set"] |= self.derived(base, changes, now)
                raw = await self._collection.find_one_and_update(
                    query, update, return_document=ReturnDocument.AFTER
                )
        except DuplicateKeyError as exc:
            raise DuplicateKey(self.collection_name, self._duplicate_field(exc)) from exc
        if raw is not None:
            return self.document_type.from_mongo(raw)
        if await self.get(document_id, scope=scope) is None:
            raise NotFound(self.collection_name, document_id)
        raise RevisionConflict(self.collection_name, document_id, expected_revision)

    async def modify(
        self,
        document_id: str,
        change: Change[D],
        *,
        scope: Filter | None = None,
        event: str | None = None,
        current: D | None = None,
    ) -> D:
        """Read-modify-compare-and-set, the one loop: read (or start from ``current``), ask
        ``change`` for the fields to set, write them only if the revision is still the one read,
        and on a conflict re-read and ask again, at most :data:`CAS_ATTEMPTS` times.

        Returns the written document, or the current one when ``change`` asks for nothing.
        Raises :class:`NotFound` when the document is gone and :class:`Contended` when every
        try lost the race. ``event`` marks the owed event as :meth:`update` does."""
        for _ in range(CAS_ATTEMPTS):
            if current is None:
                current = await self.get(document_id, scope=scope)
                if current is None:
                    raise NotFound(self.collection_name, document_id)
            changes = change(current)
            if not changes:
                return current
            try:
                return await self.update(
                    document_id,
                    expected_revision=current.revision,
                    changes=changes,
                    scope=scope,
                    event=event,
                    current=current,
                )
            except RevisionConflict:
                current = None
        raise Contended(self.collection_name, document_id, CAS_ATTEMPTS)

    async def delete(self, document_id: str, *, scope: Filter | None = None) -> bool:
        """Remove the document for good; False when there was nothing to remove."""
        result = await self._collection.delete_one({**(scope or {}), "_id": document_id})
        return result.deleted_count == 1

    def seeded(self, document: D) -> D:
        """A new document as inserted: a repository keeping history starts it here (in
        place, like the event mark: callers go on with the object they inserted)."""
        return document

    def derived(self, current: D, changes: Mapping[str, Any], at: datetime) -> dict[str, Any]:
        """What ``changes`` to ``current`` imply besides themselves (history): none here."""
        del current, changes, at
        return {}

    async def _at_revision(self, document_id: str, revision: int, current: D | None) -> D | None:
        """The document at ``revision`` (``current`` when it is), None when it moved on."""
        if current is not None and current.revision == revision:
            return current
        raw = await self._collection.find_one({"_id": document_id, "revision": revision})
        return None if raw is None else self.document_type.from_mongo(raw)

    def _lock(self, document_id: str) -> asyncio.Lock:
        return document_lock(self._collection.database.name, self.collection_name, document_id)

    def _duplicate_field(self, exc: DuplicateKeyError) -> str | None:
        details = exc.details or {}
        key_pattern = details.get("keyPattern") or details.get("keyValue")
        if isinstance(key_pattern, Mapping) and key_pattern:
            names = [name for name in key_pattern if name != "organization_id"]
            return str(names[0] if names else next(iter(key_pattern)))
        if len(self.unique_fields) == 1:
            # FerretDB's E11000 message does not name the index; with one unique field we know.
            return self.unique_fields[0]
        match = _DUP_FIELD.search(str(exc))
        return next((g for g in match.groups() if g), None) if match else None
