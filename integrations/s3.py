"""S3 access with aioboto3: one session, clients opened per use and always closed, or one
client kept open for the calls made inside :meth:`S3Client.connected` (a download: creating a
client, its connector and its TLS context costs far more than a part upload's request).

Endpoints, regions and keys come from the caller (a target's settings), never from the
environment, so one process can talk to several buckets. An endpoint is user-given: every
connection of the client's pool resolves its name with the outbound policy's
:class:`~integrations.addresses.GuardedResolver` (no DNS cache), and an endpoint that is a
literal address is checked whenever a client is opened, so signed requests never reach an
address the policy refuses (:mod:`integrations.addresses`). Checksums are computed only when
required: S3-compatible servers (MinIO, Ceph, older gateways) do not all accept the newer
default CRC headers. Part uploads carry a Content-MD5 the caller computed (in a worker thread)
instead of botocore hashing the body for its signature on the event loop: S3 checks the MD5.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from integrations.addresses import AddressRefused, OutboundPolicy, connector_args

if TYPE_CHECKING:
    import aioboto3
    from types_aiobotocore_s3 import S3Client as BotoS3Client
    from types_aiobotocore_s3.type_defs import ObjectIdentifierTypeDef


PERMANENT_CODES = frozenset({"NoSuchBucket", "InvalidBucketName", "AccessDenied"})
"""S3 error codes no retry can change."""


class S3Error(Exception):
    """An S3 request failed; the message carries the error code, never the keys.

    ``status`` and ``code`` are what the server answered (None: no answer); ``temporary``
    says, as data, whether the same request may succeed later. Only what a person must fix is
    not: credentials refused (401, 403: AccessDenied, a bad signature or key id), a bucket
    that does not exist, an endpoint the outbound policy refuses. Anything else may pass: no
    answer, 5xx, and the 400s of a multipart upload whose parts a restarting server lost
    (``InvalidPart``: the sink lists the parts again and sends the missing ones); callers
    turn that into their own retry or failure."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        refused: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.refused = refused

    @property
    def temporary(self) -> bool:
        """Worth trying again unchanged."""
        return not (self.refused or self.status in (401, 403) or self.code in PERMANENT_CODES)


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

    def __init__(self, location: S3Location, *, outbound: OutboundPolicy | None = None) -> None:
        import aioboto3  # noqa: PLC0415  lazy: a process that never talks to S3 starts faster
        from aiobotocore.config import AioConfig  # noqa: PLC0415

        self.location = location
        self._outbound = outbound or OutboundPolicy()
        self._session: aioboto3.Session = aioboto3.Session()
        self._config = AioConfig(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 3, "mode": "standard"},
            # botocore's client-side check would refuse a memoryview body; S3 checks requests.
            parameter_validation=False,
            s3={"addressing_style": "path", "payload_signing_enabled": False},
            connector_args=connector_args(self._outbound),
        )
        self._shared: BotoS3Client | None = None

    @asynccontextmanager
    async def connected(self) -> AsyncIterator[None]:
        """Share one client (and its pool of connections) among the calls made inside."""
        if self._shared is not None:
            yield
            return
        async with self._open() as client:
            self._shared = client
            try:
                yield
            finally:
                self._shared = None

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[BotoS3Client]:
        if self._shared is not None:
            yield self._shared
            return
        async with self._open() as client:
            yield client

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[BotoS3Client]:
        endpoint_host = urlsplit(self.location.endpoint or "").hostname
        if endpoint_host:
            try:
                self._outbound.check_host(endpoint_host)
            except AddressRefused as exc:
                raise S3Error(
                    f"the endpoint {endpoint_host} {exc} (refused by the outbound address policy)",
                    refused=True,
                ) from None
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
        with _s3_errors(f"put s3://{self.location.bucket}/{key}"):
            async with self._client() as s3:
                result = await s3.put_object(
                    Bucket=self.location.bucket,
                    Key=key,
                    Body=data,
                    ContentMD5=base64.b64encode(
                        hashlib.md5(data, usedforsecurity=False).digest()
                    ).decode(),
                    ContentType=content_type or "application/octet-stream",
                )
        return result["ETag"].strip('"')

    async def get_bytes(self, key: str) -> bytes:
        """The whole object at ``key``."""
        with _s3_errors(f"get s3://{self.location.bucket}/{key}"):
            async with self._client() as s3:
                result = await s3.get_object(Bucket=self.location.bucket, Key=key)
                return await result["Body"].read()

    async def delete(self, key: str) -> None:
        """Remove the object at ``key`` (absent objects are not an error)."""
        with _s3_errors(f"delete s3://{self.location.bucket}/{key}"):
            async with self._client() as s3:
                await s3.delete_object(Bucket=self.location.bucket, Key=key)

    async def check_bucket(self) -> None:
        """Raise :class:`S3Error` unless the bucket exists and these keys may read it."""
        with _s3_errors(f"bucket {self.location.bucket}"):
            async with self._client() as s3:
                await s3.head_bucket(Bucket=self.location.bucket)

    async def head(self, key: str) -> tuple[int, dict[str, str]] | None:
        """Size and user metadata of the object at ``key``; None when absent."""
        try:
            async with self._client() as s3:
                result = await s3.head_object(Bucket=self.location.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise s3_error(exc, f"head s3://{self.location.bucket}/{key}") from exc
        except BotoCoreError as exc:
            raise s3_error(exc, f"head s3://{self.location.bucket}/{key}") from exc
        return int(result["ContentLength"]), dict(result.get("Metadata", {}))

    async def start_upload(self, key: str, *, metadata: dict[str, str]) -> str:
        """Begin a multipart upload; returns its id."""
        with _s3_errors(f"start upload of {key}"):
            async with self._client() as s3:
                result = await s3.create_multipart_upload(
                    Bucket=self.location.bucket, Key=key, Metadata=metadata
                )
        return result["UploadId"]

    async def upload_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        data: bytes | bytearray | memoryview,
        *,
        md5: bytes,
    ) -> str:
        """Upload part ``number`` (1-based) whose MD5 digest is ``md5``; returns its ETag."""
        with _s3_errors(f"upload part {number} of {key}"):
            async with self._client() as s3:
                result = await s3.upload_part(
                    Bucket=self.location.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data,  # type: ignore[arg-type]  # any buffer (validation off)
                    ContentMD5=base64.b64encode(md5).decode(),
                )
        return result["ETag"]

    async def list_parts(self, key: str, upload_id: str) -> dict[int, tuple[int, str]] | None:
        """Uploaded parts by number -> (size, ETag); None when the upload no longer exists."""
        parts: dict[int, tuple[int, str]] = {}
        marker = 0
        try:
            async with self._client() as s3:
                while True:
                    result = await s3.list_parts(
                        Bucket=self.location.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumberMarker=marker,
                    )
                    for part in result.get("Parts", []):
                        parts[part["PartNumber"]] = (part["Size"], part["ETag"])
                    if not result.get("IsTruncated"):
                        return parts
                    marker = result["NextPartNumberMarker"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                return None
            raise s3_error(exc, f"list parts of {key}") from exc
        except BotoCoreError as exc:
            raise s3_error(exc, f"list parts of {key}") from exc

    async def complete_upload(
        self, key: str, upload_id: str, parts: dict[int, tuple[int, str]]
    ) -> None:
        """Assemble the parts into the object."""
        with _s3_errors(f"complete upload of {key}"):
            async with self._client() as s3:
                await s3.complete_multipart_upload(
                    Bucket=self.location.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={
                        "Parts": [
                            {"PartNumber": n, "ETag": etag}
                            for n, (_, etag) in sorted(parts.items())
                        ]
                    },
                )

    async def abort_upload(self, key: str, upload_id: str) -> None:
        """Abandon a multipart upload (its parts are deleted); absent uploads are fine."""
        try:
            async with self._client() as s3:
                await s3.abort_multipart_upload(
                    Bucket=self.location.bucket, Key=key, UploadId=upload_id
                )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise s3_error(exc, f"abort upload of {key}") from exc
        except BotoCoreError as exc:
            raise s3_error(exc, f"abort upload of {key}") from exc

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix/``; returns how many."""
        removed = 0
        with _s3_errors(f"delete s3://{self.location.bucket}/{prefix}"):
            async with self._client() as s3:
                paginator = s3.get_paginator("list_objects_v2")
                async for page in paginator.paginate(
                    Bucket=self.location.bucket, Prefix=prefix.rstrip("/") + "/"
                ):
                    keys: list[ObjectIdentifierTypeDef] = [
                        {"Key": item["Key"]} for item in page.get("Contents", [])
                    ]
                    if keys:
                        await s3.delete_objects(
                            Bucket=self.location.bucket, Delete={"Objects": keys}
                        )
                        removed += len(keys)
        return removed

    async def stream(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes in blocks (bounded memory)."""
        with _s3_errors(f"read s3://{self.location.bucket}/{key}"):
            async with self._client() as s3:
                result = await s3.get_object(Bucket=self.location.bucket, Key=key)
                async for block in result["Body"].iter_chunks(4 * 1024 * 1024):
                    yield block


@contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    """Turn botocore failures into :class:`S3Error` naming ``what`` (never the keys)."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise s3_error(exc, what) from exc


def s3_error(exc: ClientError | BotoCoreError, what: str) -> S3Error:
    """The :class:`S3Error` of a botocore failure, with the status the server answered."""
    status = code = None
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = exc.response.get("Error", {}).get("Code")
    return S3Error(
        _describe(exc, what), status=status, code=code, refused=_refusal_in(exc) is not None
    )


def _describe(exc: ClientError | BotoCoreError, what: str) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "error")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{what}: {code} (HTTP {status})"
    refused = _refusal_in(exc)
    if refused is not None:
        return f"{what}: the endpoint {refused} (refused by the outbound address policy)"
    return f"{what}: {type(exc).__name__}"


def _refusal_in(exc: BaseException) -> AddressRefused | None:
    """The outbound policy's refusal behind a connection error, if that is what it was."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, AddressRefused):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
