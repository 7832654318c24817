"""Benchmark: one write per command against bulk commands on the embedded FerretDB.

Why the event log and the recorder write in batches (``live/batching.py``) and why a bulk
command carries at most ``live.ferretdb.BULK_LIMIT`` writes: starts a FerretDB, stores
``--count`` documents, and removes a mark from each (``$pull``, as the recorder does) one
command at a time and then in bulk commands of 4, 16, 32, 64 and 100 writes; then inserts
``--count`` events one at a time and in ``insert_many`` batches. Prints wall seconds and
FerretDB CPU seconds side by side; a size FerretDB does not answer within ``--timeout``
seconds is reported as such (1.24 never answered a 100-statement ``update`` here).

    uv run python bench/bulk_writes.py [--count 200] [--timeout 30]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pymongo import AsyncMongoClient, UpdateOne  # noqa: E402

from modelplane.embedded import FerretDBProcess, default_ferretdb_binary  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def pulls(collection: Any, count: int, size: int, marker: str) -> None:
    """Remove ``marker`` from every document, ``size`` writes per command (1: update_one)."""
    for start in range(0, count, size):
        ids = [f"d{index:05d}" for index in range(start, min(start + size, count))]
        if size == 1:
            await collection.update_one({"_id": ids[0]}, {"$pull": {"marks": marker}})
        else:
            writes = [UpdateOne({"_id": i}, {"$pull": {"marks": marker}}) for i in ids]
            await collection.bulk_write(writes, ordered=True)


async def inserts(collection: Any, count: int, size: int) -> None:
    """Insert ``count`` small events, ``size`` per command (1: insert_one)."""
    documents = [
        {"_id": index, "type": "PHASE_CHANGED", "pad": "x" * 300} for index in range(count)
    ]
    for start in range(0, count, size):
        if size == 1:
            await collection.insert_one(documents[start])
        else:
            await collection.insert_many(documents[start : start + size])


async def measure(label: str, pid: int, run: Callable[[], Awaitable[None]], limit: float) -> None:
    """Print the wall and FerretDB CPU seconds of ``run``, or that it got no answer."""
    cpu, started = cpu_seconds(pid), time.monotonic()
    try:
        async with asyncio.timeout(limit):
            await run()
    except TimeoutError:
        print(f"{label:34s} no answer within {limit:.0f} s")
        return
    wall, used = time.monotonic() - started, cpu_seconds(pid) - cpu
    print(f"{label:34s} {wall:6.2f} s wall {used:6.2f} s FerretDB CPU")


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    ferret = FerretDBProcess(binary=default_ferretdb_binary(), data_dir=work / "ferretdb")
    ferret.start()
    try:
        await ferret.wait_ready()
        assert ferret.pid is not None  # noqa: S101  started above
        client: Any = AsyncMongoClient(ferret.uri)
        database = client["bench"]
        count, pid = args.count, ferret.pid
        sizes = [1, 4, 16, 32, 64, 100]
        marks = [f"m{size}" for size in sizes]
        await database["docs"].insert_many(
            [{"_id": f"d{index:05d}", "marks": marks, "pad": "x" * 500} for index in range(count)]
        )
        docs = database["docs"]
        print(f"insert {count} events:")
        for size in (1, 4, 32):
            label = "insert_one each" if size == 1 else f"insert_many of {size}"
            events = database[f"events{size}"]
            await measure(label, pid, functools.partial(inserts, events, count, size), args.timeout)
        print(f"{count} documents; remove one mark from each (100 last: FerretDB may hang):")
        for size, marker in zip(sizes, marks, strict=True):
            label = "update_one each" if size == 1 else f"bulk_write of {size}"
            run = functools.partial(pulls, docs, count, size, marker)
            await measure(label, pid, run, args.timeout)
        await client.close()
    finally:
        ferret.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=30.0)
    asyncio.run(main(parser.parse_args()))
