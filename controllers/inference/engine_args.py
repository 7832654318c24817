"""Extra engine flags (``InferenceInput.engineArgs``): appended to the command line modelplane
builds, never a command line of their own (pure).

Why a field of its own: ``args`` replaces the whole command line (the weights path, the served
name, host and port included), so a catalogue entry's ``--dtype=bfloat16
--gpu-memory-utilization=0.9`` had nowhere to go. ``engineArgs`` are appended to the VLLM
command line modelplane builds (``vllm serve <weights> --served-model-name <name> --host
--port [--tensor-parallel-size] [--max-model-len] <engineArgs...>``). Only VLLM takes them:
OLLAMA's ``ollama serve`` takes no flags (it is configured through its environment), a
LITELLM_PROXY's command line is its config file's, a CUSTOM engine's and any given ``command``
or ``args`` are the user's whole command line already (put the flags there).

The rules (:func:`check_engine_args`, errors naming ``input.engineArgs`` or
``input.engineArgs[i]``):

* flags modelplane owns are refused with the input that sets them (:data:`OWNED_FLAGS`):
  ``--model`` and ``--served-model-name`` (the engine serves the model's weights under the
  model's name, which the gateway routes on), ``--host``, ``--port`` and ``--uds``
  (``input.port``), ``--tensor-parallel-size`` (``input.resources.gpu``), ``--max-model-len``
  (``input.contextLength``). vLLM's parser reads ``_`` as ``-`` and, being argparse, expands an
  unambiguous prefix (``--max-model`` is ``--max-model-len``): both forms are refused too;
* each token is ``--flag``, ``--flag=value``, or a value following a ``--flag`` (several for
  a flag taking a list); a value starting with ``-`` must be a number (else it is a short
  option, ``-tp 2``, which would side-step the list above); no control characters;
* at most :data:`MAX_ENGINE_ARGS` tokens and :data:`MAX_ENGINE_ARGS_BYTES` in all.

On the local runtime the engine runs on the control-plane host, so a flag that runs code from
the repository or reads files of the host (:data:`HOST_FLAGS`: ``--trust-remote-code``,
``--ssl-keyfile``...) or a value naming a host path is treated like a command of the user's
(:func:`host_arg_index`; ADMIN and ``MODELPLANE_ALLOW_HOST_COMMANDS``). On Kubernetes it runs
inside the pod, an editor's right, as ``args`` are. A catalogue entry (a repository's text,
trusted less) may carry neither (:mod:`services.catalogue.entries`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from controllers.inference.commands import EnginePlanError
from storage.documents import InferenceEngine

FIELD = "input.engineArgs"
MAX_ENGINE_ARGS = 64
MAX_ENGINE_ARGS_BYTES = 4 * 1024
"""All tokens together, UTF-8: room for a page of flags, far from a Kubernetes limit."""
OWNED_FLAGS: Mapping[str, str] = {
    "model": "the model's weights (modelplane passes their path)",
    "served-model-name": "the model's name (the gateway routes on it)",
    "host": "input.port (modelplane binds loopback locally, the pod's address on Kubernetes)",
    "port": "input.port",
    "uds": "input.port (modelplane probes and routes to a TCP port)",
    "tensor-parallel-size": "input.resources.gpu",
    "max-model-len": "input.contextLength",
}
"""Flags modelplane sets itself, and the input (or rule) that sets them."""
HOST_FLAGS = frozenset(
    {
        # run code shipped with the repository or named by the flag
        "trust-remote-code",
        "middleware",
        "worker-cls",
        "worker-extension-cls",
        "logits-processors",
        "tool-parser-plugin",
        # read or write files of the host, or carry secrets
        "download-dir",
        "config",
        "api-key",
        "ssl-keyfile",
        "ssl-certfile",
        "ssl-ca-certs",
        "allowed-local-media-path",
        "log-config-file",
    }
)
"""Flags that run code or touch files of the machine the engine runs on."""
_FLAG = re.compile(r"--(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)(=(?P<value>.*))?", re.DOTALL)
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def flag_name(token: str) -> str | None:
    """The flag a token sets, as vLLM's parser reads it (``_`` as ``-``); None for a value."""
    match = _FLAG.fullmatch(token)
    return None if match is None else match.group("name").replace("_", "-")


def owner_of(name: str, owned: Mapping[str, str] = OWNED_FLAGS) -> tuple[str, str] | None:
    """(the owned flag, what sets it) when ``--name`` is one, or a prefix argparse expands to
    one; else None."""
    for flag, setter in owned.items():
        if flag == name or flag.startswith(name):
            return flag, setter
    return None


def token_problems(
    tokens: Sequence[str], owned: Mapping[str, str] = OWNED_FLAGS
) -> list[tuple[int, str]]:
    """(index, why) of every token that breaks the grammar or sets an ``owned`` flag."""
    problems: list[tuple[int, str]] = []
    bare_flag = False  # the run of values since the last ``--flag`` without ``=``
    for index, token in enumerate(tokens):
        problem = _token_problem(token, bare_flag, owned)
        if problem is not None:
            problems.append((index, problem))
        match = _FLAG.fullmatch(token)
        bare_flag = (match is not None and match.group("value") is None) or (
            match is None and bare_flag
        )
    return problems


def _token_problem(token: str, after_flag: bool, owned: Mapping[str, str]) -> str | None:
    if _CONTROL.search(token):
        return f"{token[:40]!r}: no control characters (newlines, tabs, NUL)"
    name = flag_name(token)
    if name is not None:
        found = owner_of(name, owned)
        if found is None:
            return None
        flag, setter = found
        shown = token.split("=", 1)[0]
        alias = "" if shown == f"--{flag}" else f" (vLLM reads it as --{flag})"
        return f"{shown}{alias} is set by modelplane from {setter}"
    if token.startswith("-") and not _NUMBER.fullmatch(token):
        return f"{token[:40]!r}: write flags in their long form (--name or --name=value)"
    if not after_flag:
        return f"{token[:40]!r} is neither a --flag, a --flag=value nor a value following a --flag"
    return None


def check_engine_args(
    args: Sequence[str], *, engine: InferenceEngine | None, replaced_by: str | None
) -> None:
    """``args`` may be appended to ``engine``'s command line (see the module docstring);
    ``replaced_by`` names the input that gives the whole command line instead
    (``input.command`` / ``input.args``), if any. Raises :class:`EnginePlanError`."""
    if not args:
        return
    if engine is not InferenceEngine.VLLM:
        what = engine.value if engine is not None else "a gateway route (no engine)"
        raise EnginePlanError(
            FIELD,
            f"engineArgs are appended to the VLLM command line modelplane builds; {what} takes "
            "none (OLLAMA is configured through env; CUSTOM: put the flags in args)",
        )
    if replaced_by is not None:
        raise EnginePlanError(
            FIELD,
            f"engineArgs are appended to the command line modelplane builds, which "
            f"{replaced_by} replaces: put the flags in {replaced_by} instead",
        )
    if len(args) > MAX_ENGINE_ARGS:
        raise EnginePlanError(FIELD, f"{len(args)} tokens given; at most {MAX_ENGINE_ARGS}")
    size = sum(len(token.encode(errors="surrogatepass")) for token in args)
    if size > MAX_ENGINE_ARGS_BYTES:
        raise EnginePlanError(
            FIELD, f"the tokens are {size} bytes together; at most {MAX_ENGINE_ARGS_BYTES}"
        )
    problems = token_problems(args)
    if problems:
        index, why = problems[0]
        raise EnginePlanError(f"{FIELD}[{index}]", why)


def host_problem(token: str) -> str | None:
    """Why a token touches the host the engine runs on (a :data:`HOST_FLAGS` flag, or a value
    that is an absolute path, ``~`` or holds ``..``), or None."""
    name = flag_name(token)
    if name is not None:
        if name in HOST_FLAGS:
            return f"--{name} runs code or reads files of the machine the engine runs on"
        if "=" not in token:
            return None
        value = token.split("=", 1)[1]
    else:
        value = token
    if value.startswith(("/", "~")) or ".." in value:
        return f"{value[:40]!r} names a path of the machine the engine runs on"
    return None


def host_arg_index(args: Sequence[str]) -> int | None:
    """The first token that touches the engine's host (:func:`host_problem`), or None."""
    return next((i for i, token in enumerate(args) if host_problem(token) is not None), None)
