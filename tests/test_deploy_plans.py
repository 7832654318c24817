"""Pure parts of one-call deploys, hosted Ollama and LiteLLM routes, table-tested.

The served-name rule for any command that runs vLLM (CUSTOM engines too), the environment of
an engine that fetches its own model (no ``HF_HUB_OFFLINE``, the hub token as a Secret
reference), Ollama model references, and LiteLLM's provider-prefixed routes.
"""

from __future__ import annotations

import json

import pytest
import yaml

from controllers.inference.commands import fetched_model, runs_vllm
from controllers.inference.engines import EngineImages, EnginePlan, EnginePlanError, plan_engine
from controllers.runtimes.kubernetes.manifests import Integrations, render_all
from services.errors import InvalidInput
from services.inference import check_manifest
from storage.documents import (
    AccessMode,
    InferenceDocument,
    InferenceEngine,
    InferenceSpec,
    LiteLLMSpec,
    LocalTarget,
    ModelDocument,
    ModelSource,
)

IMAGES = EngineImages()
SECRET = "model-abc12-credentials"
VLLM_MODULE = ["python", "-m", "vllm.entrypoints.openai.api_server"]


def model(mode: AccessMode = AccessMode.ENGINE, *, has_token: bool = False) -> ModelDocument:
    urls = {
        AccessMode.ENGINE: "meta-llama/Llama-2-7b-chat-hf",
        AccessMode.LOCAL: "Qwen/Qwen2.5-0.5B",
        AccessMode.REMOTE_API: "http://ollama.example:11434",
    }
    return ModelDocument(
        id="model-abc12",
        organization_id="org-a",
        name="llama-7b",
        name_key="llama-7b",
        display_name="Llama",
        source=ModelSource(url=urls[mode], access_mode=mode, has_token=has_token),
        download_target=LocalTarget(local_path="/data/m") if mode is AccessMode.LOCAL else None,
        secret_ref=SECRET if has_token else None,
    )


def plan(
    spec: InferenceSpec, of: ModelDocument | None = None, *, local: bool = False
) -> EnginePlan:
    return plan_engine(
        spec,
        of or model(),
        None,
        local=local,
        images=IMAGES,
        secret_name=None if local else (of or model()).secret_ref,
    )


def refused(spec: InferenceSpec, of: ModelDocument | None = None) -> EnginePlanError:
    with pytest.raises(EnginePlanError) as caught:
        plan(spec, of)
    return caught.value


# -- the served-name rule for every command that runs vLLM ------------------------------------


@pytest.mark.parametrize(
    ("command", "args", "image", "field"),
    [
        (
            [*VLLM_MODULE, "--served-model-name", "wrong-name"],
            None,
            "vllm/vllm-openai:v0.11.0",
            "input.command",
        ),
        ([*VLLM_MODULE, "--model", "x/y"], None, "my/image:1", "input.command"),
        (
            ["vllm", "serve", "x/y", "--served-model-name=other"],
            None,
            "my/image:1",
            "input.command",
        ),
        (["/usr/bin/vllm", "serve", "x/y"], None, "my/image:1", "input.command"),
        (
            ["sh", "-c", "vllm serve x/y --served-model-name nope"],
            None,
            "my/image:1",
            "input.command",
        ),
        (VLLM_MODULE, ["--served-model-name", "wrong-name"], "my/image:1", "input.args"),
        (
            None,
            ["--model", "x/y", "--served-model-name", "other"],
            "vllm/vllm-openai:v0.11.0",
            "input.args",
        ),
        (None, ["--model", "x/y"], "registry.example/vllm-openai@sha256:" + "a" * 64, "input.args"),
    ],
)
def test_a_custom_command_running_vllm_must_serve_the_model_under_its_name(
    command: list[str] | None, args: list[str] | None, image: str, field: str
) -> None:
    spec = InferenceSpec(engine=InferenceEngine.CUSTOM, image=image, command=command, args=args)
    error = refused(spec)
    assert error.field == field
    assert "'--served-model-name llama-7b'" in error.message
    if "wrong-name" in (command or []) + (args or []):
        assert "'wrong-name' must match the model name 'llama-7b'" in error.message


@pytest.mark.parametrize(
    ("command", "args", "image"),
    [
        ([*VLLM_MODULE, "--served-model-name", "llama-7b", "--model", "x/y"], None, "my/image:1"),
        (["sh", "-c", "exec vllm serve x/y --served-model-name llama-7b"], None, "my/image:1"),
        (None, ["--model", "x/y", "--served-model-name", "llama-7b"], "vllm/vllm-openai:v0.11.0"),
        (["python", "server.py", "--served-model-name", "whatever"], None, "my/image:1"),
        (["text-generation-launcher", "--model-id", "x/y"], None, "ghcr.io/hf/tgi:3"),
        (None, None, "my/image:1"),
    ],
)
def test_other_custom_commands_and_correct_vllm_ones_are_accepted(
    command: list[str] | None, args: list[str] | None, image: str
) -> None:
    spec = InferenceSpec(engine=InferenceEngine.CUSTOM, image=image, command=command, args=args)
    planned = plan(spec)
    assert planned.command == (command or [])


def test_what_a_command_runs_and_fetches() -> None:
    assert runs_vllm(["vllm", "serve", "a/b"], [], None)
    assert not runs_vllm(["python", "-m", "http.server"], [], "vllm/vllm-openai:v1")
    assert runs_vllm([], ["--model", "a/b"], "vllm/vllm-openai:v1")
    assert fetched_model([*VLLM_MODULE, "--model", "meta/x"], []) == "meta/x"
    assert fetched_model(["vllm", "serve", "meta/y", "--port", "1"], []) == "meta/y"
    assert fetched_model(["sh", "-c", "vllm serve --model=meta/z"], []) == "meta/z"
    assert fetched_model(["python", "app.py"], []) is None


# -- an engine that fetches its own model --------------------------------------------------


def env_of(planned: EnginePlan) -> dict[str, tuple[str | None, str | None, str | None]]:
    return {var.name: (var.value, var.secret_name, var.secret_key) for var in planned.env}


def test_an_engine_model_is_not_offline_and_reads_its_token_from_its_secret() -> None:
    command = [*VLLM_MODULE, "--served-model-name", "llama-7b", "--model", "meta-llama/x"]
    for engine in (InferenceEngine.VLLM, InferenceEngine.CUSTOM):
        spec = InferenceSpec(engine=engine, image="vllm/vllm-openai:v0.11.0", command=command)
        env = env_of(plan(spec, model(has_token=True)))
        assert "HF_HUB_OFFLINE" not in env
        assert env["HF_TOKEN"] == (None, SECRET, "hf-token")
        assert "HF_TOKEN" not in env_of(plan(spec, model()))  # no token given: none passed
    downloaded = env_of(plan(InferenceSpec(), model(AccessMode.LOCAL)))
    assert downloaded["HF_HUB_OFFLINE"] == ("1", None, None)
    doc = InferenceDocument(
        id="inf-1",
        organization_id="org-a",
        model_id="model-abc12",
        model_name="llama-7b",
        name="inf-1",
        active_key="model-abc12",
        spec=InferenceSpec(
            engine=InferenceEngine.CUSTOM, image="vllm/vllm-openai:1", command=command
        ),
    )
    planned = plan(doc.spec, model(has_token=True))
    objects = render_all(doc, planned, namespace="ns", integrations=Integrations())
    container = objects[0]["spec"]["template"]["spec"]["containers"][0]
    token_env = next(e for e in container["env"] if e["name"] == "HF_TOKEN")
    assert token_env == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "hf-token"}},
    }
    assert "HF_HUB_OFFLINE" not in json.dumps(objects)


def test_an_engine_model_needs_a_command_for_vllm() -> None:
    error = refused(InferenceSpec(engine=InferenceEngine.VLLM))
    assert error.field == "input.command"


# -- hosted Ollama ---------------------------------------------------------------------------


def test_hosted_ollama_pulls_the_named_model_itself() -> None:
    hosted = model()
    hosted.source.url = "smollm2:135m"
    planned = plan(InferenceSpec(engine=InferenceEngine.OLLAMA, port=11434, gpu=0), hosted)
    pull = " ".join(planned.prepare[0].command)
    assert "ollama pull smollm2:135m && ollama cp smollm2:135m llama-7b" in pull
    assert planned.weights is None
    assert env_of(planned)["OLLAMA_HOST"] == ("0.0.0.0:11434", None, None)
    named = plan(InferenceSpec(engine=InferenceEngine.OLLAMA, ollama_model="qwen2:0.5b"), hosted)
    assert "ollama pull qwen2:0.5b" in " ".join(named.prepare[0].command)
    downloaded = plan(InferenceSpec(engine=InferenceEngine.OLLAMA), model(AccessMode.LOCAL))
    assert "ollama pull hf.co/Qwen/Qwen2.5-0.5B" in " ".join(downloaded.prepare[0].command)


@pytest.mark.parametrize(
    "reference",
    ["smollm2:135m; rm -rf /", "-x", "smollm2:", "a b", "hf.co//x", "x" * 201, "smollm2:135m:q4"],
)
def test_malformed_ollama_models_are_refused(reference: str) -> None:
    error = refused(InferenceSpec(engine=InferenceEngine.OLLAMA, ollama_model=reference))
    assert error.field == "input.ollamaModel"


# -- LiteLLM routes ----------------------------------------------------------------------------


def routes(litellm: LiteLLMSpec, *, has_token: bool = False) -> list[dict[str, object]]:
    spec = InferenceSpec(engine=InferenceEngine.LITELLM_PROXY, gpu=0, litellm=litellm)
    planned = plan(spec, model(AccessMode.REMOTE_API, has_token=has_token))
    config = yaml.safe_load(planned.config_files["litellm.yaml"])
    entries: list[dict[str, object]] = config["model_list"]
    return entries


@pytest.mark.parametrize(
    ("mode", "chosen", "served", "routed"),
    [
        ("SINGLE", "ollama/smollm2:135m", "llama-7b", "ollama/smollm2:135m"),
        ("SINGLE", "gpt-4o-mini", "llama-7b", "gpt-4o-mini"),
        ("SINGLE", None, "llama-7b", "openai/llama-7b"),
        ("WILDCARD", "anthropic/*", "*", "anthropic/*"),
        ("WILDCARD", "ollama/*", "*", "ollama/*"),
        ("WILDCARD", "*", "*", "*"),
        ("WILDCARD", None, "*", "openai/*"),
    ],
)
def test_litellm_routes_take_provider_prefixes(
    mode: str, chosen: str | None, served: str, routed: str
) -> None:
    [entry] = routes(LiteLLMSpec(mode=mode, model=chosen))
    assert entry["model_name"] == served
    assert entry["litellm_params"] == {"model": routed, "api_base": "http://ollama.example:11434"}


@pytest.mark.parametrize(
    ("mode", "chosen", "config"),
    [
        ("SINGLE", "ollama/*", None),
        ("SINGLE", "ollama/", None),
        ("SINGLE", "/smollm2", None),
        ("SINGLE", "ollama smollm2", None),
        ("WILDCARD", "ollama/smollm2:135m", None),
        ("WILDCARD", "ollama/*/x", None),
        ("WILDCARD", "Ollama/*", None),
        ("CONFIG", "ollama/*", "model_list: []"),
        ("SINGLE", "x" * 257, None),
    ],
)
def test_malformed_litellm_models_are_refused(mode: str, chosen: str, config: str | None) -> None:
    spec = InferenceSpec(
        engine=InferenceEngine.LITELLM_PROXY,
        gpu=0,
        litellm=LiteLLMSpec(mode=mode, model=chosen, config_yaml=config),
    )
    error = refused(spec, model(AccessMode.REMOTE_API))
    assert error.field == "input.litellm.model"


def test_an_upstream_route_needs_a_remote_model() -> None:
    spec = InferenceSpec(
        engine=InferenceEngine.LITELLM_PROXY,
        gpu=0,
        litellm=LiteLLMSpec(mode="SINGLE", model="ollama/x"),
    )
    error = refused(spec, model(AccessMode.ENGINE))
    assert error.field == "input.litellm.mode"
    assert "ENGINE model" in error.message


# -- a manifest's vLLM container ----------------------------------------------------------------

MANIFEST = """
apiVersion: v1
kind: Service
metadata: {name: llama-7b}
spec:
  selector: {app: llama-7b}
  ports: [{port: 8000}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: llama-7b}
spec:
  selector: {matchLabels: {app: llama-7b}}
  template:
    metadata: {labels: {app: llama-7b}}
    spec:
      containers:
        - name: model
          image: vllm/vllm-openai:v0.11.0
          command: [python, -m, vllm.entrypoints.openai.api_server]
          args: [--model, meta-llama/x, --served-model-name, SERVED]
"""


@pytest.mark.parametrize(("served", "accepted"), [("llama-7b", True), ("wrong-name", False)])
def test_a_manifests_vllm_container_serves_the_model_name(served: str, accepted: bool) -> None:
    text = MANIFEST.replace("SERVED", served)
    if accepted:
        _, name, _ = check_manifest(text, namespace="ns", name="inf-aaaaa")
        assert name == "llama-7b"
        return
    with pytest.raises(InvalidInput) as caught:
        check_manifest(text, namespace="ns", name="inf-aaaaa")
    assert caught.value.field == "manifest[1].spec.template.spec.containers[0].args"
    assert "'wrong-name' must match the model name 'llama-7b'" in caught.value.message
