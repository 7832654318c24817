"""The comparison point for bench/api.py: the same page of models from a bare REST endpoint.

FastAPI + PyMongo's async client, one route, the same filter, sort, page and fields as the
GraphQL ``models`` query, no auth, no validation. Run as
``python bench/rest_baseline.py <mongodb-uri> <database> <port>``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from pymongo import AsyncMongoClient

FIELDS = {
    "_id": 1,
    "name": 1,
    "display_name": 1,
    "phase": 1,
    "tags": 1,
    "source": 1,
    "created_at": 1,
}


def build(uri: str, database: str) -> FastAPI:
    """The baseline app."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await client.close()

    app = FastAPI(lifespan=lifespan)
    models = client[database]["models"]

    @app.get("/models")
    async def list_models(
        organization_id: str, phase: str, limit: int = 50, offset: int = 0
    ) -> dict[str, Any]:
        query = {"organization_id": organization_id, "is_deleted": False, "phase": phase}
        total = await models.count_documents(query)
        cursor = (
            models.find(query, FIELDS)
            .sort([("created_at", -1), ("_id", -1)])
            .skip(offset)
            .limit(limit)
        )
        items = [
            {
                "id": doc["_id"],
                "name": doc["name"],
                "displayName": doc["display_name"],
                "phase": doc["phase"],
                "tags": doc["tags"],
                "source": {"url": doc["source"]["url"], "accessMode": doc["source"]["access_mode"]},
                "createdAt": doc["created_at"].isoformat(),
            }
            async for doc in cursor
        ]
        return {"total": total, "items": items}

    return app


if __name__ == "__main__":
    uvicorn.run(
        build(sys.argv[1], sys.argv[2]),
        host="127.0.0.1",
        port=int(sys.argv[3]),
        log_level="warning",
    )
