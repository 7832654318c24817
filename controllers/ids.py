"""The reconcile id carried by every log line a reconcile (or a download it runs) writes."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

reconcile_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "reconcile_id", default=None
)


@contextmanager
def reconcile_scope(value: str) -> Iterator[None]:
    """Attach ``value`` as the reconcile id for the duration of the block."""
    token = reconcile_id.set(value)
    try:
        yield
    finally:
        reconcile_id.reset(token)
