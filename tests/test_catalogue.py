"""The git-synced catalogue against a real git server on loopback (git http-backend behind
basic auth) and a real modelplane on FerretDB: configure, sync, refusals naming the field,
the last good snapshot kept when the remote is down, refuses the credential or was
force-pushed, two refreshes at once, install, generate, preview and propose."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from storage.catalogues import catalogue_id
from storage.client import Client, Database
from storage.documents import Role
from testbed.git import Author, GitServer
from testbed.hub import RunningHub
from tests.conftest import RunningApp, make_settings, serve_app
from tests.git_fixtures import GIT_PASSWORD
from tests.graphql_client import run
from tests.helpers import weights_area

ORG = "org-a"
GOOD = """\
name: tiny
displayName: Tiny model
source:
  repo: tiny-org/tiny-model
engine: VLLM
flags:
  max-model-len: 2048
  enforce-eager: true
resources: {cpu: "2", memory: 4Gi, gpu: 1}
tags: [chat, tiny]
"""
MALFORMED = """\
name: broken
source:
  revision: main
engine: tgi
colour: red
flags: [--trust-remote-code]
"""
OTHER = "source: {repo: tiny-org/tiny-model}\ndescription: second entry\n"


def _author(git_remote: GitServer, tmp_path: Path) -> tuple[str, Author]:
    name = f"cat-{uuid.uuid4().hex[:8]}"
    bare = git_remote.create(name)
    return name, Author(bare, tmp_path / f"author-{name}")


def _source(git_remote: GitServer, name: str, **overrides: Any) -> dict[str, Any]:
    return {
        "url": git_remote.url(name),
        "branch": "main",
        "folder": "models",
        "username": git_remote.username,
        "password": GIT_PASSWORD,
        **overrides,
    }


async def _call(
    app: RunningApp, operation: str, variables: dict[str, Any], *, role: Role = Role.ADMIN
) -> dict[str, Any]:
    data = await run(
        app.graphql_url, operation, variables, token=app.token(role=role, organization=ORG)
    )
    result: dict[str, Any] = next(iter(data.values()))
    return result


async def _configure(app: RunningApp, source: dict[str, Any]) -> dict[str, Any]:
    return await _call(app, "ConfigureCatalog", {"source": source})


async def _refresh(app: RunningApp, *, role: Role = Role.EDITOR, accept: bool = False) -> Any:
    return await _call(app, "RefreshCatalog", {"acceptForcePush": accept}, role=role)


def _by_name(catalog: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Entries by name (the first by path where a name repeats)."""
    found: dict[str, dict[str, Any]] = {}
    for entry in catalog["entries"]["items"]:
        found.setdefault(entry["name"], entry)
    return found


async def test_a_catalogue_syncs_and_one_bad_file_hides_no_other(
    running_app: RunningApp,
    git_remote: GitServer,
    tmp_path: Path,
    mongo_client: Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    name, author = _author(git_remote, tmp_path)
    author.symlink("models/escape.yaml", "../../../../etc/passwd")
    author.symlink("models/zz-alias.yaml", "tiny.yaml")
    commit = author.commit(
        "first entries",
        {
            "models/tiny.yaml": GOOD,
            "models/broken.yaml": MALFORMED,
            "models/sub/other.yml": OTHER,
            "models/README.md": "not an entry",
            "elsewhere/ignored.yaml": GOOD,
        },
    )
    catalog = await _configure(running_app, _source(git_remote, name))
    assert catalog["__typename"] == "Catalog", catalog
    assert catalog["hasCredentials"] is True
    assert catalog["sync"]["commit"] == commit
    assert catalog["sync"]["lastError"] is None
    entries = _by_name(catalog)
    assert set(entries) == {"tiny", "broken", "other", "escape"}
    assert entries["tiny"]["valid"]
    assert entries["tiny"]["flags"] == [
        "--max-model-len=2048",
        "--enforce-eager",
    ]
    assert entries["other"]["valid"]
    assert entries["other"]["path"] == "models/sub/other.yml"
    broken = {(i["field"], i["line"]) for i in entries["broken"]["issues"]}
    assert broken >= {("source.repo", 3), ("engine", 4), ("colour", 5), ("flags[0]", 6)}
    assert all(i["path"] == "models/broken.yaml" for i in entries["broken"]["issues"])
    escape = entries["escape"]["issues"][0]
    assert escape["field"] == "path"
    assert "out of the checkout" in escape["message"]
    # zz-alias.yaml points at tiny.yaml inside the checkout: read as tiny, a repeated name
    assert catalog["entriesTotal"] == 5
    assert catalog["invalidTotal"] == 3
    alias = catalog["entries"]["items"][-1]
    assert alias["path"] == "models/zz-alias.yaml"
    assert alias["repo"] == "tiny-org/tiny-model"
    assert alias["issues"][0]["field"] == "name"

    listed = await _call(running_app, "Catalog", {"valid": True}, role=Role.VIEWER)
    assert {e["name"] for e in listed["entries"]["items"]} == {"tiny", "other"}

    # The password is nowhere: not in the document, the bare repository's files, or the logs.
    database = mongo_client[running_app.resources.settings.mongodb_database]
    raw = await database["catalogues"].find_one({"_id": catalogue_id(ORG)})
    assert raw is not None
    assert GIT_PASSWORD not in repr(raw)
    cache = running_app.resources.settings.state_dir / "catalogues"
    for path in cache.rglob("*"):
        if path.is_file():
            assert GIT_PASSWORD.encode() not in path.read_bytes(), path
    assert all(GIT_PASSWORD not in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"password": "wrong-password"}, "source.password"),
        ({"password": None, "username": None}, "source.username"),
        ({"url": "ftp://127.0.0.1/x.git"}, "source.url"),
        ({"url": "http://user:pw@127.0.0.1/x.git"}, "source.url"),
        ({"url": "http://127.0.0.1:1/nothing.git"}, "source.url"),
        ({"url": "http://169.254.169.254/x.git"}, "source.url"),
        ({"branch": "no-such-branch"}, "source.branch"),
        ({"branch": "--upload-pack=touch"}, "source.branch"),
        ({"folder": "/etc"}, "source.folder"),
        ({"folder": "models/../.."}, "source.folder"),
    ],
)
async def test_a_bad_source_is_refused_naming_the_field_and_nothing_is_stored(
    running_app: RunningApp,
    git_remote: GitServer,
    tmp_path: Path,
    mongo_client: Client,
    overrides: dict[str, Any],
    field: str,
) -> None:
    name, author = _author(git_remote, tmp_path)
    author.commit("one", {"models/tiny.yaml": GOOD})
    result = await _configure(running_app, _source(git_remote, name, **overrides))
    assert result["__typename"] == "ValidationError", result
    assert result["field"] == field, result
    assert GIT_PASSWORD not in result["errorMessage"]
    database = mongo_client[running_app.resources.settings.mongodb_database]
    assert await database["catalogues"].count_documents({}) == 0
    assert await database["secrets"].count_documents({}) == 0
    assert await _call(running_app, "Catalog", {}, role=Role.VIEWER) is None


async def test_only_an_admin_configures_and_an_editor_refreshes(
    running_app: RunningApp, git_remote: GitServer, tmp_path: Path
) -> None:
    name, author = _author(git_remote, tmp_path)
    author.commit("one", {"models/tiny.yaml": GOOD})
    refused = await _call(
        running_app, "ConfigureCatalog", {"source": _source(git_remote, name)}, role=Role.EDITOR
    )
    assert refused["__typename"] == "ForbiddenError"
    assert refused["requiredRole"] == "ADMIN"
    missing = await _refresh(running_app)
    assert missing["__typename"] == "NotFoundError"
    assert (await _configure(running_app, _source(git_remote, name)))["__typename"] == "Catalog"
    assert (await _refresh(running_app, role=Role.VIEWER))["__typename"] == "ForbiddenError"


async def test_the_last_good_snapshot_serves_while_the_remote_is_down_or_refuses(
    running_app: RunningApp, git_remote: GitServer, tmp_path: Path
) -> None:
    name, author = _author(git_remote, tmp_path)
    first = author.commit("one", {"models/tiny.yaml": GOOD})
    assert (await _configure(running_app, _source(git_remote, name)))["sync"]["commit"] == first
    author.commit("two", {"models/other.yaml": OTHER})

    with git_remote.offline():
        down = await _refresh(running_app)
    assert down["sync"]["commit"] == first
    assert down["sync"]["lastErrorKind"] == "UNREACHABLE"
    assert "503" in down["sync"]["lastError"]
    assert set(_by_name(down)) == {"tiny"}

    original = git_remote.password
    git_remote._server.password = "rotated-on-the-server"  # the stored credential is now wrong
    try:
        refused = await _refresh(running_app)
    finally:
        git_remote._server.password = original
    assert refused["sync"]["lastErrorKind"] == "AUTH_REFUSED"
    assert refused["sync"]["commit"] == first
    assert set(_by_name(refused)) == {"tiny"}

    recovered = await _refresh(running_app)
    assert recovered["sync"]["lastError"] is None
    assert set(_by_name(recovered)) == {"tiny", "other"}
    assert recovered["sync"]["lastSuccessAt"] > down["sync"]["lastErrorAt"]


async def test_a_force_pushed_branch_waits_for_an_admin(
    running_app: RunningApp, git_remote: GitServer, tmp_path: Path
) -> None:
    name, author = _author(git_remote, tmp_path)
    author.commit("base", {"models/tiny.yaml": GOOD})
    second = author.commit("two", {"models/other.yaml": OTHER})
    assert (await _configure(running_app, _source(git_remote, name)))["sync"]["commit"] == second
    rewritten = author.rewrite("history rewritten", {"models/other.yaml": None})

    held = await _refresh(running_app)
    assert held["sync"]["lastErrorKind"] == "FORCE_PUSHED", held["sync"]
    assert held["sync"]["commit"] == second
    assert held["sync"]["remoteCommit"] == rewritten
    assert set(_by_name(held)) == {"tiny", "other"}
    assert (await _refresh(running_app, accept=True))["__typename"] == "ForbiddenError"

    accepted = await _refresh(running_app, role=Role.ADMIN, accept=True)
    assert accepted["sync"]["commit"] == rewritten
    assert accepted["sync"]["lastError"] is None
    assert set(_by_name(accepted)) == {"tiny"}
    # and ordinary pushes on the new history go on syncing
    third = author.commit("three", {"models/other.yaml": OTHER})
    assert (await _refresh(running_app))["sync"]["commit"] == third


async def test_refreshes_at_once_on_two_replicas_agree(
    tmp_path: Path,
    mongo_uri: str,
    mongo_client: Client,
    hub: RunningHub,
    git_remote: GitServer,
) -> None:
    name, author = _author(git_remote, tmp_path)
    author.commit("one", {"models/tiny.yaml": GOOD})
    shared = f"app_{uuid.uuid4().hex[:12]}"
    first_settings = make_settings(
        tmp_path / "a", mongo_uri, hf_endpoint=hub.endpoint, mongodb_database=shared
    )
    second_settings = make_settings(
        tmp_path / "b", mongo_uri, hf_endpoint=hub.endpoint, mongodb_database=shared
    )
    async with (
        serve_app(first_settings, mongo_client, keep_database=True) as first,
        serve_app(second_settings, mongo_client) as second,
    ):
        assert (await _configure(first, _source(git_remote, name)))["__typename"] == "Catalog"
        files = {f"models/m{i}.yaml": OTHER.replace("second", f"entry {i}") for i in range(20)}
        head = author.commit("many", files)
        time.monotonic()
        started = time.monotonic()
        results = await asyncio.gather(
            *(_refresh(app) for app in (first, second, first, second, first, second))
        )
        took = time.monotonic() - started
        print(f"6 refreshes at once on 2 replicas: {took:.2f} s")  # noqa: T201  the figure
        for result in results:
            assert result["__typename"] == "Catalog"
            assert result["sync"]["lastError"] is None
        final = await _call(second, "Catalog", {"limit": 200}, role=Role.VIEWER)
        assert final["sync"]["commit"] == head
        assert final["entriesTotal"] == 21
        assert final["invalidTotal"] == 0
        assert len({e["path"] for e in final["entries"]["items"]}) == 21
        # each replica's repository is intact after the concurrent fetches
        for app in (first, second):
            again = await _refresh(app)
            assert again["sync"]["commit"] == head
            assert again["sync"]["lastError"] is None


async def test_install_starts_the_entrys_engine_with_its_flags(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub, git_remote: GitServer
) -> None:
    name, author = _author(git_remote, tmp_path)
    author.commit("one", {"models/tiny.yaml": GOOD})
    served = GOOD.replace("enforce-eager: true", "tensor-parallel-size: 1")
    author.commit("servable", {"models/served.yaml": served.replace("name: tiny", "name: served")})
    settings = make_settings(tmp_path, mongo_uri, hf_endpoint=hub.endpoint)
    async with serve_app(settings, mongo_client) as app:
        await _configure(app, _source(git_remote, name))
        area = weights_area(app.resources.settings.local_roots, ORG)
        installed = await _call(
            app,
            "InstallCatalogEntry",
            {
                "input": {
                    "name": "served",
                    "modelName": "tiny-served",
                    "downloadTarget": {"local": {"localPath": str(area / "tiny")}},
                    "startInference": True,
                }
            },
            role=Role.EDITOR,
        )
        assert installed["__typename"] == "InstalledCatalogEntry", installed
        assert installed["model"]["name"] == "tiny-served"
        assert installed["inference"]["started"] is True
        database = mongo_client[settings.mongodb_database]
        stored = await database["inferences"].find_one({"model_id": installed["model"]["id"]})
        assert stored is not None
        spec = stored["spec"]
        assert (spec["engine"], spec["args"], spec["context_length"]) == ("VLLM", None, 2048)
        assert (spec["cpu"], spec["memory"], spec["gpu"]) == ("2", "4Gi", 1)


async def test_the_leader_pulls_on_the_schedule(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub, git_remote: GitServer
) -> None:
    name, author = _author(git_remote, tmp_path)
    author.commit("one", {"models/tiny.yaml": GOOD})
    settings = make_settings(
        tmp_path, mongo_uri, hf_endpoint=hub.endpoint, catalogue_sync_seconds=0.5
    )
    async with serve_app(settings, mongo_client) as app:
        await _configure(app, _source(git_remote, name))
        head = author.commit("two", {"models/other.yaml": OTHER})
        started = time.monotonic()
        while time.monotonic() - started < 30:
            catalog = await _call(app, "Catalog", {}, role=Role.VIEWER)
            if catalog["sync"]["commit"] == head:
                break
            await asyncio.sleep(0.2)
        waited = time.monotonic() - started
        print(f"scheduled pull seen {waited:.2f} s after the push (period 0.5 s)")  # noqa: T201
        assert catalog["sync"]["commit"] == head
        assert catalog["entriesTotal"] == 2


async def test_install_creates_the_model_and_refuses_cleanly(
    running_app: RunningApp,
    git_remote: GitServer,
    tmp_path: Path,
    database: Database,
    mongo_client: Client,
) -> None:
    name, author = _author(git_remote, tmp_path)
    wide = GOOD.replace("name: tiny", "name: wide")
    wide = wide.replace("enforce-eager: true", "tensor-parallel-size: 2")
    author.commit(
        "one", {"models/tiny.yaml": GOOD, "models/broken.yaml": MALFORMED, "models/wide.yaml": wide}
    )
    await _configure(running_app, _source(git_remote, name))
    area = weights_area(running_app.resources.settings.local_roots, ORG)
    target = {"local": {"localPath": str(area / "tiny")}}

    invalid = await _call(
        running_app, "InstallCatalogEntry", {"input": {"name": "broken", "downloadTarget": target}}
    )
    assert invalid["__typename"] == "ValidationError"
    assert invalid["field"] == "name"
    assert "models/broken.yaml" in invalid["errorMessage"]
    absent = await _call(
        running_app, "InstallCatalogEntry", {"input": {"name": "nope", "downloadTarget": target}}
    )
    assert absent["__typename"] == "NotFoundError"
    app_db = mongo_client[running_app.resources.settings.mongodb_database]
    assert await app_db["models"].count_documents({}) == 0

    # Two-way tensor parallelism on an entry asking for one GPU: refused before anything is
    # written (the entry's other flags go as engineArgs: tests/test_engine_args_local.py).
    refused = await _call(
        running_app,
        "InstallCatalogEntry",
        {"input": {"name": "wide", "downloadTarget": target, "startInference": True}},
        role=Role.EDITOR,
    )
    assert refused["__typename"] == "ValidationError", refused
    assert refused["field"] == "input.startInference"
    assert "--tensor-parallel-size=2" in refused["errorMessage"]
    assert await app_db["models"].count_documents({}) == 0
    assert await app_db["inferences"].count_documents({}) == 0

    installed = await _call(
        running_app,
        "InstallCatalogEntry",
        {"input": {"name": "tiny", "downloadTarget": target}},
        role=Role.EDITOR,
    )
    assert installed["__typename"] == "InstalledCatalogEntry", installed
    assert installed["model"]["name"] == "tiny"
    assert installed["model"]["source"]["url"] == "tiny-org/tiny-model"
    assert installed["model"]["tags"] == ["chat", "tiny"]
    assert installed["inference"] is None


async def test_preview_generate_and_propose(
    running_app: RunningApp, git_remote: GitServer, tmp_path: Path
) -> None:
    name, author = _author(git_remote, tmp_path)
    base = author.commit("one", {"models/tiny.yaml": GOOD})
    await _configure(running_app, _source(git_remote, name))

    preview = await _call(
        running_app, "PreviewCatalogEntry", {"yaml": MALFORMED, "path": "x.yaml"}, role=Role.VIEWER
    )
    assert preview["__typename"] == "CatalogEntry"
    assert preview["valid"] is False
    assert {"source.repo", "engine", "colour", "flags[0]"} <= {
        i["field"] for i in preview["issues"]
    }

    generated = await _call(
        running_app,
        "GenerateCatalogEntry",
        {"repoId": "tiny-org/tiny-model", "gpuType": "L4"},
        role=Role.VIEWER,
    )
    assert generated["__typename"] == "GeneratedCatalogEntry", generated
    assert generated["entry"]["valid"], generated["entry"]["issues"]
    assert generated["entry"]["repo"] == "tiny-org/tiny-model"
    assert f"--max-model-len={generated['fit']['contextLength']}" in generated["entry"]["flags"]
    assert generated["entry"]["resources"]["gpu"] == generated["fit"]["gpusNeeded"]

    proposed = await _call(
        running_app,
        "ProposeCatalogEntry",
        {"yaml": generated["yaml"], "path": "generated/tiny-model.yaml", "message": "Add it"},
        role=Role.EDITOR,
    )
    assert proposed["__typename"] == "CatalogProposal", proposed
    assert proposed["baseCommit"] == base
    assert proposed["path"] == "models/generated/tiny-model.yaml"
    branches = author.remote_branches()
    assert branches[proposed["branch"]] == proposed["commit"]
    assert branches["main"] == base
    assert author.show(proposed["commit"], proposed["path"]) == generated["yaml"]
    assert author.show(proposed["commit"], "models/tiny.yaml") == GOOD

    again = await _call(
        running_app,
        "ProposeCatalogEntry",
        {"yaml": GOOD, "path": "tiny2.yaml", "branch": proposed["branch"]},
        role=Role.EDITOR,
    )
    assert again["__typename"] == "ValidationError"
    assert again["field"] == "branch"
    for variables, field in (
        ({"yaml": MALFORMED, "path": "bad.yaml"}, "yaml"),
        ({"yaml": GOOD, "path": "../escape.yaml"}, "path"),
        ({"yaml": GOOD, "path": "/abs.yaml"}, "path"),
        ({"yaml": GOOD, "path": "ok.yaml", "branch": "main"}, "branch"),
    ):
        refused = await _call(running_app, "ProposeCatalogEntry", variables, role=Role.EDITOR)
        assert refused["__typename"] == "ValidationError", refused
        assert refused["field"] == field, refused
    assert set(author.remote_branches()) == {"main", proposed["branch"]}


async def test_configuring_again_replaces_the_source_snapshot_and_credential(
    running_app: RunningApp, git_remote: GitServer, tmp_path: Path, mongo_client: Client
) -> None:
    first_name, first_author = _author(git_remote, tmp_path)
    first_author.commit("one", {"models/tiny.yaml": GOOD})
    second_name, second_author = _author(git_remote, tmp_path)
    head = second_author.commit("one", {"catalog/other.yaml": OTHER})
    assert set(_by_name(await _configure(running_app, _source(git_remote, first_name)))) == {"tiny"}
    replaced = await _configure(running_app, _source(git_remote, second_name, folder="catalog"))
    assert replaced["url"] == git_remote.url(second_name)
    assert replaced["sync"]["commit"] == head
    assert set(_by_name(replaced)) == {"other"}
    database = mongo_client[running_app.resources.settings.mongodb_database]
    assert await database["catalogues"].count_documents({}) == 1
    assert await database["secrets"].count_documents({}) == 1
    # a refused reconfiguration keeps the working one
    refused = await _configure(running_app, _source(git_remote, first_name, password="nope"))
    assert refused["field"] == "source.password"
    kept = await _call(running_app, "Catalog", {}, role=Role.VIEWER)
    assert kept["url"] == git_remote.url(second_name)
    assert set(_by_name(kept)) == {"other"}


async def test_on_kubernetes_the_credential_is_a_secret_and_never_returned(
    kube_app: RunningApp, kube_namespace: str, git_remote: GitServer, tmp_path: Path
) -> None:
    name, author = _author(git_remote, tmp_path)
    author.commit("one", {"models/tiny.yaml": GOOD})
    catalog = await _configure(kube_app, _source(git_remote, name))
    assert catalog["__typename"] == "Catalog", catalog
    assert catalog["hasCredentials"] is True
    assert GIT_PASSWORD not in repr(catalog)
    configuration = k8s.Configuration()
    await k8s_config.load_kube_config(
        config_file=str(kube_app.resources.settings.kubeconfig),
        client_configuration=configuration,
    )
    async with k8s.ApiClient(configuration) as api:
        secret = await k8s.CoreV1Api(api).read_namespaced_secret(
            f"{catalogue_id(ORG)}-credentials", kube_namespace
        )
    assert secret.metadata.labels["app.kubernetes.io/managed-by"] == "modelplane"
    assert base64.b64decode(secret.data["git-password"]).decode() == GIT_PASSWORD


async def test_a_remote_that_redirects_is_not_followed(
    running_app: RunningApp, git_remote: GitServer, tmp_path: Path
) -> None:
    name, author = _author(git_remote, tmp_path)
    author.commit("one", {"models/tiny.yaml": GOOD})
    other, other_author = _author(git_remote, tmp_path)
    other_author.commit("one", {"models/other.yaml": OTHER})
    with git_remote.redirecting(name, git_remote.url(other)):
        refused = await _configure(running_app, _source(git_remote, name))
    assert refused["__typename"] == "ValidationError", refused
    assert refused["field"] == "source.url"
    assert await _call(running_app, "Catalog", {}, role=Role.VIEWER) is None
