"""A LITELLM_PROXY's routes: the config file written for its mode (pure).

The ModelAPI resource's proxy mode, without a hand-written config:

* **WILDCARD** -- ``model_name: "*"`` to LiteLLM's model ``provider/*`` (default
  ``openai/*``), or ``*`` (the client names the provider: ``ollama/smollm2:135m``), against
  the REMOTE_API model's URL as ``api_base``;
* **SINGLE** -- only the model's own name, routed to one LiteLLM model (default
  ``openai/<name>``; e.g. ``ollama/smollm2:135m`` or ``anthropic/claude-3-5-haiku``);
* **CONFIG** -- the user's own ``model_list``; a ``model`` is refused there (the config names
  every model).

A malformed ``model`` raises :class:`EnginePlanError` naming ``input.litellm.model``; a mode
that needs an upstream on a model without one names ``input.litellm.mode``.
"""

from __future__ import annotations

import re

import yaml

from controllers.inference.commands import EnginePlanError
from storage.documents import AccessMode, InferenceSpec, ModelDocument

MODEL_FIELD = "input.litellm.model"
MAX_MODEL = 256
_PROVIDER = r"[a-z0-9][a-z0-9_.-]*"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._:@+/-]*"
WILDCARD_MODEL = re.compile(rf"\*|{_PROVIDER}/\*")
SINGLE_MODEL = re.compile(rf"(?:{_PROVIDER}/)?{_NAME}")


def litellm_model(mode: str, model: str | None, name: str) -> str:
    """LiteLLM's model for a WILDCARD or SINGLE route, checked (see the module docstring)."""
    if model is None:
        return "openai/*" if mode == "WILDCARD" else f"openai/{name}"
    if len(model) > MAX_MODEL:
        raise EnginePlanError(MODEL_FIELD, f"a LiteLLM model is at most {MAX_MODEL} characters")
    if mode == "WILDCARD" and not WILDCARD_MODEL.fullmatch(model):
        raise EnginePlanError(
            MODEL_FIELD,
            f"{model!r}: WILDCARD routes every name to `provider/*` (e.g. `anthropic/*`, "
            "`ollama/*`) or to `*` (the client names the provider)",
        )
    if mode == "SINGLE" and (
        not SINGLE_MODEL.fullmatch(model) or model.endswith("/") or "//" in model
    ):
        raise EnginePlanError(
            MODEL_FIELD,
            f"{model!r}: SINGLE routes to one model, `provider/name` (e.g. "
            "`ollama/smollm2:135m`) or a bare name; use WILDCARD for `provider/*`",
        )
    return model


def litellm_config(spec: InferenceSpec, model: ModelDocument) -> str:
    """The proxy's config file for the spec's mode (CONFIG: the user's, checked)."""
    litellm = spec.litellm
    mode = litellm.mode if litellm else "WILDCARD"
    chosen = litellm.model if litellm else None
    if mode == "CONFIG":
        if chosen is not None:
            raise EnginePlanError(
                MODEL_FIELD, "CONFIG takes its models from configYaml's model_list: omit model"
            )
        return _checked_config(litellm.config_yaml if litellm else None)
    if mode not in {"WILDCARD", "SINGLE"}:
        raise EnginePlanError("input.litellm.mode", f"unknown mode {mode!r}")
    routed = litellm_model(mode, chosen, model.name)
    if model.source.access_mode is not AccessMode.REMOTE_API:
        raise EnginePlanError(
            "input.litellm.mode",
            f"{mode} proxies a REMOTE_API model's upstream; {model.name} is a "
            f"{model.source.access_mode.value} model: use CONFIG with your own model_list, or "
            "another engine",
        )
    params: dict[str, object] = {"model": routed, "api_base": model.source.url}
    if model.source.has_token:
        params["api_key"] = "os.environ/UPSTREAM_API_KEY"
    served = "*" if mode == "WILDCARD" else model.name
    entries = [{"model_name": served, "litellm_params": params}]
    return yaml.safe_dump({"model_list": entries}, sort_keys=False)


def _checked_config(text: str | None) -> str:
    if not text:
        raise EnginePlanError("input.litellm.configYaml", "CONFIG mode needs configYaml")
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise EnginePlanError(
            "input.litellm.configYaml", f"not valid YAML: {str(exc).splitlines()[0]}"
        ) from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("model_list"), list):
        raise EnginePlanError("input.litellm.configYaml", "a LiteLLM config needs a model_list")
    return text
