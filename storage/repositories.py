"""One thin async repository per collection; keyword-only arguments, typed documents out.

Each subclasses :class:`~storage.collection.Repository` (what every collection needs: get,
find, insert, compare-and-set update, :meth:`~storage.collection.Repository.modify`), names
its collection and indexes, and adds queries of its own. The base's names are re-exported
here, where callers have always imported them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from storage.client import Database
from storage.collection import CAS_ATTEMPTS as CAS_ATTEMPTS  # noqa: PLC0414  re-exported
from storage.collection import Change as Change  # noqa: PLC0414  re-exported
from storage.collection import Filter as Filter  # noqa: PLC0414  re-exported
from storage.collection import Page as Page  # noqa: PLC0414  re-exported
from storage.collection import Repository as Repository  # noqa: PLC0414  re-exported
from storage.documents import (
    AccessMode,
    ApiKeyDocument,
    EncryptedSecretDocument,
    InferenceDocument,
    InferencePhase,
    LeaseDocument,
    LedgerDocument,
    ModelDocument,
    ModelPhase,
    ModelPhaseEntry,
    OrganizationDocument,
    WeightsDocument,
    WeightsStage,
    WeightsStateEntry,
    utcnow,
)
from storage.errors import DatabaseUnavailable
from storage.history import model_history, weights_history
from storage.selection import ALL_FILES, FileSelection


class OrganizationRepository(Repository[OrganizationDocument]):
    """Organisations (tenants); ``name`` is unique."""

    collection_name = "organizations"
    document_type = OrganizationDocument
    indexes = (IndexModel([("name", ASCENDING)], unique=True, name="name_unique"),)
    unique_fields = ("name",)


class LeaseRepository(Repository[LeaseDocument]):
    """Leases for leader election: acquire or renew atomically, never steal a live one."""

    collection_name = "leases"
    document_type = LeaseDocument

    async def try_acquire(self, name: str, *, holder: str, duration: timedelta) -> bool:
        """Take or renew lease ``name`` for ``holder``; False while someone else holds it."""
        now = utcnow()
        expires = now + duration
        try:
            async with self._lock(name):
                raw = await self._collection.find_one_and_update(
                    {"_id": name, "$or": [{"holder": holder}, {"expires_at": {"$lt": now}}]},
                    {
                        "$set": {"holder": holder, "expires_at": expires, "updated_at": now},
                        "$inc": {"revision": 1},
                    },
                    return_document=ReturnDocument.AFTER,
                )
        except PyMongoError as exc:
            raise DatabaseUnavailable(f"lease {name}: {type(exc).__name__}") from exc
        if raw is not None:
            return True
        lease = LeaseDocument(id=name, holder=holder, expires_at=expires)
        try:
            await self._collection.insert_one(lease.to_mongo())
        except DuplicateKeyError:
            return False  # someone else holds a live lease
        return True

    async def release(self, name: str, *, holder: str) -> None:
        """Give the lease up early so another replica can lead without waiting for expiry."""
        await self._collection.delete_one({"_id": name, "holder": holder})

    async def holder_of(self, name: str, *, at: datetime | None = None) -> str | None:
        """Who holds a live lease ``name`` now (or at ``at``), if anyone."""
        lease = await self.get(name)
        if lease is None or lease.expires_at < (at or utcnow()):
            return None
        return lease.holder


class ModelOrder(StrEnum):
    """How a model listing is sorted; every order ends with ``_id`` so pages never overlap."""

    NEWEST = "newest"
    OLDEST = "oldest"
    NAME = "name"
    NAME_DESC = "name_desc"


@dataclass(frozen=True, slots=True)
class ModelFilter:
    """What ``models(filter:)`` may ask for; every field optional."""

    access_mode: AccessMode | None = None
    phase: ModelPhase | None = None
    inference_phase: InferencePhase | None = None
    has_inference: bool | None = None
    """False: ``inference_phase`` is null (no inference); True: any phase."""
    managed: bool | None = None
    tag: str | None = None
    search: str | None = None
    include_deleted: bool = False
    name: str | None = None
    """Exact name (the organisation API addresses a model by it)."""
    order: ModelOrder = ModelOrder.NEWEST
    """How the page is sorted (not a condition; it rides here so every caller passes it on)."""


LIST_SORT = (("created_at", DESCENDING), ("_id", DESCENDING))
ORDER_SORTS: dict[ModelOrder, tuple[tuple[str, int], ...]] = {
    ModelOrder.NEWEST: LIST_SORT,
    ModelOrder.OLDEST: (("created_at", ASCENDING), ("_id", ASCENDING)),
    ModelOrder.NAME: (("name", ASCENDING), ("_id", ASCENDING)),
    ModelOrder.NAME_DESC: (("name", DESCENDING), ("_id", DESCENDING)),
}
PENDING_INDEX = IndexModel([("pending_events", ASCENDING)], name="pending_events", sparse=True)
"""Documents whose writes still owe the event log an event: the event recovery asks for
``{"pending_events": {"$type": "string"}}``, a range of this (multikey) index on MongoDB."""


class ModelRepository(Repository[ModelDocument]):
    """The model catalogue. Names are unique per organisation among live models."""

    collection_name = "models"
    document_type = ModelDocument
    indexes = (
        IndexModel(
            [("organization_id", ASCENDING), ("name_key", ASCENDING)],
            unique=True,
            name="org_name_unique",
        ),
        IndexModel(
            [
                ("organization_id", ASCENDING),
                ("is_deleted", ASCENDING),
                ("created_at", DESCENDING),
                ("_id", DESCENDING),
            ],
            name="org_live_newest",
        ),
        IndexModel(
            [
                ("organization_id", ASCENDING),
                ("is_deleted", ASCENDING),
                ("phase", ASCENDING),
                ("created_at", DESCENDING),
                ("_id", DESCENDING),
            ],
            name="org_live_phase_newest",
        ),
        IndexModel(
            [
                ("organization_id", ASCENDING),
                ("is_deleted", ASCENDING),
                ("inference_phase", ASCENDING),
                ("created_at", DESCENDING),
                ("_id", DESCENDING),
            ],
            name="org_live_inference_phase_newest",
        ),
        IndexModel(
            [
                ("organization_id", ASCENDING),
                ("is_deleted", ASCENDING),
                ("name", ASCENDING),
                ("_id", ASCENDING),
            ],
            name="org_live_name",
        ),
        IndexModel([("organization_id", ASCENDING), ("tags", ASCENDING)], name="org_tags"),
        PENDING_INDEX,
    )
    unique_fields = ("name",)
    history_fields = frozenset({"phase"})

    def seeded(self, document: ModelDocument) -> ModelDocument:
        """A new model's history starts with its first phase."""
        if document.phase_history:
            return document
        entry = ModelPhaseEntry(
            phase=document.phase, entered_at=document.created_at, reason=document.message
        )
        document.phase_history = [entry]  # in place, as insert marks events: callers keep it
        return document

    def derived(
        self, current: ModelDocument, changes: Mapping[str, Any], at: datetime
    ) -> dict[str, Any]:
        """A phase change appends to the model's phase history."""
        return model_history(current, changes, at)

    @staticmethod
    def where(organization_id: str, model_filter: ModelFilter) -> dict[str, Any]:
        """The MongoDB filter for a listing; the organisation is always the first condition."""
        query: dict[str, Any] = {"organization_id": organization_id}
        if not model_filter.include_deleted:
            query["is_deleted"] = False
        if model_filter.phase is not None:
            query["phase"] = model_filter.phase
        if model_filter.access_mode is not None:
            query["source.access_mode"] = model_filter.access_mode
        if model_filter.inference_phase is not None:
            query["inference_phase"] = model_filter.inference_phase
        elif model_filter.has_inference is False:
            query["inference_phase"] = None  # null or absent: one point of the index
        elif model_filter.has_inference:
            # Every phase as points (not ``$ne: null``), so the index still yields the sort.
            query["inference_phase"] = {"$in": list(InferencePhase)}
        if model_filter.managed is not None:
            query["managed"] = model_filter.managed
        if model_filter.tag is not None:
            query["tags"] = model_filter.tag
        if model_filter.search:
            pattern = {"$regex": re.escape(model_filter.search), "$options": "i"}
            query["$or"] = [{"display_name": pattern}, {"source.url": pattern}, {"name": pattern}]
        if model_filter.name is not None:  # live names are the unique index's name_key
            query["name" if model_filter.include_deleted else "name_key"] = model_filter.name
        return query

    async def list_page(
        self, *, organization_id: str, model_filter: ModelFilter, limit: int, offset: int
    ) -> Page[ModelDocument]:
        """In the filter's order (newest first by default), with the total of all matches."""
        return await self.find(
            where=self.where(organization_id, model_filter),
            limit=limit,
            offset=offset,
            sort=ORDER_SORTS[model_filter.order],
        )

    async def by_name(self, *, organization_id: str, name: str) -> ModelDocument | None:
        """The live model called ``name`` in the organisation."""
        return await self.find_one(where={"organization_id": organization_id, "name_key": name})


class SecretRepository(Repository[EncryptedSecretDocument]):
    """Encrypted credentials for the local runtime, one document per owner."""

    collection_name = "secrets"
    document_type = EncryptedSecretDocument
    indexes = (IndexModel([("owner_id", ASCENDING)], name="owner"),)

    async def put(self, document: EncryptedSecretDocument) -> None:
        """Insert or replace the owner's secret."""
        await self._collection.replace_one({"_id": document.id}, document.to_mongo(), upsert=True)


class WeightsRepository(Repository[WeightsDocument]):
    """Weights; one per (organisation, repo, commit, location)."""

    collection_name = "weights"
    document_type = WeightsDocument
    indexes = (
        IndexModel(
            [("organization_id", ASCENDING), ("location", ASCENDING), ("commit_sha", ASCENDING)],
            name="org_location_commit",
        ),
        IndexModel([("model_ids", ASCENDING)], name="models"),
        PENDING_INDEX,
    )
    history_fields = frozenset({"state"})

    def seeded(self, document: WeightsDocument) -> WeightsDocument:
        """New weights' history starts with their first state."""
        if document.state_history:
            return document
        entry = WeightsStateEntry(
            state=document.state, entered_at=document.created_at, reason=document.message
        )
        document.state_history = [entry]  # in place: callers go on with the object inserted
        return document

    def derived(
        self, current: WeightsDocument, changes: Mapping[str, Any], at: datetime
    ) -> dict[str, Any]:
        """A state change appends to the history and opens or closes a download attempt."""
        return weights_history(current, changes, at)

    async def for_location(
        self,
        *,
        organization_id: str,
        location: str,
        commit_sha: str,
        selection: FileSelection = ALL_FILES,
    ) -> WeightsDocument | None:
        """Weights of that commit and file selection already at (or going to) that location
        (documents without a selection take every file)."""
        found = await self.find(
            where={
                "organization_id": organization_id,
                "location": location,
                "commit_sha": commit_sha,
            },
            limit=100,
        )
        return next((w for w in found.items if w.selection.key() == selection.key()), None)

    async def set_progress(
        self, weights_id: str, *, progress: dict[str, Any], attempt: int
    ) -> bool:
        """Store progress without a revision bump (it changes every second, nobody CASes on
        it); ignored when a newer attempt owns the download. Under the document's lock like
        every write: FerretDB 1.24 rewrites the whole document, so a progress write racing a
        compare-and-set put the old revision back (a cancel or a newly listed model was lost).

        The first record of an attempt also keeps its ``bytes_resumed`` as the attempt's
        ``progress_baseline``: a runner taking over the same attempt (its leader was killed)
        resumes from more, and the attempt's bytes still count from where the attempt began."""
        async with self._lock(weights_id):
            if progress.get("stage") == WeightsStage.PREFLIGHT:
                await self._collection.update_one(
                    {"_id": weights_id, "attempt": attempt, "progress_attempt": {"$ne": attempt}},
                    {"$set": {"progress_baseline": progress.get("bytes_resumed", 0)}},
                )
            result = await self._collection.update_one(
                {"_id": weights_id, "attempt": attempt},
                {
                    "$set": {
                        "progress": progress,
                        "progress_attempt": attempt,
                        "updated_at": utcnow(),
                    }
                },
            )
        return result.matched_count == 1


class LedgerRepository(Repository[LedgerDocument]):
    """Per-file chunk ledgers of downloads in progress."""

    collection_name = "ledger"
    document_type = LedgerDocument
    indexes = (IndexModel([("weights_id", ASCENDING)], name="weights"),)

    @staticmethod
    def key(weights_id: str, path: str) -> str:
        """The ledger id of one file."""
        return f"{weights_id}:{path}"

    async def load(self, weights_id: str, path: str, *, chunk_size: int) -> LedgerDocument:
        """The file's ledger; a new one when absent or kept with another chunk size."""
        found = await self.get(self.key(weights_id, path))
        if found is not None and found.chunk_size == chunk_size:
            return found
        return LedgerDocument(
            id=self.key(weights_id, path), weights_id=weights_id, path=path, chunk_size=chunk_size
        )

    async def mark_chunk(self, ledger: LedgerDocument, chunk: int) -> None:
        """Record one verified-on-disk chunk (idempotent)."""
        await self._collection.update_one(
            {"_id": ledger.id},
            {
                "$addToSet": {"chunks": chunk},
                "$set": {
                    "weights_id": ledger.weights_id,
                    "path": ledger.path,
                    "chunk_size": ledger.chunk_size,
                    "updated_at": utcnow(),
                },
                "$setOnInsert": {"created_at": utcnow(), "revision": 1},
            },
            upsert=True,
        )

    async def unmark_chunks(self, ledger: LedgerDocument, chunks: set[int]) -> None:
        """Forget chunks the target lost, so they are fetched again."""
        await self._collection.update_one(
            {"_id": ledger.id}, {"$pull": {"chunks": {"$in": sorted(chunks)}}}
        )

    async def set_upload(self, ledger: LedgerDocument, upload_id: str | None) -> None:
        """Remember (or forget) the S3 multipart upload of a file."""
        await self._collection.update_one(
            {"_id": ledger.id},
            {
                "$set": {
                    "upload_id": upload_id,
                    "weights_id": ledger.weights_id,
                    "path": ledger.path,
                    "chunk_size": ledger.chunk_size,
                    "updated_at": utcnow(),
                },
                "$setOnInsert": {"created_at": utcnow(), "revision": 1, "chunks": []},
            },
            upsert=True,
        )

    async def forget(self, weights_id: str, path: str | None = None) -> None:
        """Drop the ledger of one file, or of every file of a download."""
        if path is None:
            await self._collection.delete_many({"weights_id": weights_id})
        else:
            await self._collection.delete_one({"_id": self.key(weights_id, path)})


@dataclass(frozen=True, slots=True)
class InferenceFilter:
    """What ``inferences(filter:)`` may ask for; every field optional."""

    managed: bool | None = None
    phase: InferencePhase | None = None
    model_id: str | None = None


NAMES_COLLECTION = "inference_names"
"""Workload name -> the inference that took it last (see :meth:`InferenceRepository.insert`)."""


class InferenceRepository(Repository[InferenceDocument]):
    """Inference services; one live inference per model (unique ``active_key``)."""

    collection_name = "inferences"
    document_type = InferenceDocument
    indexes = (
        IndexModel([("active_key", ASCENDING)], unique=True, name="active_unique"),
        IndexModel(
            [("organization_id", ASCENDING), ("is_deleted", ASCENDING), ("model_name", ASCENDING)],
            name="org_live_name",
        ),
        IndexModel([("organization_id", ASCENDING), ("created_at", DESCENDING)], name="org_newest"),
        IndexModel([("model_id", ASCENDING), ("created_at", DESCENDING)], name="model_newest"),
        PENDING_INDEX,
    )
    unique_fields = ("active_key",)

    @staticmethod
    def where(organization_id: str, inference_filter: InferenceFilter) -> dict[str, Any]:
        """The MongoDB filter for a listing of live inferences."""
        query: dict[str, Any] = {"organization_id": organization_id, "is_deleted": False}
        if inference_filter.managed is not None:
            query["managed"] = inference_filter.managed
        if inference_filter.phase is not None:
            query["phase"] = inference_filter.phase
        if inference_filter.model_id is not None:
            query["model_id"] = inference_filter.model_id
        return query

    async def insert(
        self, document: InferenceDocument, *, event: str | None = None
    ) -> InferenceDocument:
        """Store a new inference, then note its workload name in ``inference_names``
        (``_id`` = the name), which :meth:`name_holder` reads instead of querying names."""
        written = await super().insert(document, event=event)
        names = self._collection.database[NAMES_COLLECTION]
        for _ in range(2):
            try:
                await names.replace_one(
                    {"_id": written.name}, {"inference_id": written.id}, upsert=True
                )
            except DuplicateKeyError:
                continue  # two first upserts of one name raced; it exists now
            break
        return written

    async def name_holder(self, name: str) -> InferenceDocument | None:
        """The live inference whose workload is called ``name``, or None: one read of
        ``inference_names`` and one of the holder, both by ``_id`` (a query on ``name`` made
        FerretDB 1.24 read the whole collection at every start; ``bench/controllers.py``)."""
        noted = await self._collection.database[NAMES_COLLECTION].find_one({"_id": name})
        if noted is None:
            return None
        holder = await self.get(str(noted["inference_id"]))
        if holder is None or holder.is_deleted or holder.name != name:
            return None
        return holder

    async def for_model(self, model_id: str) -> InferenceDocument | None:
        """The live inference of a model, or None."""
        return await self.find_one(where={"active_key": model_id, "is_deleted": False})

    async def last_for_model(self, model_id: str) -> InferenceDocument | None:
        """The model's newest inference, live or stopped (retired) -- whose spec a toggle back
        on reuses."""
        page = await self.find(
            where={"model_id": model_id}, limit=1, sort=(("created_at", DESCENDING),)
        )
        return page.items[0] if page.items else None

    async def by_model_name(self, *, organization_id: str, name: str) -> InferenceDocument | None:
        """The live inference serving the model called ``name`` in the organisation."""
        return await self.find_one(
            where={"organization_id": organization_id, "is_deleted": False, "model_name": name}
        )

    async def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` have a document (deleted ones included)."""
        if not ids:
            return set()
        cursor = self._collection.find({"_id": {"$in": list(ids)}}, {"_id": 1})
        return {str(raw["_id"]) async for raw in cursor}

    async def live_ids(self) -> list[str]:
        """Ids of every live inference, for the controller's resync."""
        cursor = self._collection.find({"is_deleted": False}, {"_id": 1})
        return [str(raw["_id"]) async for raw in cursor]


class ApiKeyRepository(Repository[ApiKeyDocument]):
    """Organisation API keys, found by the hash of the key a request presents."""

    collection_name = "api_keys"
    document_type = ApiKeyDocument
    indexes = (
        IndexModel([("key_hash", ASCENDING)], unique=True, name="key_hash_unique"),
        IndexModel(
            [("organization_id", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)],
            name="org_newest",
        ),
    )
    unique_fields = ("key_hash",)

    async def by_hash(self, key_hash: str) -> ApiKeyDocument | None:
        """The key with that hash, revoked or not (the caller decides)."""
        return await self.find_one(where={"key_hash": key_hash})

    async def list_page(
        self, *, organization_id: str, include_revoked: bool, limit: int, offset: int
    ) -> Page[ApiKeyDocument]:
        """The organisation's keys, newest first, with the total."""
        query: dict[str, Any] = {"organization_id": organization_id}
        if not include_revoked:
            query["revoked_at"] = None
        return await self.find(where=query, limit=limit, offset=offset, sort=LIST_SORT)


def all_repositories(database: Database) -> list[Repository[Any]]:
    """Every repository, for index creation at start-up."""
    return [
        OrganizationRepository(database),
        LeaseRepository(database),
        ModelRepository(database),
        SecretRepository(database),
        WeightsRepository(database),
        LedgerRepository(database),
        InferenceRepository(database),
        ApiKeyRepository(database),
    ]


async def ensure_indexes(database: Database) -> None:
    """Create every collection's indexes; idempotent."""
    for repository in all_repositories(database):
        await repository.ensure_indexes()
