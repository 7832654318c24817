"""A cancellation PyMongo swallowed, raised again where our loops can see it.

PyMongo's async lock (``pymongo/_asyncio_lock.py``, ``Lock.acquire``, 4.x) catches the
``CancelledError`` of a task cancelled while it waits for the lock and, when the lock is free
by then, takes it and returns normally: the cancellation is gone, the call carries on, and a
background loop around it (the event-log tail, event recovery, a controller's worker) goes on
to its next pass or its sleep. Whoever cancelled it waits forever. Reproduced: opening and
closing the object graph in a loop hung within ten rounds, the recovery task "cancelling"
yet asleep in its 30 s pause (``tests/test_cancellation.py``).

The task still knows it was asked to stop (:meth:`asyncio.Task.cancelling` counts requests
until someone ``uncancel()``s), so each loop calls :func:`raise_if_cancelled` after the
database work of a pass.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Raise ``CancelledError`` when the current task was cancelled and the request was
    swallowed by a library instead of ending the task."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
