"""Group commit: writes that arrive while one is in flight go to the database together.

The event log's appends and the recorder's settled marks each cost a write per event, and
every caller waited for all earlier callers' writes in turn (one lock per stage). On the
embedded FerretDB, which answers one write at a time, that queue was what a reconcile's status
write spent most of its time in (``bench/controllers.py``, docs/architecture.md). A
:class:`GroupCommit` keeps the one-at-a-time order but lets the next flush carry everything
that queued meanwhile: under load a batch holds the writes of one round trip; alone, a write
goes as before.

A failed flush hands its error to every caller in the batch. A caller that is cancelled while
waiting does not take its item back (an event already inserted must still be published; a
settled mark is settled either way); a flush cancelled half-way leaves its batch to the next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Flushes queued items with ``flush(items)``, one flush at a time, each taking all."""

    def __init__(self, flush: Callable[[list[T]], Awaitable[None]]) -> None:
        self._flush = flush
        self._lock = asyncio.Lock()
        self._pending: list[tuple[T, asyncio.Future[None]]] = []

    def enqueue(self, item: T) -> asyncio.Future[None]:
        """Queue ``item`` for the next flush (synchronous: callers keep their order); the
        future :meth:`wait` takes."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        return done

    async def wait(self, done: asyncio.Future[None]) -> None:
        """Until the item of ``done`` is flushed (flushing everything queued when no flush is
        in flight); raises the flush's error."""
        try:
            async with self._lock:
                if not done.done():
                    await self._flush_pending()
        except asyncio.CancelledError:
            done.add_done_callback(_retrieve)  # a later flush's error is nobody's to raise
            raise
        done.result()

    async def submit(self, item: T) -> None:
        """:meth:`enqueue` then :meth:`wait`."""
        await self.wait(self.enqueue(item))

    async def _flush_pending(self) -> None:
        batch, self._pending = self._pending, []
        try:
            await self._flush([item for item, _ in batch])
        except asyncio.CancelledError:
            self._pending[:0] = batch
            raise
        except Exception as exc:  # noqa: BLE001  handed to every caller of the batch
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
        else:
            for _, done in batch:
                if not done.done():
                    done.set_result(None)


def _retrieve(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()
