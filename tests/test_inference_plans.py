"""Pure parts of inference, table-tested: the engine planner, the manifests, the status."""

from __future__ import annotations

from typing import Any

import pytest

from controllers.inference.engines import EngineImages, EnginePlanError, plan_engine, served_name_in
from controllers.runtimes.kubernetes.manifests import GENERATION, Integrations, render_all
from controllers.runtimes.kubernetes.status import derive_status
from services.errors import InvalidInput
from services.inference import check_manifest
from storage.documents import (
    AccessMode,
    AutoscalingSpec,
    DownloadTarget,
    EnvVarSpec,
    InferenceDocument,
    InferenceEngine,
    InferencePhase,
    InferenceSpec,
    LiteLLMSpec,
    LocalTarget,
    ModelDocument,
    ModelSource,
    PvcTarget,
    S3Target,
    WeightsDocument,
)

IMAGES = EngineImages()


def model(
    *, remote: bool = False, target: DownloadTarget | None = None, has_token: bool = False
) -> ModelDocument:
    return ModelDocument(
        id="model-abc12",
        organization_id="org-a",
        name="qwen-small",
        name_key="qwen-small",
        display_name="Qwen small",
        source=ModelSource(
            url="https://api.example.com/v1" if remote else "Qwen/Qwen2.5-0.5B",
            access_mode=AccessMode.REMOTE_API if remote else AccessMode.LOCAL,
            has_token=has_token,
        ),
        download_target=None if remote else target or LocalTarget(local_path="/data/models/qwen"),
        secret_ref="model-abc12-credentials" if has_token else None,
    )


def weights(target: DownloadTarget, location: str) -> WeightsDocument:
    return WeightsDocument(
        id="weights-1",
        organization_id="org-a",
        repo_id="Qwen/Qwen2.5-0.5B",
        commit_sha="a" * 40,
        target=target,
        location=location,
    )


def inference(spec: InferenceSpec, generation: int = 1) -> InferenceDocument:
    return InferenceDocument(
        id="inf-xyz98",
        organization_id="org-a",
        model_id="model-abc12",
        model_name="qwen-small",
        name="inf-xyz98",
        active_key="model-abc12",
        spec=spec,
        generation=generation,
    )


# -- engine planner -------------------------------------------------------------------------


def test_vllm_command_serves_the_model_under_its_name_with_tensor_parallelism() -> None:
    plan = plan_engine(
        InferenceSpec(gpu=2), model(), None, local=False, images=IMAGES, secret_name=None
    )
    assert plan.image == IMAGES.vllm
    assert plan.argv[:3] == ["vllm", "serve", "/data/models/qwen"]
    assert served_name_in(plan.argv) == "qwen-small"
    assert plan.argv[plan.argv.index("--host") + 1] == "0.0.0.0"  # noqa: S104  the pod binds all interfaces
    assert plan.argv[plan.argv.index("--tensor-parallel-size") + 1] == "2"
    assert "--max-model-len" not in plan.argv
    sized = plan_engine(
        InferenceSpec(context_length=8192),
        model(),
        None,
        local=False,
        images=IMAGES,
        secret_name=None,
    )
    assert sized.argv[sized.argv.index("--max-model-len") + 1] == "8192"
    local = plan_engine(InferenceSpec(), model(), None, local=True, images=IMAGES, secret_name=None)
    assert local.argv[local.argv.index("--host") + 1] == "127.0.0.1"
    assert "--tensor-parallel-size" not in local.argv


@pytest.mark.parametrize(
    ("command", "accepted"),
    [
        (
            [
                "python",
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--served-model-name",
                "qwen-small",
            ],
            True,
        ),
        (["vllm", "serve", "/w", "--served-model-name=qwen-small"], True),
        (["vllm", "serve", "/w", "--served-model-name", "other"], False),
        (["vllm", "serve", "/w"], False),
    ],
)
def test_user_vllm_command_must_carry_the_served_name(command: list[str], accepted: bool) -> None:
    spec = InferenceSpec(command=command)
    if accepted:
        plan = plan_engine(spec, model(), None, local=False, images=IMAGES, secret_name=None)
        assert plan.command == command
    else:
        with pytest.raises(EnginePlanError) as caught:
            plan_engine(spec, model(), None, local=False, images=IMAGES, secret_name=None)
        assert caught.value.field == "input.command"
        assert "'--served-model-name qwen-small'" in caught.value.message


def test_pvc_and_s3_weights_are_placed_where_the_engine_reads_them() -> None:
    pvc = PvcTarget(claim_name="models", sub_path="hf/qwen")
    plan = plan_engine(
        InferenceSpec(), model(target=pvc), None, local=False, images=IMAGES, secret_name=None
    )
    assert plan.weights is not None
    assert plan.weights.claim_name == "models"
    assert plan.argv[2] == "/weights/hf/qwen"
    s3 = S3Target(bucket="b", endpoint="http://minio:9000", access_key_id="AK")
    plan = plan_engine(
        InferenceSpec(),
        model(target=s3),
        weights(s3, "s3://b/models/qwen/aaa"),
        local=False,
        images=IMAGES,
        secret_name="model-abc12-credentials",
    )
    step = plan.prepare[0]
    assert step.command[:4] == ["aws", "s3", "sync", "--only-show-errors"]
    assert "s3://b/models/qwen/aaa" in step.command
    assert "http://minio:9000" in step.command
    secret = next(e for e in step.env if e.name == "AWS_SECRET_ACCESS_KEY")
    assert secret.value is None
    assert secret.secret_name == "model-abc12-credentials"
    with pytest.raises(EnginePlanError, match="local runtime cannot serve"):
        plan_engine(
            InferenceSpec(), model(target=s3), None, local=True, images=IMAGES, secret_name=None
        )


@pytest.mark.parametrize(
    ("local", "env", "expected"),
    [
        pytest.param(True, [], "9123", id="local"),
        pytest.param(False, [], "9123", id="kubernetes"),
        pytest.param(True, [EnvVarSpec(name="PORT", value="7000")], "7000", id="user-wins"),
    ],
)
def test_a_custom_engine_is_told_the_port_modelplane_probes(
    local: bool, env: list[EnvVarSpec], expected: str
) -> None:
    spec = InferenceSpec(
        engine=InferenceEngine.CUSTOM,
        image=None if local else "example/engine:1",
        command=["serve"],
        port=9123,
        health_path="/v1/models",
        env=env,
    )
    plan = plan_engine(spec, model(), None, local=local, images=IMAGES, secret_name=None)
    values = {var.name: var.value for var in plan.env}
    assert values["PORT"] == expected
    assert values["MODEL_PATH"] == "/data/models/qwen"  # a hostPath: the same path in both
    assert plan.port == 9123
    if not local:
        objects = render_all(inference(spec), plan, namespace="ns", integrations=Integrations())
        container = objects[0]["spec"]["template"]["spec"]["containers"][0]
        assert {"name": "PORT", "value": "9123"} in container["env"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/v1/models", "port": 9123}


def test_ollama_pulls_in_an_init_step_and_serves_under_the_model_name() -> None:
    plan = plan_engine(
        InferenceSpec(engine=InferenceEngine.OLLAMA),
        model(),
        None,
        local=False,
        images=IMAGES,
        secret_name=None,
    )
    assert plan.command == ["ollama", "serve"]
    pull = " ".join(plan.prepare[0].command)
    assert "ollama pull hf.co/Qwen/Qwen2.5-0.5B" in pull
    assert "ollama cp hf.co/Qwen/Qwen2.5-0.5B qwen-small" in pull


def test_litellm_modes_and_the_key_stays_a_secret_reference() -> None:
    remote = model(remote=True, has_token=True)
    plan = plan_engine(
        InferenceSpec(engine=InferenceEngine.LITELLM_PROXY, gpu=0),
        remote,
        None,
        local=False,
        images=IMAGES,
        secret_name="model-abc12-credentials",
    )
    config = plan.config_files["litellm.yaml"]
    assert "model_name: '*'" in config
    assert "openai/*" in config
    assert "os.environ/UPSTREAM_API_KEY" in config
    key = next(e for e in plan.env if e.name == "UPSTREAM_API_KEY")
    assert key.value is None
    assert key.secret_key == "hf-token"
    single = plan_engine(
        InferenceSpec(engine=InferenceEngine.LITELLM_PROXY, litellm=LiteLLMSpec(mode="SINGLE")),
        remote,
        None,
        local=False,
        images=IMAGES,
        secret_name="s",
    )
    assert "model_name: qwen-small" in single.config_files["litellm.yaml"]
    with pytest.raises(EnginePlanError, match="model_list"):
        plan_engine(
            InferenceSpec(
                engine=InferenceEngine.LITELLM_PROXY,
                litellm=LiteLLMSpec(mode="CONFIG", config_yaml="general_settings: {}"),
            ),
            remote,
            None,
            local=False,
            images=IMAGES,
            secret_name="s",
        )
    with pytest.raises(EnginePlanError, match="REMOTE_API model"):
        plan_engine(InferenceSpec(), remote, None, local=False, images=IMAGES, secret_name=None)


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ([EnvVarSpec(name="A", value="1"), EnvVarSpec(name="A", value="2")], "input.env[1].name"),
        ([EnvVarSpec(name="UPSTREAM_API_KEY", value="x")], "input.env[0].name"),
        ([EnvVarSpec(name="A", secret_name="s")], "input.env[0]"),
        ([EnvVarSpec(name="A")], "input.env[0]"),
        (
            [EnvVarSpec(name="URI", secret_name="modelplane-mongodb", secret_key="uri")],
            "input.env[0].secretName",
        ),
    ],
)
def test_env_entries_are_values_or_complete_secret_references(
    env: list[EnvVarSpec], field: str
) -> None:
    with pytest.raises(EnginePlanError) as caught:
        plan_engine(
            InferenceSpec(env=env), model(), None, local=False, images=IMAGES, secret_name=None
        )
    assert caught.value.field == field


# -- manifests --------------------------------------------------------------------------------


def test_rendered_objects_carry_labels_gpus_probes_and_no_token() -> None:
    spec = InferenceSpec(
        gpu=2,
        gpu_type="NVIDIA-A100-SXM4-80GB",
        env=[
            EnvVarSpec(
                name="HF_TOKEN", secret_name="model-abc12-credentials", secret_key="hf-token"
            )
        ],
    )
    doc = inference(spec, generation=3)
    # the env may only reference the model's own credentials Secret: the model has a token
    plan = plan_engine(
        spec, model(has_token=True), None, local=False, images=IMAGES, secret_name=None
    )
    objects = render_all(doc, plan, namespace="ns", integrations=Integrations())
    assert [o["kind"] for o in objects] == ["Deployment", "Service"]
    deployment = objects[0]
    labels = deployment["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "modelplane"
    assert labels["modelplane.io/owner-id"] == "inf-xyz98"
    assert labels["modelplane.io/model-id"] == "model-abc12"
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"][GENERATION] == "3"
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
    assert container["readinessProbe"]["initialDelaySeconds"] == 60
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert container["securityContext"]["privileged"] is False
    token = next(e for e in container["env"] if e["name"] == "HF_TOKEN")
    assert token == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "model-abc12-credentials", "key": "hf-token"}},
    }
    assert deployment["spec"]["replicas"] == 1
    assert objects[1]["spec"]["selector"] == {"modelplane.io/owner-id": "inf-xyz98"}


def test_optional_objects_only_with_their_crds_and_autoscaler_owns_replicas() -> None:
    spec = InferenceSpec(autoscaling=AutoscalingSpec(min_replicas=1, max_replicas=4))
    doc = inference(spec)
    plan = plan_engine(spec, model(), None, local=False, images=IMAGES, secret_name=None)
    plain = render_all(doc, plan, namespace="ns", integrations=Integrations())
    assert [o["kind"] for o in plain] == ["Deployment", "Service", "HorizontalPodAutoscaler"]
    assert "replicas" not in plain[0]["spec"]
    full = render_all(
        doc, plan, namespace="ns", integrations=Integrations(service_monitor=True, aibrix=True)
    )
    assert [o["kind"] for o in full] == ["Deployment", "Service", "ServiceMonitor", "PodAutoscaler"]


# -- status -----------------------------------------------------------------------------------


def deployment(replicas: int = 1, ready: int = 0, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "inf-xyz98", "generation": 1},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": 1, "readyReplicas": ready, **status},
    }


def pod(
    *,
    ready: bool = False,
    conditions: list[dict[str, Any]] | None = None,
    statuses: list[dict[str, Any]] | None = None,
    init: list[dict[str, Any]] | None = None,
    node: str | None = "gpu-0",
    generation: int = 1,
    memory: str = "2Gi",
) -> dict[str, Any]:
    conds = list(conditions or [])
    conds.append({"type": "Ready", "status": "True" if ready else "False"})
    return {
        "metadata": {"name": "inf-xyz98-5d8f-abcde", "annotations": {GENERATION: str(generation)}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "engine", "resources": {"limits": {"memory": memory}}}],
        },
        "status": {
            "conditions": conds,
            "containerStatuses": statuses or [],
            "initContainerStatuses": init or [],
        },
    }


def waiting(reason: str, message: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "name": "engine",
        "image": "vllm/vllm-openai:v0.11.0",
        "state": {"waiting": {"reason": reason, "message": message}},
        **extra,
    }


UNSCHEDULABLE = {
    "type": "PodScheduled",
    "status": "False",
    "reason": "Unschedulable",
    "message": "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, "
    "2 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available",
}

STATUS_CASES: list[
    tuple[
        str,
        dict[str, Any] | None,
        list[dict[str, Any]],
        list[dict[str, Any]],
        InferencePhase,
        str | None,
        str,
    ]
] = [
    ("no deployment yet", None, [], [], InferencePhase.CREATING, "Applying", "being created"),
    (
        "all ready",
        deployment(1, 1),
        [pod(ready=True)],
        [],
        InferencePhase.RUNNING,
        None,
        "1/1 replicas ready",
    ),
    (
        "no GPU free",
        deployment(1, 0),
        [pod(conditions=[UNSCHEDULABLE], node=None)],
        [],
        InferencePhase.PENDING,
        "InsufficientGPU",
        "insufficient nvidia.com/gpu (needs 2, largest free 1)",
    ),
    (
        "no GPU free, from the event only",
        deployment(1, 0),
        [pod(node=None)],
        [
            {
                "involvedObject": {"kind": "Pod", "name": "inf-xyz98-5d8f-abcde"},
                "reason": "FailedScheduling",
                "message": UNSCHEDULABLE["message"],
                "lastTimestamp": "2026-11-23T10:00:00Z",
            }
        ],
        InferencePhase.PENDING,
        "InsufficientGPU",
        "largest free 1",
    ),
    (
        "image never pulls",
        deployment(1, 0),
        [pod(statuses=[waiting("ImagePullBackOff", 'Back-off pulling image "x/never-pulls:1"')])],
        [],
        InferencePhase.FAILED,
        "ImagePullBackOff",
        "Back-off pulling image",
    ),
    (
        "missing secret key",
        deployment(1, 0),
        [
            pod(
                statuses=[
                    waiting(
                        "CreateContainerConfigError", "couldn't find key hf-token in Secret ns/s"
                    )
                ]
            )
        ],
        [],
        InferencePhase.FAILED,
        "CreateContainerConfigError",
        "couldn't find key hf-token",
    ),
    (
        "out of memory, crash looping",
        deployment(1, 0),
        [
            pod(
                statuses=[
                    waiting(
                        "CrashLoopBackOff",
                        "back-off 40s",
                        restartCount=4,
                        lastState={"terminated": {"reason": "OOMKilled", "exitCode": 137}},
                    )
                ]
            )
        ],
        [],
        InferencePhase.CRASH_LOOP_BACK_OFF,
        "OOMKilled",
        "OOMKilled (exit code 137), memory limit 2Gi",
    ),
    (
        "plain crash loop",
        deployment(1, 0),
        [
            pod(
                statuses=[
                    waiting(
                        "CrashLoopBackOff",
                        restartCount=2,
                        lastState={"terminated": {"reason": "Error", "exitCode": 1}},
                    )
                ]
            )
        ],
        [],
        InferencePhase.CRASH_LOOP_BACK_OFF,
        "CrashLoopBackOff",
        "restarted 2 times; last end: Error (exit code 1)",
    ),
    (
        "readiness failing",
        deployment(1, 0),
        [pod(statuses=[{"name": "engine", "ready": False, "state": {"running": {}}}])],
        [
            {
                "involvedObject": {"kind": "Pod", "name": "inf-xyz98-5d8f-abcde"},
                "reason": "Unhealthy",
                "message": "Readiness probe failed: connection refused",
                "lastTimestamp": "2026-11-23T10:00:00Z",
            }
        ],
        InferencePhase.CREATING,
        "ReadinessProbeFailed",
        "Readiness probe failed: connection refused",
    ),
    (
        "model being pulled in the init step",
        deployment(1, 0),
        [pod(init=[{"name": "pull-model", "state": {"running": {}}}])],
        [],
        InferencePhase.CREATING,
        "Initializing",
        "init step pull-model is running",
    ),
    (
        "quota refuses the pods",
        deployment(1, 0),
        [],
        [
            {
                "involvedObject": {"kind": "ReplicaSet", "name": "inf-xyz98-5d8f"},
                "reason": "FailedCreate",
                "message": "exceeded quota: gpu-quota",
            }
        ],
        InferencePhase.FAILED,
        "FailedCreate",
        "exceeded quota",
    ),
    (
        "old generation's ready pod does not count",
        deployment(1, 1),
        [
            pod(ready=True, generation=0),
            pod(statuses=[{"name": "engine", "state": {"running": {}}}]),
        ],
        [],
        InferencePhase.CREATING,
        "NotReady",
        "replicas ready",
    ),
    (
        "rollout stuck",
        deployment(
            1,
            0,
            conditions=[
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": "ReplicaSet has timed out progressing.",
                }
            ],
        ),
        [pod(statuses=[{"name": "engine", "state": {"running": {}}}])],
        [],
        InferencePhase.FAILED,
        "ProgressDeadlineExceeded",
        "timed out",
    ),
]


@pytest.mark.parametrize(
    ("deploy", "pods", "events", "phase", "reason", "words"),
    [case[1:] for case in STATUS_CASES],
    ids=[case[0] for case in STATUS_CASES],
)
def test_status_tells_the_truth(
    deploy: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    events: list[dict[str, Any]],
    phase: InferencePhase,
    reason: str | None,
    words: str,
) -> None:
    observed = derive_status(
        deploy, pods, events, generation=1, requested_gpus=2, initial_delay=60, largest_free_gpus=1
    )
    assert (observed.phase, observed.reason) == (phase, reason), observed
    assert words in (observed.message or ""), observed


# -- manifests of the user's own ----------------------------------------------------------------

GOOD = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: my-llm
  namespace: somewhere-else
  annotations: {modelplane.io/model-name: my-llm-model}
spec:
  selector: {matchLabels: {app: my-llm}}
  template:
    metadata: {labels: {app: my-llm}}
    spec:
      containers:
        - name: server
          image: ghcr.io/example/server:1
          ports: [{containerPort: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: my-llm}
spec:
  selector: {app: my-llm}
  ports: [{port: 80, targetPort: 9000}]
"""


def test_manifest_is_renamed_and_namespaced() -> None:
    objects, name, port = check_manifest(GOOD, namespace="ns", name="inf-aaaaa")
    assert [o["metadata"]["name"] for o in objects] == ["inf-aaaaa", "inf-aaaaa"]
    assert {o["metadata"]["namespace"] for o in objects} == {"ns"}
    assert (name, port) == ("my-llm-model", 80)


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("kind: Pod\napiVersion: v1\nmetadata: {name: p}\n", "manifest[0].kind", "not allowed"),
        (
            GOOD.replace(
                "image: ghcr", "securityContext: {privileged: true}\n          image: ghcr"
            ),
            "privileged",
            "privileged",
        ),
        (
            GOOD.replace("      containers:", "      hostNetwork: true\n      containers:"),
            "hostNetwork",
            "not allowed",
        ),
        (
            GOOD.replace(
                "      containers:",
                "      volumes: [{name: v, hostPath: {path: /etc}}]\n      containers:",
            ),
            "hostPath",
            "outside your organisation's weights",
        ),
        (GOOD.split("---")[1], "manifest", "exactly one Deployment"),
        ("{not yaml", "manifest", "not valid YAML"),
        (GOOD + "\n---\n" + GOOD.split("---")[1], "manifest", "at most one Service"),
    ],
    ids=[
        "kind",
        "privileged",
        "host-network",
        "host-path",
        "no-deployment",
        "yaml",
        "two-services",
    ],
)
def test_manifest_refusals(text: str, field: str, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_manifest(text, namespace="ns", name="inf-aaaaa")
    assert field in caught.value.field
    assert words in caught.value.message
