"""The event log and its broker against the real FerretDB: cursors, capping, tailing, fan-out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from bson.int64 import Int64
from pymongo import AsyncMongoClient, CursorType, monitoring

from live import ferretdb as ferretdb_module
from live.broker import Broker, EventFilter, Item, Marker, MarkerKind, Subscription
from live.events import (
    DuplicateEvent,
    Event,
    EventLogNotCapped,
    EventType,
    InvalidCursor,
    ResourceKind,
    format_cursor,
    parse_cursor,
)
from live.ferretdb import READ_AHEAD, read_ahead
from live.log import EventLog, TailStrategy
from storage.client import Database, make_client
from storage.documents import utcnow

ORG_A = "org-a"
ORG_B = "org-b"
POLL = 0.02


async def wait_until(condition: Callable[[], bool], *, timeout: float = 5) -> None:
    """Poll a condition the broker's task makes true (it offers no event to await)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if condition():
            return
        if loop.time() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


async def take(subscription: Subscription, count: int, *, timeout: float = 5) -> list[Item]:
    items: list[Item] = []
    async with asyncio.timeout(timeout):
        async for item in subscription:
            items.append(item)
            if len(items) == count:
                break
    return items


async def rest(subscription: Subscription, *, timeout: float = 5) -> list[Item]:
    """Everything until the subscription ends by itself."""
    async with asyncio.timeout(timeout):
        return [item async for item in subscription]


def cursors(items: list[Item]) -> list[int]:
    return [item.cursor for item in items if isinstance(item, Event)]


async def append(log: EventLog, org: str = ORG_A, **fields: Any) -> Event:
    values: dict[str, Any] = {
        "resource_kind": ResourceKind.MODEL,
        "resource_id": "model-1",
        "type": EventType.PHASE_CHANGED,
        "phase": "PULLING",
        **fields,
    }
    return await log.append(organization_id=org, **values)


async def bulk_progress(log_db: Database, first: int, count: int, resource_id: str) -> None:
    """Write ``count`` PROGRESS events with dense cursors in one go (as many appends would)."""
    documents = [
        Event(
            cursor=cursor,
            organization_id=ORG_A,
            resource_kind=ResourceKind.WEIGHTS,
            resource_id=resource_id,
            model_ids=("model-1",),
            type=EventType.PROGRESS,
            progress={"bytes": cursor},
            at=utcnow(),
        ).to_mongo()
        for cursor in range(first, first + count)
    ]
    await log_db["events"].insert_many(documents)
    # as appends do: raise the head, so tails of other processes look at the log
    await log_db["event_head"].update_one(
        {"_id": "head"}, {"$max": {"cursor": Int64(first + count - 1)}}, upsert=True
    )


@asynccontextmanager
async def running_broker(log: EventLog, **options: Any) -> AsyncIterator[Broker]:
    await log.ensure()
    async with Broker(log, **options) as broker:
        yield broker


@pytest.fixture
async def log(database: Database) -> EventLog:
    event_log = EventLog(database, size_bytes=1024 * 1024, poll_interval=POLL)
    await event_log.ensure()
    return event_log


def test_cursor_strings_round_trip() -> None:
    assert parse_cursor(format_cursor(42)) == 42
    for bad in ("", "-1", "1.5", "abc", "٣", "9" * 20, str(2**63)):
        with pytest.raises(InvalidCursor):
            parse_cursor(bad)


async def test_append_read_and_edges(log: EventLog) -> None:
    assert await log.latest_cursor() is None
    assert await log.oldest_cursor() is None
    first = await append(log, progress={"bytes": 1})
    second = await append(log, type=EventType.UPDATED, model_ids=["model-1", "model-2"])
    assert (first.cursor, second.cursor) == (1, 2)
    assert (await log.oldest_cursor(), await log.latest_cursor()) == (1, 2)
    assert await log.after(0, limit=10) == [first, second]
    assert await log.after(1, limit=10) == [second]
    assert await log.after(0, limit=1) == [first]
    assert await log.after(0, limit=10, organization_id=ORG_B) == []


async def test_cursors_unique_and_dense_across_two_processes(
    database: Database, mongo_uri: str
) -> None:
    other_client = make_client(mongo_uri, timeout_seconds=5)
    try:
        logs = [EventLog(database), EventLog(other_client[database.name])]
        await asyncio.gather(*(each.ensure() for each in logs))

        async def writer(each: EventLog, name: str) -> list[int]:
            return [(await append(each, resource_id=f"{name}-{i}")).cursor for i in range(40)]

        mine, theirs = await asyncio.gather(writer(logs[0], "a"), writer(logs[1], "b"))
        assert mine == sorted(mine)
        assert theirs == sorted(theirs)
        assert sorted(mine + theirs) == list(range(1, 81))  # unique, no holes
        stored = await logs[1].after(0, limit=100)
        assert [event.cursor for event in stored] == list(range(1, 81))
    finally:
        await other_client.close()


async def test_concurrent_batches_of_two_processes_stay_unique_and_dense(
    database: Database, mongo_uri: str
) -> None:
    """Each process inserts its waiting appends as one batch; when another process took a
    cursor of the batch, the rest of the batch moves past it, so cursors stay unique and the
    sequence has no holes."""
    other_client = make_client(mongo_uri, timeout_seconds=5)
    try:
        logs = [EventLog(database), EventLog(other_client[database.name])]
        await asyncio.gather(*(each.ensure() for each in logs))

        async def writer(each: EventLog, name: str) -> list[int]:
            appends = (append(each, resource_id=f"{name}-{i}") for i in range(40))
            return [event.cursor for event in await asyncio.gather(*appends)]

        for _ in range(3):
            await asyncio.gather(writer(logs[0], "a"), writer(logs[1], "b"))
        stored = await logs[1].after(0, limit=500)
        assert [event.cursor for event in stored] == list(range(1, 241))
        assert await logs[0].head_cursor() == 240
    finally:
        await other_client.close()


async def test_a_key_the_log_holds_fails_only_its_own_append_in_a_batch(log: EventLog) -> None:
    await append(log, resource_id="model-1", key="key-1")
    results = await asyncio.gather(
        *(append(log, resource_id=f"model-{i}", key=f"key-{i}") for i in range(6)),
        return_exceptions=True,
    )
    refused = [result for result in results if isinstance(result, DuplicateEvent)]
    written = [result for result in results if isinstance(result, Event)]
    assert len(refused) == 1
    assert refused[0] is results[1]
    assert [event.cursor for event in written] == [2, 3, 4, 5, 6]
    stored = await log.after(0, limit=10)
    assert [event.key for event in stored] == ["key-1", "key-0", "key-2", "key-3", "key-4", "key-5"]


async def test_ensure_refuses_an_uncapped_collection(database: Database) -> None:
    await database.create_collection("events")
    with pytest.raises(EventLogNotCapped, match="not capped"):
        await EventLog(database).ensure()


async def test_ensure_is_idempotent(database: Database) -> None:
    log = EventLog(database, size_bytes=8192)
    await log.ensure()
    await log.ensure()
    assert (await database["events"].options())["capped"] is True


async def test_ferretdb_tailable_cursor_does_not_wait(log: EventLog, database: Database) -> None:
    """The behaviour the polling fallback exists for, checked on the test server."""
    await append(log)
    cursor = (
        database["events"]
        .find({"_id": {"$gt": Int64(0)}}, cursor_type=CursorType.TAILABLE_AWAIT)
        .max_await_time_ms(2000)
    )
    started = asyncio.get_running_loop().time()
    found = [raw async for raw in cursor]
    assert len(found) == 1
    assert not cursor.alive  # MongoDB keeps it open and waits in getMore
    assert asyncio.get_running_loop().time() - started < 1.0


async def test_ensure_on_ferretdb_polls_from_the_start_and_says_so(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="live.log")
    log = EventLog(database, poll_interval=POLL)
    before = log.strategy
    await log.ensure()
    assert [before, log.strategy] == [TailStrategy.AUTO, TailStrategy.POLL]  # it is FerretDB
    await append(log)
    assert [e.cursor async for e in _first(log.tail(after=0), 1)] == [1]
    (said,) = [r.getMessage() for r in caplog.records if "polling every" in r.getMessage()]
    assert "FerretDB" in said  # when a tail starts (start-up errors stay one line)


async def _first(tail: AsyncGenerator[Event, None], count: int) -> AsyncIterator[Event]:
    try:
        async with asyncio.timeout(5):
            for _ in range(count):
                yield await anext(tail)
    finally:
        await tail.aclose()


async def test_tail_falls_back_to_polling_and_says_so_once(
    log: EventLog, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that ends tailable cursors at once, not known by name: the tail finds out."""
    caplog.set_level(logging.INFO, logger="live.log")
    log = EventLog(database, poll_interval=POLL)  # not ensure()d: it tries a tailable cursor
    await append(log)
    seen: list[int] = []
    tail = log.tail(after=0)
    try:
        async with asyncio.timeout(5):
            async for event in tail:
                seen.append(event.cursor)
                if len(seen) < 4:
                    await append(log)
                else:
                    break
    finally:
        await tail.aclose()
    assert seen == [1, 2, 3, 4]
    assert sum("polling every" in record.getMessage() for record in caplog.records) == 1


async def test_tail_by_polling_strategy(database: Database) -> None:
    log = EventLog(database, poll_interval=POLL, poll_limit=2, strategy=TailStrategy.POLL)
    await log.ensure()
    for _ in range(5):
        await append(log)
    tail = log.tail(after=1)
    try:
        async with asyncio.timeout(5):
            seen = [(await anext(tail)).cursor for _ in range(4)]
    finally:
        await tail.aclose()
    assert seen == [2, 3, 4, 5]


async def test_capped_log_trims_oldest_and_resync_is_required(database: Database) -> None:
    log = EventLog(database, size_bytes=4096, max_events=10, poll_interval=POLL)
    await log.ensure()
    for index in range(30):
        await append(log, resource_id=f"model-{index}")
    # FerretDB trims capped collections in a background sweep (once a minute) or on compact;
    # MongoDB trims on insert.
    await database.command("compact", "events")
    oldest = await log.oldest_cursor()
    assert oldest is not None
    assert oldest > 1
    assert await log.latest_cursor() == 30
    async with (
        running_broker(log) as broker,
        broker.subscribe(EventFilter(ORG_A), after=1) as subscription,
    ):
        items = await take(subscription, 1 + 31 - oldest)
        # The marker's cursor is where the stream goes on after: resubscribing with it as
        # `after` needs no resync and loses nothing.
        assert items[0] == Marker(MarkerKind.RESYNC_REQUIRED, oldest - 1)
        assert cursors(items) == list(range(oldest, 31))
        async with broker.subscribe(EventFilter(ORG_A), after=items[0].cursor) as covered:
            assert cursors(await take(covered, 31 - oldest)) == list(range(oldest, 31))


async def test_events_trimmed_before_the_tail_read_them_are_a_resync_in_place(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The capped log drops events this process's tail never read (it fell too far behind):
    nothing is lost silently. Live subscribers get RESYNC_REQUIRED between what came before
    the hole and what follows, and resubscribing after the marker's cursor needs no resync."""
    writer = EventLog(database, size_bytes=64 * 1024, max_events=10, poll_interval=POLL)
    await writer.ensure()
    reader = EventLog(database, poll_interval=POLL, strategy=TailStrategy.POLL)
    stalled = asyncio.Event()  # while set, the reader sees no new head: it falls behind
    real_head = reader.head_cursor
    seen_head = 0

    async def head() -> int:
        nonlocal seen_head
        if not stalled.is_set():
            seen_head = await real_head()
        return seen_head

    monkeypatch.setattr(reader, "head_cursor", head)
    async with running_broker(reader) as broker:
        async with (
            broker.subscribe(EventFilter(ORG_A)) as everything,
            broker.subscribe(EventFilter(ORG_A, model_id="model-x")) as one_model,
        ):
            trims: list[int] = []
            broker.on_trimmed(lambda: trims.append(broker.position))
            first = await append(writer)
            assert await take(everything, 1) == [first]
            stalled.set()
            await asyncio.sleep(3 * POLL)  # a poll in flight finishes
            for index in range(200):  # more than the ring's 128 slots
                await append(writer, resource_id=f"model-{index}")
            await database.command("compact", "events")  # FerretDB trims in a sweep
            oldest = await writer.oldest_cursor()
            assert oldest is not None
            assert oldest > first.cursor + 128
            stalled.clear()
            items = await take(everything, 1 + 202 - oldest)
            assert items[0] == Marker(MarkerKind.RESYNC_REQUIRED, oldest - 1)
            assert cursors(items) == list(range(oldest, 202))
            # A subscriber none of whose events were seen is told too: whose were lost is
            # unknowable.
            assert await take(one_model, 1) == [Marker(MarkerKind.RESYNC_REQUIRED, oldest - 1)]
            assert trims == [first.cursor], "trim listeners are told once, before the hole"
        async with broker.subscribe(EventFilter(ORG_A), after=oldest - 1) as again:
            assert cursors(await take(again, 202 - oldest)) == list(range(oldest, 202))


async def test_resync_for_a_cursor_beyond_the_log(log: EventLog) -> None:
    async with running_broker(log) as broker:
        async with broker.subscribe(EventFilter(ORG_A), after=7) as subscription:
            # The replay runs on the first read: the log is empty then, nothing is held.
            assert await take(subscription, 1) == [Marker(MarkerKind.RESYNC_REQUIRED, 0)]
            first = await append(log)
            assert await take(subscription, 1) == [first]
        async with broker.subscribe(EventFilter(ORG_A), after=99) as subscription:
            items = await take(subscription, 2)
        assert items == [Marker(MarkerKind.RESYNC_REQUIRED, 0), first]


async def test_replay_then_live_without_gap_or_duplicate(log: EventLog) -> None:
    for index in range(50):
        await append(log, org=ORG_A if index % 5 else ORG_B, resource_id=f"model-{index}")
    async with running_broker(log, replay_page=7, queue_size=4) as broker:

        async def keep_appending() -> None:
            for index in range(50, 150):
                await append(log, org=ORG_A if index % 5 else ORG_B, resource_id=f"model-{index}")

        writer = asyncio.create_task(keep_appending())
        try:
            async with broker.subscribe(EventFilter(ORG_A), after=3) as subscription:
                expected = [cursor for cursor in range(4, 151) if (cursor - 1) % 5]
                items: list[Item] = []
                async with asyncio.timeout(8):
                    async for item in subscription:
                        items.append(item)
                        await asyncio.sleep(0)
                        if isinstance(item, Event) and item.cursor == 150:
                            break
        finally:
            await writer
        assert cursors(items) == expected
        assert all(isinstance(item, Event) for item in items)


async def test_live_subscription_starts_at_the_newest_event(log: EventLog) -> None:
    await append(log)
    async with running_broker(log) as broker, broker.subscribe(EventFilter(ORG_A)) as subscription:
        new = await append(log)
        assert await take(subscription, 1) == [new]


async def test_other_organisations_events_are_never_queued(log: EventLog) -> None:
    async with running_broker(log) as broker, broker.subscribe(EventFilter(ORG_A)) as subscription:
        foreign = [await append(log, org=ORG_B) for _ in range(5)]
        await wait_until(lambda: broker.position == foreign[-1].cursor)
        assert subscription.queued == 0
        mine = await append(log)
        assert await take(subscription, 1) == [mine]


async def test_filters_by_kind_resource_and_model(log: EventLog) -> None:
    async with running_broker(log) as broker:
        by_model = broker.subscribe(EventFilter(ORG_A, model_id="model-1"))
        by_weights = broker.subscribe(EventFilter(ORG_A, resource_kind=ResourceKind.WEIGHTS))
        by_resource = broker.subscribe(EventFilter(ORG_A, resource_id="weights-9"))
        async with by_model, by_weights, by_resource:
            model_event = await append(log)
            await append(log, resource_id="model-2")  # matches none of the three
            weights_progress = await append(
                log,
                resource_kind=ResourceKind.WEIGHTS,
                resource_id="weights-9",
                type=EventType.PROGRESS,
                model_ids=["model-1", "model-2"],
                progress={"bytes": 10},
            )
            await wait_until(lambda: broker.position == weights_progress.cursor)
            assert await take(by_model, 2) == [model_event, weights_progress]
            assert await take(by_weights, 1) == [weights_progress]
            assert await take(by_resource, 1) == [weights_progress]
            assert (by_model.queued, by_weights.queued, by_resource.queued) == (0, 0, 0)


async def test_progress_bursts_coalesce_for_a_slow_subscriber(database: Database) -> None:
    # Large poll pages: each FerretDB query reads the whole log, so fewer pages is faster.
    log = EventLog(database, poll_interval=POLL, poll_limit=2500)
    async with running_broker(log, queue_size=8) as broker:
        slow = broker.subscribe(EventFilter(ORG_A, model_id="model-1"))
        async with slow:
            phase = await append(log, type=EventType.PHASE_CHANGED, phase="PULLING")
            await bulk_progress(database, phase.cursor + 1, 5000, "weights-1")
            last = phase.cursor + 5000
            highest_queued = 0

            def caught_up() -> bool:
                nonlocal highest_queued
                highest_queued = max(highest_queued, slow.queued)
                return broker.position == last

            await wait_until(caught_up, timeout=8)
            assert highest_queued <= 2
            assert slow.queued == 2  # the phase change and the latest progress
            items = await take(slow, 2)
            assert items[0] == phase
            final = items[1]
            assert isinstance(final, Event)
            assert (final.cursor, final.progress) == (last, {"bytes": last})


async def test_a_progress_burst_costs_an_idle_subscriber_one_delivery(database: Database) -> None:
    """PROGRESS events read in one batch are coalesced before the fan-out: a subscriber that
    keeps up (the fast lane's sink) gets the latest, not all 500. (Polling reads batches; a
    tailable cursor hands events over one at a time, where only the queues coalesce.)"""
    log = EventLog(database, poll_interval=POLL, poll_limit=2500, strategy=TailStrategy.POLL)
    delivered: list[Event] = []

    def sink(events: Sequence[Event]) -> int:
        delivered.extend(events)
        return len(events)

    async with running_broker(log) as broker:
        subscription = broker.subscribe(EventFilter(ORG_A, model_id="model-1"))
        subscription.deliver_directly(sink)

        async def consume() -> None:
            async for _ in subscription:
                pass

        async with subscription:
            consumer = asyncio.create_task(consume())
            try:
                await wait_until(lambda: subscription.waiting)
                first = broker.position + 1
                await bulk_progress(database, first, 500, "weights-1")
                await wait_until(lambda: broker.position == first + 499, timeout=8)
            finally:
                consumer.cancel()
    assert 1 <= len(delivered) <= 3  # one read of the log, or a few if it raced the insert
    assert delivered[-1].cursor == first + 499
    assert delivered[-1].progress == {"bytes": first + 499}
    assert broker.coalesced >= 497


async def test_overflow_ends_a_subscriber_that_falls_behind(log: EventLog) -> None:
    async with running_broker(log, queue_size=5) as broker:
        lagging = broker.subscribe(EventFilter(ORG_A))
        async with lagging:
            appended = [await append(log, resource_id=f"model-{i}") for i in range(3)]
            assert cursors(await take(lagging, 1)) == [appended[0].cursor]
            appended += [await append(log, resource_id=f"model-{i}") for i in range(3, 12)]
            await wait_until(lambda: broker.subscribers == 0)
            items = await rest(lagging)
        delivered = [appended[0].cursor, *cursors(items)]
        assert delivered == [event.cursor for event in appended[:6]]
        assert items[-1] == Marker(MarkerKind.OVERFLOW, appended[5].cursor)
        async with broker.subscribe(EventFilter(ORG_A), after=appended[5].cursor) as resumed:
            assert cursors(await take(resumed, 6)) == [event.cursor for event in appended[6:]]


async def test_two_brokers_on_two_clients_both_deliver(database: Database, mongo_uri: str) -> None:
    other_client = make_client(mongo_uri, timeout_seconds=5)
    try:
        here = EventLog(database, poll_interval=POLL)
        there = EventLog(other_client[database.name], poll_interval=POLL)
        async with (
            running_broker(here) as broker_here,
            running_broker(there) as broker_there,
            broker_here.subscribe(EventFilter(ORG_A)) as sub_here,
            broker_there.subscribe(EventFilter(ORG_A)) as sub_there,
        ):
            first = await append(here)
            second = await append(there)
            assert await take(sub_here, 2) == [first, second]
            assert await take(sub_there, 2) == [first, second]
    finally:
        await other_client.close()


async def test_another_process_reads_new_events_from_the_ring_not_the_log(
    database: Database, mongo_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events appended by another process reach a polling tail through the ring's string-keyed
    slots (cheap on FerretDB), not through a read of the log, however many arrive."""
    other_client = make_client(mongo_uri, timeout_seconds=5)
    try:
        writer = EventLog(other_client[database.name], poll_interval=POLL)
        reader = EventLog(database, poll_interval=POLL, strategy=TailStrategy.POLL)
        await writer.ensure()
        log_reads: list[int] = []
        read_log = reader.after

        async def counting(cursor: int, *, limit: int, organization_id: str | None = None) -> Any:
            log_reads.append(cursor)
            return await read_log(cursor, limit=limit, organization_id=organization_id)

        monkeypatch.setattr(reader, "after", counting)
        async with (
            running_broker(reader) as broker,
            broker.subscribe(EventFilter(ORG_A)) as subscription,
        ):
            written = [await append(writer, resource_id=f"model-{i}") for i in range(30)]
            assert await take(subscription, 30) == written
        assert log_reads == []
        slots = await database["event_ring"].distinct("_id")
        assert slots
        assert all(isinstance(slot, str) for slot in slots)
    finally:
        await other_client.close()


class _Writes(monitoring.CommandListener):
    """The update commands one client sends, by collection."""

    def __init__(self) -> None:
        self.updates: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "update":
            self.updates.append(str(event.command["update"]))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        del event

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        del event


async def test_concurrent_appends_are_published_together_and_in_order(
    database: Database, mongo_uri: str
) -> None:
    """Appends that arrive while a publication is in flight share the next one: one ring write
    and one head update for the batch, not two writes per event in turn; another process still
    receives every event, in cursor order, through the ring."""
    writes = _Writes()
    writer_client: Any = AsyncMongoClient(mongo_uri, tz_aware=True, event_listeners=[writes])
    try:
        writer = EventLog(writer_client[database.name], poll_interval=POLL)
        reader = EventLog(database, poll_interval=POLL, strategy=TailStrategy.POLL)
        await writer.ensure()
        writes.updates.clear()
        async with (
            running_broker(reader) as broker,
            broker.subscribe(EventFilter(ORG_A)) as subscription,
        ):
            written = await asyncio.gather(
                *(append(writer, resource_id=f"model-{i}") for i in range(40))
            )
            cursors = [event.cursor for event in written]
            assert cursors == list(range(cursors[0], cursors[0] + 40))
            assert await take(subscription, 40) == sorted(written, key=lambda e: e.cursor)
        ring, head = writes.updates.count("event_ring"), writes.updates.count("event_head")
        print(f"40 concurrent appends: {ring} ring writes, {head} head updates")  # noqa: T201
        assert 1 <= head <= ring < 40  # a batch's ring write goes in commands of 32 slots
    finally:
        await writer_client.close()


async def test_close_ends_subscriptions_and_leaves_no_task(log: EventLog) -> None:
    broker = Broker(log)
    await broker.start()
    live = broker.subscribe(EventFilter(ORG_A))
    replaying = broker.subscribe(EventFilter(ORG_A), after=0)
    readers = [asyncio.create_task(rest(each)) for each in (live, replaying)]
    await asyncio.sleep(0.05)
    await broker.close()
    assert await asyncio.gather(*readers) == [[], []]
    assert broker.subscribers == 0
    with pytest.raises(RuntimeError):
        broker.subscribe(EventFilter(ORG_A))


async def test_filter_requires_an_organisation() -> None:
    with pytest.raises(ValueError, match="organisation"):
        EventFilter("")


async def test_append_probes_past_a_head_left_behind(database: Database, mongo_uri: str) -> None:
    """A process that died between its insert and the head update leaves the head behind:
    the next append (from another process) probes past it, and ensure() repairs it."""
    other_client = make_client(mongo_uri, timeout_seconds=5)
    try:
        here = EventLog(database)
        there = EventLog(other_client[database.name])
        await here.ensure()
        for _ in range(3):
            await append(here)
        await database["event_head"].update_one({"_id": "head"}, {"$set": {"cursor": Int64(1)}})
        assert (await append(there)).cursor == 4
        assert await there.head_cursor() == 4
        await database["event_head"].update_one({"_id": "head"}, {"$set": {"cursor": Int64(2)}})
        await EventLog(database).ensure()
        assert await here.head_cursor() == 4
    finally:
        await other_client.close()


def _event(cursor: int, resource_id: str = "model-1") -> Event:
    """An UPDATED event of organisation A, made by hand (not appended)."""
    return Event(
        cursor=cursor,
        organization_id=ORG_A,
        resource_kind=ResourceKind.MODEL,
        resource_id=resource_id,
        type=EventType.UPDATED,
        at=utcnow(),
    )


async def _event_without_ring_slot(database: Database, cursor: int) -> Event:
    """Insert an event as a writer does, up to (not including) its ring slot and head."""
    event = _event(cursor, "model-gap")
    await database["events"].insert_one(event.to_mongo())
    return event


async def test_a_lost_head_update_is_caught_by_the_backstop(database: Database) -> None:
    """An event inserted without its head update (a writer that died in between) still reaches
    a polling tail, through the periodic backstop read."""
    log = EventLog(database, poll_interval=POLL, strategy=TailStrategy.POLL, backstop_seconds=0.5)
    await log.ensure()
    first = await append(log)
    async with running_broker(log) as broker, broker.subscribe(EventFilter(ORG_A)) as sub:
        stray = await _event_without_ring_slot(database, first.cursor + 1)
        (got,) = await take(sub, 1, timeout=5)
    assert isinstance(got, Event)
    assert got.cursor == stray.cursor


def _counting_log_reads(log: EventLog, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record when ``log`` reads the log itself (a whole-log scan on FerretDB)."""
    reads: list[float] = []
    read_log = log.after

    async def counting(cursor: int, *, limit: int, organization_id: str | None = None) -> Any:
        reads.append(asyncio.get_running_loop().time())
        return await read_log(cursor, limit=limit, organization_id=organization_id)

    monkeypatch.setattr(log, "after", counting)
    return reads


@pytest.mark.parametrize("filled", [True, False], ids=["slot-written-late", "slot-never-written"])
async def test_a_hole_in_the_ring_is_waited_for_then_read_from_the_log(
    database: Database, monkeypatch: pytest.MonkeyPatch, filled: bool
) -> None:
    """A hole the head promised: two writers raced (the later one's slot and head landed
    first), or a writer died between its insert and its ring write. The tail waits for the slot
    (read at a following poll, no log scan); only after GAP_PATIENCE does it read the log, in
    order, nothing lost."""
    monkeypatch.setattr(ferretdb_module, "GAP_PATIENCE", 0.3)
    writer = EventLog(database, poll_interval=POLL)
    reader = EventLog(database, poll_interval=POLL, strategy=TailStrategy.POLL)
    log_reads = _counting_log_reads(reader, monkeypatch)
    async with running_broker(reader) as broker, broker.subscribe(EventFilter(ORG_A)) as sub:
        first = await append(writer)
        assert await take(sub, 1) == [first]
        gap = await _event_without_ring_slot(database, first.cursor + 1)
        later = await append(writer)  # probes past the gap: its slot and head land first
        assert later.cursor == gap.cursor + 1
        seen_at = asyncio.get_running_loop().time()
        if filled:
            await asyncio.sleep(5 * POLL)  # the tail sees the head, and a hole in the ring
            slot = {**gap.to_mongo(), "_id": f"{gap.cursor % 128:03d}", "cursor": gap.cursor}
            await database["event_ring"].replace_one({"_id": slot["_id"]}, slot, upsert=True)
        assert await take(sub, 2) == [gap, later]
    if filled:
        assert log_reads == []
    else:
        assert log_reads, "the hole was never read from the log"
        assert log_reads[0] - seen_at >= 0.3 - 2 * POLL


async def test_no_backstop_scan_while_events_keep_coming(
    database: Database, mongo_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backstop (a whole-log scan on FerretDB) is for a quiet log: while another process
    keeps appending, the tail never scans, however long it runs."""
    other_client = make_client(mongo_uri, timeout_seconds=5)
    try:
        writer = EventLog(other_client[database.name], poll_interval=POLL)
        reader = EventLog(
            database, poll_interval=POLL, strategy=TailStrategy.POLL, backstop_seconds=0.2
        )
        await writer.ensure()
        log_reads = _counting_log_reads(reader, monkeypatch)
        async with running_broker(reader) as broker, broker.subscribe(EventFilter(ORG_A)) as sub:
            written = []
            for _ in range(20):  # 1 s of traffic, five backstop periods
                written.append(await append(writer))
                await asyncio.sleep(0.05)
            assert await take(sub, 20) == written
            assert log_reads == []
            await asyncio.sleep(0.5)  # quiet now: the backstop reads the log again
            assert log_reads
    finally:
        await other_client.close()


async def test_a_sink_takes_idle_live_events_and_the_queue_keeps_their_order(
    log: EventLog,
) -> None:
    """The fast lane: while the consumer is parked, events go to the sink; one it refuses
    queues, and until the consumer has delivered it nothing else goes to the sink (order)."""
    delivered: list[tuple[str, int]] = []
    refuse = {5, 6, 12}

    def sink(events: Sequence[Event]) -> int:
        for taken, event in enumerate(events):
            if event.cursor in refuse:
                return taken
            delivered.append(("direct", event.cursor))
        return len(events)

    async with running_broker(log) as broker, broker.subscribe(EventFilter(ORG_A)) as subscription:
        subscription.deliver_directly(sink)

        async def consume() -> None:
            async for item in subscription:
                assert isinstance(item, Event)
                delivered.append(("queued", item.cursor))

        consumer = asyncio.create_task(consume())
        try:
            written = [await append(log) for _ in range(20)]
            await wait_until(lambda: len(delivered) == 20)
        finally:
            consumer.cancel()
    assert [cursor for _, cursor in delivered] == [event.cursor for event in written]
    queued = {cursor for path, cursor in delivered if path == "queued"}
    assert refuse <= queued
    assert {cursor for path, cursor in delivered if path == "direct"}, "the sink took events"
    assert broker.direct_deliveries == 20 - len(queued)
    assert subscription.last_delivered == written[-1].cursor


async def test_a_sink_is_not_used_while_replaying(log: EventLog) -> None:
    old = [await append(log) for _ in range(5)]
    direct: list[int] = []
    queued: list[int] = []

    def sink(events: Sequence[Event]) -> int:
        direct.extend(event.cursor for event in events)
        return len(events)

    async with running_broker(log, replay_page=2) as broker:
        subscription = broker.subscribe(EventFilter(ORG_A), after=old[0].cursor)
        subscription.deliver_directly(sink)

        async def consume() -> None:
            async for item in subscription:
                assert isinstance(item, Event)
                queued.append(item.cursor)

        async with subscription:
            consumer = asyncio.create_task(consume())
            try:
                await wait_until(lambda: len(queued) == 4)
                await wait_until(lambda: subscription.waiting)  # replay over, waiting live
                new = await append(log)
                await wait_until(lambda: direct == [new.cursor])
            finally:
                consumer.cancel()
    assert queued == [event.cursor for event in old[1:]]


async def test_read_ahead_reads_while_the_caller_works_and_joins_what_it_missed() -> None:
    read: list[int] = []
    more = asyncio.Event()
    closed = asyncio.Event()

    async def source() -> AsyncGenerator[list[Event], None]:
        try:
            read.append(1)
            yield [_event(1)]
            await more.wait()
            for cursor in range(2, 6):
                read.append(cursor)
                yield [_event(cursor)]
            await asyncio.Event().wait()  # a tail: never ends by itself
        finally:
            closed.set()

    ahead = read_ahead(source())
    try:
        assert [e.cursor for e in await anext(ahead)] == [1]
        more.set()
        await asyncio.sleep(0.01)  # the caller is busy: the reader goes on meanwhile
        assert read == [1, 2, 3, 4, 5]
        assert [e.cursor for e in await anext(ahead)] == [2, 3, 4, 5]  # handed over as one
    finally:
        await ahead.aclose()
    assert closed.is_set()  # closing the caller's side stops the reader and its source


async def test_read_ahead_hands_over_what_was_read_then_raises_the_readers_error() -> None:
    async def source() -> AsyncGenerator[list[Event], None]:
        yield [_event(1)]
        yield [_event(2)]
        raise ConnectionError("database gone")

    ahead = read_ahead(source())
    await asyncio.sleep(0.01)
    assert [e.cursor for e in await anext(ahead)] == [1, 2]
    with pytest.raises(ConnectionError, match="database gone"):
        await anext(ahead)


async def test_read_ahead_holds_a_bounded_number_of_reads() -> None:
    read: list[int] = []

    async def source() -> AsyncGenerator[list[Event], None]:
        for cursor in range(1, 1000):
            read.append(cursor)
            yield [_event(cursor)]

    ahead = read_ahead(source())
    try:
        first = await anext(ahead)
        await asyncio.sleep(0.01)  # the caller is busy: the reader stops when READ_AHEAD wait
        assert len(read) <= len(first) + READ_AHEAD + 1  # (the last one waits to be queued)
        taken = [e.cursor for e in first + await anext(ahead)]
        assert taken == list(range(1, len(taken) + 1))  # nothing lost or reordered
    finally:
        await ahead.aclose()
