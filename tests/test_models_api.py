"""The Models API end to end: GraphQL over HTTP to a running modelplane, FerretDB, local hub."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest

from storage.client import Database
from storage.documents import Role
from testbed.hub import RunningHub
from testbed.servers import S3Server
from tests.conftest import HUB_TOKEN, RunningApp
from tests.graphql_client import execute, run
from tests.helpers import weights_area
from tests.operations import operation


def remote(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "source": {
            "url": "https://api.deepseek.com/v1",
            "accessMode": "REMOTE_API",
            "token": "sk-remote-key-0001",
        },
        "displayName": "DeepSeek Chat",
        "tags": ["chat", "remote"],
    }
    value.update(overrides)
    return value


def local(app: RunningApp, repo: str = "tiny-org/tiny-model", **overrides: Any) -> dict[str, Any]:
    root = weights_area(app.resources.settings.local_roots)
    value: dict[str, Any] = {
        "source": {"url": repo, "accessMode": "LOCAL"},
        "downloadTarget": {"local": {"localPath": str(root / repo.replace("/", "--"))}},
        "resources": {"cpu": "4", "memory": "16Gi", "gpu": 1},
    }
    value.update(overrides)
    return value


async def create(
    app: RunningApp, value: dict[str, Any], *, role: Role = Role.EDITOR, organization: str = "org-a"
) -> dict[str, Any]:
    data = await run(
        app.graphql_url,
        "CreateModel",
        {"input": value},
        token=app.token(role=role, organization=organization),
    )
    result: dict[str, Any] = data["createModel"]
    return result


async def test_remote_api_model_is_ready_and_hides_its_key(
    running_app: RunningApp, database: Database
) -> None:
    model = await create(running_app, remote())
    assert model["__typename"] == "Model"
    assert model["phase"] == "READY"
    assert model["name"] == "deepseek-chat"
    assert model["source"] == {
        "url": "https://api.deepseek.com/v1",
        "accessMode": "REMOTE_API",
        "revision": None,
        "hasToken": True,
    }
    assert model["downloadTarget"] is None
    assert model["organizationId"] == "org-a"
    assert model["id"].startswith("model-")
    assert len(model["id"]) == len("model-a3k9x")


async def test_local_model_is_filled_from_the_hub(running_app: RunningApp, hub: RunningHub) -> None:
    model = await create(running_app, local(running_app))
    source = hub.hub.repos["tiny-org/tiny-model"]
    assert model["__typename"] == "Model", model
    assert model["phase"] == "PENDING"
    assert model["name"] == "tiny-model"
    assert model["displayName"] == "tiny-model"
    assert model["label"] == "tiny-org"
    assert model["icon"].endswith("/avatars/tiny-org.png")
    assert "tests" in (model["description"] or "")
    assert "text-generation" in model["tags"]
    assert model["hub"]["license"] == "apache-2.0"
    assert model["hub"]["commitSha"] == source.sha
    assert model["hub"]["architecture"] == "LlamaForCausalLM"
    assert model["hub"]["weightBytes"] == sum(f.size for f in source.files)
    assert model["hub"]["parameters"] > 0
    assert model["hub"]["gated"] is False
    assert model["resources"] == {"cpu": "4", "memory": "16Gi", "gpu": 1}
    assert model["downloadTarget"]["__typename"] == "LocalTarget"
    assert model["source"]["hasToken"] is False


async def test_hub_urls_are_normalised_to_repo_ids(running_app: RunningApp) -> None:
    model = await create(
        running_app,
        local(
            running_app,
            source={
                "url": "https://huggingface.co/tiny-org/sharded-model/tree/main",
                "accessMode": "LOCAL",
            },
        ),
    )
    assert model["source"]["url"] == "tiny-org/sharded-model"
    assert model["name"] == "sharded-model"


async def test_gated_repo_needs_a_granting_token(running_app: RunningApp) -> None:
    refused = await create(running_app, local(running_app, "gated-org/gated-model"))
    assert refused["__typename"] == "ValidationError"
    assert refused["field"] == "source.token"
    value = local(running_app, "gated-org/gated-model")
    value["source"]["token"] = HUB_TOKEN
    accepted = await create(running_app, value)
    assert accepted["__typename"] == "Model"
    assert accepted["hub"]["gated"] is True
    assert accepted["source"]["hasToken"] is True


def _long(n: int) -> str:
    return "x" * n


BAD_INPUTS: list[tuple[str, Any, str]] = [
    ("remote-without-display-name", lambda app: remote(displayName=None), "displayName"),
    (
        "remote-ftp-url",
        lambda app: remote(source={"url": "ftp://api.example.com/v1", "accessMode": "REMOTE_API"}),
        "source.url",
    ),
    (
        "remote-metadata-ip",
        lambda app: remote(
            source={"url": "http://169.254.169.254/latest", "accessMode": "REMOTE_API"}
        ),
        "source.url",
    ),
    (
        "remote-ec2-ipv6-metadata",
        lambda app: remote(source={"url": "http://[fd00:ec2::254]/v1", "accessMode": "REMOTE_API"}),
        "source.url",
    ),
    (
        "remote-metadata-host",
        lambda app: remote(
            source={"url": "http://metadata.google.internal/v1", "accessMode": "REMOTE_API"}
        ),
        "source.url",
    ),
    (
        "local-non-hub-url",
        lambda app: local(app, source={"url": "https://example.com/a/b", "accessMode": "LOCAL"}),
        "source.url",
    ),
    (
        "local-not-a-repo-id",
        lambda app: local(app, source={"url": "just-a-name", "accessMode": "LOCAL"}),
        "source.url",
    ),
    (
        "local-unknown-repo",
        lambda app: local(app, source={"url": "nobody/nothing", "accessMode": "LOCAL"}),
        "source.url",
    ),
    (
        "local-unknown-revision",
        lambda app: local(
            app,
            source={"url": "tiny-org/tiny-model", "accessMode": "LOCAL", "revision": "nope"},
        ),
        "source.revision",
    ),
    (
        "local-without-target",
        lambda app: local(app, downloadTarget=None),
        "downloadTarget",
    ),
    (
        "local-path-with-dotdot",
        lambda app: local(
            app,
            downloadTarget={
                "local": {"localPath": str(app.resources.settings.local_roots[0] / ".." / "x")}
            },
        ),
        "downloadTarget.local.localPath",
    ),
    (
        "local-path-outside-roots",
        lambda app: local(app, downloadTarget={"local": {"localPath": "/etc/models"}}),
        "downloadTarget.local.localPath",
    ),
    (
        "pvc-on-local-runtime",
        lambda app: local(app, downloadTarget={"pvc": {"claimName": "weights"}}),
        "downloadTarget.pvc",
    ),
    (
        "s3-without-bucket",
        lambda app: local(
            app, downloadTarget={"s3": {"accessKeyId": "AK", "secretAccessKey": "SK"}}
        ),
        "downloadTarget.s3.bucket",
    ),
    (
        "s3-without-secret",
        lambda app: local(app, downloadTarget={"s3": {"bucket": "models", "accessKeyId": "AK"}}),
        "downloadTarget.s3.secretAccessKey",
    ),
    ("memory-in-gb", lambda app: local(app, resources={"memory": "64GB"}), "resources.memory"),
    ("negative-cpu", lambda app: local(app, resources={"cpu": "-1"}), "resources.cpu"),
    ("too-many-gpus", lambda app: local(app, resources={"gpu": 1000}), "resources.gpu"),
    ("name-too-long", lambda app: remote(name=_long(64)), "name"),
    ("name-not-dns", lambda app: remote(name="Not_A_Label"), "name"),
    ("description-over-4k", lambda app: remote(description=_long(4097)), "description"),
    ("too-many-tags", lambda app: remote(tags=[f"t{i}" for i in range(33)]), "tags"),
    ("tag-too-long", lambda app: remote(tags=[_long(65)]), "tags"),
    ("icon-not-http", lambda app: remote(icon="javascript:alert(1)"), "icon"),
]


@pytest.mark.parametrize(("case", "make", "field"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
async def test_bad_input_is_a_validation_error_and_nothing_is_stored(
    running_app: RunningApp, case: str, make: Any, field: str
) -> None:
    result = await create(running_app, make(running_app))
    assert result["__typename"] == "ValidationError", result
    assert result["field"] == field
    assert result["errorMessage"]
    database = running_app.resources.database
    assert await database["models"].count_documents({}) == 0
    assert await database["secrets"].count_documents({}) == 0


async def test_one_of_target_with_two_kinds_is_refused(running_app: RunningApp) -> None:
    value = local(running_app)
    value["downloadTarget"]["s3"] = {"bucket": "b", "accessKeyId": "a", "secretAccessKey": "s"}
    body = await execute(
        running_app.graphql_url,
        operation("CreateModel"),
        {"input": value},
        token=running_app.token(organization="org-a"),
    )
    assert body.get("data") is None
    assert "exactly one" in body["errors"][0]["message"].lower()
    assert await running_app.resources.database["models"].count_documents({}) == 0


async def test_duplicate_name_is_a_conflict(running_app: RunningApp) -> None:
    first = await create(running_app, remote())
    assert first["__typename"] == "Model"
    second = await create(running_app, remote())
    assert second["__typename"] == "ConflictError"
    assert second["conflictField"] == "name"
    assert await running_app.resources.database["models"].count_documents({}) == 1
    assert await running_app.resources.database["secrets"].count_documents({}) == 1
    other_org = await create(running_app, remote(), organization="org-b")
    assert other_org["__typename"] == "Model"  # names are unique per organisation only


async def test_listing_pages_and_filters(running_app: RunningApp) -> None:
    for i in range(5):
        assert (await create(running_app, remote(name=f"r{i}", tags=[f"t{i % 2}"])))["name"]
    await create(running_app, local(running_app))
    token = running_app.token(role=Role.VIEWER, organization="org-a")
    url = running_app.graphql_url

    page = (await run(url, "Models", {"limit": 2, "offset": 1}, token=token))["models"]
    assert page["total"] == 6
    assert [m["name"] for m in page["items"]] == ["r4", "r3"]  # newest first, after tiny-model

    async def names(**filter_: Any) -> list[str]:
        data = await run(url, "Models", {"filter": filter_, "limit": 50}, token=token)
        return sorted(m["name"] for m in data["models"]["items"])

    assert await names(accessMode="LOCAL") == ["tiny-model"]
    assert await names(phase="READY") == ["r0", "r1", "r2", "r3", "r4"]
    assert await names(tag="t1") == ["r1", "r3"]
    assert await names(search="TINY") == ["tiny-model"]
    assert await names(search="deepseek.com") == ["r0", "r1", "r2", "r3", "r4"]
    assert await names(search=".*") == []  # regex characters are literal
    assert await names(managed=False) == []


async def test_the_inference_phase_filter_takes_a_phase_and_refuses_other_text(
    running_app: RunningApp,
) -> None:
    """``inferencePhase`` is the InferencePhase enum: a phase lists the models whose inference
    is in it, anything else is refused by GraphQL itself (it used to match nothing: issue 17).
    ``hasInference: false`` lists the models with none."""
    serving = await create(running_app, remote(name="serving"))
    await create(running_app, remote(name="idle"))
    await running_app.resources.database["models"].update_one(
        {"_id": serving["id"]}, {"$set": {"inference_phase": "RUNNING"}}
    )
    token = running_app.token(role=Role.VIEWER, organization="org-a")

    async def names(model_filter: dict[str, Any]) -> list[str]:
        data = await run(
            running_app.graphql_url, "Models", {"filter": model_filter, "limit": 50}, token=token
        )
        return [m["name"] for m in data["models"]["items"]]

    assert await names({"inferencePhase": "RUNNING"}) == ["serving"]
    assert await names({"inferencePhase": "PENDING"}) == []
    assert await names({"hasInference": False}) == ["idle"]
    assert await names({"hasInference": True}) == ["serving"]
    assert await names({"hasInference": True, "inferencePhase": "RUNNING"}) == ["serving"]
    for text in ("running", "Running", "NONE"):
        body = await execute(
            running_app.graphql_url,
            operation("Models"),
            {"filter": {"inferencePhase": text}, "limit": 50},
            token=token,
        )
        assert body.get("data") is None, body
        assert "InferencePhase" in body["errors"][0]["message"], body
    body = await execute(
        running_app.graphql_url,
        operation("Models"),
        {"filter": {"inferencePhase": "RUNNING", "hasInference": False}, "limit": 50},
        token=token,
    )
    assert body["errors"][0]["extensions"] == {
        "code": "BAD_USER_INPUT",
        "field": "filter.hasInference",
    }


async def test_concurrent_updates_all_land_and_a_delete_wins_over_later_ones(
    running_app: RunningApp,
) -> None:
    """updateModel re-reads and re-decides when it loses the compare-and-set: five at once
    all land, one write each; after a delete, an update is NotFound and changes nothing."""
    model = await create(running_app, remote())
    token = running_app.token(organization="org-a")

    async def update(value: dict[str, Any]) -> dict[str, Any]:
        data = await run(
            running_app.graphql_url,
            "UpdateModel",
            {"id": model["id"], "input": value},
            token=token,
        )
        result: dict[str, Any] = data["updateModel"]
        return result

    fields: list[dict[str, Any]] = [
        {"displayName": "Renamed"},
        {"description": "described"},
        {"label": "labelled"},
        {"tags": ["tagged"]},
        {"icon": "https://example.com/icon.png"},
    ]
    results = await asyncio.gather(*(update(value) for value in fields))
    assert all(r["__typename"] == "Model" for r in results), results
    stored = await running_app.resources.database["models"].find_one({"_id": model["id"]})
    assert stored is not None
    assert stored["revision"] == 1 + len(fields)
    assert (stored["display_name"], stored["description"], stored["label"]) == (
        "Renamed",
        "described",
        "labelled",
    )
    assert (stored["tags"], stored["icon"]) == (["tagged"], "https://example.com/icon.png")

    deleted = await run(running_app.graphql_url, "DeleteModel", {"id": model["id"]}, token=token)
    assert deleted["deleteModel"]["__typename"] == "DeletedModel"
    late = await update({"label": "too late"})
    assert late["__typename"] == "NotFoundError"
    stored = await running_app.resources.database["models"].find_one({"_id": model["id"]})
    assert stored is not None
    assert stored["label"] == "labelled"


async def test_limits_are_enforced(running_app: RunningApp) -> None:
    body = await execute(
        running_app.graphql_url,
        operation("Models"),
        {"limit": 101},
        token=running_app.token(organization="org-a"),
    )
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "limit"}


async def test_update_changes_fields_and_validates(running_app: RunningApp) -> None:
    model = await create(running_app, remote())
    token = running_app.token(organization="org-a")
    updated = (
        await run(
            running_app.graphql_url,
            "UpdateModel",
            {
                "id": model["id"],
                "input": {
                    "displayName": "Renamed",
                    "description": "",
                    "tags": ["a", "a", "b"],
                    "resources": {"cpu": "500m", "memory": "2Gi"},
                },
            },
            token=token,
        )
    )["updateModel"]
    assert updated["displayName"] == "Renamed"
    assert updated["description"] is None
    assert updated["tags"] == ["a", "b"]
    assert updated["resources"] == {"cpu": "500m", "memory": "2Gi", "gpu": None}
    assert updated["updatedAt"] > model["updatedAt"]

    bad = (
        await run(
            running_app.graphql_url,
            "UpdateModel",
            {"id": model["id"], "input": {"resources": {"memory": "lots"}}},
            token=token,
        )
    )["updateModel"]
    assert bad == {
        "__typename": "ValidationError",
        "errorMessage": bad["errorMessage"],
        "field": "resources.memory",
    }
    stored = await running_app.resources.database["models"].find_one({"_id": model["id"]})
    assert stored is not None
    assert stored["resources"]["memory"] == "2Gi"
    assert stored["revision"] == 2


async def test_delete_is_soft_idempotent_and_frees_the_name(running_app: RunningApp) -> None:
    model = await create(running_app, remote())
    token = running_app.token(role=Role.EDITOR, organization="org-a")
    first = (await run(running_app.graphql_url, "DeleteModel", {"id": model["id"]}, token=token))[
        "deleteModel"
    ]
    assert first["__typename"] == "DeletedModel"
    assert first["alreadyDeleted"] is False
    assert first["model"]["isDeleted"] is True
    assert first["model"]["deletionTime"] is not None
    assert first["removed"] == [{"kind": "EncryptedSecret", "name": f"{model['id']}-credentials"}]
    database = running_app.resources.database
    assert await database["secrets"].count_documents({}) == 0
    stored = await database["models"].find_one({"_id": model["id"]})
    assert stored is not None
    assert stored["is_deleted"] is True

    second = (await run(running_app.graphql_url, "DeleteModel", {"id": model["id"]}, token=token))[
        "deleteModel"
    ]
    assert second["alreadyDeleted"] is True
    assert second["removed"] == []

    listed = (await run(running_app.graphql_url, "Models", {}, token=token))["models"]
    assert listed["total"] == 0
    assert (await run(running_app.graphql_url, "Model", {"id": model["id"]}, token=token))[
        "model"
    ] is None
    admin = running_app.token(role=Role.ADMIN, organization="org-a")
    with_deleted = await run(
        running_app.graphql_url, "Models", {"filter": {"includeDeleted": True}}, token=admin
    )
    assert with_deleted["models"]["total"] == 1
    editor_asks = await execute(
        running_app.graphql_url,
        operation("Models"),
        {"filter": {"includeDeleted": True}},
        token=token,
    )
    assert editor_asks["errors"][0]["extensions"]["code"] == "FORBIDDEN"

    again = await create(running_app, remote())
    assert again["__typename"] == "Model"
    assert again["name"] == model["name"]


def s3_with_token(app: RunningApp, s3_server: S3Server) -> dict[str, Any]:
    """A LOCAL model with both credentials: a hub token and an S3 secret key."""
    return local(
        app,
        source={"url": "tiny-org/tiny-model", "accessMode": "LOCAL", "token": HUB_TOKEN},
        downloadTarget={
            "s3": {
                "endpoint": s3_server.endpoint,
                "bucket": "no-such-bucket",
                "region": s3_server.region,
                "accessKeyId": s3_server.access_key_id,
                "secretAccessKey": s3_server.secret_access_key,
            }
        },
    )


async def test_delete_says_the_credentials_are_gone(
    running_app: RunningApp, s3_server: S3Server
) -> None:
    """Issue 16 bug 3: the secret is deleted, so hasToken / hasSecretAccessKey say false."""
    url, database = running_app.graphql_url, running_app.resources.database
    admin = running_app.token(role=Role.ADMIN, organization="org-a")
    models = [await create(running_app, remote())]
    models.append(await create(running_app, s3_with_token(running_app, s3_server)))
    assert models[1]["downloadTarget"]["hasSecretAccessKey"] is True
    assert await database["secrets"].count_documents({}) == 2
    for model in models:
        assert model["source"]["hasToken"] is True, model
        deleted = (await run(url, "DeleteModel", {"id": model["id"]}, token=admin))["deleteModel"]
        assert deleted["removed"] == [
            {"kind": "EncryptedSecret", "name": f"{model['id']}-credentials"}
        ]
        assert deleted["model"]["source"]["hasToken"] is False
        seen = (await run(url, "Model", {"id": model["id"]}, token=admin))["model"]
        assert seen["isDeleted"] is True, seen
        assert seen["source"]["hasToken"] is False
        if seen["downloadTarget"] is not None:
            assert seen["downloadTarget"]["hasSecretAccessKey"] is False
        stored = await database["models"].find_one({"_id": model["id"]})
        assert stored is not None
        assert stored["secret_ref"] is None
    assert await database["secrets"].count_documents({}) == 0
    again = (await run(url, "DeleteModel", {"id": models[0]["id"]}, token=admin))["deleteModel"]
    assert again["alreadyDeleted"] is True
    assert again["model"]["source"]["hasToken"] is False


async def test_roles_and_authentication(running_app: RunningApp) -> None:
    viewer = await create(running_app, remote(), role=Role.VIEWER)
    assert viewer["__typename"] == "ForbiddenError"
    assert viewer["requiredRole"] == "EDITOR"
    assert await running_app.resources.database["models"].count_documents({}) == 0

    anonymous = await execute(running_app.graphql_url, operation("Models"), {})
    assert anonymous["data"] is None
    assert anonymous["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    anonymous_write = await execute(
        running_app.graphql_url, operation("CreateModel"), {"input": remote()}
    )
    assert anonymous_write["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert await running_app.resources.database["models"].count_documents({}) == 0


async def test_other_organisations_see_nothing(running_app: RunningApp) -> None:
    model = await create(running_app, remote(), organization="org-a")
    url = running_app.graphql_url
    intruder = running_app.token(role=Role.ADMIN, organization="org-b")

    assert (await run(url, "Model", {"id": model["id"]}, token=intruder))["model"] is None
    listed = await run(url, "Models", {"filter": {"includeDeleted": True}}, token=intruder)
    assert listed["models"]["total"] == 0
    searched = await run(url, "Models", {"filter": {"search": "deepseek"}}, token=intruder)
    assert searched["models"]["items"] == []
    updated = (
        await run(
            url, "UpdateModel", {"id": model["id"], "input": {"displayName": "x"}}, token=intruder
        )
    )["updateModel"]
    assert updated["__typename"] == "NotFoundError"
    deleted = (await run(url, "DeleteModel", {"id": model["id"]}, token=intruder))["deleteModel"]
    assert deleted["__typename"] == "NotFoundError"

    stored = await running_app.resources.database["models"].find_one({"_id": model["id"]})
    assert stored is not None
    assert stored["display_name"] == "DeepSeek Chat"
    assert stored["is_deleted"] is False


async def test_hugging_face_preview_and_search(running_app: RunningApp, hub: RunningHub) -> None:
    token = running_app.token(role=Role.VIEWER, organization="org-a")
    url = running_app.graphql_url
    preview = (
        await run(url, "HuggingFaceModel", {"repoId": "tiny-org/sharded-model"}, token=token)
    )["huggingFaceModel"]
    source = hub.hub.repos["tiny-org/sharded-model"]
    assert preview["__typename"] == "HuggingFaceModel"
    assert preview["sha"] == source.sha
    assert preview["weightBytes"] == sum(f.size for f in source.files)
    files = {f["path"]: f for f in preview["files"]}
    shard = source.by_path["model-00001-of-00003.safetensors"]
    assert files[shard.path]["sha256"] == hashlib.sha256(shard.content).hexdigest()
    assert files[shard.path]["size"] == shard.size

    missing = (await run(url, "HuggingFaceModel", {"repoId": "no/such"}, token=token))[
        "huggingFaceModel"
    ]
    assert missing["__typename"] == "ValidationError"
    assert missing["field"] == "repoId"

    found = (await run(url, "HuggingFaceSearch", {"query": "tiny"}, token=token))[
        "huggingFaceSearch"
    ]
    assert sorted(item["repoId"] for item in found["items"]) == [
        "tiny-org/sharded-model",
        "tiny-org/tiny-model",
    ]
