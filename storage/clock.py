"""The one clock of stored documents: UTC, truncated to what MongoDB keeps.

Its own module so that every document module (``storage.documents``, ``storage.progress``)
can use it without importing the others; ``storage.documents`` re-exports it.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """The current time, UTC, truncated to milliseconds as MongoDB stores it."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)
