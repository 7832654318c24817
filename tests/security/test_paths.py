"""Attacker reproducers for weights paths and deletion (issue 15, findings 1 and 9).

Two organisations with real editor tokens: org B tries to point a LOCAL download at the root,
at org A's area, at A's weights or inside them, and through a symlink into A's area; each is
refused with a ValidationError on ``downloadTarget.local.localPath`` and nothing is written.
B's own weights, deleted with force, take nothing of A's with them. ``deleteWeights`` on an
unreachable S3 endpoint says which endpoint and keeps the record.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client as k8s

from controllers.runtimes.kubernetes.runtime import KubernetesRuntime
from modelplane.embedded import free_port
from storage.documents import Role
from testbed.hub import RunningHub
from tests.conftest import RunningApp
from tests.graphql_client import run
from tests.helpers import weights_area

REPO = "tiny-org/tiny-model"
FIELD = "downloadTarget.local.localPath"


def editor(app: RunningApp, organization: str) -> str:
    return app.token(role=Role.EDITOR, organization=organization)


async def create(
    app: RunningApp, organization: str, target: dict[str, Any], *, repo: str = REPO
) -> dict[str, Any]:
    value = {"source": {"url": repo, "accessMode": "LOCAL"}, "downloadTarget": target}
    data = await run(
        app.graphql_url, "CreateModel", {"input": value}, token=editor(app, organization)
    )
    result: dict[str, Any] = data["createModel"]
    return result


async def settled(app: RunningApp, organization: str, model_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        data = await run(
            app.graphql_url, "ModelDownload", {"id": model_id}, token=editor(app, organization)
        )
        model: dict[str, Any] = data["model"]
        if model["phase"] in ("READY", "FAILED"):
            return model
        assert time.monotonic() < deadline, f"timed out; last seen {model}"
        await asyncio.sleep(0.1)


def snapshot(directory: Path) -> dict[str, str]:
    """Every file below ``directory`` and its sha256 (symlinks by their target)."""
    found = {}
    for path in sorted(directory.rglob("*")):
        if path.is_symlink():
            found[str(path)] = f"-> {path.readlink()}"
        elif path.is_file():
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


async def test_no_organisation_can_reach_or_wipe_another_organisations_weights(
    running_app: RunningApp, hub: RunningHub
) -> None:
    roots = running_app.resources.settings.local_roots
    root = roots[0].resolve()
    area_a, area_b = weights_area(roots, "org-a"), weights_area(roots, "org-b")
    database = running_app.resources.database

    made = await create(running_app, "org-a", {"local": {"localPath": str(area_a / "tiny")}})
    assert made["__typename"] == "Model", made
    model_a = await settled(running_app, "org-a", made["id"])
    assert model_a["phase"] == "READY", model_a
    weights_a = Path(model_a["weights"]["location"])
    before = snapshot(root)
    assert len([p for p in before if p.startswith(str(weights_a))]) >= 3

    area_b.mkdir(parents=True)
    (area_b / "link").symlink_to(area_a)
    (area_b / "tiny-link").symlink_to(weights_a)
    attempts = [
        root,
        root / "x" / ".." / "org-a",
        area_a,
        weights_a,
        weights_a / "sub",
        area_b,
        area_b / "link",
        area_b / "link" / "tiny",
        area_b / "tiny-link",
        area_b / "tiny-link" / "sub",
        root / "elsewhere",
    ]
    for path in attempts:
        refused = await create(running_app, "org-b", {"local": {"localPath": str(path)}})
        assert refused["__typename"] == "ValidationError", (path, refused)
        assert refused["field"] == FIELD, (path, refused)
    assert await database["models"].count_documents({"organization_id": "org-b"}) == 0
    assert await database["weights"].count_documents({"organization_id": "org-b"}) == 0
    assert snapshot(root) == before | {
        str(area_b / "link"): f"-> {area_a}",
        str(area_b / "tiny-link"): f"-> {weights_a}",
    }

    # B's own weights, overlapping nothing, downloaded and then deleted with force.
    (area_b / "link").unlink()
    (area_b / "tiny-link").unlink()
    nested = await create(running_app, "org-b", {"local": {"localPath": str(area_b / "m")}})
    model_b = await settled(running_app, "org-b", nested["id"])
    assert model_b["phase"] == "READY", model_b
    inside_own = await create(
        running_app, "org-b", {"local": {"localPath": str(area_b / "m" / "inner")}}
    )
    assert inside_own["__typename"] == "ValidationError", inside_own
    assert inside_own["field"] == FIELD
    deleted = (
        await run(
            running_app.graphql_url,
            "DeleteWeights",
            {"id": model_b["weights"]["id"], "force": True},
            token=editor(running_app, "org-b"),
        )
    )["deleteWeights"]
    assert deleted["__typename"] == "DeletedWeights", deleted
    assert snapshot(root) == before  # A's files, byte for byte; B left nothing behind
    assert root.is_dir()
    assert area_a.is_dir()
    assert not (area_b / "m").exists()
    still = await settled(running_app, "org-a", made["id"])
    assert still["phase"] == "READY"
    assert still["weights"]["id"] == model_a["weights"]["id"]
    assert await database["weights"].count_documents({"organization_id": "org-a"}) == 1
    assert await database["weights"].count_documents({"organization_id": "org-b"}) == 0


async def test_delete_weights_on_an_unreachable_s3_endpoint_keeps_them(
    running_app: RunningApp, hub: RunningHub
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    made = await create(
        running_app,
        "org-a",
        {
            "s3": {
                "endpoint": endpoint,
                "bucket": "models",
                "accessKeyId": "AKIA-TEST",
                "secretAccessKey": "secret-that-is-never-shown",
            }
        },
    )
    assert made["__typename"] == "Model", made
    model = await settled(running_app, "org-a", made["id"])
    assert model["phase"] == "FAILED", model
    weights_id = model["weights"]["id"]
    database = running_app.resources.database
    record = await database["weights"].find_one({"_id": weights_id})
    refused = (
        await run(
            running_app.graphql_url,
            "DeleteWeights",
            {"id": weights_id, "force": True},
            token=editor(running_app, "org-a"),
        )
    )["deleteWeights"]
    assert refused["__typename"] == "ConflictError", refused
    assert endpoint in refused["errorMessage"]
    assert "kept" in refused["errorMessage"]
    assert "secret-that-is-never-shown" not in refused["errorMessage"]
    # The record is kept as it was; only the removal's mark says why it was refused.
    kept = await database["weights"].find_one({"_id": weights_id})
    assert kept is not None
    assert kept["deletion"]["refused"] in refused["errorMessage"]
    changed = {"deletion", "revision", "updated_at", "pending_events"}
    assert record is not None
    assert {k: v for k, v in kept.items() if k not in changed} == {
        k: v for k, v in record.items() if k not in changed
    }
    after = await run(
        running_app.graphql_url,
        "ModelDownload",
        {"id": made["id"]},
        token=editor(running_app, "org-a"),
    )
    assert after["model"]["weights"]["id"] == weights_id


async def test_a_pvc_claim_serves_one_organisation_and_sub_paths_do_not_nest(
    kube_app: RunningApp,
) -> None:
    """The kubernetes runtime's PVC targets: org B cannot write into (nor, deleting, take
    files from) a claim holding org A's weights, and A's sub-paths do not nest."""

    def pvc(sub_path: str) -> dict[str, Any]:
        return {"pvc": {"claimName": "weights-shared", "subPath": sub_path, "sizeGi": 1}}

    first = await create(kube_app, "org-a", pvc("models/a"))
    assert first["__typename"] == "Model", first
    for organization, sub_path, field in [
        ("org-b", "models/b", "downloadTarget.pvc.claimName"),
        ("org-b", "models/a", "downloadTarget.pvc.claimName"),
        ("org-a", "models", "downloadTarget.pvc.subPath"),
        ("org-a", "models/a/inner", "downloadTarget.pvc.subPath"),
        ("org-a", "", "downloadTarget.pvc.subPath"),
    ]:
        refused = await create(kube_app, organization, pvc(sub_path), repo="tiny-org/sharded-model")
        assert refused["__typename"] == "ValidationError", (organization, sub_path, refused)
        assert refused["field"] == field, (organization, sub_path, refused)
    database = kube_app.resources.database
    assert await database["models"].count_documents({"organization_id": "org-b"}) == 0
    assert await database["models"].count_documents({"organization_id": "org-a"}) == 1
    beside = await create(kube_app, "org-a", pvc("models/c"), repo="tiny-org/sharded-model")
    assert beside["__typename"] == "Model", beside


async def test_a_download_cannot_take_over_a_claim_of_the_namespace(kube_app: RunningApp) -> None:
    """A PVC target naming a claim that modelplane did not create for the organisation (here
    a database's) is refused, with or without sizeGi: the download would write into it, and
    applying our labels to it made deleteWeights delete it. The claim keeps its labels and no
    download Job is made."""
    runtime = kube_app.resources.runtime
    assert isinstance(runtime, KubernetesRuntime)
    core = k8s.CoreV1Api(runtime.api)
    namespace = kube_app.resources.settings.namespace
    labels = {"app": "database"}
    await core.create_namespaced_persistent_volume_claim(
        namespace,
        k8s.V1PersistentVolumeClaim(
            metadata=k8s.V1ObjectMeta(name="database-data", labels=labels),
            spec=k8s.V1PersistentVolumeClaimSpec(
                access_modes=["ReadWriteOnce"],
                resources=k8s.V1VolumeResourceRequirements(requests={"storage": "1Gi"}),
            ),
        ),
    )
    for index, (repo, size) in enumerate([(REPO, {}), ("tiny-org/sharded-model", {"sizeGi": 1})]):
        pvc = {"claimName": "database-data", "subPath": f"m{index}"} | size
        made = await create(kube_app, "org-a", {"pvc": pvc}, repo=repo)
        assert made["__typename"] == "Model", made
        model = await settled(kube_app, "org-a", made["id"])
        assert model["phase"] == "FAILED", model
        assert "is not labelled for this organisation" in model["message"], model
        claim = await core.read_namespaced_persistent_volume_claim("database-data", namespace)
        assert claim.metadata.labels == labels
        jobs = await k8s.BatchV1Api(runtime.api).list_namespaced_job(namespace)
        assert jobs.items == []
