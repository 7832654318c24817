"""Streaming downloads into S3 (MinIO): multipart, resumable by ListParts, verified."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from controllers.transfer.downloader import Downloader, DownloadError, DownloadOptions
from controllers.transfer.s3_sink import S3Sink, object_prefix
from controllers.transfer.sinks import SinkUnavailable
from integrations.s3 import S3Client, S3Location
from modelplane.embedded import free_port
from storage.client import Database
from storage.documents import Progress, WeightsFile
from storage.repositories import LedgerRepository, ensure_indexes
from testbed.hub import LocalHub, RunningHub, running_hub
from testbed.repos import llama_repo
from testbed.servers import MinioProcess, S3Server
from tests.helpers import LOOPBACK_ALLOWED, bucket_on, files_of

MiB = 1024 * 1024
CHUNK = 5 * MiB
REPO = "s3-org/model"


@pytest.fixture(scope="module")
def s3_hub() -> Iterator[RunningHub]:
    with running_hub(LocalHub(repos=[llama_repo(REPO, weights_bytes=24 * MiB, num_shards=2)])) as h:
        yield h


@pytest.fixture(autouse=True)
def clean(s3_hub: RunningHub) -> Iterator[None]:
    s3_hub.hub.faults.clear()
    s3_hub.hub.log.clear()
    yield
    s3_hub.hub.faults.clear()


async def nothing(_progress: Progress) -> None:
    return None


async def download(
    hub: RunningHub, ledgers: LedgerRepository, client: S3Client, *, weights_id: str
) -> None:
    repo = hub.hub.repos[REPO]
    options = DownloadOptions(
        chunk_size=CHUNK, stall_seconds=2, max_retries=8, backoff_base=0.2, backoff_cap=2
    )
    sink = S3Sink(
        client,
        prefix=object_prefix("models", REPO, repo.sha),
        ledgers=ledgers,
        chunk_size=CHUNK,
    )
    await Downloader(endpoint=hub.endpoint, ledgers=ledgers, options=options).run(
        weights_id=weights_id,
        repo_id=REPO,
        commit_sha=repo.sha,
        files=files_of(repo),
        sink=sink,
        token=None,
        on_progress=nothing,
    )


async def assert_objects(hub: RunningHub, client: S3Client) -> None:
    repo = hub.hub.repos[REPO]
    for f in repo.files:
        data = await client.get_bytes(f"models/{REPO}/{repo.sha}/{f.path}")
        assert hashlib.sha256(data).digest() == hashlib.sha256(f.content).digest(), f.path


@pytest.fixture
async def ledgers(database: Database) -> LedgerRepository:
    await ensure_indexes(database)
    return LedgerRepository(database)


async def test_streams_into_s3_and_verifies(
    s3_hub: RunningHub, s3_server: S3Server, ledgers: LedgerRepository, tmp_path: Path
) -> None:
    client = await bucket_on(s3_server)
    await download(s3_hub, ledgers, client, weights_id="w-s3")
    await assert_objects(s3_hub, client)
    assert await ledgers.find(where={}, limit=0) is not None
    assert (await ledgers.find(where={}, limit=0)).total == 0
    assert list(tmp_path.iterdir()) == []  # nothing staged on local disk


async def test_resumes_from_listed_parts(
    s3_hub: RunningHub, s3_server: S3Server, ledgers: LedgerRepository
) -> None:
    client = await bucket_on(s3_server)
    s3_hub.hub.faults.throttle("*.safetensors", 8 * MiB)
    task = asyncio.create_task(download(s3_hub, ledgers, client, weights_id="w-s3-resume"))
    deadline = asyncio.get_running_loop().time() + 20
    while True:  # until some part of some file is recorded
        found = await ledgers.find(where={"weights_id": "w-s3-resume"}, limit=10)
        if any(doc.upload_id and doc.chunks for doc in found.items):
            break
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    kept = {
        doc.path: set(doc.chunks)
        for doc in (await ledgers.find(where={"weights_id": "w-s3-resume"}, limit=10)).items
    }
    s3_hub.hub.faults.clear()
    resumed_at = time.time()  # the hub logs a request when its body ends: skip stale ones
    await download(s3_hub, ledgers, client, weights_id="w-s3-resume")
    await assert_objects(s3_hub, client)
    asked = {
        (r.path.rsplit("/", 1)[-1], int(r.range.split("=")[1].split("-")[0]) // CHUNK)
        for r in s3_hub.hub.log.records(method="GET")
        if r.range and r.started_at >= resumed_at
    }
    for path, chunks in kept.items():
        name = path.rsplit("/", 1)[-1]
        again = {(name, c) for c in chunks} & asked
        # At most the chunk that was in flight (being completed) when the task was cancelled.
        assert len(again) <= 1, f"{path} re-fetched uploaded parts {sorted(again)}"


class DroppingParts(S3Client):
    """The real client, but every part sent into ``poisoned`` is then dropped from MinIO's drive:
    what MinIO does to an upload whose completion a cancel interrupted (measured: about one in
    twelve such uploads lists no parts, no object appears, and parts sent into it again vanish
    while MinIO cleans up)."""

    poisoned = ""
    poisoned_dirs: frozenset[Path] = frozenset()

    async def upload_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        data: bytes | bytearray | memoryview,
        *,
        md5: bytes,
    ) -> str:
        etag = await super().upload_part(key, upload_id, number, data, md5=md5)
        if upload_id == self.poisoned:
            drop_parts(self.poisoned_dirs)
        return etag


def upload_dirs(drive: Path) -> frozenset[Path]:
    return frozenset({p for p in (drive / ".minio.sys" / "multipart").glob("*/*") if p.is_dir()})


def drop_parts(uploads: frozenset[Path]) -> None:
    for upload in uploads:
        for part in upload.rglob("part.*"):
            part.unlink()


async def test_resume_abandons_an_upload_that_drops_its_parts(
    s3_hub: RunningHub,
    testbed_binaries: dict[str, Path],
    ledgers: LedgerRepository,
    tmp_path: Path,
) -> None:
    """Issue 16 #5: after a cancel interrupted the completion of a one-part file, the resumed
    download sent the part into the same upload three times, saw it vanish each time and gave
    up ("stored chunks kept disappearing"). A short listing now abandons the upload."""
    minio = MinioProcess(tmp_path / "minio", binary=testbed_binaries["minio"])
    minio.start()
    try:
        plain = await bucket_on(minio.server)
        client = DroppingParts(plain.location, outbound=LOOPBACK_ALLOWED)
        repo = s3_hub.hub.repos[REPO]
        small = next(f for f in repo.files if f.path == "config.json")
        key = f"models/{REPO}/{repo.sha}/config.json"
        # The cancelled attempt: the part stored and recorded, then its completion interrupted.
        upload_id = await client.start_upload(key, metadata={"sha256": ""})
        ledger = await ledgers.load("w-dropped", "config.json", chunk_size=CHUNK)
        await ledgers.set_upload(ledger, upload_id)
        content = small.content
        await plain.upload_part(
            key, upload_id, 1, content, md5=hashlib.md5(content, usedforsecurity=False).digest()
        )
        await ledgers.mark_chunk(ledger, 0)
        client.poisoned = upload_id
        client.poisoned_dirs = upload_dirs(tmp_path / "minio" / "data")
        drop_parts(client.poisoned_dirs)
        assert await client.list_parts(key, upload_id) == {}  # listed, partless, no object

        await download(s3_hub, ledgers, client, weights_id="w-dropped")

        await assert_objects(s3_hub, client)
        assert await client.list_parts(key, upload_id) is None  # abandoned, not filled again
    finally:
        minio.stop()


async def test_survives_an_s3_restart_mid_upload(
    s3_hub: RunningHub,
    testbed_binaries: dict[str, Path],
    ledgers: LedgerRepository,
    tmp_path: Path,
) -> None:
    minio = MinioProcess(tmp_path / "minio", binary=testbed_binaries["minio"])
    minio.start()
    try:
        client = await bucket_on(minio.server)
        s3_hub.hub.faults.throttle("*.safetensors", 6 * MiB)
        task = asyncio.create_task(download(s3_hub, ledgers, client, weights_id="w-restart"))
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            found = await ledgers.find(where={"weights_id": "w-restart"}, limit=10)
            if any(doc.upload_id and doc.chunks for doc in found.items):
                break
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        await asyncio.to_thread(minio.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(minio.start)
        await asyncio.wait_for(task, timeout=60)
        await assert_objects(s3_hub, client)
    finally:
        minio.stop()


def open_sessions() -> list[aiohttp.ClientSession]:
    gc.collect()  # an unclosed session nobody holds is collected here, and complains
    return [o for o in gc.get_objects() if isinstance(o, aiohttp.ClientSession) and not o.closed]


async def test_a_failed_download_closes_every_s3_session(
    s3_hub: RunningHub,
    testbed_binaries: dict[str, Path],
    ledgers: LedgerRepository,
    tmp_path: Path,
) -> None:
    """Issue 15 #16: each failed S3 download left an HTTP session open (the survey's other
    HEAD requests went on after the download had failed and its client was closed)."""
    minio = MinioProcess(tmp_path / "minio", binary=testbed_binaries["minio"])
    minio.start()
    try:
        client = await bucket_on(minio.server)
    finally:
        minio.stop()  # a real S3 server, stopped: every request is refused
    loop = asyncio.get_running_loop()
    complaints: list[str] = []
    handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: complaints.append(str(context["message"])))
    before = {id(s) for s in open_sessions()}
    try:
        for attempt in range(3):
            with pytest.raises(DownloadError, match="EndpointConnectionError"):
                await download(s3_hub, ledgers, client, weights_id=f"w-stopped-{attempt}")
        leaked = [s for s in open_sessions() if id(s) not in before]
    finally:
        loop.set_exception_handler(handler)
    assert leaked == []
    assert [c for c in complaints if "nclosed" in c] == []


async def test_a_refusal_fails_at_once_and_an_outage_is_retried(
    s3_server: S3Server, database: Database
) -> None:
    """403 (a wrong secret key) cannot pass by itself: the download fails at once with the
    server's code; no answer at all (nothing listens) is worth the downloader's retries."""
    good = await bucket_on(s3_server)
    ledgers = LedgerRepository(database)
    file = WeightsFile(path="a.bin", size=1, sha256="0" * 64)

    def sink(endpoint: str, secret: str) -> S3Sink:
        location = S3Location(
            endpoint=endpoint,
            region=good.location.region,
            bucket=good.location.bucket,
            access_key_id=good.location.access_key_id,
            secret_access_key=secret,
        )
        client = S3Client(location, outbound=LOOPBACK_ALLOWED)
        return S3Sink(client, prefix="p", ledgers=ledgers, chunk_size=8 * 1024 * 1024)

    refused = sink(s3_server.endpoint, "not-the-secret")
    with pytest.raises(DownloadError) as failure:
        await refused.is_complete(file)
    assert not isinstance(failure.value, SinkUnavailable)
    assert "403" in str(failure.value)
    assert "not-the-secret" not in str(failure.value)

    closed = sink(f"http://127.0.0.1:{free_port()}", good.location.secret_access_key)
    with pytest.raises(SinkUnavailable):
        await closed.is_complete(file)
