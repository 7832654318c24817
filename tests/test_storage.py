"""The repository layer against a real FerretDB: round trips, compare-and-set, uniqueness."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest

from controllers.inference.engines import EngineImages
from controllers.inference.workloads import WorkloadPlanner
from controllers.runtimes.local.inference import LocalInferenceRuntime
from services.naming import suffixed, workload_name
from storage.client import Database, make_client
from storage.documents import (
    AccessMode,
    InferenceDocument,
    LocalTarget,
    ModelDocument,
    ModelSource,
    OrganizationDocument,
    WeightsDocument,
    new_id,
)
from storage.errors import Contended, DuplicateKey, NotFound, RevisionConflict
from storage.repositories import (
    CAS_ATTEMPTS,
    InferenceRepository,
    LeaseRepository,
    ModelRepository,
    OrganizationRepository,
    WeightsRepository,
    ensure_indexes,
)


@pytest.fixture
async def orgs(database: Database) -> OrganizationRepository:
    await ensure_indexes(database)
    return OrganizationRepository(database)


async def test_round_trip_preserves_every_field(orgs: OrganizationRepository) -> None:
    doc = OrganizationDocument(id=new_id("org"), name="acme", display_name="Acme Inc.")
    await orgs.insert(doc)
    loaded = await orgs.get(doc.id)
    assert loaded == doc
    assert loaded is not None
    assert loaded.revision == 1
    assert loaded.created_at.tzinfo is not None


async def test_update_bumps_revision_and_refuses_stale_writers(
    orgs: OrganizationRepository, database: Database
) -> None:
    doc = await orgs.insert(OrganizationDocument(id="org-a", name="a"))
    updated = await orgs.update(doc.id, expected_revision=1, changes={"display_name": "A"})
    assert updated.revision == 2
    assert updated.display_name == "A"
    assert updated.updated_at >= doc.updated_at

    with pytest.raises(RevisionConflict):
        await orgs.update(doc.id, expected_revision=1, changes={"display_name": "stale"})
    raw = await database["organizations"].find_one({"_id": "org-a"})
    assert raw is not None
    assert raw["display_name"] == "A"  # the stale write changed nothing
    assert raw["revision"] == 2


async def test_concurrent_updates_exactly_one_wins(orgs: OrganizationRepository) -> None:
    await orgs.insert(OrganizationDocument(id="org-c", name="c"))

    async def write(value: str) -> str:
        try:
            await orgs.update("org-c", expected_revision=1, changes={"display_name": value})
        except RevisionConflict:
            return "conflict"
        return "won"

    outcomes = await asyncio.gather(*(write(f"w{i}") for i in range(5)))
    assert sorted(outcomes) == ["conflict"] * 4 + ["won"]
    final = await orgs.require("org-c")
    assert final.revision == 2


async def test_a_progress_write_never_undoes_a_concurrent_compare_and_set(
    database: Database,
) -> None:
    """FerretDB rewrites the whole document on every update: a progress write racing a
    compare-and-set used to put the old document back (a cancelled download went on PULLING)."""
    weights = WeightsRepository(database)
    doc = await weights.insert(
        WeightsDocument(
            id="weights-race",
            organization_id="org",
            repo_id="org/a",
            commit_sha="c" * 40,
            target=LocalTarget(local_path="/models/a"),
            location="/models/a",
        )
    )
    for round_ in range(20):
        progress = {"stage": "DOWNLOADING", "bytes_done": round_}
        written, _ = await asyncio.gather(
            weights.update(
                doc.id, expected_revision=doc.revision, changes={"model_ids": [f"m{round_}"]}
            ),
            weights.set_progress(doc.id, progress=progress, attempt=0),
        )
        doc = await weights.require(doc.id)
        assert (doc.revision, doc.model_ids) == (written.revision, [f"m{round_}"]), round_


async def test_update_of_missing_document_is_not_found(orgs: OrganizationRepository) -> None:
    with pytest.raises(NotFound):
        await orgs.update("org-missing", expected_revision=1, changes={"display_name": "x"})


async def test_unique_name_is_enforced_and_names_the_field(
    orgs: OrganizationRepository, database: Database
) -> None:
    await orgs.insert(OrganizationDocument(id="org-1", name="same"))
    with pytest.raises(DuplicateKey) as caught:
        await orgs.insert(OrganizationDocument(id="org-2", name="same"))
    assert caught.value.field == "name"
    assert await database["organizations"].count_documents({}) == 1


async def test_scope_hides_documents_of_other_organisations(
    database: Database, orgs: OrganizationRepository
) -> None:
    await orgs.insert(OrganizationDocument(id="org-s", name="s"))
    assert await orgs.get("org-s", scope={"name": "other"}) is None
    assert await orgs.get("org-s", scope={"name": "s"}) is not None


async def test_scoped_get_agrees_with_the_server_on_every_kind_of_scope(
    database: Database,
) -> None:
    """A plain scope is checked in Python after a read by ``_id`` (FerretDB pushes only that
    down); other scopes go to the server. Either way the answer is the server's own."""
    models = ModelRepository(database)
    await models.insert(
        ModelDocument(
            id="model-s",
            organization_id="org-1",
            name="s",
            name_key="s",
            display_name="S",
            tags=["gpu", "chat"],
            source=ModelSource(url="org/s", access_mode=AccessMode.LOCAL),
        )
    )
    scopes: list[dict[str, Any]] = [
        {"organization_id": "org-1"},
        {"organization_id": "org-2"},
        {"organization_id": "org-1", "name": "s"},
        {"organization_id": "org-1", "name": "t"},
        {"tags": "chat"},  # an array field holding the value
        {"tags": "vision"},
        {"label": "none"},  # a field the document does not have
        {"source.url": "org/s"},  # dotted: asked of the server
        {"source.url": "org/t"},
        {"organization_id": {"$in": ["org-1", "org-3"]}},  # an operator: asked of the server
        {"organization_id": {"$in": ["org-3"]}},
        {"is_deleted": False},  # not a string: asked of the server
    ]
    raw = database[ModelRepository.collection_name]
    for scope in scopes:
        expected = await raw.find_one({**scope, "_id": "model-s"}) is not None
        found = await models.get("model-s", scope=scope)
        assert (found is not None) == expected, scope
    assert await models.get("model-x", scope={"organization_id": "org-1"}) is None


async def test_find_pages_with_total(orgs: OrganizationRepository) -> None:
    for i in range(7):
        await orgs.insert(OrganizationDocument(id=f"org-{i}", name=f"n{i}"))
    page = await orgs.find(where={}, limit=3, offset=3, sort=[("_id", 1)])
    assert page.total == 7
    assert [d.id for d in page.items] == ["org-3", "org-4", "org-5"]
    empty = await orgs.find(where={}, limit=3, offset=9)
    assert empty.total == 7
    assert empty.items == []


async def test_lease_has_one_holder_until_it_expires(database: Database) -> None:
    leases = LeaseRepository(database)
    assert await leases.try_acquire("controllers", holder="a", duration=timedelta(seconds=30))
    assert not await leases.try_acquire("controllers", holder="b", duration=timedelta(seconds=30))
    assert await leases.try_acquire("controllers", holder="a", duration=timedelta(seconds=30))
    assert await leases.holder_of("controllers") == "a"

    assert await leases.try_acquire("short", holder="a", duration=timedelta(milliseconds=1))
    await asyncio.sleep(0.05)
    assert await leases.try_acquire("short", holder="b", duration=timedelta(seconds=30))
    assert await leases.holder_of("short") == "b"

    await leases.release("controllers", holder="a")
    assert await leases.try_acquire("controllers", holder="b", duration=timedelta(seconds=30))


async def test_modify_re_reads_and_re_decides_after_losing_the_race(
    orgs: OrganizationRepository,
) -> None:
    """Five writers append to one field through ``modify``: every one lands (each loses the
    compare-and-set at most a few times, re-reads and decides again from the new value)."""
    await orgs.insert(OrganizationDocument(id="org-m", name="m", display_name=""))

    async def append(letter: str) -> None:
        await orgs.modify("org-m", lambda doc: {"display_name": (doc.display_name or "") + letter})

    await asyncio.gather(*(append(letter) for letter in "abcde"))
    final = await orgs.require("org-m")
    assert sorted(final.display_name or "") == list("abcde")
    assert final.revision == 6


async def test_modify_writes_nothing_when_the_change_asks_for_nothing(
    orgs: OrganizationRepository,
) -> None:
    await orgs.insert(OrganizationDocument(id="org-n", name="n"))
    same = await orgs.modify("org-n", lambda doc: None)
    assert same.revision == 1
    assert (await orgs.require("org-n")).revision == 1
    with pytest.raises(NotFound):
        await orgs.modify("org-missing", lambda doc: {"display_name": "x"})


async def test_modify_gives_up_after_the_retry_policy(orgs: OrganizationRepository) -> None:
    """A document that changes under every try: ``Contended`` after CAS_ATTEMPTS reads, and
    the interfering writes are all that landed."""
    await orgs.insert(OrganizationDocument(id="org-x", name="x"))
    tries = 0

    def change(doc: OrganizationDocument) -> dict[str, Any]:
        nonlocal tries
        tries += 1
        return {"display_name": f"mine-{tries}"}

    original_update = orgs.update

    async def interfering_update(document_id: str, **kwargs: Any) -> OrganizationDocument:
        current = await orgs.require(document_id)
        await original_update(
            document_id, expected_revision=current.revision, changes={"display_name": "theirs"}
        )
        return await original_update(document_id, **kwargs)

    orgs.update = interfering_update  # type: ignore[method-assign]
    with pytest.raises(Contended):
        await orgs.modify("org-x", change)
    assert tries == CAS_ATTEMPTS
    final = await orgs.require("org-x")
    assert final.display_name == "theirs"
    assert final.revision == 1 + CAS_ATTEMPTS


async def test_two_replicas_creating_the_indexes_at_once_both_start(mongo_uri: str) -> None:
    """Two replicas starting together on a fresh database both list the indexes as missing and
    both create them; FerretDB 1.24 panics on the repeat and drops the connection. Start-up
    must survive it (it re-lists and creates only what is still missing)."""
    for _ in range(3):
        name = f"t_race_{uuid.uuid4().hex[:10]}"
        clients = [make_client(mongo_uri, timeout_seconds=5) for _ in range(2)]
        try:
            await asyncio.gather(*(ensure_indexes(client[name]) for client in clients))
            names = {
                index["name"] async for index in await clients[0][name]["models"].list_indexes()
            }
            assert names >= {i.document["name"] for i in ModelRepository.indexes}
        finally:
            await clients[0].drop_database(name)
            for client in clients:
                await client.close()


async def test_a_workload_name_another_live_inference_holds_is_suffixed(
    database: Database, tmp_path: Any
) -> None:
    """Two organisations' models called ``llama``: the second inference gets the id's suffix
    while the first is live (found by the name it noted, by ``_id``), and the plain name again
    once the first is deleted."""
    await ensure_indexes(database)
    inferences = InferenceRepository(database)
    planner = WorkloadPlanner(
        weights=WeightsRepository(database), images=EngineImages(), local=True
    )
    runtime = LocalInferenceRuntime(planner=planner, work_dir=tmp_path, log_dir=tmp_path)
    first = await inferences.insert(
        InferenceDocument(
            id="inf-aaaaa",
            organization_id="org-a",
            model_id="model-a",
            model_name="llama",
            name=await workload_name(inferences, runtime, "llama", "inf-aaaaa"),
            active_key="model-a",
        )
    )
    assert first.name == "llama"
    assert await workload_name(inferences, runtime, "llama", "inf-aaaaa") == "llama"  # its own
    assert await workload_name(inferences, runtime, "llama", "inf-bbbbb") == suffixed(
        "llama", "inf-bbbbb"
    )
    await inferences.modify(first.id, lambda _: {"is_deleted": True})
    assert await workload_name(inferences, runtime, "llama", "inf-bbbbb") == "llama"
