"""The local Hugging Face Hub stand-in, exercised with the real client, huggingface_hub 2.4.

The public Hub is unreachable from this machine, so these tests are what shows that
`testbed.hub` answers the way huggingface_hub expects: metadata shapes, downloads through the
LFS redirect, the error classes it raises, byte ranges and the injected faults. One server
serves the whole module; each test clears the faults it may leave behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import httpx
import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder

from testbed.hub import LocalHub, RunningHub, Transfer, running_hub
from testbed.repos import HubFile, HubRepo, TensorSpec, llama_repo, safetensors_bytes, sample_repos

GRANTED = "hf_testbed_granted"
OTHER = "hf_testbed_not_granted"
TINY, SHARDED, GATED, PRIVATE = (
    "tiny-org/tiny-model",
    "tiny-org/sharded-model",
    "gated-org/gated-model",
    "tiny-org/private-model",
)


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep huggingface_hub off the user's cache and token, whatever the environment holds."""
    root = tmp_path_factory.mktemp("hf")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("HF_TOKEN", raising=False)
        mp.setattr(constants, "HF_HUB_CACHE", str(root / "hub"))
        mp.setattr(constants, "HF_TOKEN_PATH", str(root / "token"))
        mp.setattr(constants, "HF_STORED_TOKENS_PATH", str(root / "stored_tokens"))
        yield root / "hub"


@pytest.fixture(scope="module")
def served(hf_cache: Path) -> Iterator[RunningHub]:
    hub = LocalHub([*sample_repos(), llama_repo(PRIVATE, weights_bytes=64 * 1024, private=True)])
    for repo_id in (GATED, PRIVATE):
        hub.grant(GRANTED, repo_id)
    hub.add_token(OTHER)
    with running_hub(hub) as running:
        yield running


@pytest.fixture(autouse=True)
def _clean_faults(served: RunningHub) -> Iterator[None]:
    served.hub.faults.clear()
    yield
    served.hub.faults.clear()


@pytest.fixture
def api(served: RunningHub) -> HfApi:
    return HfApi(endpoint=served.endpoint, token=False)


def repo(served: RunningHub, repo_id: str) -> HubRepo:
    return served.hub.repos[repo_id]


def header_of(content: bytes) -> dict[str, Any]:
    """Parse a safetensors header independently of testbed.repos."""
    (length,) = struct.unpack("<Q", content[:8])
    header: dict[str, Any] = json.loads(content[8 : 8 + length])
    return header


def params_of(content: bytes) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, info in header_of(content).items():
        if name != "__metadata__":
            counts[info["dtype"]] = counts.get(info["dtype"], 0) + math.prod(info["shape"])
    return counts


def drain(url: str, into: bytearray, timeout: httpx.Timeout | float = 5.0) -> None:
    """GET ``url`` and append its body to ``into`` as it arrives (kept if the read fails)."""
    with httpx.stream("GET", url, timeout=timeout) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            into += chunk


# --------------------------------------------------------------------------- repos


def test_safetensors_file_follows_the_format() -> None:
    tensors = [TensorSpec("a", "BF16", (3, 5)), TensorSpec("b", "F32", (7,))]
    data = safetensors_bytes(tensors, seed="x")
    (length,) = struct.unpack("<Q", data[:8])
    raw = data[8 : 8 + length]
    assert length % 8 == 0
    padding = len(raw) - len(raw.rstrip(b" "))
    assert padding < 8
    assert raw.rstrip(b" ").endswith(b"}")
    header = header_of(data)
    assert header["__metadata__"] == {"format": "pt"}
    assert header["a"] == {"dtype": "BF16", "shape": [3, 5], "data_offsets": [0, 30]}
    assert header["b"] == {"dtype": "F32", "shape": [7], "data_offsets": [30, 58]}
    assert len(data) == 8 + length + 58
    assert safetensors_bytes(tensors, seed="y") != data
    assert safetensors_bytes(tensors, seed="x") == data


def test_sample_repos_shapes_and_sizes() -> None:
    repos = {r.repo_id: r for r in sample_repos(shard_bytes=3 * 1024 * 1024)}
    assert set(repos) == {TINY, SHARDED, GATED}
    assert repos[GATED].gated == "manual"
    sharded = repos[SHARDED]
    shards = [f for f in sharded.files if f.path.startswith("model-0")]
    assert [f.path for f in shards] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert all(2 * 1024 * 1024 < f.size < 4 * 1024 * 1024 and f.lfs for f in shards)
    index = json.loads(sharded.by_path["model.safetensors.index.json"].content)
    tensor_bytes = 0
    for shard in shards:
        header = header_of(shard.content)
        tensor_bytes += max(t["data_offsets"][1] for n, t in header.items() if n != "__metadata__")
        assert {n for n, s in index["weight_map"].items() if s == shard.path} == set(header) - {
            "__metadata__"
        }
    assert index["metadata"]["total_size"] == tensor_bytes
    config = json.loads(repos[TINY].by_path["config.json"].content)
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["torch_dtype"] == "bfloat16"
    tiny_weights = repos[TINY].by_path["model.safetensors"]
    assert 1024 * 1024 < tiny_weights.size < 3 * 1024 * 1024
    assert set(params_of(tiny_weights.content)) == {"BF16", "F32"}
    assert not repos[TINY].by_path["config.json"].lfs
    assert HubFile.of("big.txt", b"x" * (10 * 1024 * 1024 + 1)).lfs


# --------------------------------------------------------------------------- metadata


def test_model_info_without_revision(api: HfApi, served: RunningHub) -> None:
    source = repo(served, TINY)
    info = api.model_info(TINY)
    assert info.id == TINY
    assert info.author == "tiny-org"
    assert info.sha == source.sha
    assert info.private is False
    assert info.gated is False
    assert info.pipeline_tag == "text-generation"
    assert info.library_name == "transformers"
    assert info.card_data is not None
    assert info.card_data.license == "apache-2.0"
    assert "testbed" in (info.card_data.tags or [])
    assert "license:apache-2.0" in (info.tags or [])
    assert info.config is not None
    assert info.config["architectures"] == ["LlamaForCausalLM"]
    assert info.last_modified is not None
    assert info.created_at is not None
    expected = params_of(source.by_path["model.safetensors"].content)
    assert info.safetensors is not None
    assert info.safetensors.parameters == expected
    assert info.safetensors.total == sum(expected.values())
    assert info.siblings is not None
    assert {s.rfilename for s in info.siblings} == {f.path for f in source.files}
    assert all(s.size is None for s in info.siblings)


def test_model_info_with_revision_and_files_metadata(api: HfApi, served: RunningHub) -> None:
    source = repo(served, SHARDED)
    info = api.model_info(SHARDED, revision=source.sha, files_metadata=True)
    assert info.sha == source.sha
    assert info.siblings is not None
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == {f.path for f in source.files}
    for f in source.files:
        sibling = siblings[f.path]
        assert sibling.size == len(f.content)
        if f.path.endswith(".safetensors"):
            assert sibling.lfs is not None
            assert sibling.lfs.sha256 == hashlib.sha256(f.content).hexdigest()
            assert sibling.lfs.size == len(f.content)
            assert sibling.lfs.pointer_size == len(f.lfs_pointer)
        else:
            assert sibling.lfs is None
            git = hashlib.sha1(
                b"blob %d\0" % len(f.content) + f.content, usedforsecurity=False
            ).hexdigest()
            assert sibling.blob_id == git
    shards = [f for f in source.files if f.path.endswith(".safetensors")]
    total = sum(sum(params_of(f.content).values()) for f in shards)
    assert info.safetensors is not None
    assert info.safetensors.total == total
    assert info.used_storage == sum(len(f.content) for f in source.files)


def test_model_info_expand_and_unknown_revision(api: HfApi) -> None:
    info = api.model_info(TINY, expand=["sha", "downloads"])
    assert info.sha is not None
    assert info.downloads == 1200
    assert info.siblings is None
    assert info.card_data is None
    with pytest.raises(RevisionNotFoundError):
        api.model_info(TINY, revision="no-such-branch")
    with pytest.raises(HfHubHTTPError) as bad:
        api.model_info(TINY, expand=["bogus"])  # type: ignore[list-item]
    assert bad.value.response.status_code == 400


def test_list_repo_tree_and_paths_info(api: HfApi, served: RunningHub) -> None:
    source = repo(served, TINY)
    entries = list(api.list_repo_tree(TINY, recursive=True))
    assert all(isinstance(e, RepoFile) for e in entries)
    files = {e.path: e for e in entries if isinstance(e, RepoFile)}
    assert set(files) == {f.path for f in source.files}
    weights = files["model.safetensors"]
    assert weights.lfs is not None
    assert (
        weights.lfs.sha256
        == hashlib.sha256(source.by_path["model.safetensors"].content).hexdigest()
    )
    assert files["config.json"].size == len(source.by_path["config.json"].content)
    expanded = list(api.list_repo_tree(TINY, expand=True))
    assert all(isinstance(e, RepoFile) and e.last_commit is not None for e in expanded)
    info = api.get_paths_info(TINY, ["config.json", "model.safetensors", "missing.txt"])
    assert [p.path for p in info] == ["config.json", "model.safetensors"]
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(TINY, path_in_repo="no/such/dir"))


def test_tree_lists_folders(served: RunningHub) -> None:
    nested = HubRepo(
        "tiny-org/nested",
        (
            HubFile.of("a/b/c.json", b"{}"),
            HubFile.of("a/d.bin", b"\0" * 10),
            HubFile.of("e.md", b""),
        ),
    )
    served.hub.add_repo(nested)
    try:
        api = HfApi(endpoint=served.endpoint, token=False)
        top = list(api.list_repo_tree("tiny-org/nested"))
        assert [(type(e), e.path) for e in top] == [(RepoFolder, "a"), (RepoFile, "e.md")]
        deep = [
            e.path for e in api.list_repo_tree("tiny-org/nested", path_in_repo="a", recursive=True)
        ]
        assert deep == ["a/b", "a/b/c.json", "a/d.bin"]
    finally:
        del served.hub.repos["tiny-org/nested"]


def test_list_models(api: HfApi) -> None:
    assert [m.id for m in api.list_models(search="sharded")] == [SHARDED]
    assert [m.id for m in api.list_models(author="gated-org")] == [GATED]
    everything = {m.id for m in api.list_models()}
    assert {TINY, SHARDED, GATED} <= everything
    assert PRIVATE not in everything
    assert len(list(api.list_models(limit=2))) == 2
    by_downloads = [m.id for m in api.list_models(sort="downloads", limit=2)]
    assert by_downloads == [TINY, SHARDED]
    private = HfApi(endpoint=api.endpoint, token=GRANTED)
    assert PRIVATE in {m.id for m in private.list_models(author="tiny-org")}


def test_list_models_paginates_with_link_header(served: RunningHub) -> None:
    first = httpx.get(f"{served.endpoint}/api/models", params={"limit": 1, "search": "tiny-org/"})
    assert first.status_code == 200
    assert len(first.json()) == 1
    next_url = first.links["next"]["url"]
    second = httpx.get(next_url)
    assert len(second.json()) == 1
    assert second.json()[0]["id"] != first.json()[0]["id"]


# --------------------------------------------------------------------------- downloads


def test_hf_hub_download_small_and_lfs(served: RunningHub, tmp_path: Path) -> None:
    source = repo(served, TINY)
    served.hub.log.clear()
    for name in ("config.json", "model.safetensors"):
        path = hf_hub_download(
            TINY, name, endpoint=served.endpoint, cache_dir=tmp_path, token=False
        )
        assert Path(path).read_bytes() == source.by_path[name].content
    lfs_head = served.hub.log.records(path="*/resolve/main/model.safetensors", method="HEAD")
    assert [r.status for r in lfs_head] == [302]
    cdn = served.hub.log.records(path="/cdn-lfs/*")
    assert [(r.status, r.bytes_sent) for r in cdn] == [
        (200, source.by_path["model.safetensors"].size)
    ]


def test_lfs_redirect_headers(served: RunningHub) -> None:
    f = repo(served, TINY).by_path["model.safetensors"]
    head = httpx.head(served.url(TINY, "model.safetensors"))
    assert head.status_code == 302
    assert head.headers["X-Linked-Etag"] == f'"{f.sha256}"'
    assert head.headers["X-Linked-Size"] == str(f.size)
    assert head.headers["X-Repo-Commit"] == repo(served, TINY).sha
    assert head.headers["Location"].startswith(served.cdn_endpoint + "/")
    small = httpx.head(served.url(TINY, "config.json", revision=repo(served, TINY).sha))
    assert small.status_code == 200
    assert small.headers["ETag"] == f'"{repo(served, TINY).by_path["config.json"].blob_id}"'
    assert small.headers["Content-Length"] == str(repo(served, TINY).by_path["config.json"].size)
    assert small.headers["Accept-Ranges"] == "bytes"
    tampered = head.headers["Location"].replace("Signature=", "Signature=0")
    assert httpx.get(tampered).status_code == 403


def test_snapshot_download_sharded(served: RunningHub, tmp_path: Path) -> None:
    source = repo(served, SHARDED)
    folder = Path(
        snapshot_download(SHARDED, endpoint=served.endpoint, cache_dir=tmp_path, token=False)
    )
    assert folder.name == source.sha
    assert sorted(p.name for p in folder.iterdir()) == sorted(f.path for f in source.files)
    for f in source.files:
        assert (folder / f.path).read_bytes() == f.content


def test_get_safetensors_metadata(api: HfApi, served: RunningHub) -> None:
    single = api.get_safetensors_metadata(TINY)
    assert not single.sharded
    content = repo(served, TINY).by_path["model.safetensors"].content
    assert single.parameter_count == params_of(content)
    sharded = api.get_safetensors_metadata(SHARDED)
    assert sharded.sharded
    assert len(sharded.files_metadata) == 3
    index = json.loads(repo(served, SHARDED).by_path["model.safetensors.index.json"].content)
    assert sharded.metadata == index["metadata"]
    assert sharded.weight_map == index["weight_map"]
    totals: dict[str, int] = {}
    for f in repo(served, SHARDED).files:
        if f.path.endswith(".safetensors"):
            for dtype, n in params_of(f.content).items():
                totals[dtype] = totals.get(dtype, 0) + n
    assert sharded.parameter_count == totals
    one_call = api.get_sharded_safetensors_metadata(SHARDED)
    assert one_call.weight_map == index["weight_map"]
    assert one_call.parameter_count == totals


# --------------------------------------------------------------------------- access and errors


def test_gated_repo(served: RunningHub, tmp_path: Path) -> None:
    def download(token: str | bool) -> str:
        return hf_hub_download(
            GATED, "model.safetensors", endpoint=served.endpoint, cache_dir=tmp_path, token=token
        )

    info = HfApi(endpoint=served.endpoint, token=False).model_info(GATED)
    assert info.gated == "manual"
    with pytest.raises(GatedRepoError) as anonymous:
        download(False)
    assert anonymous.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as not_granted:
        download(OTHER)
    assert not_granted.value.response.status_code == 403
    served.hub.log.clear()
    path = download(GRANTED)
    assert Path(path).read_bytes() == repo(served, GATED).by_path["model.safetensors"].content
    # like huggingface.co, the token goes to the hub but not to the CDN
    assert [r.authorization for r in served.hub.log.records(path=f"/{GATED}/resolve/*")] == [True]
    assert [r.authorization for r in served.hub.log.records(path="/cdn-lfs/*")] == [False]


def test_missing_repo_revision_and_file(served: RunningHub, tmp_path: Path) -> None:
    def download(
        repo_id: str, name: str, revision: str | None = None, token: str | bool = False
    ) -> str:
        return hf_hub_download(
            repo_id,
            name,
            revision=revision,
            endpoint=served.endpoint,
            cache_dir=tmp_path,
            token=token,
        )

    with pytest.raises(RepositoryNotFoundError) as anonymous:
        download("nobody/nothing", "config.json")
    assert type(anonymous.value) is RepositoryNotFoundError
    assert anonymous.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError) as authenticated:
        HfApi(endpoint=served.endpoint, token=OTHER).model_info("nobody/nothing")
    assert authenticated.value.response.status_code == 404
    with pytest.raises(RevisionNotFoundError):
        download(TINY, "config.json", revision="v9.9")
    with pytest.raises(EntryNotFoundError):
        download(TINY, "no-such-file.json")
    with pytest.raises(RepositoryNotFoundError):
        download(PRIVATE, "config.json")
    assert Path(download(PRIVATE, "config.json", token=GRANTED)).read_bytes().startswith(b"{")
    with pytest.raises(HfHubHTTPError) as invalid:
        HfApi(endpoint=served.endpoint, token="hf_unknown").model_info(TINY)
    assert not isinstance(invalid.value, RepositoryNotFoundError)
    assert invalid.value.response.status_code == 401


# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize("name", ["tokenizer.json", "model.safetensors"])
def test_range_requests(served: RunningHub, name: str) -> None:
    content = repo(served, TINY).by_path[name].content
    size = len(content)
    with httpx.Client(follow_redirects=True) as client:
        url = served.url(TINY, name)
        cases = {
            "bytes=10-99": (10, 100),
            f"bytes={size - 5}-": (size - 5, size),
            "bytes=-7": (size - 7, size),
        }
        for header, (start, stop) in cases.items():
            r = client.get(url, headers={"Range": header})
            assert r.status_code == 206, header
            assert r.content == content[start:stop]
            assert r.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{size}"
            assert r.headers["Content-Length"] == str(stop - start)
        clamped = client.get(url, headers={"Range": f"bytes={size - 3}-{size + 100}"})
        assert clamped.content == content[-3:]
        for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
            r = client.get(url, headers={"Range": header})
            assert r.status_code == 416, header
            assert r.headers["Content-Range"] == f"bytes */{size}"
        whole = client.get(url)
        assert whole.status_code == 200
        assert whole.content == content
        etag = whole.headers["ETag"]
        assert client.get(url, headers={"If-None-Match": etag}).status_code == 304


def test_transfer_log_shows_each_body_live_by_file(served: RunningHub) -> None:
    """Per file (an LFS one reached through the CDN too): where each body started and how
    much of it left, while it streams and after; a body the client left counts what was sent."""
    served.hub.transfers.clear()
    name = "model.safetensors"
    served.hub.faults.stall_after(name, 1000, seconds=5)

    def transfer(ended: bool) -> Transfer:
        deadline = time.monotonic() + 5
        while True:
            found = served.hub.transfers.of(TINY, name)
            if found and found[0].sent == 1000 and (found[0].ended_at is not None) == ended:
                return found[0]
            assert time.monotonic() < deadline, found
            time.sleep(0.01)

    with (
        httpx.Client(follow_redirects=True) as client,
        client.stream("GET", served.url(TINY, name), headers={"Range": "bytes=100-"}) as r,
    ):
        assert r.status_code == 206
        assert transfer(ended=False).start == 100  # stalled after 1000 bytes
    assert transfer(ended=True).start == 100  # the client left: nothing more was sent
    assert len(served.hub.transfers.of(TINY)) == 1
    config = repo(served, TINY).by_path["config.json"].content
    assert httpx.get(served.url(TINY, "config.json")).content == config
    assert [(t.start, t.sent) for t in served.hub.transfers.of(TINY, "config.json")] == [
        (0, len(config))
    ]
    assert served.hub.transfers.of(SHARDED) == []


# --------------------------------------------------------------------------- faults


def test_fail_next_then_success(served: RunningHub) -> None:
    served.hub.faults.fail_next("config.json", 2, status=500)
    url = served.url(TINY, "config.json")
    statuses = [httpx.get(url).status_code for _ in range(3)]
    assert statuses == [500, 500, 200]
    served.hub.faults.fail_next(f"{TINY}/*.safetensors", 1, status=503)
    assert httpx.head(served.url(SHARDED, "model-00001-of-00003.safetensors")).status_code == 302
    assert httpx.head(served.url(TINY, "model.safetensors")).status_code == 503
    assert httpx.head(served.url(TINY, "model.safetensors")).status_code == 302


def test_drop_after_truncates_the_body(served: RunningHub) -> None:
    served.hub.faults.drop_after("tokenizer.json", 1000)
    received = bytearray()
    with pytest.raises(httpx.RemoteProtocolError):
        drain(served.url(TINY, "tokenizer.json"), received)
    assert bytes(received) == repo(served, TINY).by_path["tokenizer.json"].content[:1000]
    record = served.hub.log.records(path="*/tokenizer.json")[-1]
    assert (record.bytes_sent, record.completed) == (1000, False)
    assert httpx.get(served.url(TINY, "tokenizer.json")).status_code == 200  # only once


def test_hf_hub_download_recovers_from_a_drop(served: RunningHub, tmp_path: Path) -> None:
    served.hub.faults.drop_after("model.safetensors", 300_000)
    served.hub.log.clear()
    path = hf_hub_download(
        TINY, "model.safetensors", endpoint=served.endpoint, cache_dir=tmp_path, token=False
    )
    assert Path(path).read_bytes() == repo(served, TINY).by_path["model.safetensors"].content
    attempts = served.hub.log.records(path="/cdn-lfs/*")
    assert (attempts[0].bytes_sent, attempts[0].completed) == (300_000, False)
    assert attempts[-1].completed


def test_stall_after_times_out_the_reader(served: RunningHub) -> None:
    served.hub.faults.stall_after("tokenizer.json", 500, seconds=5)
    received = bytearray()
    began = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        drain(served.url(TINY, "tokenizer.json"), received, timeout=httpx.Timeout(5, read=0.3))
    assert len(received) == 500
    assert time.monotonic() - began < 2


def test_throttle_slows_the_body(served: RunningHub) -> None:
    content = repo(served, TINY).by_path["tokenizer.json"].content
    began = time.monotonic()
    assert httpx.get(served.url(TINY, "tokenizer.json")).content == content
    fast = time.monotonic() - began
    rate = len(content) * 2  # about half a second
    served.hub.faults.throttle("tokenizer.json", rate)
    began = time.monotonic()
    assert httpx.get(served.url(TINY, "tokenizer.json")).content == content
    slow = time.monotonic() - began
    assert slow >= 0.4
    assert slow > 4 * fast


def test_faults_and_log_over_http(served: RunningHub) -> None:
    base = f"{served.endpoint}/_testbed"
    assert httpx.delete(f"{base}/requests").json() == []
    added = httpx.post(
        f"{base}/faults", json={"kind": "fail_next", "path": "generation_config.json", "count": 1}
    )
    assert added.json()[0]["kind"] == "fail_next"
    assert httpx.post(f"{base}/faults", json={"kind": "nope", "path": "*"}).status_code == 400
    url = served.url(TINY, "generation_config.json")
    assert httpx.get(url).status_code == 503
    assert httpx.get(url, headers={"Range": "bytes=0-9"}).status_code == 206
    assert httpx.post(
        f"{base}/faults", json={"kind": "throttle", "path": "*", "bytes_per_second": 10}
    ).is_success
    assert httpx.delete(f"{base}/faults").json() == []
    log = httpx.get(f"{base}/requests").json()
    assert [(r["status"], r["range"], r["bytes_sent"]) for r in log] == [
        (503, None, log[0]["bytes_sent"]),
        (206, "bytes=0-9", 10),
    ]
    assert served.hub.log.records()[-1].range == "bytes=0-9"


def test_direct_lfs_serving_and_clean_stop(tmp_path: Path) -> None:
    """Without the CDN redirect LFS files come straight from /resolve, still with X-Linked-*."""

    def hub_threads() -> int:
        return sum(t.name == "testbed-hub" for t in threading.enumerate())

    before = hub_threads()
    source = llama_repo("solo/model", weights_bytes=32 * 1024)
    hub = LocalHub([source], lfs_redirect=False)
    with running_hub(hub) as running:
        endpoint = running.endpoint
        assert hub_threads() == before + 1
        head = httpx.head(running.url("solo/model", "model.safetensors"))
        assert head.status_code == 200
        weights = source.by_path["model.safetensors"]
        assert head.headers["X-Linked-Size"] == head.headers["Content-Length"] == str(weights.size)
        assert head.headers["ETag"] == f'"{weights.sha256}"'
        path = hf_hub_download(
            "solo/model", "model.safetensors", endpoint=endpoint, cache_dir=tmp_path, token=False
        )
        assert Path(path).read_bytes() == weights.content
        assert not hub.log.records(path="/cdn-lfs/*")
    assert hub_threads() == before
    assert hub.cdn_endpoint is None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{endpoint}/api/models/solo/model")
