"""Small helpers shared by the download tests: hub files as WeightsFile, fresh buckets."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import aioboto3
from aiobotocore.config import AioConfig

from controllers.locations import organization_area
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
