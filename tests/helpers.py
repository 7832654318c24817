"""Small helpers shared by the download tests: hub files as WeightsFile, fresh buckets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aioboto3
import httpx
from aiobotocore.config import AioConfig

from controllers.transfer.locations import organization_area
from integrations.addresses import OutboundPolicy
from integrations.s3 import S3Client, S3Location
from storage.documents import WeightsFile
from testbed.repos import HubRepo
from testbed.servers import S3Server
from tests.graphql_client import run

LOOPBACK_ALLOWED = OutboundPolicy.of(networks=["127.0.0.0/8"])
"""Every test server listens on 127.0.0.1, which the default outbound policy refuses."""


def weights_area(roots: list[Path], organization: str = "org-a") -> Path:
    """The organisation's area under the first allowed root: where its LOCAL weights may go."""
    return organization_area(roots[0], organization)


async def bucket_on(server: S3Server) -> S3Client:
    name = f"w-{uuid.uuid4().hex[:8]}"
    async with aioboto3.Session().client(
        "s3",
        endpoint_url=server.endpoint,
        region_name=server.region,
        aws_access_key_id=server.access_key_id,
        aws_secret_access_key=server.secret_access_key,
        config=AioConfig(s3={"addressing_style": "path"}),
    ) as s3:
        await s3.create_bucket(Bucket=name)
    return S3Client(
        S3Location(
            endpoint=server.endpoint,
            region=server.region,
            bucket=name,
            access_key_id=server.access_key_id,
            secret_access_key=server.secret_access_key,
        ),
        outbound=LOOPBACK_ALLOWED,
    )


def files_of(repo: HubRepo) -> list[WeightsFile]:
    """What a Weights document records about a hub repo's files."""
    return [
        WeightsFile(path=f.path, size=f.size, sha256=f.sha256 if f.lfs else None, blob_id=f.blob_id)
        for f in repo.files
    ]


async def wait_inference(
    graphql_url: str, token: str, inference_id: str, phases: set[str], *, timeout: float = 60
) -> dict[str, Any]:
    """Poll ``inference(id)`` until its phase is one of ``phases`` (fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        data = await run(graphql_url, "Inference", {"id": inference_id}, token=token)
        inference: dict[str, Any] = data["inference"]
        if inference["phase"] in phases:
            return inference
        assert time.monotonic() < deadline, f"timed out waiting for {phases}; last {inference}"
        await asyncio.sleep(0.1)


async def first_seen(
    probe: Callable[[], Awaitable[bool]], *, timeout: float, interval: float = 0.02
) -> float | None:
    """``time.monotonic()`` when ``probe`` first answered True, polled every ``interval``;
    None when it had not within ``timeout`` (measuring, not waiting: the caller asserts)."""
    deadline = time.monotonic() + timeout
    while True:
        if await probe():
            return time.monotonic()
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(interval)


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid``, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@contextmanager
def serve_process(
    tmp_path: Path, port: int, settings: dict[str, str], *, ready_timeout: float = 60
) -> Iterator[subprocess.Popen[bytes]]:
    """``modelplane serve`` in its own process (its RSS readable from /proc), configured by
    ``settings`` (``MODELPLANE_*`` variables; this process's own are not inherited), until
    ``/readyz`` answers (within ``ready_timeout``); stopped with SIGTERM (then killed) at the
    end. Its output goes to ``serve.log`` in ``tmp_path``: a pipe nobody reads would fill and
    block the server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPLANE_")}
    if "MODELPLANE_TESTBED_CACHE" in os.environ:
        env["MODELPLANE_TESTBED_CACHE"] = os.environ["MODELPLANE_TESTBED_CACHE"]
    env |= {"MODELPLANE_LOG_LEVEL": "WARNING", **settings, "MODELPLANE_PORT": str(port)}
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelplane", "serve"], env=env, stdout=output, stderr=output
        )
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            assert process.poll() is None, log.read_text(errors="replace")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "modelplane serve did not come up"
            time.sleep(0.2)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
