"""Outbound addresses and the upstream key, as an attacker with an editor account would try them
(issue 15: finding 7, finding 14's ``?key=`` URLs, finding 10).

Every server is real and on loopback: modelplane (FerretDB, the local hub), the OpenAI upstream
stand-in, MinIO, and a *trap*: a bare listener standing for whatever an attacker wants the
server to reach (the metadata service, a loopback admin port). modelplane runs with the default
outbound policy (loopback refused) unless a test says otherwise; DNS rebinding is simulated
with a resolver the test controls, injected into the app's policy (no server is mocked).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import httpx
import pytest

from integrations.addresses import GuardedConnector, OutboundPolicy, system_lookup
from integrations.s3 import S3Client, S3Error, S3Location
from modelplane.embedded import free_port
from storage.client import Client, Database
from storage.documents import Role
from testbed.hub import RunningHub
from testbed.openai_upstream import FakeUpstream
from testbed.servers import S3Server
from tests import helpers
from tests.conftest import RunningApp, make_settings, serve_app
from tests.graphql_client import execute, run
from tests.operations import operation
from tests.test_gateway import serve_upstream

CANARY = 'sk-outbound"canary\\0x7f'
"""The stored upstream key: a quote and a backslash, so JSON escapes it."""
ORG = "org-out"
REPO = "tiny-org/tiny-model"

LOOPBACK_HOSTS = [
    "127.0.0.1",
    "127.1",
    "2130706433",
    "0x7f000001",
    "0x7f.0.0.1",
    "0177.0.0.1",
    "127.0.0.1.",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::127.0.0.1]",
    "[64:ff9b::127.0.0.1]",
    "[2002:7f00:1::1]",
    "[::1]",
    "localhost",
    "LOCALHOST.",
]
METADATA_HOSTS = [
    "169.254.169.254",
    "[::ffff:169.254.169.254]",
    "[::ffff:a9fe:a9fe]",
    "[64:ff9b::a9fe:a9fe]",
    "[fd00:ec2::254]",
    "2852039166",
    "0xa9fea9fe",
    "0251.0376.0251.0376",
    "169.254.43518",
    "metadata.google.internal.",
    "Metadata.Google.Internal",
    "metadata",
]


@dataclass
class Trap:
    """A listener that records every connection and byte it gets, and answers 200."""

    port: int
    connections: int = 0
    received: bytearray = field(default_factory=bytearray)


@asynccontextmanager
async def trap(host: str = "127.0.0.1", port: int | None = None) -> AsyncIterator[Trap]:
    caught = Trap(port=port or free_port())

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        caught.connections += 1
        try:
            caught.received += await asyncio.wait_for(reader.read(65536), timeout=2)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, caught.port)
    try:
        yield caught
    finally:
        server.close()
        await server.wait_closed()


def editor(app: RunningApp) -> str:
    return app.token(role=Role.EDITOR, organization=ORG)


async def create_model(app: RunningApp, model_input: dict[str, Any]) -> dict[str, Any]:
    body = await execute(
        app.graphql_url, operation("CreateModel"), {"input": model_input}, token=editor(app)
    )
    assert "errors" not in body, body
    created: dict[str, Any] = body["data"]["createModel"]
    return created


def remote_input(url: str, *, name: str | None = None, token: str = CANARY) -> dict[str, Any]:
    return {
        "name": name or f"r-{uuid.uuid4().hex[:8]}",
        "displayName": "Remote",
        "source": {"url": url, "accessMode": "REMOTE_API", "token": token},
    }


def s3_input(app: RunningApp, endpoint: str, *, secret: str = CANARY) -> dict[str, Any]:
    return {
        "name": f"s-{uuid.uuid4().hex[:8]}",
        "source": {"url": REPO, "accessMode": "LOCAL"},
        "downloadTarget": {
            "s3": {
                "endpoint": endpoint,
                "bucket": "weights",
                "accessKeyId": "AKIAOUTBOUND",
                "secretAccessKey": secret,
            }
        },
    }


async def nothing_written(database: Database) -> None:
    for collection in ("models", "secrets", "weights", "inferences"):
        assert await database[collection].count_documents({}) == 0, collection


@asynccontextmanager
async def strict_app(
    tmp_path: Path,
    mongo_uri: str,
    mongo_client: Client,
    hub: RunningHub,
    *,
    outbound: OutboundPolicy | None = None,
    **overrides: Any,
) -> AsyncIterator[RunningApp]:
    """modelplane with the default outbound policy: the test settings' loopback allowance off."""
    settings = make_settings(
        tmp_path, mongo_uri, hf_endpoint=hub.endpoint, allowed_remote_networks="", **overrides
    )
    async with serve_app(settings, mongo_client, outbound=outbound) as running:
        yield running


# -- at creation ---------------------------------------------------------------------------------


async def test_every_spelling_of_metadata_and_loopback_is_refused_at_creation(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> None:
    async with (
        strict_app(tmp_path, mongo_uri, mongo_client, hub) as app,
        trap() as listener,
    ):
        refused: list[str] = []
        for host in LOOPBACK_HOSTS + METADATA_HOSTS:
            url = f"http://{host}:{listener.port}"
            for field_name, model_input in (
                ("source.url", remote_input(f"{url}/v1")),
                ("downloadTarget.s3.endpoint", s3_input(app, url)),
            ):
                created = await create_model(app, model_input)
                assert created["__typename"] == "ValidationError", (host, created)
                assert created["field"] == field_name, (host, created)
                assert CANARY not in json.dumps(created)
                refused.append(created["errorMessage"])
        await nothing_written(app.resources.database)
    assert listener.connections == 0
    assert any("metadata" in message for message in refused)
    assert any("loopback" in message for message in refused)


async def test_query_strings_and_fragments_are_refused_and_never_shown(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> None:
    leaked = "sk-in-the-query-0123456789"
    async with strict_app(tmp_path, mongo_uri, mongo_client, hub) as app:
        for url in (
            f"https://api.example.com/v1?key={leaked}",
            f"https://api.example.com/v1?api-version=1&key={leaked}",
            f"https://api.example.com/v1#key={leaked}",
            f"https://user:{leaked}@api.example.com/v1",
        ):
            created = await create_model(app, remote_input(url, token="sk-ok"))
            assert created["__typename"] == "ValidationError", created
            assert created["field"] == "source.url"
            assert leaked not in created["errorMessage"]
        created = await create_model(
            app, s3_input(app, f"https://s3.example.com/?X-Amz-Credential={leaked}")
        )
        assert created["__typename"] == "ValidationError", created
        assert created["field"] == "downloadTarget.s3.endpoint"
        await nothing_written(app.resources.database)


# -- at connection time --------------------------------------------------------------------------


async def test_literal_loopback_is_refused_by_the_connection_pool_itself() -> None:
    """What the gateway and the inference probe connect with: a URL already stored (before this
    check existed, or under a looser policy) still cannot reach loopback."""
    async with trap() as listener:
        for host in ["127.0.0.1", "[::ffff:127.0.0.1]", "0x7f.1", "127.1", "localhost"]:
            async with aiohttp.ClientSession(connector=GuardedConnector(OutboundPolicy())) as s:
                with pytest.raises(aiohttp.ClientError):
                    await s.get(
                        f"http://{host}:{listener.port}/v1/models",
                        headers={"authorization": f"Bearer {CANARY}"},
                    )
        assert listener.connections == 0
        allowed = OutboundPolicy.of(networks=["127.0.0.0/8"])
        async with (
            aiohttp.ClientSession(connector=GuardedConnector(allowed)) as session,
            session.get(f"http://127.0.0.1:{listener.port}/v1/models") as answer,
        ):
            assert answer.status == 200  # the trap does listen: the refusals were the guard
        assert listener.connections == 1


async def test_signed_s3_requests_never_reach_a_refused_endpoint(s3_server: S3Server) -> None:
    async with trap() as listener:
        for host in ["127.0.0.1", "[::ffff:127.0.0.1]", "localhost", "0x7f.1"]:
            client = S3Client(
                S3Location(
                    endpoint=f"http://{host}:{listener.port}",
                    region="us-east-1",
                    bucket="weights",
                    access_key_id="AKIAOUTBOUND",
                    secret_access_key=CANARY,
                )
            )
            with pytest.raises(S3Error, match="outbound address policy"):
                await client.check_bucket()
        assert listener.connections == 0
    bucket = await helpers.bucket_on(s3_server)  # the same client, allowed, does reach MinIO
    await bucket.check_bucket()


class Rebinding:
    """A resolver the test controls: ``name`` answers ``answer`` (changed mid-test); other
    names go to the system resolver. Records what each lookup of ``name`` answered."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.answers: list[str] = []

    async def __call__(self, host: str, port: int, family: int) -> list[tuple[int, str]]:
        if host.endswith(".rebind.test"):
            self.answers.append(self.answer)
            return [(int(socket.AF_INET), self.answer)]
        return await system_lookup(host, port, family)


async def test_dns_rebinding_to_loopback_is_refused_at_connect_time(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> None:
    """The name answers 127.0.0.2 (standing for a public address: the only one allowed) at
    creation and while the inference starts; then it answers 127.0.0.1, where the trap listens
    on the same port. The gateway's next connection is refused and the key goes nowhere."""
    rebinding = Rebinding("127.0.0.2")
    policy = OutboundPolicy.of(networks=["127.0.0.2/32"], lookup=rebinding)
    port = free_port()
    async with (
        trap("127.0.0.1", port) as listener,
        serve_upstream(FakeUpstream(), host="127.0.0.2", port=port) as upstream,
        strict_app(tmp_path, mongo_uri, mongo_client, hub, outbound=policy) as app,
    ):
        created = await create_model(
            app, remote_input(f"http://api.rebind.test:{port}/tenant/v1", name="rebound")
        )
        assert created["__typename"] == "Model", created
        started = await run(
            app.graphql_url, "StartInference", {"modelId": created["id"]}, token=editor(app)
        )
        inference = started["startInference"]["inference"]
        running = await helpers.wait_inference(
            app.graphql_url, editor(app), inference["id"], {"RUNNING", "FAILED"}, timeout=10
        )
        assert running["phase"] == "RUNNING", running
        assert [s.path for s in upstream.fake.seen] == ["/tenant/v1/models"]

        rebinding.answer = "127.0.0.1"
        async with httpx.AsyncClient(timeout=15) as http:
            answer = await http.post(
                f"{app.base_url}/v1/chat/completions",
                json={"model": "rebound", "messages": [], "behaviour": "echo-auth"},
                headers={"Authorization": f"Bearer {editor(app)}"},
            )
        assert answer.status_code == 502, answer.text
        assert "outbound address policy" in answer.json()["error"]["message"]
        assert "127.0.0.1" in rebinding.answers
        assert CANARY not in answer.text
    assert listener.connections == 0
    assert [s.path for s in upstream.fake.seen] == ["/tenant/v1/models"]


async def test_dns_rebinding_of_an_s3_endpoint_is_refused_when_the_download_connects(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> None:
    """A name answering loopback at creation is refused then; answering 127.0.0.2 at creation
    and loopback when the download connects, it is refused at the connection: no signed S3
    request reaches the trap."""
    rebinding = Rebinding("127.0.0.1")
    policy = OutboundPolicy.of(networks=["127.0.0.2/32"], lookup=rebinding)
    async with (
        trap() as listener,
        strict_app(
            tmp_path, mongo_uri, mongo_client, hub, outbound=policy, download_max_retries=0
        ) as app,
    ):
        model_input = s3_input(app, f"http://minio.rebind.test:{listener.port}")
        created = await create_model(app, model_input)
        assert created["__typename"] == "ValidationError", created  # resolved at creation
        assert created["field"] == "downloadTarget.s3.endpoint"
        assert "loopback" in created["errorMessage"]
        await nothing_written(app.resources.database)

        rebinding.answer = "127.0.0.2"
        created = await create_model(app, model_input)
        assert created["__typename"] == "Model", created
        asked_at_creation = len(rebinding.answers)
        rebinding.answer = "127.0.0.1"  # from now on: the download's connections
        failed = await _wait_model(app, created["id"], {"FAILED"})
        assert "127.0.0.1" in rebinding.answers[asked_at_creation:], failed  # it did connect
        assert "loopback" in failed["message"], failed
        assert CANARY not in json.dumps(failed)
    assert listener.connections == 0


async def _wait_model(app: RunningApp, model_id: str, phases: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        data = await run(app.graphql_url, "Model", {"id": model_id}, token=editor(app))
        model: dict[str, Any] = data["model"]
        if model["phase"] in phases:
            return model
        assert time.monotonic() < deadline, f"timed out waiting for {phases}; last {model}"
        await asyncio.sleep(0.1)


async def test_a_stored_loopback_url_is_refused_once_the_allowance_is_gone(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> None:
    """Created while loopback was allowed (or before this check existed): after a restart
    without the allowance, neither the probe nor the gateway reaches it with the key."""
    async with serve_upstream(FakeUpstream()) as upstream:
        settings = make_settings(tmp_path, mongo_uri, hf_endpoint=hub.endpoint)
        async with serve_app(settings, mongo_client, keep_database=True) as app:
            created = await create_model(
                app, remote_input(upstream.endpoint("stored"), name="stored")
            )
            assert created["__typename"] == "Model", created
            started = await run(
                app.graphql_url, "StartInference", {"modelId": created["id"]}, token=editor(app)
            )
            inference_id = started["startInference"]["inference"]["id"]
            await helpers.wait_inference(app.graphql_url, editor(app), inference_id, {"RUNNING"})
        seen_before = len(upstream.fake.seen)
        strict = settings.model_copy(update={"allowed_remote_networks": []})
        async with serve_app(strict, mongo_client) as app:
            async with httpx.AsyncClient(timeout=15) as http:
                answer = await http.post(
                    f"{app.base_url}/v1/chat/completions",
                    json={"model": "stored", "messages": []},
                    headers={"Authorization": f"Bearer {editor(app)}"},
                )
            assert answer.status_code in {502, 409}, answer.text
            refused = await helpers.wait_inference(
                app.graphql_url, editor(app), inference_id, {"PENDING", "FAILED"}
            )
            assert refused["reason"] == "AddressRefused", refused
            assert "loopback" in refused["message"]
        assert len(upstream.fake.seen) == seen_before


# -- the key in the upstream's answers -----------------------------------------------------------

KEYS = ['sk-"quote"d', "sk-back\\slash", "sk-ünï€😀", "sk-a/b/c"]


def forms_of(key: str) -> list[bytes]:
    """Every spelling of ``key`` an answer could carry and the redaction must have removed."""
    latin1 = key.encode().decode("latin-1")
    texts = {
        key,
        json.dumps(key)[1:-1],
        json.dumps(key, ensure_ascii=False)[1:-1],
        json.dumps(json.dumps(key))[1:-1],
        quote(key, safe=""),
        latin1,
        json.dumps(latin1)[1:-1],
        json.dumps(json.dumps(latin1))[1:-1],
        quote(latin1, safe=""),
    }
    return [text.encode() for text in texts]


async def test_the_upstream_key_never_comes_back_in_any_encoding(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> None:
    settings = make_settings(tmp_path, mongo_uri, hf_endpoint=hub.endpoint)  # loopback allowed
    async with (
        serve_upstream(FakeUpstream()) as upstream,
        serve_app(settings, mongo_client) as app,
    ):
        for number, key in enumerate(KEYS):
            name = f"echo-{number}"
            created = await create_model(
                app, remote_input(upstream.endpoint(name), name=name, token=key)
            )
            assert created["__typename"] == "Model", created
            started = await run(
                app.graphql_url, "StartInference", {"modelId": created["id"]}, token=editor(app)
            )
            inference_id = started["startInference"]["inference"]["id"]
            await helpers.wait_inference(app.graphql_url, editor(app), inference_id, {"RUNNING"})
            answers = await _echoes(app, name)
            received = {s.authorization for s in upstream.fake.seen if s.tenant == name}
            assert received == {f"Bearer {key}".encode().decode("latin-1")}, received
            for behaviour, body in answers.items():
                assert b"[REDACTED]" in body, (key, behaviour, body)
                found = [form for form in forms_of(key) if form in body]
                assert not found, (key, behaviour, found, body)


async def _echoes(app: RunningApp, model: str) -> dict[str, bytes]:
    """The gateway's answers to requests whose upstream echoes the key (status + body)."""
    answers: dict[str, bytes] = {}
    auth = {"Authorization": f"Bearer {editor(app)}"}
    async with httpx.AsyncClient(base_url=f"{app.base_url}/v1", timeout=15) as http:
        for behaviour, stream in (
            ("echo-auth", False),
            ("echo-auth", True),
            ("reject-echo", False),
            ("reject-echo-encoded", False),
            ("reject-echo-html", False),
        ):
            body = {"model": model, "messages": [], "behaviour": behaviour, "stream": stream}
            answer = await http.post("/chat/completions", json=body, headers=auth)
            headers = "".join(f"{k}: {v}\n" for k, v in answer.headers.items())
            answers[f"{behaviour}{'-stream' if stream else ''}"] = headers.encode() + (
                answer.content
            )
    return answers
