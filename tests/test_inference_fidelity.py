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

from typing import Any

from tests import test_inference_local as local
from tests.conftest import RunningApp
from tests.graphql_client import run
from tests.test_inference_local import editor, ready_model, start, wait_inference

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
