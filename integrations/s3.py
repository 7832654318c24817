"""S3 access with aioboto3: one session, clients opened per use and always closed.

Endpoints, regions and keys come from the caller (a target's settings), never from the
environment, so one process can talk to several buckets. Checksums are computed only when
required: S3-compatible servers (MinIO, Ceph, older gateways) do not all accept the newer
default CRC headers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client as BotoS3Client


class S3Error(Exception):
    """An S3 request failed; the message carries the error code, never the keys."""


@dataclass(frozen=True, slots=True)
class S3Location:
    """How to reach one bucket."""

    endpoint: str | None
    region: str
    bucket: str
    access_key_id: str
    secret_access_key: str

    def __repr__(self) -> str:
        return f"S3Location(endpoint={self.endpoint!r}, bucket={self.bucket!r})"


class S3Client:
    """Small async S3 surface used by the downloader and the pre-flight checks."""

    def __init__(self, location: S3Location) -> None:
        self.location = location
        self._session = aioboto3.Session()
        self._config = AioConfig(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path"},
        )

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[BotoS3Client]:
        async with self._session.client(
            "s3",
            endpoint_url=self.location.endpoint,
            region_name=self.location.region,
            aws_access_key_id=self.location.access_key_id,
            aws_secret_access_key=self.location.secret_access_key,
            config=self._config,
        ) as client:
            yield client

    async def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> str:
        """Store ``data`` at ``key``; returns the ETag."""
        try:
            async with self._client() as s3:
                result = await s3.put_object(
                    Bucket=self.location.bucket,
                    Key=key,
                    Body=data,
                    ContentType=content_type or "application/octet-stream",
                )
        except (ClientError, BotoCoreError) as exc:
            raise S3Error(_describe(exc, f"put s3://{self.location.bucket}/{key}")) from exc
        return result["ETag"].strip('"')

    async def get_bytes(self, key: str) -> bytes:
        """The whole object at ``key``."""
        try:
            async with self._client() as s3:
                result = await s3.get_object(Bucket=self.location.bucket, Key=key)
                return await result["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise S3Error(_describe(exc, f"get s3://{self.location.bucket}/{key}")) from exc

    async def delete(self, key: str) -> None:
        """Remove the object at ``key`` (absent objects are not an error)."""
        try:
            async with self._client() as s3:
                await s3.delete_object(Bucket=self.location.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise S3Error(_describe(exc, f"delete s3://{self.location.bucket}/{key}")) from exc

    async def check_bucket(self) -> None:
        """Raise :class:`S3Error` unless the bucket exists and these keys may read it."""
        try:
            async with self._client() as s3:
                await s3.head_bucket(Bucket=self.location.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise S3Error(_describe(exc, f"bucket {self.location.bucket}")) from exc


def _describe(exc: ClientError | BotoCoreError, what: str) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "error")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{what}: {code} (HTTP {status})"
    return f"{what}: {type(exc).__name__}"
