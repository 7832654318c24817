"""What users of the Playground and ModelAPI specifications expect of inference, on the local
runtime (issue 17, items 1, 2, 3, 13 and 14; the Kubernetes side is in
``tests/test_inference_fidelity_kubernetes.py``):

* a model's ``resources`` are its inference's requirements (per field; explicit input wins);
* turning inference off clears it: ``Model.inference`` and ``inferencePhase`` become null, the
  stopped inference is kept (by id) as history, and the next start is a new inference;
* ``models(filter: {inferencePhase})`` is typed, and ``hasInference`` finds models without one;
* a dry run leaves nothing on disk nor in the database;
* ``ready``, ``deployment`` and ``autoscaling`` status on Inference.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests import test_inference_local as local
from tests.conftest import RunningApp
from tests.graphql_client import Subscription, run
from tests.test_inference_local import editor, ready_model, start, wait_inference
from tests.test_models_api import remote

# The local runtime's fixtures, shared with tests/test_inference_local.py.
fake_engines = local.fake_engines
local_app = local.local_app
clean_hub = local.clean_hub


async def set_resources(app: RunningApp, model_id: str, resources: dict[str, Any]) -> None:
    data = await run(
        app.graphql_url,
        "UpdateModel",
        {"id": model_id, "input": {"resources": resources}},
        token=editor(app),
    )
    assert data["updateModel"]["__typename"] == "Model", data


async def model_inference(app: RunningApp, model_id: str) -> dict[str, Any]:
    data = await run(app.graphql_url, "ModelInference", {"id": model_id}, token=editor(app))
    model: dict[str, Any] = data["model"]
    return model


async def toggle(app: RunningApp, model_id: str, *, enabled: bool) -> dict[str, Any]:
    data = await run(
        app.graphql_url,
        "ToggleInference",
        {"modelId": model_id, "enabled": enabled},
        token=editor(app),
    )
    result: dict[str, Any] = data["toggleInference"]
    assert result["__typename"] == "InferencePayload", result
    return result


# -- item 1: the model's resources are the inference's requirements -------------------------


async def test_a_start_without_resources_uses_the_models(local_app: RunningApp) -> None:
    model = await ready_model(local_app)
    await set_resources(local_app, model["id"], {"cpu": "3", "memory": "5Gi", "gpu": 2})

    dry = await start(local_app, model["id"], None, dryRun=True)
    spec = dry["inference"]["spec"]
    assert (spec["cpu"], spec["memory"], spec["gpu"]) == ("3", "5Gi", 2), spec
    assert "--tensor-parallel-size" in dry["manifests"][0]  # the render follows: 2 GPUs

    # Per field: explicit input wins for the fields it gives, the model's fill the rest.
    partial = await start(local_app, model["id"], {"resources": {"gpu": 0}}, dryRun=True)
    spec = partial["inference"]["spec"]
    assert (spec["cpu"], spec["memory"], spec["gpu"]) == ("3", "5Gi", 0), spec
    assert "--tensor-parallel-size" not in partial["manifests"][0]
    explicit = await start(
        local_app, model["id"], {"resources": {"cpu": "1", "memory": "1Gi"}}, dryRun=True
    )
    spec = explicit["inference"]["spec"]
    assert (spec["cpu"], spec["memory"], spec["gpu"]) == ("1", "1Gi", 2), spec

    # toggleInference (no input at all) takes them too, and stores them.
    on = await toggle(local_app, model["id"], enabled=True)
    spec = on["inference"]["spec"]
    assert (spec["cpu"], spec["memory"], spec["gpu"]) == ("3", "5Gi", 2), spec
    await wait_inference(local_app, on["inference"]["id"], {"RUNNING"})
    stored = await local_app.resources.database["inferences"].find_one(
        {"_id": on["inference"]["id"]}
    )
    assert stored is not None
    assert (stored["spec"]["cpu"], stored["spec"]["memory"], stored["spec"]["gpu"]) == (
        "3",
        "5Gi",
        2,
    )


async def test_a_model_without_resources_keeps_the_defaults(local_app: RunningApp) -> None:
    model = await ready_model(local_app)
    dry = await start(local_app, model["id"], None, dryRun=True)
    spec = dry["inference"]["spec"]
    assert (spec["cpu"], spec["memory"], spec["gpu"]) == ("1", "2Gi", 1), spec


async def test_bad_explicit_resources_name_the_field(local_app: RunningApp) -> None:
    model = await ready_model(local_app)
    await set_resources(local_app, model["id"], {"cpu": "3"})
    result = await start(local_app, model["id"], {"resources": {"memory": "lots"}})
    assert result["__typename"] == "ValidationError", result
    assert result["field"] == "input.resources.memory"
    assert await local_app.resources.database["inferences"].count_documents({}) == 0


# -- item 2: turning inference off clears it ---------------------------------------------------


async def wait_cleared(app: RunningApp, model_id: str, *, timeout: float = 30) -> dict[str, Any]:
    """The model once its inference is gone (``inference`` null)."""
    deadline = time.monotonic() + timeout
    while True:
        model = await model_inference(app, model_id)
        if model["inference"] is None:
            return model
        assert time.monotonic() < deadline, f"the inference was not cleared: {model}"
        await asyncio.sleep(0.05)


async def test_stopping_clears_the_models_inference_and_the_next_start_is_new(
    local_app: RunningApp,
) -> None:
    model = await ready_model(local_app)
    first = (await toggle(local_app, model["id"], enabled=True))["inference"]
    await wait_inference(local_app, first["id"], {"RUNNING"})
    async with Subscription(
        local_app.ws_url, "InferenceEvents", {"inferenceId": first["id"]}, token=editor(local_app)
    ) as events:
        off = await toggle(local_app, model["id"], enabled=False)
        assert off["inference"]["id"] == first["id"]
        assert off["inference"]["enabled"] is False
        started = time.monotonic()
        cleared = await wait_cleared(local_app, model["id"])
        print(f"cleared {time.monotonic() - started:.2f} s after toggle off")  # noqa: T201
        assert cleared["inferencePhase"] is None
        seen: list[tuple[str, str | None]] = []
        while ("DELETED", "STOPPED") not in seen:
            data = await events.next(timeout=10)
            assert data is not None
            event = data["inferenceEvents"]
            seen.append((event["type"], event["phase"]))
    # The stream says it stopped, then that it is gone (and nothing after the DELETED).
    assert seen.index(("PHASE_CHANGED", "STOPPED")) < seen.index(("DELETED", "STOPPED")), seen

    # Kept as history by id; no longer listed, nor the model's.
    history = await wait_inference(local_app, first["id"], {"STOPPED"})
    assert history["enabled"] is False
    assert [e["phase"] for e in history["phaseHistory"]][-1] == "STOPPED"
    listed = await run(
        local_app.graphql_url,
        "Inferences",
        {"filter": {"modelId": model["id"]}},
        token=editor(local_app),
    )
    assert listed["inferences"]["total"] == 0, listed
    listed_models = await run(
        local_app.graphql_url,
        "Models",
        {"filter": {"hasInference": False}},
        token=editor(local_app),
    )
    assert model["id"] in [m["id"] for m in listed_models["models"]["items"]]

    # Stopping again: nothing to stop.
    again = await run(
        local_app.graphql_url, "StopInference", {"modelId": model["id"]}, token=editor(local_app)
    )
    assert again["stopInference"]["__typename"] == "NotFoundError", again

    # The next start is a new inference (the last spec reused), and it runs.
    second = (await toggle(local_app, model["id"], enabled=True))["inference"]
    assert second["id"] != first["id"]
    assert second["spec"]["engine"] == first["spec"]["engine"]
    await wait_inference(local_app, second["id"], {"RUNNING"})
    now = await model_inference(local_app, model["id"])
    assert now["inference"]["id"] == second["id"]
    assert now["inferencePhase"] == "RUNNING"
    stored = local_app.resources.database["inferences"]
    assert await stored.count_documents({"model_id": model["id"]}) == 2
    assert await stored.count_documents({"model_id": model["id"], "is_deleted": False}) == 1


# -- item 13: a dry run leaves nothing behind -------------------------------------------------


def tree(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")} if root.exists() else set()


async def test_a_dry_run_leaves_nothing_on_disk_nor_in_the_database(local_app: RunningApp) -> None:
    database = local_app.resources.database
    served = await ready_model(local_app)
    created = await run(
        local_app.graphql_url,
        "CreateModel",
        {"input": remote(name="proxied")},
        token=editor(local_app),
    )
    proxied = created["createModel"]
    assert proxied["__typename"] == "Model", created
    engines = local_app.resources.settings.state_dir / "engines"
    before_disk = tree(local_app.resources.settings.state_dir)
    before_models = {m["_id"]: m["revision"] async for m in database["models"].find({})}
    before_events = await database["events"].count_documents({})

    for model_id, value in (
        (served["id"], None),
        (served["id"], {"engine": "OLLAMA"}),
        (proxied["id"], {"engine": "LITELLM_PROXY"}),
        (proxied["id"], {"engine": "LITELLM_PROXY", "litellm": {"mode": "SINGLE"}}),
    ):
        result = await start(local_app, model_id, value, dryRun=True)
        assert result["__typename"] == "InferencePayload", result
        assert result["dryRun"] is True
        assert result["manifests"], result
        if value and value["engine"] == "LITELLM_PROXY":
            assert "litellm.yaml" in result["manifests"][0]  # the config it would write

    assert tree(local_app.resources.settings.state_dir) == before_disk
    assert not any(path.endswith("litellm.yaml") for path in tree(engines))
    assert await database["inferences"].count_documents({}) == 0
    assert {m["_id"]: m["revision"] async for m in database["models"].find({})} == before_models
    assert await database["events"].count_documents({}) == before_events


# -- item 14: ready, deployment and autoscaling status ------------------------------------------


async def test_a_running_engine_reports_ready_and_one_replica(local_app: RunningApp) -> None:
    model = await ready_model(local_app)
    inference = (await start(local_app, model["id"]))["inference"]
    assert inference["ready"] is False
    running = await wait_inference(local_app, inference["id"], {"RUNNING"})
    assert running["ready"] is True
    assert running["deployment"] == {
        "desiredReplicas": 1,
        "currentReplicas": 1,
        "readyReplicas": 1,
        "availableReplicas": 1,
        "updatedReplicas": 1,
        "conditions": None,  # a process has none
    }
    assert running["autoscaling"] is None
    await run(
        local_app.graphql_url, "StopInference", {"modelId": model["id"]}, token=editor(local_app)
    )
    await wait_cleared(local_app, model["id"])
    stopped = await wait_inference(local_app, inference["id"], {"STOPPED"})
    assert stopped["ready"] is False
    assert stopped["deployment"] is None
