"""Issue 15, area ``limits``: anonymous and low-privilege requests that exhausted memory or CPU,
reached unhandled errors, or read every organisation's metrics, replayed as an attacker would
(HTTP and WebSocket, real tokens, real servers) and refused with the limit named.

The abuse test runs ``modelplane serve`` as its own process so its RSS can be read from
``/proc``: an anonymous 100 MiB body, a 1.7 MiB document and 1,000 aliased ``gpuFit`` while
another client's query keeps answering in under a second, and the RSS back within 50 MiB of
its start after each.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.typing import Subprotocol

from modelplane.auth import issue_dev_token, load_dev_key
from modelplane.embedded import free_port
from services.principals import Principal
from storage.client import Client, Database
from storage.documents import Role
from testbed.hub import RunningHub
from tests.conftest import RunningApp, make_settings, serve_app
from tests.graphql_client import execute
from tests.helpers import rss_bytes, serve_process
from tests.operations import operation

MiB = 1024 * 1024
SECRET = "security-limits-secret-key-0123456789abcdef"
METRICS_TOKEN = "scrape-token-for-the-limits-tests"
SMALL_QUERY = {"query": "{ serverInfo { version } }"}
REPO = "tiny-org/tiny-model"


def gpu_fit_aliases(count: int) -> str:
    fits = " ".join(f'f{i}: gpuFit(repoId: "{REPO}") {{ __typename }}' for i in range(count))
    return "{ " + fits + " }"


def limits_named(body: dict[str, Any]) -> set[str]:
    return {
        error.get("extensions", {}).get("limit", "")
        for error in body.get("errors", [])
        if error.get("extensions", {}).get("code") == "LIMIT_EXCEEDED"
    } - {""}


async def post_escaped(url: str, payload: dict[str, Any], token: str) -> dict[str, Any]:
    """POST ``payload`` as JSON with non-ASCII written as escapes (``"\\ud800"``), as an
    attacker's client can send a lone surrogate."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(url, content=json.dumps(payload), headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def models_in(database: Database) -> int:
    return await database["models"].count_documents({})


# --------------------------------------------------------------------------- in-process server


@pytest.fixture
async def limited_app(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> AsyncIterator[RunningApp]:
    settings = make_settings(
        tmp_path, mongo_uri, hf_endpoint=hub.endpoint, metrics_token=METRICS_TOKEN
    )
    async with serve_app(settings, mongo_client) as running:
        yield running


async def test_a_declared_oversized_body_is_refused_before_it_is_read(
    limited_app: RunningApp,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", limited_app.port)
    try:
        writer.write(
            b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {100 * MiB}\r\n\r\n".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        body = await asyncio.wait_for(reader.read(4096), 10)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 413"), head
    assert json.loads(body)["errors"][0]["extensions"]["limit"] == (
        "MODELPLANE_GRAPHQL_MAX_BODY_BYTES"
    )


async def test_invalid_utf8_and_deeply_nested_json_are_400_with_the_reason(
    limited_app: RunningApp,
) -> None:
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=limited_app.base_url, headers=headers) as http:
        invalid = await http.post("/graphql", content=b'{"query": "{ __typename \xff }"}')
        deep = await http.post("/graphql", content=b"[" * 100_000 + b"]" * 100_000)
        fine = await http.post("/graphql", json={"query": "{ __typename }"})
    assert (invalid.status_code, invalid.text) == (400, "The request body is not valid UTF-8")
    assert (deep.status_code, deep.text) == (400, "The JSON is nested too deeply")
    assert fine.json() == {"data": {"__typename": "Query"}}


async def test_a_lone_surrogate_is_an_error_naming_the_input_and_writes_nothing(
    limited_app: RunningApp,
) -> None:
    token = limited_app.token(organization="org-a", role=Role.EDITOR)
    value = {
        "source": {"url": "https://api.example.test/v1", "accessMode": "REMOTE_API"},
        "displayName": "bad \ud800 name",
    }
    by_variable = await post_escaped(
        limited_app.graphql_url,
        {"query": operation("CreateModel"), "variables": {"input": value}},
        token,
    )
    assert by_variable["data"] is None
    [error] = by_variable["errors"]
    assert error["message"] == (
        "Variable `$input` is not valid Unicode: a lone UTF-16 surrogate in `input.displayName`."
    )
    assert error["extensions"]["field"] == "input.displayName"
    inline = await post_escaped(
        limited_app.graphql_url, {"query": '{ model(id: "x\ud800") { id } }'}, token
    )
    assert "lone UTF-16 surrogate at line 1, column 15" in inline["errors"][0]["message"]
    assert await models_in(limited_app.resources.database) == 0


async def test_a_mutation_of_a_thousand_fields_is_refused_and_would_not_recurse(
    tmp_path: Path, limited_app: RunningApp, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> None:
    """1,000 aliased deleteModel fields: refused by the token limit (11 tokens each) before
    anything runs. With the limits raised out of the way they run one after the other, where
    graphql-core answered "maximum recursion depth exceeded" from about 330 fields."""
    fields = " ".join(f'd{i}: deleteModel(id: "m{i}") {{ __typename }}' for i in range(1000))
    text = f"mutation {{ {fields} }}"
    token = limited_app.token(organization="org-a", role=Role.EDITOR)
    body = await execute(limited_app.graphql_url, text, token=token)
    assert body.get("data") is None
    assert limits_named(body) == {"MODELPLANE_GRAPHQL_MAX_TOKENS"}
    settings = make_settings(
        tmp_path / "raised",
        mongo_uri,
        hf_endpoint=hub.endpoint,
        graphql_max_tokens=50_000,
        graphql_max_fields=5_000,
        graphql_max_aliases=5_000,
        graphql_max_cost=100_000,
    )
    async with serve_app(settings, mongo_client) as raised:
        token = raised.token(organization="org-a", role=Role.EDITOR)
        body = await execute(raised.graphql_url, text, token=token)
    assert "errors" not in body, body["errors"][:3]
    assert len(body["data"]) == 1000
    assert {result["__typename"] for result in body["data"].values()} == {"NotFoundError"}


async def test_gpu_fit_aliases_are_refused_on_http_and_websocket(
    limited_app: RunningApp,
) -> None:
    token = limited_app.token(organization="org-a", role=Role.VIEWER)
    thousand = await execute(limited_app.graphql_url, gpu_fit_aliases(1000), token=token)
    assert limits_named(thousand) == {"MODELPLANE_GRAPHQL_MAX_TOKENS"}
    text = gpu_fit_aliases(200)
    over_http = await execute(limited_app.graphql_url, text, token=token)
    assert over_http.get("data") is None
    assert limits_named(over_http) == {
        "MODELPLANE_GRAPHQL_MAX_ALIASES",
        "MODELPLANE_GRAPHQL_MAX_COST",
    }
    over_socket = await _over_websocket(limited_app, token, text)
    assert {error["extensions"]["limit"] for error in over_socket} == limits_named(over_http)
    large = "{ " + "__typename " * 60_000 + "}"  # 660 KB: a message uvicorn takes
    [refused] = await _over_websocket(limited_app, token, large)
    assert refused["extensions"]["limit"] == "MODELPLANE_GRAPHQL_MAX_DOCUMENT_BYTES"
    big = "{ " + "__typename " * 170_000 + "}"  # 1.7 MiB: over the message cap
    with pytest.raises(websockets.ConnectionClosedError) as closed:
        await _over_websocket(limited_app, token, big)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009  # message too big, before it is decoded
    assert await models_in(limited_app.resources.database) == 0


async def _over_websocket(app: RunningApp, token: str, query: str) -> list[dict[str, Any]]:
    """The errors answering ``query`` sent as a ``subscribe`` message."""
    async with websockets.connect(
        app.ws_url, subprotocols=[Subprotocol("graphql-transport-ws")], max_size=None
    ) as socket:
        await socket.send(json.dumps({"type": "connection_init", "payload": {"token": token}}))
        assert json.loads(await socket.recv())["type"] == "connection_ack"
        await socket.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
        message = json.loads(await asyncio.wait_for(socket.recv(), 30))
    if message["type"] == "next":
        errors: list[dict[str, Any]] = message["payload"]["errors"]
        return errors
    assert message["type"] == "error", message
    found: list[dict[str, Any]] = message["payload"]
    return found


async def test_a_client_that_leaves_cancels_its_request(
    limited_app: RunningApp, hub: RunningHub
) -> None:
    """gpuFit waits on the hub's config.json (stalled 8 s); the client gives up after 0.5 s.
    Its request is cancelled, so modelplane hangs up on the hub at once instead of waiting."""
    hub.hub.faults.stall_after(f"{REPO}/config.json", 0, 8.0)
    hub.hub.log.clear()
    token = limited_app.token(organization="org-a", role=Role.VIEWER)
    try:
        async with httpx.AsyncClient(timeout=0.5) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.post(
                    limited_app.graphql_url,
                    json={"query": gpu_fit_aliases(1)},
                    headers={"Authorization": f"Bearer {token}"},
                )
        left = time.monotonic()
        while not hub.hub.log.records("*/config.json"):
            assert time.monotonic() - left < 4, "modelplane kept waiting on the hub"
            await asyncio.sleep(0.05)
        [record] = hub.hub.log.records("*/config.json")
        assert not record.completed
    finally:
        hub.hub.faults.clear()


async def test_metrics_need_the_metrics_token_or_an_admin(limited_app: RunningApp) -> None:
    def bearer(credential: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {credential}"}

    viewer = limited_app.token(organization="org-a", role=Role.VIEWER)
    async with httpx.AsyncClient(base_url=limited_app.base_url) as http:
        anonymous = await http.get("/metrics")
        wrong = await http.get("/metrics", headers=bearer("not-the-token"))
        as_viewer = await http.get("/metrics", headers=bearer(viewer))
        scraper = await http.get("/metrics", headers=bearer(METRICS_TOKEN))
        admin = await http.get("/metrics", headers=bearer(limited_app.token()))
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401
    assert as_viewer.status_code == 403
    assert scraper.status_code == 200
    assert "modelplane_http_requests_total" in scraper.text
    assert admin.status_code == 200  # development: the operator's admin token


async def test_production_metrics_take_only_the_metrics_token(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> None:
    settings = make_settings(
        tmp_path,
        mongo_uri,
        hf_endpoint=hub.endpoint,
        environment="production",
        oidc_issuer="https://issuer.example.test",
        metrics_token=METRICS_TOKEN,
    )
    async with serve_app(settings, mongo_client) as app:
        admin = Principal(subject="ops", organization_id="org-a", role=Role.ADMIN)
        key = await app.resources.services.api_keys.create(admin, name="ops", role=Role.ADMIN)
        async with httpx.AsyncClient(base_url=app.base_url) as http:
            by_key = await http.get("/metrics", headers={"Authorization": f"Bearer {key.key}"})
            scraper = await http.get(
                "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
            )
    assert by_key.status_code == 401  # an organisation's admin does not see the others
    assert scraper.status_code == 200


# --------------------------------------------------------------------------- own process


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    base_url: str
    viewer: str
    latencies: list[float] = field(default_factory=list)

    def rss(self) -> int:
        return rss_bytes(self.process.pid)


@pytest.fixture
def served(
    tmp_path: Path, mongo_uri: str, hub: RunningHub, testbed_binaries: dict[str, Path]
) -> Iterator[Served]:
    """``modelplane serve`` in its own process on the session's FerretDB and hub."""
    port = free_port()
    state = tmp_path / "state"
    settings = {
        "MODELPLANE_MONGODB_URI": mongo_uri,
        "MODELPLANE_MONGODB_DATABASE": f"sec_{uuid.uuid4().hex[:12]}",
        "MODELPLANE_SECRET_KEY": SECRET,
        "MODELPLANE_STATE_DIR": str(state),
        "MODELPLANE_HF_ENDPOINT": hub.endpoint,
    }
    with serve_process(tmp_path, port, settings) as process:
        key = load_dev_key(secret_key=SECRET, state_dir=state)
        viewer = issue_dev_token(
            key, subject="prober", organization_id="org-a", role=Role.VIEWER, ttl_seconds=600
        )
        yield Served(process, f"http://127.0.0.1:{port}", viewer)


def _probe(served: Served, stop: threading.Event) -> None:
    """Another client's small query, again and again, its time to answer recorded. A thread
    of its own, so the test's own work (building and sending the abuse) does not delay it."""
    with httpx.Client(base_url=served.base_url, timeout=30) as http:
        while not stop.is_set():
            began = time.perf_counter()
            answer = http.post("/graphql", json=SMALL_QUERY)
            served.latencies.append(time.perf_counter() - began)
            assert answer.status_code == 200, answer.text
            stop.wait(0.05)


async def _stream_body(served: Served, size: int) -> tuple[int, bytes]:
    """Send up to ``size`` bytes of JSON as a chunked body, anonymously, until an answer comes:
    how many bytes had gone out then, and the answer's head."""
    port = int(served.base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answered = asyncio.Event()
    at_answer = [0]
    sent = 0

    async def read() -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        at_answer[0] = sent
        answered.set()
        return head

    reading = asyncio.create_task(read())
    chunk = b"a" * (64 * 1024)
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    try:
        writer.write(
            b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Transfer-Encoding: chunked\r\n\r\n6c\r\n{"query": "{ __typename }", '
            b'"variables": {"x": "' + b"a" * 60 + b"\r\n"
        )
        while sent < size and not answered.is_set():
            writer.write(framed)
            await writer.drain()
            sent += len(chunk)
            # drain() returns without yielding while the server reads as fast as this writes
            # (it discards the rest of a refused body): yield, so the reader sees the answer
            # when it comes rather than after the whole body
            await asyncio.sleep(0)
        if not answered.is_set():  # all sent: end the JSON and the body
            writer.write(b'3\r\n"}}\r\n0\r\n\r\n')
            await writer.drain()
        head = await asyncio.wait_for(reading, 60)
    finally:
        reading.cancel()
        writer.close()
    return at_answer[0], head


async def _settled_rss(served: Served, baseline: int, within: float = 15.0) -> int:
    """The server's RSS once it is within 50 MiB of ``baseline`` (or after ``within`` s)."""
    deadline = time.monotonic() + within
    rss = served.rss()
    while rss - baseline > 50 * MiB and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        rss = served.rss()
    return rss


async def test_abuse_leaves_other_clients_answered_and_memory_where_it_was(
    served: Served,
) -> None:
    async with httpx.AsyncClient(base_url=served.base_url, timeout=30) as http:
        for _ in range(20):  # warm up: imports, caches, connection pools
            assert (await http.post("/graphql", json=SMALL_QUERY)).status_code == 200
    baseline = served.rss()
    stop = threading.Event()
    prober = threading.Thread(target=_probe, args=(served, stop), name="prober")
    prober.start()
    try:
        await asyncio.sleep(0.5)
        sent, answer = await _stream_body(served, 100 * MiB)
        print(f"\n100 MiB body: {answer[:12]!r} after {sent / MiB:.1f} MiB")  # noqa: T201
        assert answer.startswith(b"HTTP/1.1 413"), answer
        assert sent < 16 * MiB  # refused while it streamed in
        assert await _settled_rss(served, baseline) - baseline <= 50 * MiB

        headers = {"Authorization": f"Bearer {served.viewer}"}
        async with httpx.AsyncClient(base_url=served.base_url, timeout=30) as http:
            began = time.perf_counter()
            document = "{ " + "__typename " * 170_000 + "}"  # 1.7 MiB
            big = await http.post("/graphql", json={"query": document})
            bigger_than_document = await http.post(
                "/graphql", json={"query": "{ " + "__typename " * 9_000 + "}"}
            )
            aliases = await http.post(
                "/graphql", json={"query": gpu_fit_aliases(1000)}, headers=headers
            )
            took = time.perf_counter() - began
        assert big.status_code == 413
        assert big.json()["errors"][0]["extensions"]["limit"] == (
            "MODELPLANE_GRAPHQL_MAX_BODY_BYTES"
        )
        assert limits_named(bigger_than_document.json()) == {
            "MODELPLANE_GRAPHQL_MAX_DOCUMENT_BYTES"
        }
        assert limits_named(aliases.json()) == {"MODELPLANE_GRAPHQL_MAX_TOKENS"}
        print(f"1.7 MiB, 99 KiB documents, 1,000 gpuFit: refused in {took:.2f} s")  # noqa: T201
        assert took < 5
        assert await _settled_rss(served, baseline) - baseline <= 50 * MiB
    finally:
        stop.set()
        prober.join(timeout=60)
    rss = served.rss()
    worst = max(served.latencies)
    print(  # noqa: T201  the issue asks for the figure
        f"another client's query: {len(served.latencies)} answers, slowest {worst * 1000:.0f} ms; "
        f"RSS {baseline / MiB:.0f} MiB before, {rss / MiB:.0f} MiB after"
    )
    assert worst < 1.0
