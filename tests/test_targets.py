"""Download targets: one type per kind, stored in the shape documents always had.

The stored-shape tests write raw documents exactly as the single optional-field model wrote
them (every field of every kind, nulls for the others) straight into FerretDB, load them
through the repositories and write them back: the kind is recognised and nothing changes.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from storage.client import Database
from storage.documents import ModelDocument, WeightsDocument
from storage.repositories import ModelRepository, WeightsRepository
from storage.targets import (
    S3_SECRET_KEY,
    DownloadTarget,
    LocalTarget,
    PvcTarget,
    S3Target,
    TargetKind,
)

EMPTY: dict[str, Any] = {
    "kind": None,
    "local_path": None,
    "claim_name": None,
    "sub_path": None,
    "storage_class": None,
    "size_gi": None,
    "endpoint": None,
    "bucket": None,
    "region": None,
    "prefix": None,
    "access_key_id": None,
    "has_secret_access_key": False,
}
"""A target as the old model stored it, before its kind's fields are filled in."""

STORED = {
    "LOCAL": {**EMPTY, "kind": "LOCAL", "local_path": "/data/models/org-a/qwen"},
    "PVC": {
        **EMPTY,
        "kind": "PVC",
        "claim_name": "models",
        "sub_path": "hf/qwen",
        "storage_class": "fast",
        "size_gi": 20,
    },
    "S3": {
        **EMPTY,
        "kind": "S3",
        "endpoint": "http://minio:9000",
        "bucket": "weights",
        "region": "eu-west-1",
        "prefix": "cache",
        "access_key_id": "AKIAEXAMPLE",
        "has_secret_access_key": True,
    },
}
TYPES: dict[str, type[LocalTarget | PvcTarget | S3Target]] = {
    "LOCAL": LocalTarget,
    "PVC": PvcTarget,
    "S3": S3Target,
}


def _model(target: dict[str, Any]) -> dict[str, Any]:
    return {
        "_id": "model-old",
        "revision": 1,
        "organization_id": "org-a",
        "name": "qwen",
        "name_key": "qwen",
        "display_name": "Qwen",
        "source": {"url": "Qwen/Qwen", "access_mode": "LOCAL", "revision": None},
        "download_target": target,
        "phase": "PENDING",
    }


@pytest.mark.parametrize("kind", ["LOCAL", "PVC", "S3"])
async def test_a_stored_target_of_the_old_shape_loads_as_its_kind_and_round_trips(
    database: Database, kind: str
) -> None:
    raw = _model(STORED[kind])
    await database["models"].insert_one(raw)
    models = ModelRepository(database)
    model = await models.require("model-old")
    assert type(model.download_target) is TYPES[kind]
    assert model.to_mongo()["download_target"] == STORED[kind]
    assert list(model.to_mongo()["download_target"]) == list(STORED[kind])  # same order too
    assert model.download_target is not None
    await models.update(
        "model-old",
        expected_revision=1,
        changes={"download_target": model.download_target.model_dump()},
    )
    stored = await database["models"].find_one({"_id": "model-old"})
    assert stored is not None
    assert stored["download_target"] == STORED[kind]


async def test_a_new_target_is_stored_in_the_old_shape(database: Database) -> None:
    weights = WeightsRepository(database)
    await weights.insert(
        WeightsDocument(
            id="weights-1",
            organization_id="org-a",
            repo_id="Qwen/Qwen",
            commit_sha="c0ffee",
            target=PvcTarget(
                claim_name="models", sub_path="hf/qwen", storage_class="fast", size_gi=20
            ),
            location="pvc://models/hf/qwen",
        )
    )
    stored = await database["weights"].find_one({"_id": "weights-1"})
    assert stored is not None
    assert stored["target"] == STORED["PVC"]


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValidationError, match="kind"):
        ModelDocument.model_validate(_model({**EMPTY, "kind": "NFS"}))


LOCAL = LocalTarget(local_path="/data/models/org-a/qwen")
PVC = PvcTarget(claim_name="models", sub_path="hf/qwen")
PVC_ROOT = PvcTarget(claim_name="models")
S3 = S3Target(bucket="weights", prefix="/cache/", access_key_id="AK", has_secret_access_key=True)
AWS = S3Target(bucket="weights", access_key_id="AK", region=None)


@pytest.mark.parametrize(
    ("target", "location", "directory", "place", "described"),
    [
        (
            LOCAL,
            "/data/models/org-a/qwen",
            "/data/models/org-a/qwen",
            ("local", "/data/models/org-a/qwen"),
            "/data/models/org-a/qwen",
        ),
        (PVC, "pvc://models/hf/qwen", "/weights/hf/qwen", ("pvc:models", "/hf/qwen"), None),
        (PVC_ROOT, "pvc://models", "/weights", ("pvc:models", "/"), None),
        (
            S3,
            "s3://weights/cache/Qwen/Qwen/c0ffee",
            None,
            None,
            "the S3 endpoint AWS (default) (s3://weights/cache/Qwen/Qwen/c0ffee)",
        ),
    ],
)
def test_each_kind_answers_for_itself(
    target: DownloadTarget,
    location: str,
    directory: str | None,
    place: tuple[str, str] | None,
    described: str | None,
) -> None:
    assert target.location("Qwen/Qwen", "c0ffee") == location
    assert target.directory("/weights/") == directory
    assert target.place() == place
    assert target.describe(location) == (described or location)


def test_only_s3_needs_and_keeps_a_secret() -> None:
    assert LOCAL.secret_keys == PVC.secret_keys == ()
    assert S3.secret_keys == (S3_SECRET_KEY,)
    assert S3.has_secret
    assert not LOCAL.has_secret
    assert not PVC.has_secret
    forgotten = S3.without_secret()
    assert isinstance(forgotten, S3Target)
    assert not forgotten.has_secret
    assert S3.has_secret  # the original is untouched
    assert LOCAL.without_secret() == LOCAL


def test_volumes_and_regions() -> None:
    assert LOCAL.volume_filter() == {"kind": "LOCAL"}
    assert PVC.volume_filter() == {"kind": "PVC", "claim_name": "models"}
    assert S3.volume_filter() == {}
    assert PVC.shared_volume
    assert not LOCAL.shared_volume
    assert AWS.region_name == "us-east-1"
    assert S3.key_prefix("s3://weights/cache/a") == "cache/a"
    assert {t.kind for t in (LOCAL, PVC, S3)} == set(TargetKind)
