"""Events: a document write and its event are not separable by a crash (finding 11).

The reproducer kills real writer processes (``tests/security/crash_writer.py``, the project's
own services) with SIGKILL between a model's write and its event's append, then starts a
server on the same database and checks that its recovery appended exactly one event per
write and that a subscriber resuming from a cursor receives the lost ones. The kill lands
honestly, without a hook in the code: the test lets the writers run for a few milliseconds,
freezes them (SIGSTOP), waits for the database to finish what they sent, and SIGKILLs a
writer whose last write has no event yet (otherwise SIGCONT), again and again within a
bounded time, until kills have landed after a CREATED, an UPDATED and a DELETED write.

The other tests drive the recovery directly: two replicas and the live writer at once,
a crash between the append and the clearing of the mark, and a removal's outbox entry.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from controllers.inference.engines import EnginePlanError
from controllers.inference.environment import check_env
from live import EventLog, EventRecovery, EventType, Recorder, ResourceKind, event_key
from services import validation as v
from services.errors import InvalidInput
from storage.client import Client, Database
from storage.documents import (
    AccessMode,
    EnvVarSpec,
    LocalTarget,
    ModelDocument,
    ModelPhase,
    ModelSource,
    Role,
    WeightsDocument,
    WeightsState,
)
from storage.repositories import ModelRepository, WeightsRepository, ensure_indexes
from tests.conftest import RunningApp, make_settings, serve_app
from tests.graphql_client import Subscription, run
from tests.security.crash_writer import ORGANIZATION, UPSTREAM_HOST
from tests.test_weights_api import create_local, editor, ready, wait_model

REPO_ROOT = Path(__file__).resolve().parents[2]
WRITERS = 3
KILL_PHASE_SECONDS = 90.0
WRITER_START_SECONDS = 120.0
Pair = tuple[str, str]  # (model id, event type)


class Writer:
    """One crash_writer process."""

    def __init__(self, process: asyncio.subprocess.Process, prefix: str, stderr: Path) -> None:
        self.process = process
        self.prefix = prefix
        self.stderr = stderr

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def signal(self, number: int) -> None:
        os.kill(self.process.pid, number)

    async def kill(self) -> None:
        if self.alive:
            self.signal(signal.SIGKILL)
        await self.process.wait()


async def _start_writer(uri: str, database: str, state: Path, prefix: str) -> Writer:
    stderr = state.parent / f"{prefix}.stderr"
    with stderr.open("wb") as sink:  # the child keeps its own descriptor
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.security.crash_writer",
            uri,
            database,
            str(state),
            prefix,
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=sink,
        )
    return Writer(process, prefix, stderr)


async def _wait_ready(writer: Writer) -> None:
    assert writer.process.stdout is not None
    line = await asyncio.wait_for(writer.process.stdout.readline(), WRITER_START_SECONDS)
    assert line.strip() == b"ready", writer.stderr.read_text()[-3000:]


async def _owed_and_held(database: Database) -> tuple[dict[Pair, str], Counter[Pair]]:
    """Every event the models' writes owe (pair -> model name), and the events held.
    Documents are read first: an event appended after that read only makes it held."""
    owed: dict[Pair, str] = {}
    async for raw in database["models"].find({}):
        owed[(raw["_id"], "CREATED")] = raw["name"]
        if raw["revision"] >= 2:
            owed[(raw["_id"], "UPDATED")] = raw["name"]
        if raw.get("is_deleted"):
            owed[(raw["_id"], "DELETED")] = raw["name"]
    held: Counter[Pair] = Counter()
    async for raw in database["events"].find({"resource_kind": "MODEL"}):
        held[(raw["resource_id"], raw["type"])] += 1
    return owed, held


def _missing(owed: dict[Pair, str], held: Counter[Pair], writer: Writer) -> set[Pair]:
    return {
        pair
        for pair, name in owed.items()
        if name.startswith(f"{writer.prefix}-") and held[pair] == 0
    }


async def _sample(database: Database, writers: list[Writer], wanted: set[str]) -> set[Pair]:
    """Let the writers run a few milliseconds, freeze them, and kill each one that is frozen
    between a write and its event of a ``wanted`` type: the pairs the kills lost."""
    await asyncio.sleep(random.uniform(0.005, 0.03))
    alive = [writer for writer in writers if writer.alive]
    for writer in alive:
        writer.signal(signal.SIGSTOP)
    await asyncio.sleep(0.1)  # let the database finish what the writers had already sent
    owed, held = await _owed_and_held(database)
    lost: set[Pair] = set()
    wanted = set(wanted)  # one kill per wanted type: two writers killed for the same type in
    # one sample left none for CREATED (a clean-clone run: UPDATED, DELETED, DELETED)
    for writer in alive:
        missing = _missing(owed, held, writer)
        caught = {event_type for _, event_type in missing} & wanted
        if caught:
            await writer.kill()
            lost |= missing
            wanted -= caught
        else:
            writer.signal(signal.SIGCONT)
    return lost


@pytest.mark.timeout(600)
async def test_kill_9_between_write_and_event_is_recovered_once(
    tmp_path: Path, mongo_uri: str, mongo_client: Client
) -> None:
    name = f"crash_{uuid.uuid4().hex[:10]}"
    database = mongo_client[name]
    # Created once here: FerretDB 1.24 drops connections when processes create them at once.
    await ensure_indexes(database)
    await EventLog(database).ensure()
    writers = [
        await _start_writer(mongo_uri, name, tmp_path / f"state{i}", f"w{i}")
        for i in range(WRITERS)
    ]
    lost: set[Pair] = set()
    try:
        await asyncio.gather(*(_wait_ready(writer) for writer in writers))
        wanted = {"CREATED", "UPDATED", "DELETED"}
        samples = 0
        deadline = time.monotonic() + KILL_PHASE_SECONDS
        while wanted and time.monotonic() < deadline and any(w.alive for w in writers):
            samples += 1
            landed = await _sample(database, writers, wanted)
            lost |= landed
            wanted -= {event_type for _, event_type in landed}
        sys.stdout.write(f"kill -9 between write and event: {sorted(lost)}, {samples} samples\n")
    finally:
        for writer in writers:
            await writer.kill()
    assert any(t == "CREATED" for _, t in lost), (
        f"no kill landed between a model's write and its CREATED event in "
        f"{KILL_PHASE_SECONDS:.0f} s"
    )
    owed, held = await _owed_and_held(database)
    assert not set(owed) <= set(held), "the kill lost no event"  # the premise
    resume_after = max([int(raw["_id"]) async for raw in database["events"].find({})] or [0])

    settings = make_settings(
        tmp_path,
        mongo_uri,
        mongodb_database=name,
        allowed_remote_hosts=[UPSTREAM_HOST],
        event_recovery_grace_seconds=0,
    )
    async with serve_app(settings, mongo_client) as app:
        token = app.token(role=Role.ADMIN, organization=ORGANIZATION)
        seen: Counter[Pair] = Counter()
        async with Subscription(
            app.ws_url, "ModelEvents", {"after": str(resume_after)}, token=token
        ) as subscription:
            try:
                while not lost <= set(seen):
                    data = await subscription.next(timeout=30)
                    assert data is not None
                    event = data["modelEvents"]
                    seen[(event["resourceId"], event["type"])] += 1
            except TimeoutError:
                pytest.fail(
                    f"a subscriber resuming after cursor {resume_after} never got the events "
                    f"the kills lost: {sorted(lost - set(seen))}"
                )
        owed, held = await _owed_and_held(database)
    assert all(seen[pair] == 1 for pair in lost), seen
    assert {pair: held[pair] for pair in owed if held[pair] != 1} == {}
    assert set(held) == set(owed)


# -- the recovery itself ------------------------------------------------------------------


def _model(revision: int = 1) -> ModelDocument:
    return ModelDocument(
        id=f"model-{uuid.uuid4().hex[:5]}",
        organization_id="org-a",
        name=f"m-{uuid.uuid4().hex[:6]}",
        name_key=f"m-{uuid.uuid4().hex[:6]}",
        display_name="m",
        source=ModelSource(url="https://upstream.test/v1", access_mode=AccessMode.REMOTE_API),
        phase=ModelPhase.READY,
        revision=revision,
    )


async def _log(database: Database) -> EventLog:
    log = EventLog(database)
    await log.ensure()
    return log


async def _held(database: Database, resource_id: str) -> Counter[str]:
    found: Counter[str] = Counter()
    async for raw in database["events"].find({"resource_id": resource_id}):
        found[raw["type"]] += 1
    return found


async def test_two_replicas_and_the_writer_append_each_owed_event_once(
    database: Database,
) -> None:
    models = ModelRepository(database)
    model = await models.insert(_model(), event=EventType.CREATED)  # the writer "dies" here
    model = await models.update(
        model.id, expected_revision=1, changes={"description": "x"}, event=EventType.UPDATED
    )
    assert [m.rsplit(":", 1)[0] for m in model.pending_events] == ["1:CREATED", "2:UPDATED"]
    one, two = Recorder(await _log(database)), Recorder(await _log(database))
    replicas = [
        EventRecovery(database, recorder, grace_seconds=0, interval_seconds=60)
        for recorder in (one, two)
    ]
    results = await asyncio.gather(
        *(replica.run_once() for replica in replicas),
        one.model(model, EventType.UPDATED),  # the live writer, late
    )
    assert await _held(database, model.id) == {"CREATED": 1, "UPDATED": 1}
    appended = sum(r for r in results[:2] if isinstance(r, int)) + (results[2] is not None)
    assert appended == 2
    raw = await database["models"].find_one({"_id": model.id})
    assert raw is not None
    assert raw["pending_events"] == []
    assert await replicas[0].run_once() == 0


async def test_a_crash_after_the_append_only_clears_the_mark(database: Database) -> None:
    models = ModelRepository(database)
    log = await _log(database)
    model = await models.insert(_model(), event=EventType.CREATED)
    await log.append(
        organization_id=model.organization_id,
        resource_kind=ResourceKind.MODEL,
        resource_id=model.id,
        type=EventType.CREATED,
        key=event_key(ResourceKind.MODEL, model.id, 1, EventType.CREATED),
    )  # ... and the writer dies before clearing the mark
    recovery = EventRecovery(database, Recorder(log), grace_seconds=0, interval_seconds=60)
    assert await recovery.run_once() == 0
    assert await _held(database, model.id) == {"CREATED": 1}
    assert (await models.require(model.id)).pending_events == []


async def test_young_marks_are_left_to_their_writer(database: Database) -> None:
    models = ModelRepository(database)
    model = await models.insert(_model(), event=EventType.CREATED)
    recovery = EventRecovery(
        database, Recorder(await _log(database)), grace_seconds=60, interval_seconds=60
    )
    assert await recovery.run_once() == 0
    assert await _held(database, model.id) == {}


async def test_a_removal_keeps_its_deleted_event_in_the_outbox(database: Database) -> None:
    weights = WeightsRepository(database)
    recorder = Recorder(await _log(database))
    gone = await weights.insert(_weights())
    kept = await weights.insert(_weights())
    for document in (gone, kept):
        await recorder.before_removal(document)
    await weights.delete(gone.id)  # ... and the writer dies; kept's removal never happened
    recovery = EventRecovery(database, recorder, grace_seconds=0, interval_seconds=60)
    assert await recovery.run_once() == 1
    assert await _held(database, gone.id) == {"DELETED": 1}
    assert await _held(database, kept.id) == {}
    assert await database["event_outbox"].count_documents({}) == 0
    assert await recovery.run_once() == 0


async def test_every_write_of_a_download_and_its_removal_has_one_event_and_no_mark_left(
    running_app: RunningApp,
) -> None:
    """The live path end to end: create, download, deleteWeights (outbox), detach."""
    created = await create_local(running_app, "tiny-org/tiny-model")
    model = await wait_model(running_app, created["id"], ready)
    weights_id = model["weights"]["id"]
    deleted = await run(
        running_app.graphql_url, "DeleteWeights", {"id": weights_id}, token=editor(running_app)
    )
    assert deleted["deleteWeights"]["__typename"] == "DeletedWeights", deleted
    await wait_model(running_app, created["id"], lambda m: m["phase"] == "FAILED")
    database = running_app.resources.database
    keys: Counter[str] = Counter()
    async for raw in database["events"].find({"type": {"$ne": "PROGRESS"}}):
        keys[raw.get("key") or f"no key: {raw['type']}"] += 1
    assert keys, "no events"
    assert {key: n for key, n in keys.items() if n != 1 or key.startswith("no key")} == {}
    assert f"WEIGHTS:{weights_id}:" in " ".join(k for k in keys if k.endswith(":DELETED"))
    assert await database["event_outbox"].count_documents({}) == 0
    marked = await database["models"].count_documents({"pending_events": {"$type": "string"}})
    assert marked == 0


def _weights() -> WeightsDocument:
    return WeightsDocument(
        id=f"weights-{uuid.uuid4().hex[:5]}",
        organization_id="org-a",
        repo_id="org/repo",
        commit_sha="a" * 40,
        target=LocalTarget(local_path="/nowhere"),
        location="/nowhere",
        model_ids=["model-x"],
        state=WeightsState.READY,
    )


# -- validation (finding 14) ----------------------------------------------------------------

HIDDEN = ["\u202e", "\u200b", "\u2066", "\u2069", "\ufeff", "\u200e", "\u0085", "\u2028"]


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("0.5", True),
        ("1024", True),
        ("1024000m", True),
        ("1025", False),
        ("1024001m", False),
        ("1" + "0" * 31, False),  # 10^31 cores, as the probe sent
    ],
)
def test_cpu_is_bounded(value: str, accepted: bool) -> None:
    if accepted:
        assert v.check_cpu("resources.cpu", value) == value
        return
    with pytest.raises(InvalidInput) as caught:
        v.check_cpu("resources.cpu", value)
    assert caught.value.field == "resources.cpu"
    assert "over 1024 CPUs" in caught.value.message


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("64Ti", True),
        ("64T", True),
        (str(64 * 2**40), True),
        ("65Ti", False),
        ("71T", False),
        (str(64 * 2**40 + 1), False),
        ("99999999Ei", False),  # as the probe sent
    ],
)
def test_memory_is_bounded(value: str, accepted: bool) -> None:
    if accepted:
        assert v.check_memory("resources.memory", value) == value
        return
    with pytest.raises(InvalidInput) as caught:
        v.check_memory("resources.memory", value)
    assert caught.value.field == "resources.memory"
    assert "over 64Ti" in caught.value.message


@pytest.mark.parametrize("char", HIDDEN)
@pytest.mark.parametrize(
    ("field", "check"),
    [
        ("displayName", lambda f, t: v.check_text(f, t, limit=256)),
        ("description", lambda f, t: v.check_text(f, t, limit=4096, in_bytes=True)),
        ("tags", lambda f, t: v.check_tags(f, ["ok", t])),
        ("downloadTarget.s3.prefix", v.check_relative_path),
        ("downloadTarget.local.localPath", lambda f, t: v.check_local_path(f, "/" + t, roots=[])),
    ],
)
def test_hidden_characters_are_refused(char: str, field: str, check: Any) -> None:
    with pytest.raises(InvalidInput) as caught:
        check(field, f"model{char}gpt")
    assert caught.value.field == field
    assert f"U+{ord(char):04X}" in caught.value.message


def test_prose_keeps_joiners_newlines_and_tabs_but_names_do_not() -> None:
    family = (
        "Family: \U0001f468\u200d\U0001f469\u200d\U0001f467\n"
        "Persian: \u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645\t."
    )
    assert v.check_text("description", family, limit=4096, in_bytes=True) == family
    with pytest.raises(InvalidInput):
        v.check_text("displayName", "a\u200db", limit=256)
    with pytest.raises(InvalidInput):
        v.check_text("displayName", "a\nb", limit=256)


def test_a_final_newline_does_not_slip_through_patterns() -> None:
    with pytest.raises(InvalidInput):
        v.check_name("name", "model\n")


def _env(count: int, *, size: int = 1) -> list[EnvVarSpec]:
    return [EnvVarSpec(name=f"VAR_{i}", value="x" * size) for i in range(count)]


@pytest.mark.parametrize(
    ("env", "field", "words"),
    [
        (_env(10_000), "input.env", "at most 100"),  # as the probe sent
        (_env(101), "input.env", "at most 100"),
        (_env(100, size=3000), "input.env", "together"),
        (_env(1, size=16 * 1024 + 1), "input.env[0].value", "at most 16384 bytes"),
        ([EnvVarSpec(name="A" * 129, value="x")], "input.env[0].name", "at most 128"),
        ([EnvVarSpec(name="PATH\n", value="x")], "input.env[0].name", "not a valid"),
        ([EnvVarSpec(name="A\u202eB", value="x")], "input.env[0].name", "not a valid"),
        ([EnvVarSpec(name="A", value="a\x00b")], "input.env[0].value", "without NUL"),
        (
            [EnvVarSpec(name="DB", secret_name="modelplane-mongodb", secret_key="uri")],
            "input.env[0].secretName",
            "own credentials",
        ),
    ],
)
def test_environment_is_bounded(env: list[EnvVarSpec], field: str, words: str) -> None:
    with pytest.raises(EnginePlanError) as caught:
        check_env(env, own_secret="model-abc12-credentials")
    assert caught.value.field == field
    assert words in caught.value.message


def test_environment_within_bounds_and_own_secret_pass() -> None:
    own = EnvVarSpec(name="TOKEN", secret_name="model-abc12-credentials", secret_key="hf-token")
    check_env([*_env(99, size=2000), own], own_secret="model-abc12-credentials")


# -- validation through the API: refused, named, and nothing written ------------------------


async def _create_model(app: RunningApp, value: dict[str, Any]) -> dict[str, Any]:
    data = await run(
        app.graphql_url,
        "CreateModel",
        {"input": value},
        token=app.token(role=Role.EDITOR, organization="org-a"),
    )
    result: dict[str, Any] = data["createModel"]
    return result


def _remote(**overrides: Any) -> dict[str, Any]:
    return {
        "source": {"url": "https://api.deepseek.com/v1", "accessMode": "REMOTE_API"},
        "displayName": "DeepSeek Chat",
        **overrides,
    }


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"displayName": "gpt\u202e4cod.exe"}, "displayName"),
        ({"description": "fine\u2066 print"}, "description"),
        ({"tags": ["chat", "ch\u200bat"]}, "tags"),
        ({"resources": {"cpu": "1" + "0" * 31}}, "resources.cpu"),
        ({"resources": {"memory": "99999999Ei"}}, "resources.memory"),
    ],
)
async def test_create_model_refuses_hidden_text_and_huge_resources(
    running_app: RunningApp, overrides: dict[str, Any], field: str
) -> None:
    refused = await _create_model(running_app, _remote(**overrides))
    assert refused["__typename"] == "ValidationError", refused
    assert refused["field"] == field
    assert await running_app.resources.database["models"].count_documents({}) == 0


async def test_a_local_path_with_a_right_to_left_override_is_refused(
    running_app: RunningApp,
) -> None:
    root = running_app.resources.settings.local_roots[0]
    refused = await _create_model(
        running_app,
        {
            "source": {"url": "tiny-org/tiny-model", "accessMode": "LOCAL"},
            "downloadTarget": {"local": {"localPath": f"{root}/org-a/\u202egnp.sh"}},
        },
    )
    assert refused["__typename"] == "ValidationError", refused
    assert refused["field"] == "downloadTarget.local.localPath"
    assert await running_app.resources.database["models"].count_documents({}) == 0


async def test_update_model_refuses_hidden_text_and_changes_nothing(
    running_app: RunningApp,
) -> None:
    model = await _create_model(running_app, _remote())
    before = await running_app.resources.database["models"].find_one({"_id": model["id"]})
    data = await run(
        running_app.graphql_url,
        "UpdateModel",
        {"id": model["id"], "input": {"displayName": "Deep\u200bSeek"}},
        token=running_app.token(role=Role.EDITOR, organization="org-a"),
    )
    assert data["updateModel"]["__typename"] == "ValidationError", data
    assert data["updateModel"]["field"] == "displayName"
    after = await running_app.resources.database["models"].find_one({"_id": model["id"]})
    assert after == before


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ([{"name": f"VAR_{i}", "value": "x"} for i in range(101)], "input.env"),
        (
            [{"name": "DB", "secretName": "modelplane-mongodb", "secretKey": "uri"}],
            "input.env[0].secretName",
        ),
    ],
)
async def test_start_inference_refuses_too_much_environment_and_writes_nothing(
    running_app: RunningApp, env: list[dict[str, str]], field: str
) -> None:
    model = await _create_model(running_app, _remote())
    data = await run(
        running_app.graphql_url,
        "StartInference",
        {"modelId": model["id"], "input": {"env": env}},
        token=running_app.token(role=Role.EDITOR, organization="org-a"),
    )
    assert data["startInference"]["__typename"] == "ValidationError", data
    assert data["startInference"]["field"] == field
    assert await running_app.resources.database["inferences"].count_documents({}) == 0
