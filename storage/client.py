"""Connecting to MongoDB with PyMongo's native async client (Motor reached end of life)."""

from __future__ import annotations

from typing import Any, TypeAlias

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConfigurationError, PyMongoError

from storage.errors import DatabaseUnavailable

Database: TypeAlias = AsyncDatabase[dict[str, Any]]
Client: TypeAlias = AsyncMongoClient[dict[str, Any]]


def make_client(uri: str, *, timeout_seconds: float, app_name: str = "modelplane") -> Client:
    """Build a client; it connects lazily, so call :func:`ping` to prove the server is there."""
    timeout_ms = int(timeout_seconds * 1000)
    return AsyncMongoClient(
        uri,
        appname=app_name,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        tz_aware=True,
    )


async def ping(database: Database) -> None:
    """Raise :class:`DatabaseUnavailable` (without echoing the URI) unless the server answers."""
    try:
        await database.command("ping")
    except (PyMongoError, ConfigurationError) as exc:
        raise DatabaseUnavailable(f"MongoDB did not answer: {type(exc).__name__}") from exc


async def server_version(database: Database) -> tuple[str, str | None]:
    """Which server answers (``MongoDB`` or ``FerretDB``) and its version (``buildInfo``);
    the version None when the server would not say."""
    try:
        info = await database.command("buildInfo")
    except PyMongoError:
        return "MongoDB", None
    ferretdb = info.get("ferretdbVersion") or (info.get("ferretdb") or {}).get("version")
    if ferretdb:
        return "FerretDB", str(ferretdb)
    version = info.get("version")
    return "MongoDB", None if version is None else str(version)
