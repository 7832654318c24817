"""An autoscaled inference's status follows its autoscaler's (issue 17, item 14: 002's
autoscaling metrics), against the real API server, on the replica that does not lead too.

``kube_app``'s bare API server runs no HPA controller (and there is no metrics server to feed
one), so the tests write the autoscaler's status themselves -- a PATCH of the HPA's ``/status``
subresource, as the HPA controller does after reading its metrics -- and wait for the GraphQL
answer of both replicas to follow: the leader's informer sees the change, its reconcile writes
the inference's document, and the follower reads that document. The AIBrix CRD the testbed
installs (``tests/test_cluster_status.py: crd_body``) has no status subresource, so there the
status is written with the object, as AIBrix's controller would through its subresource.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client as k8s

from storage.client import Client
from testbed import servers
from testbed.hub import RunningHub
from tests.conftest import RunningApp, make_settings, serve_app
from tests.graphql_client import run
from tests.test_cluster_status import remove_crd
from tests.test_fidelity_k8s import installed, nothing_left, read_or_none, start_raw, until
from tests.test_inference_kubernetes import editor, ready_model

GROUP, VERSION, PLURAL = "autoscaling.aibrix.ai", "v1alpha1", "podautoscalers"


@asynccontextmanager
async def two_replicas(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub, kube: Any, ns: str
) -> AsyncIterator[tuple[RunningApp, RunningApp]]:
    """The leader (controllers on) and a replica without controllers, on one database."""
    leading = make_settings(
        tmp_path,
        mongo_uri,
        hf_endpoint=hub.endpoint,
        runtime="kubernetes",
        kubeconfig=kube.kubeconfig,
        namespace=ns,
    )
    following = leading.model_copy(update={"run_controllers": False})
    async with (
        serve_app(leading, mongo_client) as leader,
        serve_app(following, mongo_client, keep_database=True) as follower,
    ):
        controller = leader.resources.inference_controller
        assert controller is not None
        await until(lambda: _true(controller.leading), "the leader to take the lease")
        assert follower.resources.inference_controller is None
        yield leader, follower


async def _true(value: bool) -> bool:
    return value


def _api(app: RunningApp) -> k8s.ApiClient:
    return app.resources.runtime.api  # type: ignore[attr-defined, no-any-return]  # the kubernetes runtime's client


async def autoscaling(app: RunningApp, inference_id: str) -> dict[str, Any]:
    data = await run(app.graphql_url, "Inference", {"id": inference_id}, token=editor(app))
    found: dict[str, Any] = data["inference"]["autoscaling"]
    return found


async def answers(apps: tuple[RunningApp, ...], inference_id: str, want: dict[str, Any]) -> float:
    """Seconds until every app's ``autoscaling`` shows ``want`` (the fields it names)."""
    began = time.monotonic()
    for app in apps:

        async def shown(app: RunningApp = app) -> bool:
            seen = await autoscaling(app, inference_id)
            return all(seen[key] == value for key, value in want.items())

        await until(shown, f"autoscaling {want}")
    return time.monotonic() - began


async def test_the_hpas_status_reaches_both_replicas(
    tmp_path: Path,
    mongo_uri: str,
    mongo_client: Client,
    hub: RunningHub,
    kube: servers.KubeCluster,
    kube_namespace: str,
) -> None:
    async with two_replicas(tmp_path, mongo_uri, mongo_client, hub, kube, kube_namespace) as apps:
        leader, follower = apps
        model = await ready_model(leader)
        result = await start_raw(
            follower,
            model.id,
            {
                "resources": {"gpu": 0},
                "autoscaling": {"targetMetric": "cpu", "targetValue": 60, "maxReplicas": 4},
            },
        )
        assert result["__typename"] == "InferencePayload", result
        inference_id, name = result["inference"]["id"], result["inference"]["name"]
        scaling = k8s.AutoscalingV2Api(_api(leader))
        await until(
            lambda: _hpa_named(scaling, kube_namespace, name), "the HorizontalPodAutoscaler"
        )
        # Applied, no status yet: the kind is known, the value is not, and it says why.
        await answers(apps, inference_id, {"autoscaler": "HORIZONTAL_POD_AUTOSCALER"})
        first = await autoscaling(follower, inference_id)
        assert first["currentValue"] is None
        assert first["currentValueMessage"] == "the HorizontalPodAutoscaler has not read cpu yet"
        assert (first["minReplicas"], first["maxReplicas"], first["targetValue"]) == (1, 4, 60)

        # The metrics pipeline's view, as the HPA controller writes it.
        await scaling.patch_namespaced_horizontal_pod_autoscaler_status(
            name,
            kube_namespace,
            {
                "status": {
                    "currentReplicas": 2,
                    "desiredReplicas": 3,
                    "lastScaleTime": "2026-12-05T21:00:00Z",
                    "currentMetrics": [
                        {
                            "type": "Resource",
                            "resource": {
                                "name": "cpu",
                                "current": {"averageUtilization": 73, "averageValue": "730m"},
                            },
                        }
                    ],
                }
            },
        )
        seconds = await answers(
            apps,
            inference_id,
            {
                "currentValue": 73.0,
                "currentValueMessage": None,
                "lastScaleTime": "2026-12-05T21:00:00+00:00",
            },
        )
        print(f"an HPA status PATCH reached both replicas' answers in {seconds:.2f} s")  # noqa: T201

        # The metric lost (a metrics server gone): null again, with the controller's reason.
        await scaling.patch_namespaced_horizontal_pod_autoscaler_status(
            name,
            kube_namespace,
            {
                "status": {
                    "currentMetrics": None,
                    "conditions": [
                        {
                            "type": "ScalingActive",
                            "status": "False",
                            "reason": "FailedGetResourceMetric",
                            "message": "the HPA was unable to compute the replica count",
                            "lastTransitionTime": "2026-12-05T21:01:00Z",
                        }
                    ],
                }
            },
        )
        await answers(
            apps,
            inference_id,
            {
                "currentValue": None,
                "currentValueMessage": "FailedGetResourceMetric: the HPA was unable to compute "
                "the replica count",
                "lastScaleTime": "2026-12-05T21:00:00+00:00",
            },
        )
        # Status is written on change only: a reconcile with nothing new writes nothing.
        stored = leader.resources.database["inferences"]
        before = await stored.find_one({"_id": inference_id})
        controller = leader.resources.inference_controller
        assert controller is not None
        controller.notify(inference_id)
        await controller.wait_idle()
        after = await stored.find_one({"_id": inference_id})
        assert before is not None
        assert after is not None
        assert after["revision"] == before["revision"]

        stopped = await run(
            follower.graphql_url, "StopInference", {"modelId": model.id}, token=editor(follower)
        )
        assert stopped["stopInference"]["__typename"] == "Inference", stopped
        await until(lambda: _gone(scaling, kube_namespace, name), "the HPA to be removed on stop")
        await nothing_left(_api(leader), kube_namespace)


async def _hpa_named(scaling: k8s.AutoscalingV2Api, ns: str, name: str) -> bool:
    found = await scaling.list_namespaced_horizontal_pod_autoscaler(
        ns, field_selector=f"metadata.name={name}"
    )
    return bool(found.items)


async def _gone(scaling: k8s.AutoscalingV2Api, ns: str, name: str) -> bool:
    return not await _hpa_named(scaling, ns, name)


async def test_aibrix_last_scale_is_shown_and_its_missing_metric_is_said(
    kube_app: RunningApp, kube_namespace: str
) -> None:
    api = _api(kube_app)
    await installed(kube_app, "podAutoscaler")
    try:
        model = await ready_model(kube_app)
        result = await start_raw(kube_app, model.id, {"resources": {"gpu": 0}, "autoscaling": {}})
        assert result["__typename"] == "InferencePayload", result
        inference_id, name = result["inference"]["id"], result["inference"]["name"]
        custom = k8s.CustomObjectsApi(api)

        async def applied() -> bool:
            # A get by name: a list would meet the new kind's watch cache still starting
            # (429 "storage is (re)initializing").
            found = await read_or_none(
                custom.get_namespaced_custom_object, GROUP, VERSION, kube_namespace, PLURAL, name
            )
            return found is not None

        await until(applied, "the PodAutoscaler")
        # A JSON patch (the client's default content type for a custom object).
        status = {"actualScale": 2, "desiredScale": 5, "lastScaleTime": "2026-12-05T21:02:00Z"}
        await custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            kube_namespace,
            PLURAL,
            name,
            [{"op": "add", "path": "/status", "value": status}],
        )
        await answers(
            (kube_app,),
            inference_id,
            {
                "autoscaler": "AIBRIX_POD_AUTOSCALER",
                "lastScaleTime": "2026-12-05T21:02:00+00:00",
                "targetMetric": "num_requests_running",
            },
        )
        shown = await autoscaling(kube_app, inference_id)
        assert shown["currentValue"] is None
        assert "carries no metric value" in shown["currentValueMessage"]
        await run(
            kube_app.graphql_url, "StopInference", {"modelId": model.id}, token=editor(kube_app)
        )
        await until(lambda: _not(applied), "the PodAutoscaler to be removed on stop")
    finally:
        await remove_crd(k8s.ApiextensionsV1Api(api), f"{PLURAL}.{GROUP}")


async def _not(check: Any) -> bool:
    return not await check()
