"""What an inference runs: the engine planner, one pure function for both runtimes.

:func:`plan_engine` turns an inference's spec, its model and the model's weights into an
:class:`EnginePlan`: the image, the command, the port and health path, the environment, where
the weights are and how they get there (a PVC or hostPath mount, or an init step that syncs
an S3 prefix), and any config file the engine reads. The Kubernetes renderer
(:mod:`controllers.runtimes.kubernetes.manifests`) wraps the plan in a Deployment; the local
runtime runs
the same command as a supervised subprocess, bound to loopback.

Engines:

* **VLLM** ``vllm serve <weights> --served-model-name <model name> --port <port>`` (with
  ``--tensor-parallel-size`` for several GPUs), then the inference's ``engineArgs``
  (:mod:`.engine_args`: the only engine that takes them). A user-supplied command must carry
  ``--served-model-name <name>``: the gateway routes on that name.
* **OLLAMA** serves ``hf.co/<repo>`` (or the tag the user names): an init step pulls it and
  copies it to the model's name, so clients ask for the same name on every engine. An ENGINE
  model (``deployModel``) names an Ollama model (``smollm2:135m``) and downloads nothing first.
* **LITELLM_PROXY** a LiteLLM proxy in front of an OpenAI-compatible upstream (a REMOTE_API
  model's URL, key from the model's Secret): every model (WILDCARD), only this model's name
  (SINGLE), or the user's own config (CONFIG); routes in :mod:`.proxying`. Needs no GPU.
* **CUSTOM** the user's image and command. One that runs vLLM obeys vLLM's served-name rule
  (:mod:`.commands`). Its environment carries ``PORT`` (the port modelplane probes and routes
  to, on both runtimes) and, when it serves downloaded weights, ``MODEL_PATH`` (where they
  are), unless the user sets either: a command need not repeat the port it was given
  (``--port "$PORT"`` in a shell, ``$(PORT)`` in a Kubernetes argument).

Weights: a LOCAL model's engine reads downloaded weights and runs with ``HF_HUB_OFFLINE=1``.
An ENGINE model's engine fetches its model itself: no ``HF_HUB_OFFLINE``, and the model's hub
token (if given) as ``HF_TOKEN`` from the model's Secret (a ``secretKeyRef``, never a value).
The environment's checks and the hub variables live in :mod:`.environment`.

Invalid combinations raise :class:`EnginePlanError` naming the input field, so the same checks
answer ``startInference`` (as a ValidationError) and the controller (as FAILED).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from controllers.inference.commands import SERVED_NAME_FLAG, check_served_name
from controllers.inference.commands import EnginePlanError as EnginePlanError  # noqa: PLC0414
from controllers.inference.commands import served_name_in as served_name_in  # noqa: PLC0414
from controllers.inference.engine_args import check_engine_args, host_arg_index
from controllers.inference.environment import (
    PROGRAM_ENV,
    PROGRAM_ENV_PREFIXES,
    check_env,
    check_litellm_secret,
    hub_env,
    with_hub_env,
)
from controllers.inference.proxying import litellm_config as litellm_config  # noqa: PLC0414
from controllers.runtimes.secrets import HF_TOKEN_KEY, S3_SECRET_KEY
from storage.documents import (
    AccessMode,
    EnvVarSpec,
    InferenceEngine,
    InferenceSpec,
    ModelDocument,
    TargetKind,
    WeightsDocument,
)

WEIGHTS_MOUNT = "/weights"
CONFIG_MOUNT = "/etc/modelplane"
OLLAMA_HOME = "/root/.ollama"
OLLAMA_PORT = 11434
"""Ollama's own port: the default of an OLLAMA inference on Kubernetes."""
_OLLAMA_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*(:[\w.-]+)?")
MAX_OLLAMA_MODEL = 200


@dataclass(frozen=True, slots=True)
class EngineImages:
    """Default images per engine (settings ``MODELPLANE_*_IMAGE``)."""

    vllm: str = "vllm/vllm-openai:v0.11.0"
    ollama: str = "ollama/ollama:0.12.6"
    litellm: str = "ghcr.io/berriai/litellm:main-v1.78.5-stable"
    s3_sync: str = "amazon/aws-cli:2.31.18"


@dataclass(frozen=True, slots=True)
class WeightsPlacement:
    """Where the engine finds the weights, and what brings them there."""

    kind: TargetKind
    path: str
    """The directory the engine reads (container path on Kubernetes, local path locally)."""
    claim_name: str | None = None
    mount_path: str | None = None
    """Where a PVC is mounted (the root the downloader wrote under)."""
    host_path: str | None = None
    s3_uri: str | None = None
    s3_endpoint: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None


@dataclass(frozen=True, slots=True)
class PrepareStep:
    """Something to run to completion before the engine starts (an init container)."""

    name: str
    image: str
    command: list[str]
    env: list[EnvVarSpec] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EnginePlan:
    """Everything both runtimes need to start one replica of an engine."""

    engine: InferenceEngine
    image: str | None
    command: list[str]
    args: list[str]
    port: int
    health_path: str
    env: list[EnvVarSpec]
    gpu: int
    weights: WeightsPlacement | None = None
    prepare: list[PrepareStep] = field(default_factory=list)
    config_files: dict[str, str] = field(default_factory=dict)
    """File name -> content, mounted read-only under :data:`CONFIG_MOUNT` (a ConfigMap)."""
    secret_name: str | None = None
    """The model's credentials Secret, referenced by env entries (never copied)."""

    @property
    def argv(self) -> list[str]:
        """Command and args together, as a local process runs them."""
        return [*self.command, *self.args]


def default_engine(model: ModelDocument) -> InferenceEngine | None:
    """VLLM for downloaded models; None (a gateway route) for REMOTE_API models; CUSTOM (the
    image and command given) for ENGINE models."""
    mode = model.source.access_mode
    if mode is AccessMode.ENGINE:
        return InferenceEngine.CUSTOM
    return None if mode is AccessMode.REMOTE_API else InferenceEngine.VLLM


def host_program_field(spec: InferenceSpec) -> str | None:
    """The input that picks a program of the user's choice, or None: a CUSTOM engine, a
    command, args (without a command they are the command line), a LiteLLM config of the
    user's own (callbacks and ``custom_auth`` name code to import), or an environment variable
    that makes the engine load other code (:data:`PROGRAM_ENV` / :data:`PROGRAM_ENV_PREFIXES`),
    or an engine flag that runs code or reads files of the host (:mod:`.engine_args`).
    On the local runtime such a program runs on the control-plane host. A route (no engine)
    runs nothing."""
    if spec.engine is None:
        return None
    host_arg = host_arg_index(spec.engine_args)
    chosen = (
        (spec.engine is InferenceEngine.CUSTOM, "input.engine"),
        (bool(spec.command), "input.command"),
        (bool(spec.args), "input.args"),
        (host_arg is not None, f"input.engineArgs[{host_arg}]"),
        (spec.litellm is not None and spec.litellm.mode == "CONFIG", "input.litellm.configYaml"),
        *(
            (
                var.name.upper() in PROGRAM_ENV
                or var.name.upper().startswith(PROGRAM_ENV_PREFIXES),
                f"input.env[{index}].name",
            )
            for index, var in enumerate(spec.env)
        ),
    )
    return next((where for picked, where in chosen if picked), None)


def check_ollama_model(reference: str | None) -> None:
    """An Ollama model reference: ``name[:tag]``, ``namespace/name[:tag]`` or
    ``hf.co/org/repo[:quant]``, at most :data:`MAX_OLLAMA_MODEL` characters."""
    if reference is None:
        return
    if len(reference) > MAX_OLLAMA_MODEL or not _OLLAMA_MODEL.fullmatch(reference):
        raise EnginePlanError(
            "input.ollamaModel",
            f"{reference[:MAX_OLLAMA_MODEL]!r} is not an Ollama model reference "
            "(`name[:tag]`, e.g. `smollm2:135m`, or `hf.co/<org>/<repo>[:quant]`)",
        )


def plan_engine(
    spec: InferenceSpec,
    model: ModelDocument,
    weights: WeightsDocument | None,
    *,
    local: bool,
    images: EngineImages,
    secret_name: str | None,
    pvc_mount_path: str = WEIGHTS_MOUNT,
    config_dir: str = CONFIG_MOUNT,
) -> EnginePlan:
    """The engine to run for ``spec`` (see the module docstring); raises EnginePlanError."""
    check_env(spec.env, own_secret=model.secret_ref)
    check_litellm_secret(spec, model)
    check_ollama_model(spec.ollama_model)
    engine = spec.engine
    replaced = "input.command" if spec.command else "input.args" if spec.args else None
    check_engine_args(spec.engine_args, engine=engine, replaced_by=replaced)
    if engine is None:
        raise EnginePlanError("input.engine", "a route has no engine to plan")
    remote = model.source.access_mode is AccessMode.REMOTE_API
    if remote and engine is not InferenceEngine.LITELLM_PROXY:
        raise EnginePlanError(
            "input.engine",
            f"{model.name} is a REMOTE_API model: leave engine empty for a gateway route, or "
            "use LITELLM_PROXY for a hosted proxy",
        )
    if engine is InferenceEngine.LITELLM_PROXY:
        return _litellm(
            spec, model, local=local, images=images, secret_name=secret_name, config_dir=config_dir
        )
    placement = _placement(model, weights, local=local, pvc_mount_path=pvc_mount_path)
    if engine is InferenceEngine.VLLM:
        return _vllm(spec, model, placement, local=local, images=images, secret_name=secret_name)
    if engine is InferenceEngine.OLLAMA:
        return _ollama(spec, model, placement, local=local, images=images, secret_name=secret_name)
    return _custom(spec, model, placement, local=local, secret_name=secret_name)


def _host(local: bool) -> str:
    return "127.0.0.1" if local else "0.0.0.0"  # noqa: S104  a pod listens on its own IP


def _placement(
    model: ModelDocument,
    weights: WeightsDocument | None,
    *,
    local: bool,
    pvc_mount_path: str,
) -> WeightsPlacement | None:
    target = model.download_target
    if target is None:
        return None
    if target.kind is TargetKind.LOCAL:
        path = target.local_path or (weights.location if weights else "")
        return WeightsPlacement(kind=TargetKind.LOCAL, path=path, host_path=path)
    if local:
        raise EnginePlanError(
            "modelId",
            f"the local runtime cannot serve weights stored on a {target.kind.value} target; "
            "add the model with a LOCAL target",
        )
    if target.kind is TargetKind.PVC:
        path = str(PurePosixPath(pvc_mount_path) / (target.sub_path or ""))
        return WeightsPlacement(
            kind=TargetKind.PVC,
            path=path,
            claim_name=target.claim_name,
            mount_path=pvc_mount_path,
        )
    return WeightsPlacement(
        kind=TargetKind.S3,
        path=WEIGHTS_MOUNT,
        s3_uri=weights.location if weights else None,
        s3_endpoint=target.endpoint,
        s3_region=target.region,
        s3_access_key_id=target.access_key_id,
    )


def _prepare_s3(
    placement: WeightsPlacement | None, images: EngineImages, secret_name: str | None
) -> list[PrepareStep]:
    """An init step copying the S3 prefix into the pod's weights volume."""
    if placement is None or placement.kind is not TargetKind.S3:
        return []
    if not placement.s3_uri:
        raise EnginePlanError("modelId", "the model's weights have no S3 location yet")
    command = ["aws", "s3", "sync", "--only-show-errors", placement.s3_uri, placement.path]
    if placement.s3_endpoint:
        command += ["--endpoint-url", placement.s3_endpoint]
    env = [EnvVarSpec(name="AWS_ACCESS_KEY_ID", value=placement.s3_access_key_id or "")]
    if secret_name:
        env.append(
            EnvVarSpec(
                name="AWS_SECRET_ACCESS_KEY", secret_name=secret_name, secret_key=S3_SECRET_KEY
            )
        )
    if placement.s3_region:
        env.append(EnvVarSpec(name="AWS_DEFAULT_REGION", value=placement.s3_region))
    return [PrepareStep(name="sync-weights", image=images.s3_sync, command=command, env=env)]


def _vllm(
    spec: InferenceSpec,
    model: ModelDocument,
    placement: WeightsPlacement | None,
    *,
    local: bool,
    images: EngineImages,
    secret_name: str | None,
) -> EnginePlan:
    if spec.command or spec.args:
        command, args = list(spec.command or []), list(spec.args or [])
        check_served_name(command, args, model.name, image=spec.image, always=True)
    else:
        if model.source.access_mode is AccessMode.ENGINE:
            raise EnginePlanError(
                "input.command",
                f"{model.name} is served by its engine, which fetches it: give a command "
                f"(e.g. `vllm serve <repo> {SERVED_NAME_FLAG} {model.name}`)",
            )
        if placement is None:
            raise EnginePlanError("modelId", f"{model.name} has no weights to serve")
        command = ["vllm", "serve"]
        args = [
            placement.path,
            SERVED_NAME_FLAG,
            model.name,
            "--host",
            _host(local),
            "--port",
            str(spec.port),
        ]
        if spec.gpu > 1:
            args += ["--tensor-parallel-size", str(spec.gpu)]
        if spec.context_length:
            args += ["--max-model-len", str(spec.context_length)]
        args += spec.engine_args
    return EnginePlan(
        engine=InferenceEngine.VLLM,
        image=spec.image or images.vllm,
        command=command,
        args=args,
        port=spec.port,
        health_path=spec.health_path or "/health",
        env=with_hub_env(spec.env, hub_env(model, secret_name)),
        gpu=spec.gpu,
        weights=placement,
        prepare=_prepare_s3(placement, images, secret_name),
        secret_name=secret_name,
    )


def _ollama_source(spec: InferenceSpec, model: ModelDocument) -> str:
    """What Ollama pulls: ``ollamaModel``; else an ENGINE model's own reference, or a LOCAL
    model's repo on the hub (``hf.co/<repo>``)."""
    if model.source.access_mode is not AccessMode.ENGINE:
        return spec.ollama_model or f"hf.co/{model.source.url}"
    source = spec.ollama_model or model.source.url
    if not source:
        raise EnginePlanError(
            "input.ollamaModel", "name the Ollama model to pull and serve (`smollm2:135m`)"
        )
    check_ollama_model(source)
    return source


def _ollama(
    spec: InferenceSpec,
    model: ModelDocument,
    placement: WeightsPlacement | None,
    *,
    local: bool,
    images: EngineImages,
    secret_name: str | None,
) -> EnginePlan:
    source = _ollama_source(spec, model)
    name = shlex.quote(model.name)
    pull = f"ollama pull {shlex.quote(source)} && ollama cp {shlex.quote(source)} {name}"
    host = f"{_host(local)}:{spec.port}"
    env = [*spec.env, EnvVarSpec(name="OLLAMA_HOST", value=host)]
    if local:
        # One process: serve in the background, pull and alias, then wait on the server.
        script = (
            f"ollama serve & server=$!; "
            f"until ollama list >/dev/null 2>&1; do sleep 1; done; "
            f"{pull} || {{ kill $server; exit 1; }}; wait $server"
        )
        return EnginePlan(
            engine=InferenceEngine.OLLAMA,
            image=None,
            command=spec.command or ["sh", "-c", script],
            args=spec.args or [],
            port=spec.port,
            health_path="/api/version",
            env=env,
            gpu=spec.gpu,
            weights=placement,
            secret_name=secret_name,
        )
    image = spec.image or images.ollama
    init_script = (
        "ollama serve & server=$!; until ollama list >/dev/null 2>&1; do sleep 1; done; "
        f"{pull}; status=$?; kill $server; exit $status"
    )
    prepare = PrepareStep(
        name="pull-model",
        image=image,
        command=["sh", "-c", init_script],
        env=[EnvVarSpec(name="OLLAMA_HOST", value="127.0.0.1:11434")],
    )
    return EnginePlan(
        engine=InferenceEngine.OLLAMA,
        image=image,
        command=spec.command or ["ollama", "serve"],
        args=spec.args or [],
        port=spec.port,
        health_path="/api/version",
        env=env,
        gpu=spec.gpu,
        weights=None,
        prepare=[prepare],
        secret_name=secret_name,
    )


def _litellm(
    spec: InferenceSpec,
    model: ModelDocument,
    *,
    local: bool,
    images: EngineImages,
    secret_name: str | None,
    config_dir: str,
) -> EnginePlan:
    config = litellm_config(spec, model)
    env = list(spec.env)
    if model.source.has_token and secret_name:
        env.append(
            EnvVarSpec(name="UPSTREAM_API_KEY", secret_name=secret_name, secret_key=HF_TOKEN_KEY)
        )
    litellm = spec.litellm
    if litellm and litellm.api_key_secret_name:
        env.append(
            EnvVarSpec(
                name="LITELLM_MASTER_KEY",
                secret_name=litellm.api_key_secret_name,
                secret_key=litellm.api_key_secret_key or "api-key",
            )
        )
    config_path = str(PurePosixPath(config_dir) / "litellm.yaml")
    return EnginePlan(
        engine=InferenceEngine.LITELLM_PROXY,
        image=spec.image or images.litellm,
        command=spec.command or ["litellm"],
        args=spec.args
        or ["--config", config_path, "--host", _host(local), "--port", str(spec.port)],
        port=spec.port,
        health_path="/health/liveliness",
        env=env,
        gpu=0,
        config_files={"litellm.yaml": config},
        secret_name=secret_name,
    )


def _custom(
    spec: InferenceSpec,
    model: ModelDocument,
    placement: WeightsPlacement | None,
    *,
    local: bool,
    secret_name: str | None,
) -> EnginePlan:
    if local and not spec.command:
        raise EnginePlanError("input.command", "CUSTOM on the local runtime needs a command")
    if not local and not spec.image:
        raise EnginePlanError("input.image", "CUSTOM needs an image")
    command, args = list(spec.command or []), list(spec.args or [])
    check_served_name(command, args, model.name, image=spec.image, always=False)
    env = list(spec.env)
    if model.source.access_mode is AccessMode.ENGINE:
        env = with_hub_env(env, hub_env(model, secret_name))
    named = {var.name for var in env}
    if placement is not None and "MODEL_PATH" not in named:
        env.append(EnvVarSpec(name="MODEL_PATH", value=placement.path))
    if "PORT" not in named:
        env.append(EnvVarSpec(name="PORT", value=str(spec.port)))
    return EnginePlan(
        engine=InferenceEngine.CUSTOM,
        image=spec.image,
        command=command,
        args=args,
        port=spec.port,
        health_path=spec.health_path or "/health",
        env=env,
        gpu=spec.gpu,
        weights=placement,
        secret_name=secret_name,
    )
