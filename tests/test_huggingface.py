"""Our hub client (integrations.huggingface) against the local hub, over real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from huggingface_hub import hf_hub_download

from integrations.huggingface import (
    HubAccessDenied,
    HubClient,
    HubError,
    HubRepoNotFound,
    HubRevisionNotFound,
)
from testbed.hub import RunningHub
from tests.conftest import HUB_TOKEN


async def test_model_metadata_with_sizes_and_hashes(hub: RunningHub) -> None:
    client = HubClient(endpoint=hub.endpoint)
    model = await client.model("tiny-org/tiny-model", revision=None, token=None)
    source = hub.hub.repos["tiny-org/tiny-model"]
    assert model.sha == source.sha
    assert model.author == "tiny-org"
    assert model.license == "apache-2.0"
    assert model.pipeline_tag == "text-generation"
    assert model.architectures == ["LlamaForCausalLM"]
    by_path = {f.path: f for f in model.files}
    weights = source.by_path["model.safetensors"]
    assert by_path["model.safetensors"].size == weights.size
    assert by_path["model.safetensors"].sha256 == hashlib.sha256(weights.content).hexdigest()
    assert by_path["config.json"].sha256 is None  # a plain git file, no LFS hash
    assert model.total_bytes == sum(f.size for f in source.files)
    assert model.parameters is not None
    assert model.parameters > 0

    pinned = await client.model("tiny-org/tiny-model", revision=source.sha, token=None)
    assert pinned.sha == source.sha


async def test_gated_repo_metadata_is_public(hub: RunningHub) -> None:
    model = await HubClient(endpoint=hub.endpoint).model(
        "gated-org/gated-model", revision=None, token=None
    )
    assert model.gated


async def test_hub_errors_become_ours(hub: RunningHub) -> None:
    client = HubClient(endpoint=hub.endpoint)
    with pytest.raises(HubRepoNotFound, match="nobody/nothing"):
        await client.model("nobody/nothing", revision=None, token=None)
    with pytest.raises(HubRevisionNotFound, match="no-such-branch"):
        await client.model("tiny-org/tiny-model", revision="no-such-branch", token=None)


def test_gated_repo_needs_a_granted_token_for_files(hub: RunningHub, tmp_path: Path) -> None:
    source = hub.hub.repos["gated-org/gated-model"]
    assert source.gated
    weights = next(f.path for f in source.files if f.path.endswith(".safetensors"))
    with pytest.raises(Exception, match=r"gated|401|403") as refused:
        hf_hub_download(
            "gated-org/gated-model", weights, endpoint=hub.endpoint, cache_dir=tmp_path / "a"
        )
    assert type(refused.value).__name__ == "GatedRepoError"
    path = hf_hub_download(
        "gated-org/gated-model",
        weights,
        endpoint=hub.endpoint,
        cache_dir=tmp_path / "b",
        token=HUB_TOKEN,
    )
    assert (
        Path(path).read_bytes() == hub.hub.repos["gated-org/gated-model"].by_path[weights].content
    )


async def test_private_repo_is_not_found_without_a_grant(hub: RunningHub) -> None:
    from testbed.repos import llama_repo

    hub.hub.add_repo(llama_repo("secret-org/private-model", weights_bytes=4096, private=True))
    client = HubClient(endpoint=hub.endpoint)
    with pytest.raises(HubRepoNotFound):
        await client.model("secret-org/private-model", revision=None, token=None)
    with pytest.raises(HubAccessDenied, match="refused the token"):
        await client.model("secret-org/private-model", revision=None, token="hf_unknowntoken000")


@asynccontextmanager
async def dropping_proxy(upstream: str, drops: int) -> AsyncIterator[str]:
    """A proxy in front of ``upstream`` whose first ``drops`` connections read a request and
    close without answering (what a reused keep-alive connection the server just closed
    looks like); the others are forwarded. Yields the proxy's base URL."""
    target = urlsplit(upstream)
    left = [drops]
    writers: list[asyncio.StreamWriter] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        if left[0] > 0:
            left[0] -= 1
            await reader.readuntil(b"\r\n\r\n")
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port)
        writers.append(up_writer)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for writer in writers:  # the client's pooled connections, and ours to the hub
            writer.close()
        await server.wait_closed()


async def test_a_connection_dropped_without_an_answer_is_tried_again_once(
    hub: RunningHub,
) -> None:
    """huggingface_hub retries its searches but not ``model_info``: a pooled connection the
    hub had just closed failed a preview once with an unexpected error."""
    async with dropping_proxy(hub.endpoint, drops=1) as endpoint:
        model = await HubClient(endpoint=endpoint).model(
            "tiny-org/tiny-model", revision=None, token=None
        )
    assert model.sha == hub.hub.repos["tiny-org/tiny-model"].sha
    async with dropping_proxy(hub.endpoint, drops=2) as endpoint:
        with pytest.raises(HubError, match=r"could not be reached .*\(RemoteProtocolError\)"):
            await HubClient(endpoint=endpoint).model(
                "tiny-org/tiny-model", revision=None, token=None
            )
