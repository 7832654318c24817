"""The kubernetes runtime's ten-second inventory cache (modelplane/runtimes/kubernetes.py:
``Cached``): callers that miss together share one read. Before, eight reconcile workers and the
starts' plans missed at once and each read the cluster (version, nodes, every pod, discovery):
15 reads in a 10 s ``bench/controllers.py --count 40`` run."""

from __future__ import annotations

import asyncio

from controllers.runtimes.inventory import ClusterInventory
from modelplane.runtimes.kubernetes import Cached


async def test_callers_that_miss_together_share_one_read() -> None:
    reads = 0
    release = asyncio.Event()

    async def read() -> ClusterInventory:
        nonlocal reads
        reads += 1
        await release.wait()
        return ClusterInventory(kind="kubernetes", version=str(reads))

    cached = Cached(read, seconds=10.0)
    callers = [asyncio.create_task(cached()) for _ in range(8)]
    await asyncio.sleep(0)  # every caller is waiting now, none has an answer
    release.set()
    answers = await asyncio.gather(*callers)
    assert reads == 1
    assert {answer.version for answer in answers} == {"1"}
    assert (await cached()).version == "1"  # within the ten seconds: no new read
    assert reads == 1
