"""Install options, part 2: weights without a model (downloadWeights), attached later.

Against the local hub and FerretDB, with two replicas where it matters: the API on one that
runs no controllers, the download controller on the other (the mutations reach it through the
event log). Prefetched weights are downloaded by their own reconcile while no model uses them,
show in ``weights``/``weightsList``, can be cancelled, retried and deleted by id, and are
attached with ``createModel(weightsId)``; a mismatched request names its field.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from controllers.downloads.executions import Execution
from controllers.downloads.plan import Action, WeightsAction, plan_release, plan_weights
from storage.client import Client
from storage.documents import (
    AccessMode,
    LocalTarget,
    ModelDocument,
    ModelSource,
    Role,
    WeightsDocument,
    WeightsState,
)
from testbed.hub import RunningHub
from tests.conftest import HUB_TOKEN, RunningApp, make_settings, serve_app
from tests.graphql_client import run
from tests.helpers import weights_area
from tests.test_weights_api import MiB, until_gone

SHARDED = "tiny-org/sharded-model"
TINY = "tiny-org/tiny-model"
BOUND = 20.0


@pytest.fixture(autouse=True)
def clean_hub(hub: RunningHub) -> Iterator[None]:
    hub.hub.faults.clear()
    hub.hub.log.clear()
    yield
    hub.hub.faults.clear()


@pytest.fixture
async def replicas(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> AsyncIterator[tuple[RunningApp, RunningApp]]:
    """(api, leader): the first runs no controllers; both share the database and roots."""
    leading = make_settings(tmp_path, mongo_uri, hf_endpoint=hub.endpoint)
    serving = leading.model_copy(update={"run_controllers": False})
    async with (
        serve_app(leading, mongo_client) as leader,
        serve_app(serving, mongo_client, keep_database=True) as api,
    ):
        yield api, leader


def _weights(state: WeightsState, *models: str, prefetched: bool = True) -> WeightsDocument:
    return WeightsDocument(
        id="weights-p",
        organization_id="org",
        repo_id="o/r",
        commit_sha="c" * 40,
        target=LocalTarget(local_path="/d"),
        location="/d",
        state=state,
        model_ids=list(models),
        prefetched=prefetched,
    )


IDLE = Execution()
ACTIVE = Execution(active=True)


@pytest.mark.parametrize(
    ("weights", "execution", "expected"),
    [
        (_weights(WeightsState.PENDING), IDLE, Action.START),
        (_weights(WeightsState.PULLING), IDLE, Action.START),
        (_weights(WeightsState.PULLING), ACTIVE, WeightsAction.NOTHING),
        (_weights(WeightsState.PULLING), Execution(failure="OOMKilled"), Action.FAIL),
        (_weights(WeightsState.CANCELLED), ACTIVE, Action.CANCEL),
        (_weights(WeightsState.CANCELLED), Execution(stale=True), Action.CANCEL),
        (_weights(WeightsState.CANCELLED), IDLE, WeightsAction.NOTHING),
        (_weights(WeightsState.FAILED), ACTIVE, Action.HALT),
        (_weights(WeightsState.READY), IDLE, WeightsAction.NOTHING),
        # a model uses them: its reconcile drives the download
        (_weights(WeightsState.PENDING, "model-a"), IDLE, WeightsAction.NOTHING),
        # a model's weights left by it: nothing (plan_release stopped them)
        (_weights(WeightsState.PENDING, prefetched=False), IDLE, WeightsAction.NOTHING),
        (_weights(WeightsState.PENDING), None, WeightsAction.NOTHING),
    ],
)
def test_plan_weights_drives_prefetched_weights_alone(
    weights: WeightsDocument, execution: Execution | None, expected: WeightsAction | Action
) -> None:
    assert plan_weights(weights, execution) is expected


@pytest.mark.parametrize(("prefetched", "expected"), [(True, Action.RELEASE), (False, Action.STOP)])
def test_a_deleted_model_releases_prefetched_weights_without_stopping_them(
    prefetched: bool, expected: Action
) -> None:
    model = ModelDocument(
        id="model-a",
        organization_id="org",
        name="a",
        name_key="a",
        display_name="a",
        source=ModelSource(url="o/r", access_mode=AccessMode.LOCAL),
        is_deleted=True,
    )
    weights = _weights(WeightsState.PULLING, "model-a", prefetched=prefetched)
    assert plan_release(model, weights, ACTIVE) is expected


def editor(app: RunningApp) -> str:
    return app.token(role=Role.EDITOR, organization="org-a")


async def mutate(app: RunningApp, operation: str, variables: dict[str, Any]) -> dict[str, Any]:
    data = await run(app.graphql_url, operation, variables, token=editor(app))
    result: dict[str, Any] = next(iter(data.values()))
    return result


def place(app: RunningApp, name: str) -> dict[str, Any]:
    root = weights_area(app.resources.settings.local_roots)
    return {"local": {"localPath": str(root / name)}}


async def prefetch(app: RunningApp, repo: str, directory: str, **extra: Any) -> dict[str, Any]:
    value = {"repo": repo, "downloadTarget": place(app, directory), **extra}
    return await mutate(app, "DownloadWeights", {"input": value})


async def wait_weights(
    app: RunningApp, weights_id: str, predicate: Any, *, timeout: float = BOUND
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data = await run(app.graphql_url, "Weights", {"id": weights_id}, token=editor(app))
        weights: dict[str, Any] = data["weights"]
        if predicate(weights):
            return weights
        assert time.monotonic() < deadline, f"timed out; last seen {weights}"
        await _sleep()


async def _sleep() -> None:
    import asyncio

    await asyncio.sleep(0.1)


async def wait_model(app: RunningApp, model_id: str, phase: str) -> dict[str, Any]:
    deadline = time.monotonic() + BOUND
    while True:
        data = await run(app.graphql_url, "ModelDownload", {"id": model_id}, token=editor(app))
        model: dict[str, Any] = data["model"]
        if model["phase"] == phase:
            return model
        assert time.monotonic() < deadline, f"timed out; last seen {model}"
        await _sleep()


def settled(weights: dict[str, Any]) -> bool:
    return weights["state"] in ("READY", "FAILED")


async def test_prefetch_on_the_replica_that_does_not_lead_then_attach(
    replicas: tuple[RunningApp, RunningApp], hub: RunningHub
) -> None:
    api, _leader = replicas
    started = time.monotonic()
    asked = await prefetch(api, TINY, "pre", allowPatterns=["*.json", "*.safetensors"])
    assert asked["__typename"] == "Weights", asked
    assert asked["prefetched"] is True
    assert asked["modelIds"] == []
    assert asked["allowPatterns"] == ["*.json", "*.safetensors"]
    ready = await wait_weights(api, asked["id"], settled)
    print(f"downloadWeights -> {ready['state']}: {time.monotonic() - started:.2f} s")  # noqa: T201
    assert ready["state"] == "READY", ready
    source = hub.hub.repos[TINY]
    wanted = sorted(f.path for f in source.files if f.path.endswith((".json", ".safetensors")))
    assert sorted(f["path"] for f in ready["files"]) == wanted
    assert ready["progress"]["filesDone"] == len(wanted)
    for path in wanted:
        assert (Path(ready["location"]) / path).is_file()
    listing = await run(api.graphql_url, "WeightsList", {}, token=editor(api))
    assert [w["id"] for w in listing["weightsList"]["items"]] == [asked["id"]]

    # Asked again (patterns in another order): the same weights, nothing fetched again.
    gets = len(hub.hub.log.records(method="GET"))
    again = await prefetch(api, TINY, "pre", allowPatterns=["*.safetensors", "*.json"])
    assert again["id"] == asked["id"]

    # Attached: the model is READY on these weights without a byte fetched again.
    value = {
        "source": {"url": TINY, "accessMode": "LOCAL"},
        "weightsId": asked["id"],
        "name": "attached",
    }
    created = await mutate(api, "CreateModel", {"input": value})
    assert created["__typename"] == "Model", created
    model = await wait_model(api, created["id"], "READY")
    assert model["weights"]["id"] == asked["id"]
    assert model["weights"]["modelIds"] == [created["id"]]
    fetched = [r for r in hub.hub.log.records(method="GET")[gets:] if "/resolve/" in r.path]
    assert fetched == [] or all("README" in r.path for r in fetched), fetched

    # The model deleted: the prefetched weights stay, READY, used by nobody.
    deleted = await mutate(api, "DeleteModel", {"id": created["id"]})
    assert deleted["__typename"] == "DeletedModel", deleted
    left = await wait_weights(api, asked["id"], lambda w: w["modelIds"] == [])
    assert left["state"] == "READY"
    assert Path(left["location"]).is_dir()

    gone = await mutate(api, "DeleteWeights", {"id": asked["id"]})
    assert gone["__typename"] == "DeletedWeights", gone
    assert not Path(left["location"]).exists()
    assert await api.resources.database["weights"].count_documents({}) == 0


async def test_attach_refuses_what_the_weights_do_not_hold(running_app: RunningApp) -> None:
    asked = await prefetch(running_app, TINY, "held", allowPatterns=["config.json"])
    assert asked["__typename"] == "Weights", asked
    await wait_weights(running_app, asked["id"], settled)

    async def attach(source: dict[str, Any], **extra: Any) -> dict[str, Any]:
        value = {"source": {"accessMode": "LOCAL", **source}, "weightsId": asked["id"], **extra}
        return await mutate(running_app, "CreateModel", {"input": value})

    cases: list[tuple[dict[str, Any], dict[str, Any], str]] = [
        ({"url": SHARDED}, {}, "source.url"),
        ({"url": TINY, "revision": "v9"}, {}, "source.revision"),
        ({"url": TINY, "allowPatterns": ["*.json"]}, {}, "source.allowPatterns"),
        ({"url": TINY}, {"downloadTarget": place(running_app, "elsewhere")}, "downloadTarget"),
    ]
    for source, extra, field in cases:
        refused = await attach(source, **extra)
        assert refused["__typename"] == "ValidationError", (field, refused)
        assert refused["field"] == field, refused
    unknown = await mutate(
        running_app,
        "CreateModel",
        {
            "input": {
                "source": {"url": TINY, "accessMode": "LOCAL"},
                "weightsId": "weights-nope0",
            }
        },
    )
    assert unknown["__typename"] == "ValidationError"
    assert unknown["field"] == "weightsId"
    assert await running_app.resources.database["models"].count_documents({}) == 0
    # What they hold, spelled out in full, is accepted.
    same = await attach(
        {"url": TINY, "revision": "main", "allowPatterns": ["config.json"]},
        downloadTarget=place(running_app, "held"),
    )
    assert same["__typename"] == "Model", same


async def test_cancel_retry_and_bad_requests_by_weights_id(
    replicas: tuple[RunningApp, RunningApp], hub: RunningHub
) -> None:
    api, _leader = replicas
    hub.hub.faults.throttle("*.safetensors", 1 * MiB)
    asked = await prefetch(api, SHARDED, "slow")
    assert asked["__typename"] == "Weights", asked
    await wait_weights(api, asked["id"], lambda w: (w["progress"] or {}).get("bytesDone", 0) > 0)
    started = time.monotonic()
    cancelled = await mutate(api, "CancelWeightsDownload", {"id": asked["id"]})
    assert cancelled["state"] == "CANCELLED", cancelled
    await until_gone(Path(asked["location"]) / ".modelplane-partial", timeout=BOUND)
    print(f"cancelWeightsDownload -> partials gone: {time.monotonic() - started:.2f} s")  # noqa: T201
    again = await mutate(api, "CancelWeightsDownload", {"id": asked["id"]})
    assert again["__typename"] == "ConflictError"

    hub.hub.faults.clear()
    retried = await mutate(api, "RetryWeightsDownload", {"id": asked["id"]})
    assert retried["state"] == "PENDING", retried
    done = await wait_weights(api, asked["id"], settled)
    assert done["state"] == "READY", done
    missing = await mutate(api, "RetryWeightsDownload", {"id": "weights-nope0"})
    assert missing["__typename"] == "NotFoundError"

    before = await api.resources.database["weights"].count_documents({})
    for extra, field in (
        ({"allowPatterns": ["*.gguf"]}, "allowPatterns"),
        ({"ignorePatterns": ["/abs"]}, "ignorePatterns"),
        ({"revision": "no-such-branch"}, "revision"),
    ):
        refused = await prefetch(api, SHARDED, "bad", **extra)
        assert refused["__typename"] == "ValidationError", refused
        assert refused["field"] == field, refused
    refused = await prefetch(api, "tiny-org/absent", "bad")
    assert refused["field"] == "repo", refused
    refused = await prefetch(api, "gated-org/gated-model", "bad")
    assert refused["field"] == "token", refused
    assert await api.resources.database["weights"].count_documents({}) == before
    assert await api.resources.database["secrets"].count_documents({}) == 0
    assert not (weights_area(api.resources.settings.local_roots) / "bad").exists()


async def test_a_gated_prefetch_keeps_its_token_until_deleted(running_app: RunningApp) -> None:
    asked = await prefetch(running_app, "gated-org/gated-model", "gated", token=HUB_TOKEN)
    assert asked["__typename"] == "Weights", asked
    done = await wait_weights(running_app, asked["id"], settled)
    assert done["state"] == "READY", done
    database = running_app.resources.database
    assert await database["secrets"].count_documents({"owner_id": asked["id"]}) == 1
    gone = await mutate(running_app, "DeleteWeights", {"id": asked["id"]})
    assert gone["__typename"] == "DeletedWeights", gone
    assert await database["secrets"].count_documents({}) == 0


async def test_a_model_deleted_mid_download_leaves_prefetched_weights_downloading(
    running_app: RunningApp, hub: RunningHub
) -> None:
    hub.hub.faults.throttle("*.safetensors", 2 * MiB)
    asked = await prefetch(running_app, SHARDED, "shared")
    value = {"source": {"url": SHARDED, "accessMode": "LOCAL"}, "weightsId": asked["id"]}
    created = await mutate(running_app, "CreateModel", {"input": value})
    assert created["__typename"] == "Model", created
    await wait_weights(running_app, asked["id"], lambda w: w["modelIds"] == [created["id"]])
    await mutate(running_app, "DeleteModel", {"id": created["id"]})
    hub.hub.faults.clear()
    done = await wait_weights(running_app, asked["id"], settled)
    assert done["state"] == "READY", done
    assert done["modelIds"] == []


async def test_prefetched_weights_download_through_a_job_they_own(
    kube_app: RunningApp, hub: RunningHub, mongo_uri: str, tmp_path: Path
) -> None:
    """On the kubernetes runtime the Job of prefetched weights is owned by the weights (the
    watch hands their id back to the controller) and runs `modelplane download` like a
    model's."""
    from kubernetes_asyncio import client as k8s

    from controllers.runtimes.kubernetes.runtime import KubernetesRuntime
    from testbed import kubelet

    runtime = kube_app.resources.runtime
    assert isinstance(runtime, KubernetesRuntime)
    namespace = kube_app.resources.settings.namespace
    await k8s.CoreV1Api(runtime.api).create_namespaced_secret(
        namespace,
        k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name="modelplane-mongodb"), string_data={"uri": mongo_uri}
        ),
    )
    value = {
        "repo": TINY,
        "downloadTarget": {"pvc": {"claimName": "pre-claim", "subPath": "tiny"}},
        "ignorePatterns": ["*.safetensors"],
    }
    asked = await mutate(kube_app, "DownloadWeights", {"input": value})
    assert asked["__typename"] == "Weights", asked
    batch = k8s.BatchV1Api(runtime.api)
    deadline = time.monotonic() + BOUND
    while not (jobs := await batch.list_namespaced_job(namespace)).items:
        assert time.monotonic() < deadline, "no download Job"
        await _sleep()
    (job,) = jobs.items
    assert job.metadata.labels["modelplane.io/owner-id"] == asked["id"]
    assert job.metadata.labels["modelplane.io/weights-id"] == asked["id"]
    pvc = tmp_path / "pvc"
    code = await kubelet.run_job_pod(
        runtime.api, namespace, job.metadata.name, volumes={"weights": pvc}
    )
    assert code == 0
    done = await wait_weights(kube_app, asked["id"], settled)
    assert done["state"] == "READY", done
    wanted = sorted(
        f.path for f in hub.hub.repos[TINY].files if not f.path.endswith(".safetensors")
    )
    on_disk = sorted(
        str(p.relative_to(pvc / "tiny"))
        for p in (pvc / "tiny").rglob("*")
        if p.is_file() and not p.name.startswith(".modelplane")
    )
    assert on_disk == wanted
