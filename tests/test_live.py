"""The seam of live delivery (``live/broker.py``): what code above the package relies on.

A listener (how the controllers are fed) hears an event another OS process appended, through
the polling tail on FerretDB; the import path a download Job's pod takes to append stays free
of the web stack; a subscription that ended leaves nothing in the broker.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence

from live.broker import Broker, EventFilter
from live.events import Event, EventType, ResourceKind
from live.log import EventLog, TailStrategy
from storage.client import Database

ORG = "org-live"

# Run in another interpreter, as `modelplane download` in a Job's pod: append one event
# through the recorder's import path, and say which heavy modules that import pulled in.
APPEND_ELSEWHERE = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from live.log import EventLog
    from live.recording import Recorder
    from live.events import EventType, ResourceKind
    from storage.client import make_client

    async def main(uri, name):
        client = make_client(uri, timeout_seconds=5)
        try:
            log = EventLog(client[name])
            Recorder(log)
            await log.head_cursor()  # connected: the figure is the append and the tail's read
            began = time.time()
            event = await log.append(
                organization_id=sys.argv[3],
                resource_kind=ResourceKind.WEIGHTS,
                resource_id="weights-elsewhere",
                type=EventType.PROGRESS,
                progress={"bytes": 1},
            )
            heavy = sorted(m for m in ("strawberry", "fastapi", "starlette") if m in sys.modules)
            print(json.dumps({"cursor": event.cursor, "began": began, "heavy": heavy}))
        finally:
            await client.close()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def test_a_listener_hears_an_event_another_process_appended(
    database: Database, mongo_uri: str
) -> None:
    """The controllers' feed: ``Broker.listen`` sees an event a separate OS process appended
    (the ring and head of ``live/ferretdb.py``, polled), within a generous bound; and the
    appending process never imported the web stack."""
    log = EventLog(database, poll_interval=0.02)
    await log.ensure()
    assert log.strategy is TailStrategy.POLL  # FerretDB: the work-around is what is tested
    heard: list[tuple[Event, float]] = []
    arrived = asyncio.Event()

    def listener(event: Event) -> None:
        heard.append((event, time.time()))
        arrived.set()

    async with Broker(log) as broker:
        broker.listen(listener)
        command = [sys.executable, "-c", APPEND_ELSEWHERE, mongo_uri, database.name, ORG]
        done = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        said = json.loads(done.stdout)
        async with asyncio.timeout(10):
            await arrived.wait()
    (event, heard_at) = heard[0]
    assert (event.cursor, event.organization_id, event.type) == (
        said["cursor"],
        ORG,
        EventType.PROGRESS,
    )
    latency = heard_at - said["began"]
    print(  # noqa: T201  the measured figure, for the record
        f"listener heard another process's append {latency * 1000:.0f} ms after it began"
    )
    assert latency < 5.0
    assert said["heavy"] == [], "the append path of a Job's pod imported the web stack"


async def test_an_ended_subscription_leaves_nothing_behind(database: Database) -> None:
    """After a subscription ends (its ``async with`` exits), the broker holds no reference to
    it: later events reach neither its queue nor its sink, and are not counted for it."""
    log = EventLog(database, poll_interval=0.02)
    await log.ensure()
    sunk: list[int] = []

    def sink(events: Sequence[Event]) -> int:
        sunk.extend(event.cursor for event in events)
        return len(events)

    async with Broker(log) as broker:
        async with broker.subscribe(EventFilter(ORG)) as subscription:
            subscription.deliver_directly(sink)
            assert broker.subscribers == 1
        assert broker.subscribers == 0
        dispatched = asyncio.Event()
        broker.listen(lambda _: dispatched.set())
        appended = await log.append(
            organization_id=ORG,
            resource_kind=ResourceKind.MODEL,
            resource_id="model-1",
            type=EventType.CREATED,
        )
        async with asyncio.timeout(5):
            await dispatched.wait()  # the tail has read and dispatched it
        assert broker.position == appended.cursor
        assert (broker.queued_deliveries, broker.direct_deliveries) == (0, 0)
        assert sunk == []
        assert subscription.queued == 0
