"""Listing 10,000 models with a filter and a page of 50 is served by an index."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from storage.client import Database
from storage.documents import (
    AccessMode,
    InferencePhase,
    ModelDocument,
    ModelPhase,
    ModelSource,
    utcnow,
)
from storage.repositories import LIST_SORT, ModelFilter, ModelRepository, ensure_indexes

PHASES = [ModelPhase.READY, ModelPhase.PENDING, ModelPhase.FAILED, ModelPhase.PULLING]


async def seed(database: Database, count: int) -> ModelRepository:
    await ensure_indexes(database)
    start = utcnow()
    documents = [
        ModelDocument(
            id=f"model-{i:05d}",
            organization_id="org-a" if i % 10 else "org-b",
            name=f"m{i}",
            name_key=f"m{i}",
            display_name=f"Model {i}",
            tags=[f"t{i % 7}"],
            source=ModelSource(url=f"org/m{i}", access_mode=AccessMode.LOCAL),
            phase=PHASES[i % 4],
            inference_phase=InferencePhase.RUNNING if i % 5 == 0 else None,
            created_at=start + timedelta(milliseconds=i),
        ).to_mongo()
        for i in range(count)
    ]
    await database["models"].insert_many(documents)
    return ModelRepository(database)


def index_serves(index_keys: list[tuple[str, int]], query: dict[str, Any]) -> bool:
    """True when the index's leading keys are the query's equality fields, then the sort."""
    equality = [key for key, value in query.items() if not isinstance(value, dict)]
    lead = [key for key, _ in index_keys[: len(equality)]]
    rest = index_keys[len(equality) : len(equality) + len(LIST_SORT)]
    return sorted(lead) == sorted(equality) and list(rest) == list(LIST_SORT)


@pytest.mark.parametrize(
    "model_filter",
    [
        ModelFilter(),
        ModelFilter(phase=ModelPhase.READY),
        ModelFilter(inference_phase=InferencePhase.RUNNING),
        ModelFilter(has_inference=False),
    ],
    ids=["all-live", "by-phase", "by-inference-phase", "without-inference"],
)
async def test_listing_query_shape_matches_an_index(
    database: Database, model_filter: ModelFilter
) -> None:
    repository = await seed(database, 10_000)
    query = ModelRepository.where("org-a", model_filter)
    cursor = await database["models"].list_indexes()
    indexes = [list(index["key"].items()) async for index in cursor]
    assert any(index_serves(keys, query) for keys in indexes), (query, indexes)

    page = await repository.list_page(
        organization_id="org-a", model_filter=model_filter, limit=50, offset=100
    )
    expected_total = sum(
        1
        for i in range(10_000)
        if i % 10  # org-a
        and (model_filter.phase is None or i % 4 == 0)  # READY
        and (model_filter.inference_phase is None or i % 5 == 0)  # RUNNING
        and (model_filter.has_inference is not False or i % 5 != 0)  # none
    )
    assert page.total == expected_total
    assert len(page.items) == 50
    created = [m.created_at for m in page.items]
    assert created == sorted(created, reverse=True)
    assert all(m.organization_id == "org-a" for m in page.items)


async def test_listing_plan_uses_the_index(database: Database) -> None:
    await seed(database, 10_000)
    query = ModelRepository.where("org-a", ModelFilter(phase=ModelPhase.READY))
    plan = await database.command(
        "explain",
        {"find": "models", "filter": query, "sort": dict(LIST_SORT), "limit": 50},
        verbosity="executionStats",
    )
    if "ferretdbVersion" in plan.get("serverInfo", {}):
        pytest.skip(
            "FerretDB 1.24 (SQLite backend) pushes down only _id filters and never uses "
            f"secondary indexes (explain: filterPushdown={plan.get('filterPushdown')}); "
            "the plan can be checked on MongoDB only"
        )
    stats = plan["executionStats"]
    assert "IXSCAN" in str(plan["queryPlanner"]["winningPlan"])
    assert stats["totalDocsExamined"] <= 50
