"""The downloader against the local hub: verified files, resumption, faults, full disks."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controllers.transfer.downloader import (
    SIDECAR,
    ChecksumMismatch,
    Downloader,
    DownloadError,
    DownloadOptions,
    LocalSink,
    PreflightError,
)
from storage.client import Database
from storage.documents import Progress
from storage.repositories import LedgerRepository, ensure_indexes
from testbed.hub import LocalHub, RunningHub, running_hub
from testbed.repos import HubRepo, llama_repo
from tests.helpers import files_of

KiB = 1024
MiB = 1024 * KiB
CHUNK = 256 * KiB


@pytest.fixture(scope="module")
def fault_hub() -> Iterator[RunningHub]:
    """A hub of our own, so injected faults never reach other tests."""
    repos = [
        llama_repo("dl-org/four-shards", weights_bytes=4 * MiB, num_shards=4),
        llama_repo("dl-org/one-file", weights_bytes=1 * MiB),
        llama_repo("dl-org/gated", weights_bytes=256 * KiB, gated="manual"),
    ]
    with running_hub(LocalHub(repos=repos)) as running:
        yield running


@pytest.fixture(autouse=True)
def clean_faults(fault_hub: RunningHub) -> Iterator[None]:
    fault_hub.hub.faults.clear()
    fault_hub.hub.log.clear()
    yield
    fault_hub.hub.faults.clear()


@pytest.fixture
async def ledgers(database: Database) -> LedgerRepository:
    await ensure_indexes(database)
    return LedgerRepository(database)


class Recorder:
    def __init__(self) -> None:
        self.records: list[Progress] = []

    async def __call__(self, progress: Progress) -> None:
        self.records.append(progress)


def downloader(
    hub: RunningHub,
    ledgers: LedgerRepository,
    *,
    parallel_files: int = 4,
    stall_seconds: float = 2.0,
    max_retries: int = 4,
) -> Downloader:
    return Downloader(
        endpoint=hub.endpoint,
        ledgers=ledgers,
        options=DownloadOptions(
            parallel_files=parallel_files,
            chunk_size=CHUNK,
            stall_seconds=stall_seconds,
            max_retries=max_retries,
            backoff_base=0.05,
            backoff_cap=0.2,
            progress_interval=0.05,
        ),
    )


async def fetch(
    hub: RunningHub, ledgers: LedgerRepository, repo_id: str, target: Path, **options: Any
) -> tuple[Progress, Recorder]:
    repo = hub.hub.repos[repo_id]
    recorder = Recorder()
    final = await downloader(hub, ledgers, **options).run(
        weights_id=f"w-{uuid.uuid4().hex[:6]}",
        repo_id=repo_id,
        commit_sha=repo.sha,
        files=files_of(repo),
        sink=LocalSink(target),
        token=None,
        on_progress=recorder,
    )
    return final, recorder


def assert_complete(repo: HubRepo, target: Path) -> None:
    for f in repo.files:
        data = (target / f.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == hashlib.sha256(f.content).hexdigest(), f.path
    assert not (target / SIDECAR).exists()


async def test_downloads_every_file_verified(
    fault_hub: RunningHub, ledgers: LedgerRepository, tmp_path: Path, database: Database
) -> None:
    final, recorder = await fetch(fault_hub, ledgers, "dl-org/four-shards", tmp_path / "w")
    repo = fault_hub.hub.repos["dl-org/four-shards"]
    assert_complete(repo, tmp_path / "w")
    total = sum(f.size for f in repo.files)
    assert final.bytes_done == final.bytes_total == total
    assert final.files_done == final.files_total == len(repo.files)
    assert final.stage == "FINALIZING"
    stages = {r.stage for r in recorder.records}
    assert {"PREFLIGHT", "FINALIZING"} <= {str(s) for s in stages}
    done = [r.bytes_done for r in recorder.records]
    assert done == sorted(done)  # progress never goes backwards without faults
    assert await database["ledger"].count_documents({}) == 0
    ranges = [r.range for r in fault_hub.hub.log.records(method="GET") if r.range]
    assert ranges, "the downloader asks for ranges"


async def test_resumes_after_cancellation_without_refetching_done_chunks(
    fault_hub: RunningHub, ledgers: LedgerRepository, tmp_path: Path
) -> None:
    repo_id = "dl-org/four-shards"
    repo = fault_hub.hub.repos[repo_id]
    fault_hub.hub.faults.throttle("*.safetensors", 2 * MiB)
    weights_id = "w-resume"
    target = tmp_path / "w"
    dl = downloader(fault_hub, ledgers, parallel_files=2)
    task = asyncio.create_task(
        dl.run(
            weights_id=weights_id,
            repo_id=repo_id,
            commit_sha=repo.sha,
            files=files_of(repo),
            sink=LocalSink(target),
            token=None,
            on_progress=Recorder(),
        )
    )
    await asyncio.sleep(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (target / SIDECAR).is_dir()
    before = len(fault_hub.hub.log.records(method="GET"))
    fault_hub.hub.faults.clear()

    recorder = Recorder()
    await dl.run(
        weights_id=weights_id,
        repo_id=repo_id,
        commit_sha=repo.sha,
        files=files_of(repo),
        sink=LocalSink(target),
        token=None,
        on_progress=recorder,
    )
    assert_complete(repo, target)
    first = recorder.records[0]
    assert first.bytes_done > 0  # it started from what was kept
    resumed = fault_hub.hub.log.records(method="GET")[before:]
    fetched = sum(
        r.bytes_sent for r in resumed if r.path.endswith(".safetensors") or "cdn" in r.path
    )
    weights_total = sum(f.size for f in repo.files if f.path.endswith(".safetensors"))
    # Only what was missing, plus at most one chunk per file that was in flight.
    assert fetched <= weights_total - first.bytes_done + 2 * CHUNK + 4 * CHUNK


@pytest.mark.parametrize(
    "fault",
    ["fail_next", "drop_after", "stall_after"],
)
async def test_recovers_from_hub_faults(
    fault_hub: RunningHub, ledgers: LedgerRepository, tmp_path: Path, fault: str
) -> None:
    faults = fault_hub.hub.faults
    if fault == "fail_next":
        faults.fail_next("*.safetensors", 3, status=500)
    elif fault == "drop_after":
        faults.drop_after("*.safetensors", 100 * KiB, times=2)
    else:
        faults.stall_after("*.safetensors", 50 * KiB, 5.0, times=1)
    await fetch(fault_hub, ledgers, "dl-org/one-file", tmp_path / "w", stall_seconds=0.5)
    assert_complete(fault_hub.hub.repos["dl-org/one-file"], tmp_path / "w")


async def test_gives_up_with_the_reason_after_retries(
    fault_hub: RunningHub, ledgers: LedgerRepository, tmp_path: Path
) -> None:
    fault_hub.hub.faults.fail_next("*.safetensors", 100, status=503)
    with pytest.raises(DownloadError, match=r"failed at \d+% on model.safetensors after 2 retries"):
        await fetch(fault_hub, ledgers, "dl-org/one-file", tmp_path / "w", max_retries=2)
    assert not (tmp_path / "w" / "model.safetensors").exists()


async def test_stall_is_reported_as_such(
    fault_hub: RunningHub, ledgers: LedgerRepository, tmp_path: Path
) -> None:
    fault_hub.hub.faults.stall_after("*.safetensors", 10 * KiB, 30.0, times=None)
    with pytest.raises(DownloadError, match=r"stalled at \d+% on model.safetensors"):
        await fetch(
            fault_hub, ledgers, "dl-org/one-file", tmp_path / "w", stall_seconds=0.3, max_retries=1
        )


async def test_gated_repo_without_access_fails_clearly(
    fault_hub: RunningHub, ledgers: LedgerRepository, tmp_path: Path
) -> None:
    with pytest.raises(DownloadError, match="refused access"):
        await fetch(fault_hub, ledgers, "dl-org/gated", tmp_path / "w")


async def test_checksum_mismatch_discards_the_file(
    fault_hub: RunningHub, ledgers: LedgerRepository, tmp_path: Path
) -> None:
    repo = fault_hub.hub.repos["dl-org/one-file"]
    files = files_of(repo)
    lying = [f.model_copy(update={"sha256": "0" * 64}) if f.sha256 else f for f in files]
    sink = LocalSink(tmp_path / "w")
    with pytest.raises(ChecksumMismatch, match="sha256 mismatch"):
        await downloader(fault_hub, ledgers).run(
            weights_id="w-lie",
            repo_id=repo.repo_id,
            commit_sha=repo.sha,
            files=lying,
            sink=sink,
            token=None,
            on_progress=Recorder(),
        )
    bad = next(f for f in lying if f.sha256)
    assert not sink.final_path(bad).exists()
    assert not sink.part_path(bad).exists()


@pytest.fixture
def small_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A small tmpfs (3 MiB unless the test is marked with another size)."""
    marker = request.node.get_closest_marker("disk_mib")
    size = marker.args[0] if marker else 3
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not os.path.ismount(mount):
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_preflight_refuses_when_the_target_is_too_small(
    fault_hub: RunningHub, ledgers: LedgerRepository, small_disk: Path
) -> None:
    with pytest.raises(PreflightError, match=r"needs 4\.\d MiB, 3\.0 MiB free at "):
        await fetch(fault_hub, ledgers, "dl-org/four-shards", small_disk / "w")
    assert list((small_disk / "w").iterdir()) == []  # no partial files


@pytest.mark.disk_mib(6)
async def test_disk_filling_up_mid_download_fails_with_enospc_and_resumes(
    fault_hub: RunningHub, ledgers: LedgerRepository, small_disk: Path
) -> None:
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 128 * KiB)
    repo = fault_hub.hub.repos["dl-org/four-shards"]
    # Pass the pre-flight, then eat the space while the download runs.
    fault_hub.hub.faults.throttle("*.safetensors", 4 * MiB)

    async def fill_later() -> None:
        """Eat the tmpfs's free space: bounded, and only while it is still our mount."""
        await asyncio.sleep(0.4)
        assert os.path.ismount(small_disk)
        with (small_disk / "hog").open("wb") as hog:
            for _ in range(16 * 8):  # at most 8 MiB, more than the 6 MiB mount holds
                try:
                    hog.write(b"\0" * 64 * KiB)
                    hog.flush()
                except OSError:
                    return
                await asyncio.sleep(0)

    hog = asyncio.create_task(fill_later())
    try:
        with pytest.raises(DownloadError, match="no space left on device"):
            await fetch(
                fault_hub, ledgers, "dl-org/four-shards", small_disk / "w", parallel_files=1
            )
    finally:
        hog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hog
    (small_disk / "hog").unlink()
    filler.unlink()
    fault_hub.hub.faults.clear()
    await fetch(fault_hub, ledgers, "dl-org/four-shards", small_disk / "w", parallel_files=1)
    assert_complete(repo, small_disk / "w")


async def test_token_reaches_the_hub_but_never_the_cdn(
    fault_hub: RunningHub, ledgers: LedgerRepository, tmp_path: Path
) -> None:
    token = "hf_granted_download_token_01"
    fault_hub.hub.grant(token, "dl-org/gated")
    repo = fault_hub.hub.repos["dl-org/gated"]
    await downloader(fault_hub, ledgers).run(
        weights_id="w-token",
        repo_id=repo.repo_id,
        commit_sha=repo.sha,
        files=files_of(repo),
        sink=LocalSink(tmp_path / "w"),
        token=token,
        on_progress=Recorder(),
    )
    assert_complete(repo, tmp_path / "w")
    records = fault_hub.hub.log.records(method="GET")
    resolves = [r for r in records if "/resolve/" in r.path]
    cdn = [r for r in records if "cdn" in r.path]
    assert resolves
    assert all(r.authorization for r in resolves)
    assert cdn, "LFS files are served through the CDN redirect"
    assert not any(r.authorization for r in cdn)
