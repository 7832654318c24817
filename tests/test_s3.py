"""The S3 client against a real MinIO server."""

from __future__ import annotations

import hashlib
import os
import uuid

import pytest

from integrations.s3 import S3Client, S3Error, S3Location
from testbed.servers import S3Server
from tests.helpers import LOOPBACK_ALLOWED, bucket_on


async def make_bucket(server: S3Server) -> str:
    return (await bucket_on(server)).location.bucket


def location(server: S3Server, bucket: str, *, secret: str | None = None) -> S3Location:
    return S3Location(
        endpoint=server.endpoint,
        region=server.region,
        bucket=bucket,
        access_key_id=server.access_key_id,
        secret_access_key=secret or server.secret_access_key,
    )


async def test_put_and_get_an_object(s3_server: S3Server) -> None:
    bucket = await make_bucket(s3_server)
    client = S3Client(location(s3_server, bucket), outbound=LOOPBACK_ALLOWED)
    data = os.urandom(300_000)
    etag = await client.put_bytes("models/tiny/config.json", data)
    assert etag == hashlib.md5(data).hexdigest()  # noqa: S324  single-part ETags are MD5
    assert await client.get_bytes("models/tiny/config.json") == data
    await client.check_bucket()
    await client.delete("models/tiny/config.json")
    with pytest.raises(S3Error, match="NoSuchKey"):
        await client.get_bytes("models/tiny/config.json")


async def test_missing_bucket_is_reported_without_credentials(s3_server: S3Server) -> None:
    client = S3Client(location(s3_server, "no-such-bucket"), outbound=LOOPBACK_ALLOWED)
    with pytest.raises(S3Error) as caught:
        await client.check_bucket()
    assert "no-such-bucket" in str(caught.value)
    assert s3_server.secret_access_key not in str(caught.value)


async def test_wrong_secret_is_refused_and_not_echoed(s3_server: S3Server) -> None:
    bucket = await make_bucket(s3_server)
    wrong = "wrong-secret-" + uuid.uuid4().hex
    client = S3Client(location(s3_server, bucket, secret=wrong), outbound=LOOPBACK_ALLOWED)
    with pytest.raises(S3Error) as caught:
        await client.put_bytes("x", b"x")
    assert "SignatureDoesNotMatch" in str(caught.value)
    assert wrong not in str(caught.value)
    assert wrong not in repr(client.location)
