"""The OpenAI-compatible gateway (issue #7) against real servers on loopback.

modelplane runs with FerretDB; the upstream is ``testbed.openai_upstream`` served by uvicorn;
the caller is the official ``openai`` client (or plain httpx where raw bytes matter). Model and
inference documents are written with the repositories, as the inference controller will write
them: a RUNNING inference whose ``endpoint`` is the upstream's ``/<tenant>/v1``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from openai import AsyncOpenAI

from modelplane.embedded import free_port
from modelplane.logs import redact
from storage.client import Client
from storage.documents import (
    AccessMode,
    InferenceDocument,
    InferencePhase,
    InferenceSpec,
    ModelDocument,
    ModelPhase,
    ModelSource,
    Role,
    new_id,
)
from storage.repositories import InferenceRepository, ModelRepository
from testbed.hub import RunningHub
from testbed.openai_upstream import FakeUpstream
from tests.conftest import RunningApp, make_settings, serve_app
from tests.graphql_client import execute, run
from tests.operations import operation

CANARY = "sk-canaryUpstreamKeyDoNotLeak0x7f3a"
ORG_A = "org-a"
ORG_B = "org-b"


@dataclass
class Upstream:
    """The fake upstream, listening."""

    fake: FakeUpstream
    base_url: str

    def endpoint(self, tenant: str) -> str:
        return f"{self.base_url}/{tenant}/v1"


@asynccontextmanager
async def serve_upstream(fake: FakeUpstream) -> AsyncIterator[Upstream]:
    port = free_port()
    config = uvicorn.Config(
        fake.app(), host="127.0.0.1", port=port, log_config=None, lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="fake-openai-upstream")
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield Upstream(fake=fake, base_url=f"http://127.0.0.1:{port}")
    finally:
        fake.gate.set()
        server.should_exit = True
        await task


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    async with serve_upstream(FakeUpstream(slow_seconds=3.0)) as running:
        yield running


@asynccontextmanager
async def gateway_app(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub, **overrides: Any
) -> AsyncIterator[RunningApp]:
    # No controllers: serve() stores models and inferences as the controller would, and a
    # running inference controller whose first resync (on winning its lease) came after
    # those writes reconciled the LOCAL model's inference to FAILED ("no weights to serve").
    settings = make_settings(
        tmp_path, mongo_uri, hf_endpoint=hub.endpoint, run_controllers=False, **overrides
    )
    async with serve_app(settings, mongo_client) as running:
        yield running


@pytest.fixture
async def app(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> AsyncIterator[RunningApp]:
    async with gateway_app(tmp_path, mongo_uri, mongo_client, hub) as running:
        yield running


async def serve(
    app: RunningApp,
    *,
    organization: str,
    name: str,
    endpoint: str | None,
    phase: InferencePhase = InferencePhase.RUNNING,
    enabled: bool = True,
    reason: str | None = None,
    message: str | None = None,
    timeout: float | None = None,
    model: ModelDocument | None = None,
) -> InferenceDocument:
    """A model (LOCAL, unless given) and its inference, as the controller would store them."""
    database = app.resources.database
    if model is None:
        model = ModelDocument(
            id=new_id("model"),
            organization_id=organization,
            name=name,
            name_key=name,
            display_name=name,
            source=ModelSource(url=f"test-org/{name}", access_mode=AccessMode.LOCAL),
            phase=ModelPhase.READY,
        )
        await ModelRepository(database).insert(model)
    remote = model.source.access_mode is AccessMode.REMOTE_API
    inference = InferenceDocument(
        id=new_id("inf"),
        organization_id=organization,
        model_id=model.id,
        model_name=model.name,
        name=f"inf-{model.id}",
        active_key=model.id,
        enabled=enabled,
        spec=InferenceSpec(engine=None if remote else "VLLM", upstream_timeout_seconds=timeout),
        phase=phase,
        reason=reason,
        message=message,
        endpoint=endpoint,
    )
    await InferenceRepository(database).insert(inference)
    return inference


async def create_key(
    app: RunningApp, *, organization: str = ORG_A, role: str = "EDITOR", name: str = "ci"
) -> dict[str, Any]:
    token = app.token(role=Role.ADMIN, organization=organization)
    data = await run(app.graphql_url, "CreateApiKey", {"name": name, "role": role}, token=token)
    created: dict[str, Any] = data["createApiKey"]
    assert created["__typename"] == "CreatedApiKey", created
    return created


def client(app: RunningApp, key: str, **options: Any) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url=f"{app.base_url}/v1", api_key=key, **{"max_retries": 0, "timeout": 15, **options}
    )


async def metrics_text(app: RunningApp) -> str:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{app.base_url}/metrics")).text


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        sample, value = line.rsplit(" ", 1)
        if all(f'{key}="{val}"' in sample for key, val in labels.items()):
            return float(value)
    return 0.0


# -- routing and the happy paths ---------------------------------------------------------------


async def test_models_lists_only_running_models_of_the_callers_organisation(
    app: RunningApp, upstream: Upstream
) -> None:
    await serve(app, organization=ORG_A, name="alpha", endpoint=upstream.endpoint("a"))
    await serve(app, organization=ORG_A, name="zeta", endpoint=upstream.endpoint("a"))
    await serve(app, organization=ORG_A, name="beta", endpoint=None, phase=InferencePhase.CREATING)
    await serve(
        app, organization=ORG_A, name="gamma", endpoint=upstream.endpoint("a"), enabled=False
    )
    await serve(app, organization=ORG_B, name="other", endpoint=upstream.endpoint("b"))
    key = (await create_key(app, role="VIEWER"))["key"]

    async with client(app, key) as caller:
        listed = [model.id async for model in caller.models.list()]
        assert listed == ["alpha", "zeta"]
        alpha = await caller.models.retrieve("alpha")
        assert alpha.owned_by == ORG_A
        with pytest.raises(openai.NotFoundError):
            await caller.models.retrieve("other")
    jwt = app.token(role=Role.VIEWER, organization=ORG_B)
    async with client(app, jwt) as caller:
        assert [model.id async for model in caller.models.list()] == ["other"]


async def test_chat_completion_with_an_api_key_and_with_a_token(
    app: RunningApp, upstream: Upstream
) -> None:
    await serve(app, organization=ORG_A, name="alpha", endpoint=upstream.endpoint("a"))
    key = (await create_key(app))["key"]
    for credential in (key, app.token(role=Role.VIEWER, organization=ORG_A)):
        async with client(app, credential) as caller:
            answer = await caller.chat.completions.create(
                model="alpha", messages=[{"role": "user", "content": "hi"}]
            )
        assert answer.choices[0].message.content == "hello from a"
        assert answer.usage is not None
        assert answer.usage.prompt_tokens == 7
    seen = upstream.fake.seen
    assert [s.path for s in seen] == ["/a/v1/chat/completions"] * 2
    # Neither the caller's key nor its token goes upstream; a local engine gets no credential.
    assert all(s.authorization is None for s in seen)
    assert all(s.body["model"] == "alpha" for s in seen)
    assert all(s.headers.get("x-request-id") for s in seen)

    text = await metrics_text(app)
    labels = {"organization": ORG_A, "model": "alpha", "endpoint": "chat/completions"}
    assert metric(text, "modelplane_gateway_requests_total", **labels, status="200") == 2
    assert metric(text, "modelplane_gateway_request_duration_seconds_count", **labels) == 2
    tokens = {"organization": ORG_A, "model": "alpha"}
    assert metric(text, "modelplane_gateway_tokens_total", **tokens, direction="input") == 14
    assert metric(text, "modelplane_gateway_tokens_total", **tokens, direction="output") == 6


async def test_streamed_chunks_reach_the_client_before_the_upstream_sends_the_rest(
    app: RunningApp, upstream: Upstream
) -> None:
    await serve(app, organization=ORG_A, name="alpha", endpoint=upstream.endpoint("a"))
    key = (await create_key(app))["key"]
    async with client(app, key) as caller:
        stream = await caller.chat.completions.create(
            model="alpha",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"behaviour": "gated"},
        )
        pieces: list[str] = []
        async with stream:
            iterator = stream.__aiter__()
            # The upstream holds the rest of its answer until the gate opens: the first chunk
            # can only arrive here if the gateway passed it on without waiting for more.
            first = await asyncio.wait_for(iterator.__anext__(), timeout=5)
            pieces.append(first.choices[0].delta.content or "")
            assert not upstream.fake.gate.is_set()
            upstream.fake.gate.set()
            usage = None
            async for chunk in iterator:
                if chunk.choices:
                    pieces.append(chunk.choices[0].delta.content or "")
                if chunk.usage is not None:
                    usage = chunk.usage
    assert "".join(pieces) == "w0 w1 w2 w3 w4 "
    assert usage is not None
    assert usage.completion_tokens == 5
    text = await metrics_text(app)
    tokens = {"organization": ORG_A, "model": "alpha"}
    assert metric(text, "modelplane_gateway_tokens_total", **tokens, direction="output") == 5
    first_byte = {"organization": ORG_A, "model": "alpha", "endpoint": "chat/completions"}
    assert metric(text, "modelplane_gateway_upstream_first_byte_seconds_count", **first_byte) == 1


async def test_completions_and_embeddings(app: RunningApp, upstream: Upstream) -> None:
    await serve(app, organization=ORG_A, name="alpha", endpoint=upstream.endpoint("a"))
    key = (await create_key(app))["key"]
    async with client(app, key) as caller:
        completion = await caller.completions.create(model="alpha", prompt="once upon")
        assert completion.choices[0].text == "done"
        embedded = await caller.embeddings.create(
            model="alpha", input=["one", "two"], encoding_format="float"
        )
        assert [item.embedding for item in embedded.data] == [[0.25, -0.5, 0.0], [0.25, -0.5, 1.0]]
    assert [s.path for s in upstream.fake.seen] == ["/a/v1/completions", "/a/v1/embeddings"]
    text = await metrics_text(app)
    tokens = {"organization": ORG_A, "model": "alpha"}
    assert metric(text, "modelplane_gateway_tokens_total", **tokens, direction="input") == 4 + 4


# -- errors -----------------------------------------------------------------------------------


async def test_unknown_model_is_404_and_a_model_not_running_is_409_with_its_phase(
    app: RunningApp, upstream: Upstream
) -> None:
    await serve(
        app,
        organization=ORG_A,
        name="warming",
        endpoint=None,
        phase=InferencePhase.CREATING,
        reason="ImagePull",
        message="pulling vllm/vllm-openai",
    )
    await serve(
        app, organization=ORG_A, name="stopped", endpoint=upstream.endpoint("a"), enabled=False
    )
    key = (await create_key(app))["key"]
    async with client(app, key) as caller:
        with pytest.raises(openai.NotFoundError) as missing:
            await caller.chat.completions.create(model="nope", messages=[])
        assert missing.value.code == "model_not_found"
        assert missing.value.body == {
            "message": "The model `nope` does not exist",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
        with pytest.raises(openai.ConflictError) as warming:
            await caller.chat.completions.create(model="warming", messages=[])
        assert warming.value.code == "model_not_running"
        body = warming.value.body
        assert isinstance(body, dict)
        assert body["phase"] == "CREATING"
        assert body["reason"] == "ImagePull"
        assert "CREATING" in body["message"]
        assert "pulling vllm/vllm-openai" in body["message"]
        with pytest.raises(openai.ConflictError) as stopped:
            await caller.embeddings.create(model="stopped", input="x")
        assert isinstance(stopped.value.body, dict)
        assert stopped.value.body["phase"] == "STOPPED"
    assert upstream.fake.seen == []

    async with httpx.AsyncClient(base_url=f"{app.base_url}/v1") as http:
        auth = {"Authorization": f"Bearer {key}"}
        for bad, message in (
            (b"not json", "not valid JSON"),
            (b"[1, 2]", "JSON object"),
            (b'{"messages": []}', "`model` is required"),
        ):
            response = await http.post("/chat/completions", content=bad, headers=auth)
            assert response.status_code == 400
            assert message in response.json()["error"]["message"]


async def test_slow_upstream_is_504_after_the_models_own_timeout(
    app: RunningApp, upstream: Upstream
) -> None:
    await serve(app, organization=ORG_A, name="quick", endpoint=upstream.endpoint("a"), timeout=0.3)
    key = (await create_key(app))["key"]
    async with client(app, key) as caller:
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as timed_out:
            await caller.chat.completions.create(
                model="quick", messages=[], extra_body={"behaviour": "slow"}
            )
        assert timed_out.value.status_code == 504
        assert timed_out.value.code == "upstream_timeout"
        assert time.monotonic() - started < 2.5  # the model's 0.3 s, not the 300 s default

        # Mid-stream, the headers are gone already: the stream ends with an error event.
        stream = await caller.chat.completions.create(
            model="quick", messages=[], stream=True, extra_body={"behaviour": "stall"}
        )
        with pytest.raises(openai.APIError, match=r"sent nothing for 0\.3 s"):
            async for _chunk in stream:
                pass
    text = await metrics_text(app)
    labels = {"organization": ORG_A, "model": "quick", "kind": "timeout"}
    assert metric(text, "modelplane_gateway_upstream_errors_total", **labels) == 2


async def test_upstream_errors_pass_through_with_their_status(
    app: RunningApp, upstream: Upstream
) -> None:
    await serve(app, organization=ORG_A, name="alpha", endpoint=upstream.endpoint("a"))
    key = (await create_key(app))["key"]
    async with client(app, key) as caller:
        with pytest.raises(openai.InternalServerError) as failed:
            await caller.chat.completions.create(
                model="alpha", messages=[], extra_body={"behaviour": "fail"}
            )
        assert failed.value.status_code == 500
        assert failed.value.body == {
            "message": "boom",
            "type": "server_error",
            "param": None,
            "code": None,
        }
        with pytest.raises(openai.APIStatusError) as html:
            await caller.completions.create(
                model="alpha", prompt="x", extra_body={"behaviour": "fail-text"}
            )
        assert html.value.status_code == 502
        assert html.value.code == "upstream_error"
        assert "<html>bad gateway</html>" in html.value.message

        # The upstream drops the connection mid-stream: the client hears about it.
        stream = await caller.chat.completions.create(
            model="alpha", messages=[], stream=True, extra_body={"behaviour": "break"}
        )
        with pytest.raises(openai.APIError, match="broke off the stream"):
            async for _chunk in stream:
                pass
    text = await metrics_text(app)
    labels = {"organization": ORG_A, "model": "alpha"}
    assert metric(text, "modelplane_gateway_upstream_errors_total", **labels, kind="status") == 2
    assert metric(text, "modelplane_gateway_upstream_errors_total", **labels, kind="broken") == 1
    assert (
        metric(
            text,
            "modelplane_gateway_requests_total",
            **labels,
            endpoint="chat/completions",
            status="500",
        )
        == 1
    )


async def test_unreachable_upstream_is_502(app: RunningApp) -> None:
    await serve(app, organization=ORG_A, name="gone", endpoint=f"http://127.0.0.1:{free_port()}/v1")
    key = (await create_key(app))["key"]
    async with client(app, key) as caller:
        with pytest.raises(openai.APIStatusError) as unreachable:
            await caller.chat.completions.create(model="gone", messages=[])
    assert unreachable.value.status_code == 502
    assert unreachable.value.code == "upstream_unavailable"


async def test_client_disconnect_closes_the_upstream_request(
    app: RunningApp, upstream: Upstream
) -> None:
    await serve(app, organization=ORG_A, name="alpha", endpoint=upstream.endpoint("a"))
    key = (await create_key(app))["key"]
    async with client(app, key) as caller:
        stream = await caller.chat.completions.create(
            model="alpha", messages=[], stream=True, extra_body={"behaviour": "endless"}
        )
        received = 0
        async for _chunk in stream:
            received += 1
            if received == 3:
                break
        await stream.close()
    await asyncio.wait_for(upstream.fake.closed.wait(), timeout=5)
    # The stream's slot is free again and the request was counted.
    gateway = app.resources.gateway
    for _ in range(100):
        if gateway.requests_in_flight() == 0:
            break
        await asyncio.sleep(0.02)
    assert gateway.requests_in_flight() == 0
    text = await metrics_text(app)
    labels = {"organization": ORG_A, "model": "alpha", "endpoint": "chat/completions"}
    assert metric(text, "modelplane_gateway_requests_total", **labels, status="200") == 1


async def test_a_client_giving_up_before_the_answer_cancels_the_upstream_request(
    app: RunningApp, upstream: Upstream
) -> None:
    await serve(app, organization=ORG_A, name="alpha", endpoint=upstream.endpoint("a"))
    key = (await create_key(app))["key"]
    async with client(app, key, timeout=0.5) as caller:
        with pytest.raises(openai.APITimeoutError):
            await caller.chat.completions.create(
                model="alpha", messages=[], extra_body={"behaviour": "slow"}
            )
    # The upstream would answer after 3 s; it sees its connection closed long before.
    await asyncio.wait_for(upstream.fake.closed.wait(), timeout=2)
    gateway = app.resources.gateway
    for _ in range(100):
        if gateway.requests_in_flight() == 0:
            break
        await asyncio.sleep(0.02)
    assert gateway.requests_in_flight() == 0
    text = await metrics_text(app)
    labels = {"organization": ORG_A, "model": "alpha", "endpoint": "chat/completions"}
    assert metric(text, "modelplane_gateway_requests_total", **labels, status="499") == 1


# -- tenancy and credentials ------------------------------------------------------------------


async def test_a_key_of_one_organisation_cannot_reach_anothers_model(
    app: RunningApp, upstream: Upstream
) -> None:
    await serve(app, organization=ORG_A, name="chat", endpoint=upstream.endpoint("a"))
    await serve(app, organization=ORG_B, name="chat", endpoint=upstream.endpoint("b"))
    await serve(app, organization=ORG_B, name="b-only", endpoint=upstream.endpoint("b"))
    key_a = (await create_key(app, organization=ORG_A))["key"]
    key_b = (await create_key(app, organization=ORG_B))["key"]
    async with client(app, key_a) as caller:
        with pytest.raises(openai.NotFoundError):
            await caller.chat.completions.create(model="b-only", messages=[])
        answer = await caller.chat.completions.create(model="chat", messages=[])
        assert answer.choices[0].message.content == "hello from a"
    async with client(app, key_b) as caller:
        answer = await caller.chat.completions.create(model="chat", messages=[])
        assert answer.choices[0].message.content == "hello from b"
    assert [s.tenant for s in upstream.fake.seen] == ["a", "b"]


async def test_the_upstream_key_reaches_the_upstream_and_nothing_else(
    app: RunningApp, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    admin = app.token(role=Role.ADMIN, organization=ORG_A)
    created = await run(
        app.graphql_url,
        "CreateModel",
        {
            "input": {
                "name": "remote",
                "displayName": "Remote",
                "source": {
                    "url": upstream.endpoint("remote"),
                    "accessMode": "REMOTE_API",
                    "token": CANARY,
                },
            }
        },
        token=admin,
    )
    assert created["createModel"]["__typename"] == "Model", created
    model = await ModelRepository(app.resources.database).by_name(
        organization_id=ORG_A, name="remote"
    )
    assert model is not None
    assert model.secret_ref is not None
    # The inference of a REMOTE_API model: no engine, its endpoint the model's URL.
    await serve(app, organization=ORG_A, name="remote", endpoint=model.source.url, model=model)
    key = (await create_key(app))["key"]
    seen_by_client: list[str] = []
    async with httpx.AsyncClient(base_url=f"{app.base_url}/v1", timeout=15) as http:
        auth = {"Authorization": f"Bearer {key}"}

        async def call(path: str, body: dict[str, Any]) -> httpx.Response:
            response = await http.post(path, json={"model": "remote", **body}, headers=auth)
            seen_by_client.append(f"{response.status_code} {response.headers} {response.text}")
            return response

        plain = await call("/chat/completions", {"messages": []})
        assert plain.status_code == 200
        echoed = await call("/chat/completions", {"messages": [], "behaviour": "echo-auth"})
        assert echoed.json()["choices"][0]["message"]["content"] == "Bearer [REDACTED]"
        rejected = await call("/chat/completions", {"messages": [], "behaviour": "reject-echo"})
        assert rejected.status_code == 401
        assert "[REDACTED]" in rejected.json()["error"]["message"]
        streamed = await call("/chat/completions", {"messages": [], "stream": True})
        assert streamed.text.endswith("data: [DONE]\n\n")
        embedded = await call("/embeddings", {"input": "x"})
        assert embedded.status_code == 200
        listed = await http.get("/models", headers=auth)
        seen_by_client.append(listed.text)
    model_view = await run(app.graphql_url, "Model", {"id": model.id}, token=admin)
    seen_by_client.append(str(model_view))
    seen_by_client.append(await metrics_text(app))

    # The upstream got the stored key, and only as the Authorization header.
    assert len(upstream.fake.seen) == 5
    assert {s.authorization for s in upstream.fake.seen} == {f"Bearer {CANARY}"}
    assert all(CANARY not in str(s.body) for s in upstream.fake.seen)
    # ...and it never came back out: not in a body or header, not in a log record.
    assert not [text for text in seen_by_client if CANARY in text]
    assert CANARY not in caplog.text
    assert not [r for r in caplog.records if CANARY in r.getMessage() or CANARY in str(r.__dict__)]


async def test_revoked_and_bad_credentials_are_401(app: RunningApp, upstream: Upstream) -> None:
    await serve(app, organization=ORG_A, name="alpha", endpoint=upstream.endpoint("a"))
    created = await create_key(app)
    key = created["key"]
    async with client(app, key) as caller:
        await caller.chat.completions.create(model="alpha", messages=[])
    admin = app.token(role=Role.ADMIN, organization=ORG_A)
    revoked = await run(
        app.graphql_url, "RevokeApiKey", {"id": created["apiKey"]["id"]}, token=admin
    )
    assert revoked["revokeApiKey"]["revokedAt"] is not None
    for credential in (key, key[:-1] + ("A" if key[-1] != "A" else "B"), "mp_short", "garbage"):
        async with client(app, credential) as caller:
            with pytest.raises(openai.AuthenticationError) as refused:
                await caller.chat.completions.create(model="alpha", messages=[])
            assert refused.value.code == "invalid_api_key"
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{app.base_url}/v1/chat/completions", json={"model": "alpha"})
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        response = await http.get(f"{app.base_url}/v1/models")
        assert response.status_code == 401
    assert len(upstream.fake.seen) == 1


# -- limits -----------------------------------------------------------------------------------


async def test_requests_per_minute_and_concurrency_are_capped_per_key(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub, upstream: Upstream
) -> None:
    async with gateway_app(
        tmp_path, mongo_uri, mongo_client, hub, gateway_rpm=3, gateway_concurrency=2
    ) as limited:
        await serve(limited, organization=ORG_A, name="alpha", endpoint=upstream.endpoint("a"))
        key = (await create_key(limited, name="one"))["key"]
        other = (await create_key(limited, name="two"))["key"]
        async with client(limited, key) as caller:
            for _ in range(3):
                await caller.chat.completions.create(model="alpha", messages=[])
            with pytest.raises(openai.RateLimitError) as limited_rpm:
                await caller.chat.completions.create(model="alpha", messages=[])
        assert limited_rpm.value.code == "rate_limit_exceeded"
        retry_after = int(limited_rpm.value.response.headers["retry-after"])
        assert 1 <= retry_after <= 60

        async with client(limited, other) as caller:
            streams = [
                await caller.chat.completions.create(
                    model="alpha", messages=[], stream=True, extra_body={"behaviour": "gated"}
                )
                for _ in range(2)
            ]
            with pytest.raises(openai.RateLimitError) as limited_concurrency:
                await caller.chat.completions.create(model="alpha", messages=[])
            assert limited_concurrency.value.code == "concurrency_limit_exceeded"
            assert limited_concurrency.value.response.headers["retry-after"] == "1"
            upstream.fake.gate.set()
            for stream in streams:
                async for _chunk in stream:
                    pass
            # Both streams ended: a slot is free again (and the minute still has room).
            await caller.chat.completions.create(model="alpha", messages=[])


async def test_bodies_over_the_cap_are_413(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub, upstream: Upstream
) -> None:
    async with gateway_app(
        tmp_path, mongo_uri, mongo_client, hub, gateway_max_body_bytes=4096
    ) as small:
        await serve(small, organization=ORG_A, name="alpha", endpoint=upstream.endpoint("a"))
        key = (await create_key(small))["key"]
        async with client(small, key) as caller:
            with pytest.raises(openai.APIStatusError) as declared:
                await caller.embeddings.create(model="alpha", input="x" * 5000)
        assert declared.value.status_code == 413
        assert declared.value.code == "request_too_large"

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as read
            yield b'{"model": "alpha", "input": "'
            for _ in range(10):
                yield b"x" * 1000
            yield b'"}'

        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"{small.base_url}/v1/embeddings",
                content=chunked(),
                headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
            )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"
    assert upstream.fake.seen == []


# -- API keys over GraphQL --------------------------------------------------------------------


async def test_api_keys_are_listed_by_prefix_and_work_as_graphql_credentials(
    app: RunningApp,
) -> None:
    admin = app.token(role=Role.ADMIN, organization=ORG_A)
    created = await create_key(app, role="VIEWER", name="dashboard reader")
    key = created["key"]
    assert key.startswith("mp_")
    assert len(key) > 40
    assert created["apiKey"]["prefix"] == key[:11]
    assert created["apiKey"]["role"] == "VIEWER"
    await create_key(app, organization=ORG_B, name="theirs")

    listing = await execute(app.graphql_url, operation("ApiKeys"), token=admin)
    page = listing["data"]["apiKeys"]
    assert page["total"] == 1
    assert [item["name"] for item in page["items"]] == ["dashboard reader"]
    assert key not in str(listing)
    stored = await app.resources.database["api_keys"].find_one({"_id": created["apiKey"]["id"]})
    assert stored is not None
    assert key not in str(stored)

    assert key not in redact(f"called with {key}")  # even a stray log line would not show it

    viewer = await run(app.graphql_url, "Viewer", token=key)
    assert viewer["viewer"]["role"] == "VIEWER"
    assert viewer["viewer"]["organizationId"] == ORG_A
    # The key's role is what it may do: a viewer key cannot create keys.
    refused = await run(
        app.graphql_url, "CreateApiKey", {"name": "more", "role": "VIEWER"}, token=key
    )
    assert refused["createApiKey"]["__typename"] == "ForbiddenError"

    revoked = await run(
        app.graphql_url, "RevokeApiKey", {"id": created["apiKey"]["id"]}, token=admin
    )
    assert revoked["revokeApiKey"]["__typename"] == "ApiKey"
    again = await run(app.graphql_url, "RevokeApiKey", {"id": created["apiKey"]["id"]}, token=admin)
    assert again["revokeApiKey"]["revokedAt"] == revoked["revokeApiKey"]["revokedAt"]
    active = await execute(app.graphql_url, operation("ApiKeys"), token=admin)
    assert active["data"]["apiKeys"]["total"] == 0
    everything = await execute(
        app.graphql_url, operation("ApiKeys"), {"includeRevoked": True}, token=admin
    )
    assert everything["data"]["apiKeys"]["total"] == 1
    other_org = app.token(role=Role.ADMIN, organization=ORG_B)
    missing = await run(
        app.graphql_url, "RevokeApiKey", {"id": created["apiKey"]["id"]}, token=other_org
    )
    assert missing["revokeApiKey"]["__typename"] == "NotFoundError"
    body = await execute(app.graphql_url, operation("Viewer"), token=key)
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


@pytest.mark.parametrize(
    ("role", "variables", "expected"),
    [
        (Role.ADMIN, {"name": "", "role": "VIEWER"}, "ValidationError"),
        (Role.ADMIN, {"name": "   ", "role": "VIEWER"}, "ValidationError"),
        (Role.ADMIN, {"name": "x" * 101, "role": "VIEWER"}, "ValidationError"),
        (Role.ADMIN, {"name": "tab\there", "role": "VIEWER"}, "ValidationError"),
        (Role.EDITOR, {"name": "ok", "role": "VIEWER"}, "ForbiddenError"),
        (Role.VIEWER, {"name": "ok", "role": "VIEWER"}, "ForbiddenError"),
        (Role.ADMIN, {"name": "ok", "role": "OWNER"}, "request error"),
        (Role.ADMIN, {"name": "ok", "role": None}, "request error"),
    ],
)
async def test_refused_create_api_key_writes_nothing(
    app: RunningApp, role: Role, variables: dict[str, Any], expected: str
) -> None:
    token = app.token(role=role, organization=ORG_A)
    body = await execute(app.graphql_url, operation("CreateApiKey"), variables, token=token)
    if expected == "request error":
        # An unknown role is not a Role: GraphQL refuses the variables before anything runs.
        assert body.get("data") is None
        assert "Role" in body["errors"][0]["message"]
    else:
        result = body["data"]["createApiKey"]
        assert result["__typename"] == expected, result
        if expected == "ValidationError":
            assert result["field"] == "name"
    assert await app.resources.database["api_keys"].count_documents({}) == 0
