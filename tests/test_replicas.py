"""Controllers across replicas and restarts: two ``modelplane serve`` processes, one database.

The Helm chart runs two replicas. One holds each controller's lease and does the work; the other
still answers the API. So work that lands on the replica that does not lead must reach the
leader at once (issue 16: under 1 s), and a leader that dies (``kill -9``: no clean-up, no
lease released) must be replaced within the lease time by the other replica, which resumes a
download where the dead one's ledger says it was, fetching no recorded chunk again.

Both processes share the database, the secret key (so one token is valid on both), the state
directory (so the weights roots and the engines' work directory are the same) and the local
hub. Both start at once; each controller's leader is read from the ``leases`` collection
(holders are ``<host>-<pid>-<suffix>``), and the work is sent to the other one.

Latencies are measured from the mutation's answer to the first observation of the leader's
effect (the database polled every 20 ms; the hub's live transfer log for "it stopped serving
bytes"), printed as ``follower->leader <mutation>: <seconds> s``, and asserted against a
generous bound (:data:`BOUND`; the issue's target is 1 s). Each is observed for up to
:data:`OBSERVE` so a failure reports the figure it saw (a leader that only finds the work at
its periodic resync: up to 15 s for downloads, 60 s for inference), not only "too slow".
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controllers.transfer.locations import organization_area
from modelplane.auth import issue_dev_token, load_dev_key
from modelplane.embedded import free_port
from storage.client import Client, Database
from storage.documents import Role
from storage.repositories import ensure_indexes
from testbed.hub import LocalHub, RunningHub, Transfer, running_hub
from testbed.repos import HubRepo, llama_repo
from tests.graphql_client import run
from tests.helpers import first_seen, serve_process
from tests.test_inference_local import FAKE_VLLM

# Two start-ups under load, a download, and a window past the inference resync (today's figure).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

SECRET = "replicas-test-secret-key-long-enough-0123456789"
ORG = "org-a"
DOWNLOADS, INFERENCE = "download-controller", "inference-controller"
BOUND = 5.0
"""Seconds the leader may take to act on work sent to the follower (issue 16 asks < 1 s)."""
OBSERVE = 75.0
"""How long to watch for the leader's effect: past the inference resync (60 s), so a failure
says how long it really took today."""
QUIET = 1.0
"""A transfer counts as stopped once the hub sent no byte of it for this long."""
MiB = 1024 * 1024
SHARDED = "tiny-org/sharded-model"


def _tail(path: Path, lines: int = 60) -> str:
    if not path.exists():
        return f"(no {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Replica:
    """One ``modelplane serve`` process."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def graphql_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/graphql"

    def holds(self, holder: str | None) -> bool:
        """True when a lease ``holder`` (``<host>-<pid>-<suffix>``) is this process."""
        return holder is not None and holder.rsplit("-", 2)[-2:-1] == [str(self.process.pid)]


class Replicas:
    """``modelplane serve`` processes on one database and one state directory, each stopped
    (SIGTERM, then SIGKILL) when the test ends, whatever happened."""

    def __init__(self, tmp_path: Path, mongo_uri: str, database: Database, hub: RunningHub):
        self.tmp_path = tmp_path
        self.database = database
        self.state_dir = tmp_path / "state"
        self.engines = tmp_path / "bin"
        self.settings = {
            "MODELPLANE_MONGODB_URI": mongo_uri,
            "MODELPLANE_MONGODB_DATABASE": database.name,
            "MODELPLANE_STATE_DIR": str(self.state_dir),
            "MODELPLANE_SECRET_KEY": SECRET,
            "MODELPLANE_HF_ENDPOINT": hub.endpoint,
            "MODELPLANE_ALLOWED_REMOTE_NETWORKS": "127.0.0.0/8",
            "MODELPLANE_ENGINE_USER": "",  # the stand-in engine is this test's Python, under /root
            "MODELPLANE_LOG_LEVEL": "INFO",
            "MODELPLANE_LOG_FORMAT": "console",
            "PATH": f"{self.engines}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.started: list[Replica] = []
        self.figures = Figures()
        self._stack = contextlib.ExitStack()
        self._key = load_dev_key(secret_key=SECRET, state_dir=self.state_dir)

    async def start(self, count: int = 2, **settings: str) -> list[Replica]:
        """Start ``count`` replicas at once (``settings`` added to the shared ones), each
        waited for in a thread until it answers ``/readyz``: which one leads is up to them.
        Every start is waited for, even when one fails, so none escapes the clean-up."""
        results = await asyncio.gather(
            *(asyncio.to_thread(self._start, f"r{i}", settings) for i in range(count)),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if isinstance(r, Replica)]

    def _start(self, name: str, settings: dict[str, str]) -> Replica:
        directory = self.tmp_path / name
        directory.mkdir()
        port = free_port()
        process = self._stack.enter_context(
            serve_process(directory, port, {**self.settings, **settings}, ready_timeout=180)
        )
        replica = Replica(name, process, port, directory / "serve.log")
        self.started.append(replica)
        return replica

    async def roles(self, lease: str) -> tuple[Replica, Replica]:
        """``(leader, follower)`` for ``lease`` among two started replicas."""
        assert len(self.started) == 2, self.started
        leader: list[Replica] = []

        async def held() -> bool:
            holder = await self.holder(lease)
            leader[:] = [r for r in self.started if r.holds(holder)]
            return bool(leader)

        assert await first_seen(held, timeout=30) is not None, f"nobody holds {lease}"
        (follower,) = [r for r in self.started if r is not leader[0]]
        return leader[0], follower

    async def holder(self, lease: str) -> str | None:
        found = await self.database["leases"].find_one({"_id": lease})
        return None if found is None else str(found["holder"])

    async def wait_holding(self, replica: Replica, lease: str, *, timeout: float) -> float:
        """When ``replica`` was first seen holding ``lease``."""

        async def holds() -> bool:
            return replica.holds(await self.holder(lease))

        seen = await first_seen(holds, timeout=timeout)
        assert seen is not None, f"{replica.name} never held {lease}"
        return seen

    def token(self, role: Role = Role.EDITOR) -> str:
        return issue_dev_token(
            self._key, subject="tester", organization_id=ORG, role=role, ttl_seconds=600
        )

    async def call(self, replica: Replica, name: str, **variables: Any) -> dict[str, Any]:
        """Run the committed operation ``name`` on ``replica``: its single result."""
        data = await run(replica.graphql_url, name, variables, token=self.token())
        (result,) = data.values()
        assert isinstance(result, dict), data
        return result

    def target(self, name: str) -> str:
        """A LOCAL download target in the organisation's area of the shared weights root."""
        return str(organization_area(self.state_dir / "models", ORG) / name)

    async def create(self, replica: Replica, repo: str, name: str) -> dict[str, Any]:
        value = {
            "name": name,
            "source": {"url": repo, "accessMode": "LOCAL"},
            "downloadTarget": {"local": {"localPath": self.target(name)}},
        }
        created = await self.call(replica, "CreateModel", input=value)
        assert created["__typename"] == "Model", created
        return created

    async def document(self, collection: str, document_id: str) -> dict[str, Any]:
        found = await self.database[collection].find_one({"_id": document_id})
        assert found is not None, f"no {collection} {document_id}"
        return found

    async def phase(self, collection: str, document_id: str) -> str:
        """A document's phase (its ``state`` for weights)."""
        found = await self.document(collection, document_id)
        return str(found["state" if collection == "weights" else "phase"])

    async def weights_of(self, model_id: str) -> dict[str, Any] | None:
        model = await self.document("models", model_id)
        if not model.get("weights_id"):
            return None
        return await self.database["weights"].find_one({"_id": model["weights_id"]})

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """Hold the figures to their bounds at the end of the block; a failing assertion
        carries the end of every replica's log."""
        try:
            yield
            self.figures.check()
        except AssertionError as exc:
            logs = "\n".join(f"--- {r.name} ({r.log}):\n{_tail(r.log)}" for r in self.started)
            raise AssertionError(f"{exc}\n{logs}") from exc

    def close(self) -> None:
        """Stop every replica, then any stand-in engine a killed one left behind."""
        self._stack.close()
        for pid in _processes_mentioning(str(self.engines)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line mentions ``text`` (this test's own directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


@pytest.fixture
async def replicas(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> AsyncIterator[Replicas]:
    """Replicas for one test on a fresh database, the hub's faults cleared before and after."""
    hub.hub.faults.clear()
    hub.hub.transfers.clear()
    database = mongo_client[f"replicas_{uuid.uuid4().hex[:12]}"]
    # Two replicas creating the indexes of a fresh database at once: both find them missing,
    # both send createIndexes, and FerretDB 1.24 panics on the repeat (one replica dies at
    # start-up; reported with issue 16). Created here first, as an earlier start would have.
    await ensure_indexes(database)
    group = Replicas(tmp_path, mongo_uri, database, hub)
    group.engines.mkdir()
    vllm = group.engines / "vllm"
    vllm.write_text(FAKE_VLLM.format(python=sys.executable))
    vllm.chmod(0o755)
    try:
        yield group
    finally:
        group.close()
        hub.hub.faults.clear()
        await mongo_client.drop_database(database.name)


class Figures:
    """Measured latencies: printed as they come (the figures the issue asks for), held to
    their bounds at the end of the test, so its other checks run first and a failure says
    everything that was wrong."""

    def __init__(self) -> None:
        self._over: list[str] = []

    def add(self, what: str, seconds: float | None, bound: float = BOUND) -> None:
        shown = f"{seconds:.2f} s" if seconds is not None else f"nothing within {OBSERVE:.0f} s"
        print(f"{what}: {shown}")  # noqa: T201  the measured figure
        if seconds is None or seconds >= bound:
            self._over.append(f"{what}: {shown}, over the {bound:g} s bound")

    def check(self) -> None:
        assert not self._over, "; ".join(self._over)


def since(start: float, seen: float | None) -> float | None:
    """Seconds from ``start`` to ``seen``, if it was seen."""
    return None if seen is None else seen - start


def streaming(transfers: list[Transfer]) -> bool:
    return any(t.ended_at is None for t in transfers)


async def stopped_serving(hub: RunningHub, repo: str, *, after: float) -> float | None:
    """When the hub last sent a byte of ``repo``, once nothing of it streamed for
    :data:`QUIET` (None if it still streams after :data:`OBSERVE`); ``after`` if it had
    already stopped by then."""
    deadline = after + OBSERVE
    while time.monotonic() < deadline:
        transfers = hub.hub.transfers.of(repo)
        ended = max((t.ended_at or after for t in transfers), default=after)
        if not streaming(transfers) and time.monotonic() - ended >= QUIET:
            return max(ended, after)
        await asyncio.sleep(0.02)
    return None


async def pulling_with_bytes(group: Replicas, hub: RunningHub, model_id: str) -> dict[str, Any]:
    """Wait until the model's download runs: PULLING, bytes recorded, the hub streaming."""

    async def running() -> bool:
        weights = await group.weights_of(model_id)
        done = ((weights or {}).get("progress") or {}).get("bytes_done", 0)
        return bool(done) and streaming(hub.hub.transfers.of(SHARDED))

    assert await first_seen(running, timeout=30) is not None, "the download never ran"
    weights = await group.weights_of(model_id)
    assert weights is not None
    assert weights["state"] == "PULLING", weights
    return weights


def partial_files(location: str) -> list[Path]:
    partial = Path(location) / ".modelplane-partial"
    return sorted(p for p in partial.rglob("*") if p.is_file()) if partial.exists() else []


# -- work sent to the follower -----------------------------------------------------------


async def test_create_model_on_the_follower_starts_the_download_on_the_leader(
    replicas: Replicas, hub: RunningHub
) -> None:
    await replicas.start()
    _, follower = await replicas.roles(DOWNLOADS)
    with replicas.explained():
        hub.hub.faults.throttle(f"{SHARDED}/*.safetensors", 256 * 1024)
        created = await replicas.create(follower, SHARDED, "on-follower")
        answered = time.monotonic()

        async def pulling() -> bool:
            weights = await replicas.weights_of(created["id"])
            return weights is not None and weights["state"] in ("PULLING", "READY")

        seen = await first_seen(pulling, timeout=OBSERVE)
        replicas.figures.add("follower->leader createModel", since(answered, seen))

        async def served() -> bool:
            return bool(hub.hub.transfers.of(SHARDED))

        assert await first_seen(served, timeout=10) is not None, "PULLING, the hub serves nothing"


async def test_start_inference_on_the_follower_is_acted_on_by_the_leader(
    replicas: Replicas,
) -> None:
    await replicas.start()
    downloader, _ = await replicas.roles(DOWNLOADS)
    leader, follower = await replicas.roles(INFERENCE)
    with replicas.explained():
        created = await replicas.create(downloader, "tiny-org/tiny-model", "served")

        async def ready() -> bool:
            return await replicas.phase("models", created["id"]) == "READY"

        assert await first_seen(ready, timeout=60) is not None, "the model never got READY"
        result = await replicas.call(follower, "StartInference", modelId=created["id"])
        answered = time.monotonic()
        assert result["__typename"] == "InferencePayload", result
        inference_id = result["inference"]["id"]
        assert result["inference"]["phase"] == "PENDING", result

        async def acted() -> bool:
            return await replicas.phase("inferences", inference_id) != "PENDING"

        seen = await first_seen(acted, timeout=OBSERVE)
        replicas.figures.add("follower->leader startInference", since(answered, seen))

        async def running() -> bool:
            return await replicas.phase("inferences", inference_id) == "RUNNING"

        assert await first_seen(running, timeout=30) is not None, "the engine never ran"
        stopped = await replicas.call(leader, "StopInference", modelId=created["id"])
        assert stopped["__typename"] == "Inference", stopped


async def test_cancel_download_on_the_follower_stops_the_leaders_runner(
    replicas: Replicas, hub: RunningHub
) -> None:
    await replicas.start()
    leader, follower = await replicas.roles(DOWNLOADS)
    with replicas.explained():
        hub.hub.faults.throttle(f"{SHARDED}/*.safetensors", 64 * 1024)  # ~30 s per shard
        created = await replicas.create(leader, SHARDED, "cancelled")
        await pulling_with_bytes(replicas, hub, created["id"])

        cancelled = await replicas.call(follower, "CancelDownload", modelId=created["id"])
        answered = time.monotonic()
        assert cancelled["__typename"] == "Weights", cancelled
        assert cancelled["state"] == "CANCELLED", cancelled

        stopped = await stopped_serving(hub, SHARDED, after=answered)
        replicas.figures.add("follower->leader cancelDownload", since(answered, stopped))
        weights = await replicas.weights_of(created["id"])
        assert weights is not None
        assert weights["state"] == "CANCELLED", weights
        assert partial_files(cancelled["location"]) == [], "in-flight parts left behind"


async def test_delete_model_on_the_follower_stops_the_leaders_download(
    replicas: Replicas, hub: RunningHub
) -> None:
    await replicas.start()
    leader, follower = await replicas.roles(DOWNLOADS)
    with replicas.explained():
        hub.hub.faults.throttle(f"{SHARDED}/*.safetensors", 64 * 1024)
        created = await replicas.create(leader, SHARDED, "deleted")
        weights_id = (await pulling_with_bytes(replicas, hub, created["id"]))["_id"]

        deleted = await replicas.call(follower, "DeleteModel", id=created["id"])
        answered = time.monotonic()
        assert deleted["__typename"] == "DeletedModel", deleted

        async def cancelled() -> bool:
            return await replicas.phase("weights", weights_id) == "CANCELLED"

        seen = await first_seen(cancelled, timeout=OBSERVE)
        replicas.figures.add("follower->leader deleteModel", since(answered, seen))
        stopped = await stopped_serving(hub, SHARDED, after=answered)
        replicas.figures.add(
            "follower->leader deleteModel (hub stops)",
            since(answered, stopped),
        )
        weights = await replicas.document("weights", weights_id)
        assert weights["model_ids"] == [], weights
        assert partial_files(weights["location"]) == [], "in-flight parts left behind"


# -- the leader dies ---------------------------------------------------------------------

LEASE_SECONDS = 3.0
RESUMING = "replicas/resume-model"


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


@pytest.fixture
def own_hub() -> Iterator[Callable[[HubRepo], RunningHub]]:
    """A hub of the test's own (its repo and transfer log touch no other test's), stopped
    after the test's replicas (fixtures end in reverse order)."""
    with contextlib.ExitStack() as stack:
        yield lambda repo: stack.enter_context(running_hub(LocalHub([repo])))


async def test_killed_leader_is_replaced_and_the_download_resumes_without_refetching(
    own_hub: Callable[[HubRepo], RunningHub], replicas: Replicas
) -> None:
    """``kill -9`` of the leader mid-download: the follower takes the lease within the lease
    time and resumes the download; no byte of a chunk the ledger recorded is served again, and
    the file verifies."""
    repo = llama_repo(RESUMING, weights_bytes=8 * MiB)
    (file,) = [f for f in repo.files if f.path == "model.safetensors"]
    hub = own_hub(repo)
    await replicas.start(
        MODELPLANE_HF_ENDPOINT=hub.endpoint,
        MODELPLANE_CONTROLLER_LEASE_SECONDS=f"{LEASE_SECONDS:g}",
        MODELPLANE_DOWNLOAD_CHUNK_MIB="1",
        MODELPLANE_DOWNLOAD_CHECKPOINT_MIB="1",
    )
    leader, follower = await replicas.roles(DOWNLOADS)
    with replicas.explained():
        hub.hub.faults.throttle(f"{RESUMING}/model.safetensors", 1 * MiB)
        created = await replicas.create(leader, RESUMING, "resumed")

        async def recorded() -> bool:
            ledger = await replicas.database["ledger"].find_one({"path": file.path})
            return ledger is not None and len(ledger["chunks"]) >= 2

        assert await first_seen(recorded, timeout=60) is not None, "no chunk was ever recorded"
        leader.process.send_signal(signal.SIGKILL)
        leader.process.wait()
        killed = time.monotonic()
        ledger = await replicas.database["ledger"].find_one({"path": file.path})
        assert ledger is not None
        chunk = int(ledger["chunk_size"])
        kept = [(c * chunk, min((c + 1) * chunk, file.size)) for c in sorted(ledger["chunks"])]

        took = await replicas.wait_holding(follower, DOWNLOADS, timeout=LEASE_SECONDS * 2 + 10)
        replicas.figures.add(
            "kill -9 leader -> lease taken over", took - killed, LEASE_SECONDS * 4 / 3 + 2
        )

        async def resumed() -> bool:
            return any(t.started_at > killed for t in hub.hub.transfers.of(RESUMING, file.path))

        seen = await first_seen(resumed, timeout=30)
        replicas.figures.add("kill -9 leader -> download resumed", since(killed, seen), 10)
        hub.hub.faults.clear()

        async def ready() -> bool:
            return await replicas.phase("models", created["id"]) in {"READY", "FAILED"}

        assert await first_seen(ready, timeout=60) is not None, "the download never finished"
        model = await replicas.document("models", created["id"])
        weights = await replicas.document("weights", model["weights_id"])
        assert (model["phase"], weights["state"]) == ("READY", "READY"), (model, weights)
        stored = Path(weights["location"]) / file.path
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == file.sha256

        after = [t for t in hub.hub.transfers.of(RESUMING, file.path) if t.started_at > killed]
        served = [(t.start, t.start + t.sent) for t in after]
        again = sum(_overlap(s, k) for s in served for k in kept)
        print(  # noqa: T201  the measured figure
            f"kill -9 resume: {len(kept)} chunks ({sum(b - a for a, b in kept)} B) recorded "
            f"before the kill, {sum(b - a for a, b in served)} B served after it, "
            f"{again} B of them already recorded; file {file.size} B"
        )
        assert again == 0, f"recorded chunks {kept} fetched again: {served}"
        assert sum(b - a for a, b in served) <= file.size - sum(b - a for a, b in kept)
