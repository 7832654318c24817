"""Settling an event mark never undoes a concurrent write of the same document.

FerretDB 1.24 applies an update as read, modify, write of the whole document (see
:mod:`storage.locks`): measured here, a ``$pull`` racing a ``$set`` on one document lost the
``$set`` in 95 of 199 rounds. The recorder's ``$pull`` of a settled mark ran outside the
document's lock, so a compare-and-set write landing meanwhile was overwritten with the copy
the ``$pull`` had read: a ``deleteModel`` came back ``isDeleted: false`` while the download
controller settled the mark of its own write (found by issue 16's credential test).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo import AsyncMongoClient, monitoring

from live import EventLog, EventType, Recorder
from storage.client import Database
from storage.documents import (
    AccessMode,
    LocalTarget,
    ModelDocument,
    ModelSource,
    WeightsDocument,
    WeightsState,
)
from storage.repositories import ModelRepository, WeightsRepository

ROUNDS = 60


async def test_a_settled_mark_keeps_a_concurrent_write(database: Database) -> None:
    log = EventLog(database, size_bytes=1024 * 1024)
    await log.ensure()
    recorder = Recorder(log)
    models = ModelRepository(database)
    current = await models.insert(
        ModelDocument(
            id="model-1",
            organization_id="org-1",
            name="m",
            name_key="m",
            display_name="M",
            source=ModelSource(url="org/m", access_mode=AccessMode.LOCAL),
        )
    )
    lost = []
    for round_ in range(ROUNDS):
        marked = await models.update(
            current.id,
            expected_revision=current.revision,
            changes={"message": f"phase {round_}"},
            event=EventType.PHASE_CHANGED,
        )

        async def write(
            delay: float, written: ModelDocument = marked, label: str = str(round_)
        ) -> ModelDocument:
            await asyncio.sleep(delay)  # spread over the recorder's steps
            return await models.update(
                written.id, expected_revision=written.revision, changes={"label": label}
            )

        _, current = await asyncio.gather(
            recorder.model(marked, EventType.PHASE_CHANGED), write(round_ % 6 * 0.001)
        )
        stored = await models.require(current.id)
        if stored.label != str(round_):
            lost.append(round_)
        current = stored
    assert lost == []


async def test_progress_keeps_a_concurrent_cancel(database: Database) -> None:
    """The same race with the download's progress write (every second, no revision): it undid
    a cancel's CANCELLED (same cause: an update outside the document's lock)."""
    weights = WeightsRepository(database)
    current = await weights.insert(
        WeightsDocument(
            id="weights-1",
            organization_id="org-1",
            repo_id="org/m",
            commit_sha="0" * 40,
            target=LocalTarget(local_path="/weights/w"),
            location="/weights/w",
            state=WeightsState.PULLING,
        )
    )
    lost = []
    for round_ in range(ROUNDS):
        state = WeightsState.CANCELLED if round_ % 2 else WeightsState.PULLING

        async def write(
            delay: float, written: WeightsDocument = current, state: WeightsState = state
        ) -> WeightsDocument:
            await asyncio.sleep(delay)
            return await weights.update(
                written.id, expected_revision=written.revision, changes={"state": state}
            )

        await asyncio.gather(
            weights.set_progress(
                current.id, progress={"stage": "DOWNLOADING", "bytes_done": round_}, attempt=0
            ),
            write(round_ % 3 * 0.0005),
        )
        current = await weights.require(current.id)
        if current.state is not state:
            lost.append(round_)
    assert lost == []


class _Updates(monitoring.CommandListener):
    """The ``update`` commands one client sends to ``models``."""

    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.count += event.command_name == "update" and event.command["update"] == "models"

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        del event

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        del event


async def test_marks_settled_together_keep_concurrent_writes(
    database: Database, mongo_uri: str
) -> None:
    """Marks that wait while a settle is in flight are removed together (a bulk write under
    every touched document's lock), and a compare-and-set write racing them is kept."""
    updates = _Updates()
    client: Any = AsyncMongoClient(mongo_uri, tz_aware=True, event_listeners=[updates])
    try:
        own = client[database.name]
        log = EventLog(own, size_bytes=1024 * 1024)
        await log.ensure()
        recorder, models = Recorder(log), ModelRepository(own)
        marked = []
        for index in range(30):
            model = await models.insert(_model(f"model-{index}"))
            marked.append(
                await models.update(
                    model.id,
                    expected_revision=model.revision,
                    changes={"message": "marked"},
                    event=EventType.PHASE_CHANGED,
                )
            )
        updates.count = 0

        async def write(written: ModelDocument) -> ModelDocument:
            await asyncio.sleep(0.002)
            return await models.modify(written.id, lambda _: {"label": "kept"})

        await asyncio.gather(
            *(recorder.model(each, EventType.PHASE_CHANGED) for each in marked),
            *(write(each) for each in marked),
        )
        stored = [await models.require(each.id) for each in marked]
        assert [each.pending_events for each in stored] == [[]] * 30
        assert {each.label for each in stored} == {"kept"}
        print(f"30 marks settled in {updates.count} update commands")  # noqa: T201  the figure
        assert updates.count < 30  # (the label writes are findAndModify commands)
    finally:
        await client.close()


def _model(model_id: str) -> ModelDocument:
    return ModelDocument(
        id=model_id,
        organization_id="org-1",
        name=model_id,
        name_key=model_id,
        display_name=model_id,
        source=ModelSource(url="org/m", access_mode=AccessMode.LOCAL),
    )
