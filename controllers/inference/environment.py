"""An engine's environment: the user's variables checked, and what modelplane adds.

Split from :mod:`controllers.inference.engines` (the planner) along the seam between *what
runs* (image, command, weights) and *what the process is told* (its environment). Every
engine's plan goes through :func:`check_env`: a variable is a literal or a reference to a key
of the model's own credentials Secret (any other Secret of the namespace may be another
organisation's, or the database URI's), with bounded names and sizes. :func:`hub_env` says what
an engine learns about the hub (offline for downloaded weights; an ENGINE model's token from
its Secret), the user's own variable of the same name winning (:func:`with_hub_env`).
:data:`PROGRAM_ENV` names the variables that make an engine load a program other than its
own, which the local runtime treats like a command (``engines.host_program_field``).
"""

from __future__ import annotations

import re

from controllers.inference.commands import EnginePlanError
from controllers.runtimes.secrets import HF_TOKEN_KEY
from storage.documents import AccessMode, EnvVarSpec, InferenceSpec, ModelDocument

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_RESERVED_ENV = frozenset({"UPSTREAM_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"})
PROGRAM_ENV = frozenset(
    {
        "PATH",
        "BASH_ENV",
        "ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "IFS",
        "PERL5LIB",
        "PERL5OPT",
        "RUBYLIB",
        "RUBYOPT",
        "NODE_OPTIONS",
        "NODE_PATH",
        "VLLM_PLUGINS",
        "HOME",
    }
)
"""Variables that make an engine run or load a program other than its own (the local runtime
treats them like a command)."""
PROGRAM_ENV_PREFIXES = ("LD_", "DYLD_", "PYTHON", "GCONV_", "BASH_FUNC_")
MAX_ENV_VARS = 100
"""Environment variables one inference may set (its own; modelplane adds a few)."""
MAX_ENV_NAME = 128
MAX_ENV_VALUE_BYTES = 16 * 1024
MAX_ENV_TOTAL_BYTES = 256 * 1024
"""All values together: well inside a Kubernetes object (etcd takes about 1.5 MiB)."""


def check_env(env: list[EnvVarSpec], *, own_secret: str | None) -> None:
    """Each variable is a literal or a reference to a key of the model's own credentials
    Secret (``own_secret``; any other Secret of the namespace may be another organisation's),
    with a proper name, at most once; at most :data:`MAX_ENV_VARS` of them, names of at most
    :data:`MAX_ENV_NAME` characters, values of at most :data:`MAX_ENV_VALUE_BYTES` and
    :data:`MAX_ENV_TOTAL_BYTES` together."""
    if len(env) > MAX_ENV_VARS:
        raise EnginePlanError(
            "input.env", f"{len(env)} environment variables given; at most {MAX_ENV_VARS}"
        )
    seen: set[str] = set()
    total = 0
    for index, var in enumerate(env):
        where = f"input.env[{index}]"
        _check_env_name(f"{where}.name", var.name, seen)
        seen.add(var.name)
        has_ref = var.secret_name is not None or var.secret_key is not None
        if (var.value is None) == (not has_ref):
            raise EnginePlanError(
                where, f"{var.name}: give either value or secretName and secretKey, not both"
            )
        if has_ref:
            _check_env_ref(where, var, own_secret)
            continue
        size = len((var.value or "").encode(errors="surrogatepass"))
        total += size
        if size > MAX_ENV_VALUE_BYTES or "\x00" in (var.value or ""):
            raise EnginePlanError(
                f"{where}.value",
                f"{var.name}: a value is at most {MAX_ENV_VALUE_BYTES} bytes, without NUL",
            )
    if total > MAX_ENV_TOTAL_BYTES:
        raise EnginePlanError(
            "input.env", f"the values are {total} bytes together; at most {MAX_ENV_TOTAL_BYTES}"
        )


def _check_env_name(field: str, name: str, seen: set[str]) -> None:
    if len(name) > MAX_ENV_NAME or not _ENV_NAME.fullmatch(name):
        raise EnginePlanError(
            field,
            f"{name[:MAX_ENV_NAME]!r} is not a valid environment variable name "
            f"(letters, digits and '_', not starting with a digit, at most {MAX_ENV_NAME})",
        )
    if name in seen:
        raise EnginePlanError(field, f"{name} is given twice")
    if name in _RESERVED_ENV:
        raise EnginePlanError(field, f"{name} is set by modelplane")


def _check_env_ref(where: str, var: EnvVarSpec, own_secret: str | None) -> None:
    if not (var.secret_name and var.secret_key):
        raise EnginePlanError(where, f"{var.name}: a secret reference needs both name and key")
    if var.secret_name != own_secret:
        allowed = f"only {own_secret!r}" if own_secret else "none: the model has no credentials"
        raise EnginePlanError(
            f"{where}.secretName",
            f"{var.name}: secretName may name the model's own credentials Secret ({allowed})",
        )
    if len(var.secret_key) > 253 or not _SECRET_KEY.fullmatch(var.secret_key):
        raise EnginePlanError(f"{where}.secretKey", f"{var.name}: not a valid Secret key")


def check_litellm_secret(spec: InferenceSpec, model: ModelDocument) -> None:
    """A LiteLLM master key Secret is the model's own: any other Secret of the namespace (the
    database URI's, another organisation's credentials) would reach a container whose image
    and command the user chooses. (Environment references: :func:`check_env`.)"""
    own = model.secret_ref
    litellm = spec.litellm
    if litellm is not None and litellm.api_key_secret_name not in {None, own}:
        raise EnginePlanError(
            "input.litellm.masterKeySecretName",
            "only the model's own Secret may be referenced"
            + (f" ({own})" if own else "; this model has none"),
        )


def hub_env(model: ModelDocument, secret_name: str | None) -> list[EnvVarSpec]:
    """What an engine is told about the hub: offline for downloaded weights (LOCAL); for an
    ENGINE model, which fetches its own, the model's hub token from its Secret, if any."""
    if model.source.access_mode is not AccessMode.ENGINE:
        return [EnvVarSpec(name="HF_HUB_OFFLINE", value="1")]
    if not model.source.has_token:
        return []
    return [EnvVarSpec(name="HF_TOKEN", secret_name=secret_name, secret_key=HF_TOKEN_KEY)]


def with_hub_env(env: list[EnvVarSpec], extra: list[EnvVarSpec]) -> list[EnvVarSpec]:
    """``env`` plus ``extra``, the user's own variable winning over ours of the same name."""
    own = {var.name for var in env}
    return [*env, *(var for var in extra if var.name not in own)]
