"""``updateInference`` and the manifest's described fields on the kubernetes runtime (issue 17,
the organisation API's ``PUT /models/{id}`` and ``POST /models/yaml``), against the kwok
control plane of ``tests/test_inference_kubernetes.py``.

An update writes the new spec with the next ``generation``; the leader's controller applies it
again (the Deployment rolls) and the inference comes back RUNNING under the same id. A refused
update names its ``input.*`` field and leaves the document and the Deployment as they were.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from kubernetes_asyncio import client as k8s

from tests.graphql_client import run
from tests.test_inference_kubernetes import (
    MANIFEST,
    cluster_app,
    editor,
    ready_model,
    start,
    wait_inference,
)

__all__ = ["cluster_app"]  # the fixture, used by name

FIRST: dict[str, Any] = {
    "engine": "CUSTOM",
    "image": "registry.example.com/a:1",
    "command": ["serve"],
}
CPU_ONLY = {"resources": {"gpu": 0}}
GENERATION = "modelplane.io/generation"


async def update(app: Any, model_id: str, value: dict[str, Any], **variables: Any) -> Any:
    data = await run(
        app.graphql_url,
        "UpdateInference",
        {"modelId": model_id, "input": value, **variables},
        token=editor(app),
    )
    return data["updateInference"]


async def wait_rolled(
    apps: k8s.AppsV1Api, ns: str, name: str, image: str, replicas: int
) -> k8s.V1Deployment:
    """Until the Deployment runs ``image`` on ``replicas`` updated, ready pods."""
    deadline = time.monotonic() + 60
    while True:
        deployment = await apps.read_namespaced_deployment(name, ns)
        status = deployment.status
        container = deployment.spec.template.spec.containers[0]
        if (
            container.image == image
            and deployment.spec.replicas == replicas
            and status.updated_replicas == replicas
            and status.ready_replicas == replicas
            and (status.replicas or 0) == replicas
        ):
            return deployment
        assert time.monotonic() < deadline, f"the Deployment did not roll: {status}"
        await asyncio.sleep(0.2)


async def test_update_rolls_the_deployment_and_keeps_the_inference(
    cluster_app: Any, control_plane_api: k8s.ApiClient, gpu_namespace: str
) -> None:
    model = await ready_model(cluster_app)
    inference = await start(cluster_app, model.id, {**FIRST, **CPU_ONLY})
    await wait_inference(cluster_app, inference["id"], {"RUNNING"})
    apps = k8s.AppsV1Api(control_plane_api)
    before = await apps.read_namespaced_deployment(inference["name"], gpu_namespace)
    assert before.metadata.annotations[GENERATION] == "1"

    new = {**FIRST, **CPU_ONLY, "image": "registry.example.com/a:2", "replicas": 2}
    dry = await update(cluster_app, model.id, new, dryRun=True)
    assert dry["__typename"] == "InferencePayload", dry
    assert dry["dryRun"] is True
    assert "registry.example.com/a:2" in "".join(dry["manifests"])
    stored = await cluster_app.resources.database["inferences"].find_one({"_id": inference["id"]})
    assert stored["generation"] == 1, "a dry run writes nothing"

    began = time.monotonic()
    payload = await update(cluster_app, model.id, new)
    assert payload["__typename"] == "InferencePayload", payload
    updated = payload["inference"]
    assert updated["id"] == inference["id"]
    assert updated["generation"] == 2
    assert updated["spec"]["image"] == "registry.example.com/a:2"
    assert updated["spec"]["replicas"] == 2

    deployment = await wait_rolled(
        apps, gpu_namespace, inference["name"], "registry.example.com/a:2", 2
    )
    assert deployment.metadata.annotations[GENERATION] == "2"
    deadline = time.monotonic() + 60
    while True:
        running = await wait_inference(cluster_app, inference["id"], {"RUNNING"})
        if running["observedGeneration"] == 2 and running["readyReplicas"] == 2:
            break
        assert time.monotonic() < deadline, running
        await asyncio.sleep(0.2)
    print(f"updateInference -> rolled, RUNNING with 2 ready: {time.monotonic() - began:.2f} s")  # noqa: T201
    assert running["id"] == inference["id"]
    assert running["endpoint"] == inference["endpoint"] or running["endpoint"].endswith(":8000/v1")
    models = await run(
        cluster_app.graphql_url, "ModelInference", {"id": model.id}, token=editor(cluster_app)
    )
    assert models["model"]["inference"]["id"] == inference["id"]


async def test_a_refused_update_changes_nothing(
    cluster_app: Any, control_plane_api: k8s.ApiClient, gpu_namespace: str
) -> None:
    model = await ready_model(cluster_app)
    inference = await start(cluster_app, model.id, {**FIRST, **CPU_ONLY})
    await wait_inference(cluster_app, inference["id"], {"RUNNING"})
    apps = k8s.AppsV1Api(control_plane_api)
    collection = cluster_app.resources.database["inferences"]
    before = await collection.find_one({"_id": inference["id"]})
    deployment_before = await apps.read_namespaced_deployment(inference["name"], gpu_namespace)

    refusals: list[tuple[dict[str, Any], str]] = [
        ({**FIRST, "replicas": 1000}, "input.replicas"),
        ({**FIRST, "image": "Not An Image!"}, "input.image"),
        ({**FIRST, "resources": {"gpu": 64}}, "input.resources.gpu"),
        ({**FIRST, "resources": {"memory": "lots"}}, "input.resources.memory"),
    ]
    for value, field in refusals:
        refusal = await update(cluster_app, model.id, value)
        assert refusal["__typename"] == "ValidationError", (value, refusal)
        assert refusal["field"] == field, refusal

    missing = await update(cluster_app, "model-nosuch", FIRST)
    assert missing["__typename"] == "NotFoundError", missing

    after = await collection.find_one({"_id": inference["id"]})
    assert after["generation"] == before["generation"] == 1
    assert after["spec"] == before["spec"]
    deployment = await apps.read_namespaced_deployment(inference["name"], gpu_namespace)
    assert deployment.metadata.annotations[GENERATION] == "1"
    assert deployment.spec.template.spec.containers[0].image == "registry.example.com/a:1"
    assert deployment.metadata.generation == deployment_before.metadata.generation

    # Stopped: nothing to update (a start is what it needs).
    await run(
        cluster_app.graphql_url, "StopInference", {"modelId": model.id}, token=editor(cluster_app)
    )
    stopped = await update(cluster_app, model.id, FIRST)
    assert stopped["__typename"] == "NotFoundError", stopped
    assert "no inference to update" in stopped["errorMessage"]


async def test_manifest_keeps_display_name_description_and_tags(cluster_app: Any) -> None:
    collection = cluster_app.resources.database["inferences"]
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"displayName": "x" * 300}, "displayName"),
        ({"description": "y" * 5000}, "description"),
        ({"tags": ["ok", ""]}, "tags"),
        ({"tags": [f"t{i}" for i in range(40)]}, "tags"),
    ]
    for arguments, field in refusals:
        result = await run(
            cluster_app.graphql_url,
            "CreateInferenceFromManifest",
            {"yaml": MANIFEST, **arguments},
            token=editor(cluster_app),
        )
        refusal = result["createInferenceFromManifest"]
        assert refusal["__typename"] == "ValidationError", (arguments, refusal)
        assert refusal["field"] == field, refusal
    assert await collection.count_documents({}) == 0

    created = await run(
        cluster_app.graphql_url,
        "CreateInferenceFromManifest",
        {
            "yaml": MANIFEST,
            "displayName": "Custom Model Deployment",
            "description": "Custom model deployed via YAML",
            "tags": ["custom", "yaml", "custom"],
        },
        token=editor(cluster_app),
    )
    inference = created["createInferenceFromManifest"]["inference"]
    assert inference["displayName"] == "Custom Model Deployment"
    assert inference["description"] == "Custom model deployed via YAML"
    assert inference["tags"] == ["custom", "yaml"]
    read = await run(
        cluster_app.graphql_url, "Inference", {"id": inference["id"]}, token=editor(cluster_app)
    )
    assert read["inference"]["tags"] == ["custom", "yaml"]
    stored = await collection.find_one({"_id": inference["id"]})
    assert stored["display_name"] == "Custom Model Deployment"

    plain = await run(
        cluster_app.graphql_url,
        "CreateInferenceFromManifest",
        {"yaml": MANIFEST.replace("my-served-model", "other-model"), "dryRun": True},
        token=editor(cluster_app),
    )
    described = plain["createInferenceFromManifest"]["inference"]
    assert (described["displayName"], described["description"], described["tags"]) == (
        None,
        None,
        None,
    )


async def test_an_update_fixes_a_failed_inference_in_place(
    cluster_app: Any, control_plane_api: k8s.ApiClient, gpu_namespace: str
) -> None:
    """The organisation API's way out of a bad image: PUT the right one. The FAILED
    inference goes back to PENDING, the Deployment rolls to the new image, RUNNING, same id."""
    model = await ready_model(cluster_app)
    bad = {**FIRST, **CPU_ONLY, "image": "registry.example.com/never-pulls:1"}
    inference = await start(cluster_app, model.id, bad)
    failed = await wait_inference(cluster_app, inference["id"], {"FAILED"})
    assert failed["reason"] in {"ErrImagePull", "ImagePullBackOff"}, failed

    payload = await update(cluster_app, model.id, {**FIRST, **CPU_ONLY})
    assert payload["__typename"] == "InferencePayload", payload
    assert payload["inference"]["phase"] == "PENDING"
    assert payload["inference"]["reason"] == "Updating"
    apps = k8s.AppsV1Api(control_plane_api)
    await wait_rolled(apps, gpu_namespace, inference["name"], "registry.example.com/a:1", 1)
    running = await wait_inference(cluster_app, inference["id"], {"RUNNING"})
    assert running["id"] == inference["id"]
    assert running["observedGeneration"] == running["generation"] == 2
    phases = [entry["phase"] for entry in running["phaseHistory"]]
    after_failure = phases[len(phases) - 1 - phases[::-1].index("FAILED") :]
    assert after_failure[:2] == ["FAILED", "PENDING"], phases
    assert after_failure[-1] == "RUNNING", phases
