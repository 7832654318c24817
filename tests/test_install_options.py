"""Install options, part 1: file patterns (allowPatterns / ignorePatterns) of a LOCAL download.

Against the local hub and FerretDB: only the matched files are listed, fetched, counted in
progress and verified; the weights record the patterns, and a copy is shared only by models
asking for the same subset. Bad patterns are refused before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controllers.downloads.running import weights_location
from storage.client import Database
from storage.documents import LocalTarget, Role, S3Target, WeightsDocument
from storage.repositories import WeightsRepository
from storage.selection import ALL_FILES, FileSelection
from testbed.hub import RunningHub
from tests.conftest import RunningApp
from tests.graphql_client import execute, run
from tests.helpers import weights_area
from tests.test_weights_api import ready, wait_model

SHARDED = "tiny-org/sharded-model"
PATTERNS_QUERY = """
query Patterns($id: ID!) {
  model(id: $id) {
    source { allowPatterns ignorePatterns }
    weights { id allowPatterns ignorePatterns prefetched }
  }
}
"""


@pytest.fixture(autouse=True)
def clean_hub(hub: RunningHub) -> Iterator[None]:
    hub.hub.faults.clear()
    hub.hub.log.clear()
    yield
    hub.hub.faults.clear()


def editor(app: RunningApp) -> str:
    return app.token(role=Role.EDITOR, organization="org-a")


async def create(
    app: RunningApp,
    directory: str,
    *,
    allow: list[str] | None = None,
    ignore: list[str] | None = None,
    name: str | None = None,
    repo: str = SHARDED,
) -> dict[str, Any]:
    root = weights_area(app.resources.settings.local_roots)
    source: dict[str, Any] = {"url": repo, "accessMode": "LOCAL"}
    if allow is not None:
        source["allowPatterns"] = allow
    if ignore is not None:
        source["ignorePatterns"] = ignore
    value: dict[str, Any] = {
        "source": source,
        "downloadTarget": {"local": {"localPath": str(root / directory)}},
    }
    if name:
        value["name"] = name
    data = await run(app.graphql_url, "CreateModel", {"input": value}, token=editor(app))
    result: dict[str, Any] = data["createModel"]
    return result


@pytest.mark.parametrize(
    ("allow", "ignore", "path", "taken"),
    [
        ([], [], "model-00001-of-00003.safetensors", True),
        (["*.safetensors"], [], "model-00001-of-00003.safetensors", True),
        (["*.safetensors"], [], "config.json", False),
        (["*.json"], ["tokenizer*"], "tokenizer_config.json", False),
        (["*.json"], ["tokenizer*"], "config.json", True),
        (["onnx/"], [], "onnx/model.onnx", True),
        (["onnx/"], [], "model.onnx", False),
        ([], ["original/"], "original/consolidated.pth", False),
        (["*"], [], "sub/dir/file.bin", True),  # '*' crosses '/' as in huggingface_hub
        (["Config.json"], [], "config.json", False),  # case-sensitive
    ],
)
def test_selection_takes(allow: list[str], ignore: list[str], path: str, taken: bool) -> None:
    assert FileSelection.of(allow, ignore).takes(path) is taken


def test_selection_is_normalised_and_keys_the_s3_prefix() -> None:
    one = FileSelection.of(["b", "a", "a"], ["x"])
    other = FileSelection.of(["a", "b"], ["x"])
    assert one == other
    assert one.allow == ["a", "b"]
    assert one.digest() == other.digest() != FileSelection.of(["a"]).digest()
    s3 = S3Target(bucket="b", access_key_id="k", prefix="p")
    whole = weights_location(s3, "o/r", "c0ffee")
    assert whole == "s3://b/p/o/r/c0ffee" == weights_location(s3, "o/r", "c0ffee", ALL_FILES)
    assert weights_location(s3, "o/r", "c0ffee", one) == f"{whole}-files-{one.digest()}"
    local = LocalTarget(local_path="/data/x")
    assert weights_location(local, "o/r", "c0ffee", one) == "/data/x"


async def test_documents_without_patterns_are_every_file(database: Database) -> None:
    """Weights stored before patterns existed load as "every file" and are found as such."""
    repository = WeightsRepository(database)
    raw = WeightsDocument(
        id="weights-old01",
        organization_id="org-a",
        repo_id="o/r",
        commit_sha="c" * 40,
        target=LocalTarget(local_path="/data/o"),
        location="/data/o",
    ).to_mongo()
    del raw["selection"], raw["prefetched"]
    await database["weights"].insert_one(raw)
    found = await repository.for_location(
        organization_id="org-a", location="/data/o", commit_sha="c" * 40
    )
    assert found is not None
    assert found.selection.everything
    assert not found.prefetched
    subset = FileSelection.of(["*.json"])
    assert (
        await repository.for_location(
            organization_id="org-a", location="/data/o", commit_sha="c" * 40, selection=subset
        )
        is None
    )


async def test_only_matched_files_are_fetched_counted_and_verified(
    running_app: RunningApp, hub: RunningHub
) -> None:
    created = await create(
        running_app,
        "subset",
        allow=["*.json", "model-00001-of-00003.safetensors"],
        ignore=["tokenizer*", "generation_config.json"],
    )
    assert created["__typename"] == "Model", created
    model = await wait_model(running_app, created["id"], ready)
    assert model["phase"] == "READY", model
    source = hub.hub.repos[SHARDED]
    wanted = sorted(
        f.path
        for f in source.files
        if (f.path.endswith(".json") or f.path == "model-00001-of-00003.safetensors")
        and not f.path.startswith("tokenizer")
        and f.path != "generation_config.json"
    )
    assert wanted == [
        "config.json",
        "model-00001-of-00003.safetensors",
        "model.safetensors.index.json",
    ]
    weights = model["weights"]
    assert sorted(f["path"] for f in weights["files"]) == wanted
    sizes = {f.path: f.size for f in source.files}
    assert weights["sizeBytes"] == sum(sizes[p] for p in wanted) < sum(sizes.values())
    progress = weights["progress"]
    assert progress["filesDone"] == progress["filesTotal"] == len(wanted)
    assert progress["bytesDone"] == progress["bytesTotal"] == weights["sizeBytes"]
    location = Path(weights["location"])
    on_disk = sorted(
        str(p.relative_to(location))
        for p in location.rglob("*")
        if p.is_file() and not p.name.startswith(".modelplane")
    )
    assert on_disk == wanted
    fetched = {r.path.rsplit("/", 1)[-1] for r in hub.hub.log.records(method="GET")}
    assert "model-00002-of-00003.safetensors" not in fetched
    assert "tokenizer.json" not in fetched
    data = await execute(
        running_app.graphql_url, PATTERNS_QUERY, {"id": created["id"]}, token=editor(running_app)
    )
    seen = data["data"]["model"]
    allow = ["*.json", "model-00001-of-00003.safetensors"]
    ignore = ["generation_config.json", "tokenizer*"]
    assert seen["source"] == {"allowPatterns": allow, "ignorePatterns": ignore}
    assert seen["weights"]["allowPatterns"] == allow
    assert seen["weights"]["ignorePatterns"] == ignore
    assert seen["weights"]["prefetched"] is False


async def test_subsets_share_a_copy_only_when_equal(running_app: RunningApp) -> None:
    first = await create(running_app, "cfg", allow=["config.json", "*.index.json"], name="one")
    assert first["__typename"] == "Model", first
    first_done = await wait_model(running_app, first["id"], ready)
    # The same subset, patterns in another order: the same copy.
    again = await create(running_app, "cfg", allow=["*.index.json", "config.json"], name="two")
    assert again["__typename"] == "Model", again
    again_done = await wait_model(running_app, again["id"], ready)
    assert again_done["weights"]["id"] == first_done["weights"]["id"]
    # Another subset in the same directory: refused, nothing written.
    other = await create(running_app, "cfg", allow=["config.json"], name="three")
    assert other["__typename"] == "ValidationError", other
    assert other["field"] == "downloadTarget.local.localPath"
    # Every file in the same directory is another subset too.
    whole = await create(running_app, "cfg", name="four")
    assert whole["__typename"] == "ValidationError", whole
    # Another subset elsewhere: a copy of its own.
    apart = await create(running_app, "cfg2", allow=["config.json"], name="five")
    assert apart["__typename"] == "Model", apart
    apart_done = await wait_model(running_app, apart["id"], ready)
    assert apart_done["weights"]["id"] != first_done["weights"]["id"]
    assert [f["path"] for f in apart_done["weights"]["files"]] == ["config.json"]
    database = running_app.resources.database
    assert await database["models"].count_documents({}) == 3
    assert await database["weights"].count_documents({}) == 2


@pytest.mark.parametrize(
    ("allow", "ignore", "field", "words"),
    [
        (["*.gguf"], None, "source.allowPatterns", "matches no file"),
        (["config.json", "nothing/"], None, "source.allowPatterns", "'nothing/'"),
        ([""], None, "source.allowPatterns", "empty pattern"),
        (["/config.json"], None, "source.allowPatterns", "relative"),
        (["../x/*"], None, "source.allowPatterns", "relative"),
        (None, ["a/../../b"], "source.ignorePatterns", "relative"),
        (None, ["*"], "source.ignorePatterns", "no file"),
        (["*.json"], ["*.json"], "source.ignorePatterns", "no file"),
    ],
)
async def test_bad_patterns_are_refused_before_anything_is_written(
    running_app: RunningApp,
    hub: RunningHub,
    allow: list[str] | None,
    ignore: list[str] | None,
    field: str,
    words: str,
) -> None:
    refused = await create(running_app, "bad", allow=allow, ignore=ignore)
    assert refused["__typename"] == "ValidationError", refused
    assert refused["field"] == field
    assert words in refused["errorMessage"], refused
    database = running_app.resources.database
    for collection in ("models", "weights", "secrets", "ledger"):
        assert await database[collection].count_documents({}) == 0, collection
    assert not (weights_area(running_app.resources.settings.local_roots) / "bad").exists()
    assert not [
        r for r in hub.hub.log.records() if "/resolve/" in r.path and "safetensors" in r.path
    ]


async def test_remote_api_models_take_no_patterns(running_app: RunningApp) -> None:
    value = {
        "source": {
            "url": "https://api.example.com/v1",
            "accessMode": "REMOTE_API",
            "allowPatterns": ["*.json"],
        },
        "displayName": "remote",
    }
    data = await run(
        running_app.graphql_url, "CreateModel", {"input": value}, token=editor(running_app)
    )
    assert data["createModel"]["__typename"] == "ValidationError"
    assert data["createModel"]["field"] == "source.allowPatterns"
    assert await running_app.resources.database["models"].count_documents({}) == 0


async def test_two_subsets_in_one_bucket_prefix_are_two_copies(
    running_app: RunningApp, hub: RunningHub, s3_server: Any
) -> None:
    """On S3 the location is derived, not chosen: another subset gets a prefix of its own,
    and each prefix holds exactly its files."""
    from tests.helpers import bucket_on

    client = await bucket_on(s3_server)
    target = {
        "s3": {
            "endpoint": s3_server.endpoint,
            "bucket": client.location.bucket,
            "region": s3_server.region,
            "prefix": "cache",
            "accessKeyId": s3_server.access_key_id,
            "secretAccessKey": s3_server.secret_access_key,
        }
    }
    copies = []
    for name, allow in (("jsons", ["*.json"]), ("shard", ["model-00002-of-00003.safetensors"])):
        value = {
            "source": {"url": SHARDED, "accessMode": "LOCAL", "allowPatterns": allow},
            "downloadTarget": target,
            "name": name,
        }
        data = await run(
            running_app.graphql_url, "CreateModel", {"input": value}, token=editor(running_app)
        )
        assert data["createModel"]["__typename"] == "Model", data
        model = await wait_model(running_app, data["createModel"]["id"], ready)
        assert model["phase"] == "READY", model
        copies.append(model["weights"])
    source = hub.hub.repos[SHARDED]
    whole = f"s3://{client.location.bucket}/cache/{SHARDED}/{source.sha}"
    assert copies[0]["id"] != copies[1]["id"]
    assert {c["location"] for c in copies} == {
        f"{whole}-files-{FileSelection.of(['*.json']).digest()}",
        f"{whole}-files-{FileSelection.of(['model-00002-of-00003.safetensors']).digest()}",
    }
    for copy in copies:
        prefix = copy["location"].removeprefix(f"s3://{client.location.bucket}/")
        for f in copy["files"]:
            stored = await client.get_bytes(f"{prefix}/{f['path']}")
            assert len(stored) == f["size"]
    assert [f["path"] for f in copies[1]["files"]] == ["model-00002-of-00003.safetensors"]


async def test_a_catalogue_install_takes_patterns(
    running_app: RunningApp, git_remote: Any, tmp_path: Path
) -> None:
    from tests.test_catalogue import GOOD, ORG, _author, _call, _configure, _source

    name, author = _author(git_remote, tmp_path)
    author.commit("one", {"models/tiny.yaml": GOOD})
    await _configure(running_app, _source(git_remote, name))
    area = weights_area(running_app.resources.settings.local_roots, ORG)
    target = {"local": {"localPath": str(area / "tiny")}}
    refused = await _call(
        running_app,
        "InstallCatalogEntry",
        {"input": {"name": "tiny", "downloadTarget": target, "allowPatterns": ["*.gguf"]}},
        role=Role.EDITOR,
    )
    assert refused["__typename"] == "ValidationError", refused
    assert refused["field"] == "allowPatterns"
    assert await running_app.resources.database["models"].count_documents({}) == 0
    installed = await _call(
        running_app,
        "InstallCatalogEntry",
        {"input": {"name": "tiny", "downloadTarget": target, "ignorePatterns": ["*.safetensors"]}},
        role=Role.EDITOR,
    )
    assert installed["__typename"] == "InstalledCatalogEntry", installed
    model = await wait_model(running_app, installed["model"]["id"], ready)
    assert model["phase"] == "READY", model
    assert model["weights"]["files"]
    assert not [f for f in model["weights"]["files"] if f["path"].endswith(".safetensors")]
