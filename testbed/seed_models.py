"""Many models at once, written straight through the storage layer: the dashboard's browser
test and bench/dashboard.py need 1,000 and 10,000 models in seconds, which 10,000 createModel
calls (hub look-ups, events, downloads) would not give. The documents are what the service
would store for LOCAL models in assorted phases: no weights, no events."""

from __future__ import annotations

from datetime import timedelta

from storage.client import Database
from storage.documents import AccessMode, ModelDocument, ModelPhase, ModelSource, utcnow
from storage.repositories import ensure_indexes

PHASES = (ModelPhase.READY, ModelPhase.READY, ModelPhase.FAILED, ModelPhase.READY)
"""Settled phases only: a LOCAL model PENDING or PULLING with no download behind it would be
picked up again by every resync of the download controller (a real one has its download)."""
BATCH = 1000


def seeded_name(index: int, prefix: str = "seed") -> str:
    """The name of the ``index``-th seeded model: zero-padded, so names sort like indexes."""
    return f"{prefix}-{index:05d}"


async def seed_models(
    database: Database, *, organization_id: str, count: int, prefix: str = "seed"
) -> None:
    """``count`` models named ``<prefix>-00000``...; each a millisecond newer than the last,
    tagged ``family-<i % 7>`` and ``seeded``, every fourth (from the third) FAILED, the rest
    READY."""
    await ensure_indexes(database)
    start = utcnow() - timedelta(milliseconds=count)
    for offset in range(0, count, BATCH):
        documents = [
            ModelDocument(
                id=f"model-{organization_id}-{prefix}-{i:05d}",
                organization_id=organization_id,
                name=seeded_name(i, prefix),
                name_key=seeded_name(i, prefix),
                display_name=f"Seeded model {i}",
                tags=[f"family-{i % 7}", "seeded"],
                source=ModelSource(
                    url=f"seed-org/{seeded_name(i, prefix)}", access_mode=AccessMode.LOCAL
                ),
                phase=PHASES[i % len(PHASES)],
                created_at=start + timedelta(milliseconds=i),
            ).to_mongo()
            for i in range(offset, min(count, offset + BATCH))
        ]
        await database["models"].insert_many(documents)
