"""From ``InferenceInput`` to the stored spec: defaults filled, inputs checked, and who may
choose the program.

Split from :mod:`services.inference` (the use cases) along the seam between *what a start
asks for* and *what it does with it*: :func:`spec_for` is pure (the local runtime's free port
aside) and answers the same for ``startInference``, ``updateInference``, a toggle and the
catalogue's install, so every path refuses the same input with the same field.

Who may choose the program: on the local runtime an engine runs on the control-plane host, so
a CUSTOM engine, a command, args or a program-loading environment variable (``PATH``,
``LD_PRELOAD``, ``PYTHONPATH``...) needs the ADMIN role and the setting
``MODELPLANE_ALLOW_HOST_COMMANDS`` (off by default); :func:`check_host_program` refuses it
before anything is written, dry runs and toggles included. On Kubernetes they run inside the
pod, an editor's right.
"""

from __future__ import annotations

from collections.abc import Callable

from controllers.inference.engine_args import check_engine_args
from controllers.inference.engines import (
    OLLAMA_PORT,
    EnginePlanError,
    default_engine,
    host_program_field,
)
from controllers.inference.environment import check_env
from services.errors import InvalidInput
from services.inference_inputs import (
    InferenceRequest,
    check_placement,
    check_scalars,
    choose_resources,
)
from services.principals import Forbidden, Principal
from storage.documents import AccessMode, InferenceEngine, InferenceSpec, ModelDocument, Role


def spec_for(
    model: ModelDocument,
    request: InferenceRequest,
    *,
    runtime_kind: str,
    free_port: Callable[[], int] | None = None,
) -> InferenceSpec:
    """The spec a start (or an update) stores for ``request``: checked, defaults filled."""
    engine = request.engine if request.engine is not None else default_engine(model)
    if model.source.access_mode is AccessMode.REMOTE_API and engine not in {
        None,
        InferenceEngine.LITELLM_PROXY,
    }:
        raise InvalidInput(
            "input.engine",
            f"{model.name} is a REMOTE_API model: leave engine empty for a gateway route, "
            "or use LITELLM_PROXY for a hosted proxy",
        )
    check_scalars(request)
    check_placement(request)
    try:  # checked here too: a route (no engine) is never planned, yet its env is stored
        check_env(list(request.env), own_secret=model.secret_ref)
        check_engine_args(request.engine_args or [], engine=engine, replaced_by=_replaces(request))
    except EnginePlanError as exc:
        raise InvalidInput(exc.field, exc.message) from None
    resources = choose_resources(request, model.resources, engine)
    port = request.port
    if port is None:
        default = OLLAMA_PORT if engine is InferenceEngine.OLLAMA else 8000
        port = free_port() if runtime_kind == "local" and free_port else default
    return InferenceSpec(
        engine=engine,
        image=request.image,
        image_pull_policy=request.image_pull_policy or "IfNotPresent",
        command=request.command,
        args=request.args,
        engine_args=list(request.engine_args or []),
        replicas=request.replicas or 1,
        cpu=resources.cpu,
        memory=resources.memory,
        gpu=resources.gpu,
        resources_given=resources.given,
        gpu_type=request.gpu_type,
        node_selector=dict(request.node_selector or {}),
        tolerations=list(request.tolerations or []),
        port=port,
        health_path=request.health_path,
        initial_delay_seconds=request.initial_delay_seconds
        if request.initial_delay_seconds is not None
        else 60,
        env=list(request.env),
        autoscaling=request.autoscaling,
        litellm=request.litellm,
        ollama_model=request.ollama_model,
        upstream_timeout_seconds=request.upstream_timeout_seconds,
        context_length=request.context_length,
        service_monitor=request.service_monitor,
    )


def _replaces(request: InferenceRequest) -> str | None:
    """The input that gives the whole command line (engineArgs have nowhere to go), if any."""
    return "input.command" if request.command else "input.args" if request.args else None


def check_host_program(
    principal: Principal, spec: InferenceSpec, *, runtime_kind: str, allowed: bool
) -> None:
    """On the local runtime a CUSTOM engine, a command, args or a program-loading variable
    run a program of the caller's choice on this host (as the engine user): only an
    ADMIN may, and only when the server allows it. Checked before anything is written."""
    if runtime_kind != "local":
        return
    where = host_program_field(spec)
    if where is None:
        return
    if not allowed:
        raise InvalidInput(
            where,
            f"{where}: on the local runtime this runs a program of your choice on the "
            "server's host, which this server does not allow "
            "(MODELPLANE_ALLOW_HOST_COMMANDS is off); use a built-in engine's defaults",
        )
    if not principal.role.allows(Role.ADMIN):
        raise Forbidden(
            f"{where}: on the local runtime this runs a program of your choice on the "
            f"server's host, which needs the {Role.ADMIN.value} role; you are "
            f"{principal.role.value}",
            required=Role.ADMIN,
        )
