"""Process-local locks per document, under the compare-and-set updates.

MongoDB applies ``findAndModify`` on ``{_id, revision}`` atomically, which is all optimistic
concurrency needs. FerretDB 1.24 (the embedded and test server) does not: measured here, five
concurrent ``find_one_and_update`` (or ``update_one``) calls matching ``revision: 1`` all
report success and the revision ends at 2. Serialising writes to one document inside a
process restores compare-and-set for a single replica (the embedded default and the tests);
across replicas only a real MongoDB gives it, which is why production requires one.
"""

from __future__ import annotations

import asyncio
import weakref

_LOCKS: weakref.WeakValueDictionary[tuple[str, str, str], asyncio.Lock] = (
    weakref.WeakValueDictionary()
)


def document_lock(database: str, collection: str, document_id: str) -> asyncio.Lock:
    """The lock guarding writes to one document in this process."""
    key = (database, collection, document_id)
    lock = _LOCKS.get(key)
    if lock is None:
        lock = asyncio.Lock()
        _LOCKS[key] = lock
    return lock
