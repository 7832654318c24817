"""Small constructors shared by the server and the one-shot CLI commands (kept light: the
``download`` command of a Job pod imports this without FastAPI or strawberry)."""

from __future__ import annotations

from live import EventLog
from modelplane.settings import Settings
from storage.client import Database


def event_log_for(settings: Settings, database: Database) -> EventLog:
    """The event log as the settings size it."""
    return EventLog(
        database,
        size_bytes=settings.events_size_mib * 1024 * 1024,
        max_events=settings.events_max_count,
        poll_interval=settings.events_poll_seconds,
    )
