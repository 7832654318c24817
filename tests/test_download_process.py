"""kill -9 the `modelplane download` process mid-transfer, five times; it always resumes.

A ~200 MB, four-shard repo is served by a hub of its own, throttled so each run is killed
while bytes move. After every restart the process must skip every chunk its ledger recorded
(so it re-fetches at most the chunk each file had in flight), and the last run must end READY
with every file's sha256 verified.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.client import Client
from storage.documents import LocalTarget, WeightsDocument, WeightsState
from storage.repositories import LedgerRepository, WeightsRepository, ensure_indexes
from testbed.hub import LocalHub, RunningHub, running_hub
from testbed.repos import HubRepo, llama_repo
from tests.helpers import files_of

MiB = 1024 * 1024
CHUNK_MIB = 4
REPO = "big-org/two-hundred-mb"
KILLS = 5


@pytest.fixture(scope="module")
def big_hub() -> Iterator[RunningHub]:
    with running_hub(
        LocalHub(repos=[llama_repo(REPO, weights_bytes=200 * MiB, num_shards=4)])
    ) as h:
        yield h


def chunk_starts(records: list[object]) -> set[tuple[str, int]]:
    found = set()
    for record in records:
        header = getattr(record, "range", None)
        if not header:
            continue
        start = int(header.split("=")[1].split("-")[0])
        found.add((str(getattr(record, "path", "")).rsplit("/", 1)[-1], start))
    return found


async def recorded_chunks(ledgers: LedgerRepository, repo: HubRepo) -> int:
    """How many chunks the ledger holds for the repo's files right now."""
    total = 0
    for f in repo.files:
        ledger = await ledgers.load("weights-kill9", f.path, chunk_size=CHUNK_MIB * MiB)
        total += len(ledger.chunks)
    return total


async def kill_mid_transfer(
    process: subprocess.Popen[bytes],
    hub: RunningHub,
    ledgers: LedgerRepository,
    repo: HubRepo,
    *,
    previous: int,
    launched: float,
    rng: random.Random,
) -> None:
    """SIGKILL the process while bytes move, after it recorded a chunk of its own (on a loaded
    machine a fixed delay may end a run before it finished any), at a random moment inside the
    next chunks (a chunk takes ~0.8 s per file)."""
    deadline = time.monotonic() + 60
    # Only this run's requests count: the hub logs the killed run's responses as it notices
    # them end, after the log was cleared.
    while await recorded_chunks(ledgers, repo) <= previous or not any(
        r.bytes_sent and r.started_at >= launched for r in hub.hub.log.records(method="GET")
    ):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await asyncio.sleep(rng.uniform(0.1, 0.7))
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


@pytest.mark.timeout(300)
async def test_kill_nine_five_times_then_ready(
    big_hub: RunningHub, mongo_uri: str, mongo_client: Client, tmp_path: Path
) -> None:
    database_name = f"kill_{os.getpid()}_{random.randrange(1 << 30)}"
    database = mongo_client[database_name]
    await ensure_indexes(database)
    repo = big_hub.hub.repos[REPO]
    location = tmp_path / "weights"
    weights = WeightsRepository(database)
    ledgers = LedgerRepository(database)
    await weights.insert(
        WeightsDocument(
            id="weights-kill9",
            organization_id="org-a",
            repo_id=REPO,
            commit_sha=repo.sha,
            target=LocalTarget(local_path=str(location)),
            location=str(location),
            files=files_of(repo),
        )
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")},
        "MODELPLANE_MONGODB_URI": mongo_uri,
        "MODELPLANE_MONGODB_DATABASE": database_name,
        "MODELPLANE_HF_ENDPOINT": big_hub.endpoint,
        "MODELPLANE_DOWNLOAD_CHUNK_MIB": str(CHUNK_MIB),
        "MODELPLANE_STATE_DIR": str(tmp_path / "state"),
        "MODELPLANE_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "modelplane", "download", "--weights-id", "weights-kill9"]
    big_hub.hub.faults.throttle("*.safetensors", 5 * MiB)  # 4 files x 5 MiB/s: ~10 s in all
    rng = random.Random(20261123)

    fetched_total = 0
    recorded_per_run: list[int] = []
    try:
        for kill in range(KILLS + 1):
            recorded = {
                (path.rsplit("/", 1)[-1], chunk * CHUNK_MIB * MiB)
                for path in [f.path for f in repo.files]
                for chunk in (
                    await ledgers.load("weights-kill9", path, chunk_size=CHUNK_MIB * MiB)
                ).chunks
            }
            recorded_per_run.append(len(recorded))
            big_hub.hub.log.clear()
            launched = time.time()
            process = subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            if kill < KILLS:
                await kill_mid_transfer(
                    process,
                    big_hub,
                    ledgers,
                    repo,
                    previous=recorded_per_run[-1],
                    launched=launched,
                    rng=rng,
                )
            else:
                _, stderr = process.communicate(timeout=240)
                assert process.returncode == 0, stderr.decode()
            records = big_hub.hub.log.records(method="GET")
            asked = chunk_starts(
                [r for r in records if r.path.endswith(".safetensors") or "cdn" in r.path]
            )
            refetched = asked & recorded
            assert refetched == set(), f"run {kill} re-fetched recorded chunks {sorted(refetched)}"
            fetched_total += sum(r.bytes_sent for r in records)
    finally:
        big_hub.hub.faults.clear()

    # The kills landed mid-transfer: each restart found more recorded chunks than the last.
    assert recorded_per_run[0] == 0
    assert recorded_per_run == sorted(recorded_per_run)
    assert len(set(recorded_per_run)) >= 4, recorded_per_run
    done = await weights.require("weights-kill9")
    assert done.state is WeightsState.READY, done.message
    for f in repo.files:
        assert (
            hashlib.sha256((location / f.path).read_bytes()).digest()
            == hashlib.sha256(f.content).digest()
        ), f.path
    total = sum(f.size for f in repo.files)
    # Every kill loses at most the chunk in flight for each of the 4 parallel files.
    assert fetched_total <= total + KILLS * 4 * CHUNK_MIB * MiB
    assert not (location / ".modelplane-partial").exists()
    await mongo_client.drop_database(database_name)


SMALL_REPO = "small-org/three-small-shards"
SMALL_KILLS = 3
CHECKPOINT_MIB = 4


@pytest.fixture(scope="module")
def small_hub() -> Iterator[RunningHub]:
    with running_hub(
        LocalHub(repos=[llama_repo(SMALL_REPO, weights_bytes=84 * MiB, num_shards=3)])
    ) as h:
        yield h


async def wait_progress(
    process: subprocess.Popen[bytes], weights: WeightsRepository, weights_id: str, at_least: int
) -> None:
    """Until the running download reports ``at_least`` bytes done (resumed bytes count)."""
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        doc = await weights.require(weights_id)
        if doc.progress is not None and doc.progress.bytes_done >= at_least:
            return
        await asyncio.sleep(0.05)


@pytest.mark.timeout(300)
async def test_kill_nine_resumes_inside_files_smaller_than_a_chunk(
    small_hub: RunningHub, mongo_uri: str, mongo_client: Client, tmp_path: Path
) -> None:
    """Three ~28 MiB files, one 32 MiB chunk each: before checkpoints inside a chunk, every
    kill threw away all bytes in flight (the issue measured 61 MB for a 23.5 MB repo over three
    kills). Killed at a quarter, half and three quarters, the download must fetch the repo
    about once, losing at most a checkpoint (plus what was in transit) per file and kill."""
    database_name = f"kill_small_{os.getpid()}_{random.randrange(1 << 30)}"
    database = mongo_client[database_name]
    await ensure_indexes(database)
    repo = small_hub.hub.repos[SMALL_REPO]
    shards = [f for f in repo.files if f.path.endswith(".safetensors")]
    assert len(shards) == 3
    assert all(20 * MiB < f.size < 32 * MiB for f in shards), [f.size for f in shards]
    location = tmp_path / "weights"
    weights = WeightsRepository(database)
    await weights.insert(
        WeightsDocument(
            id="weights-small",
            organization_id="org-a",
            repo_id=SMALL_REPO,
            commit_sha=repo.sha,
            target=LocalTarget(local_path=str(location)),
            location=str(location),
            files=files_of(repo),
        )
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")},
        "MODELPLANE_MONGODB_URI": mongo_uri,
        "MODELPLANE_MONGODB_DATABASE": database_name,
        "MODELPLANE_HF_ENDPOINT": small_hub.endpoint,
        "MODELPLANE_DOWNLOAD_CHUNK_MIB": "32",
        "MODELPLANE_DOWNLOAD_CHECKPOINT_MIB": str(CHECKPOINT_MIB),
        "MODELPLANE_STATE_DIR": str(tmp_path / "state"),
        "MODELPLANE_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "modelplane", "download", "--weights-id", "weights-small"]
    small_hub.hub.faults.throttle("*.safetensors", 4 * MiB)  # 3 files x 4 MiB/s: ~7 s
    small_hub.hub.log.clear()
    total = sum(f.size for f in repo.files)
    try:
        for kill in range(SMALL_KILLS):
            process = subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            await wait_progress(process, weights, "weights-small", total * (kill + 1) // 4)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, stderr = process.communicate(timeout=240)
        assert process.returncode == 0, stderr.decode()
    finally:
        small_hub.hub.faults.clear()
    done = await weights.require("weights-small")
    assert done.state is WeightsState.READY, done.message
    for f in repo.files:
        assert (
            hashlib.sha256((location / f.path).read_bytes()).digest()
            == hashlib.sha256(f.content).digest()
        ), f.path
    # The hub logs a response when it ends: the killed runs' ended long before the last run.
    served = sum(r.bytes_sent for r in small_hub.hub.log.records(method="GET"))
    lost_per_file = (CHECKPOINT_MIB + 3) * MiB  # a checkpoint, a hand-off and socket buffers
    print(  # noqa: T201  the figure the issue measured, for the record
        f"served {served / MiB:.1f} MiB for a {total / MiB:.1f} MiB repo over {SMALL_KILLS} kills"
    )
    assert served <= total + SMALL_KILLS * len(shards) * lost_per_file
    assert not (location / ".modelplane-partial").exists()
    await mongo_client.drop_database(database_name)
