"""What a user's command line runs, read without running it (pure).

The organisation API's rule: any command that runs vLLM serves the model under the model's
name (``--served-model-name <name>``), because the gateway (and AIBrix) route on that name. A
CUSTOM engine is no exception: ``python -m vllm.entrypoints.openai.api_server``, ``vllm
serve``, either inside ``sh -c "..."``, or a vLLM image's own entrypoint given only args, are
all vLLM. :func:`check_served_name` raises :class:`EnginePlanError` naming the input that holds
(or should hold) the flag, so ``startInference`` and ``deployModel`` refuse it before anything
is written. :func:`fetched_model` reads what such a command fetches (``--model`` or the
argument after ``vllm serve``), which ``deployModel`` records as the model's source.
"""

from __future__ import annotations

import contextlib
import shlex
from pathlib import PurePosixPath

SERVED_NAME_FLAG = "--served-model-name"
_SHELLS = frozenset({"sh", "bash", "dash", "ash", "zsh"})
_VLLM_MODULE = "vllm.entrypoints"


class EnginePlanError(Exception):
    """The inference cannot be planned as asked; ``field`` names the input to change."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def served_name_in(argv: list[str]) -> str | None:
    """The value of ``--served-model-name`` in a command line, if present."""
    for index, token in enumerate(argv):
        if token == SERVED_NAME_FLAG and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith(SERVED_NAME_FLAG + "="):
            return token.split("=", 1)[1]
    return None


def expanded(argv: list[str]) -> list[str]:
    """The command line with a shell's ``-c`` script split into its words as well."""
    if not argv or PurePosixPath(argv[0]).name not in _SHELLS:
        return list(argv)
    words = list(argv)
    for index, word in enumerate(argv[:-1]):
        if word == "-c":
            # Not splittable (an open quote): the literal words are all we can read.
            with contextlib.suppress(ValueError):
                words += shlex.split(argv[index + 1])
    return words


def runs_vllm(command: list[str], args: list[str], image: str | None) -> bool:
    """True when the command line starts vLLM's OpenAI server: ``vllm serve``, ``python -m
    vllm.entrypoints...`` (also inside ``sh -c``), or a vLLM image's entrypoint given args."""
    words = expanded([*command, *args])
    for index, word in enumerate(words):
        if word.startswith(_VLLM_MODULE):
            return True
        if PurePosixPath(word).name == "vllm" and words[index + 1 : index + 2] == ["serve"]:
            return True
    if command or image is None:
        return False
    repository = image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]
    return "vllm" in repository


def check_served_name(
    command: list[str], args: list[str], name: str, *, image: str | None, always: bool
) -> None:
    """A vLLM command line (or any, when ``always``) serves ``name``; else EnginePlanError
    naming ``input.args`` when the flag is there, else ``input.command`` (``input.args``
    when only args were given)."""
    if not always and not runs_vllm(command, args, image):
        return
    served = served_name_in(expanded([*command, *args]))
    if served == name:
        return
    field = (
        "input.args"
        if served_name_in(expanded(args)) is not None or not command
        else "input.command"
    )
    expected = f"{SERVED_NAME_FLAG} {name}"
    if served is None:
        raise EnginePlanError(
            field, f"a vLLM command must serve the model under its name: add {expected!r}"
        )
    raise EnginePlanError(
        field,
        f"{SERVED_NAME_FLAG} {served!r} must match the model name {name!r}: "
        f"a vLLM command must serve the model under its name ({expected!r})",
    )


def fetched_model(command: list[str], args: list[str]) -> str | None:
    """What a vLLM command line serves: ``--model <x>`` or the word after ``vllm serve``."""
    words = expanded([*command, *args])
    for index, word in enumerate(words):
        if word == "--model" and index + 1 < len(words):
            return words[index + 1]
        if word.startswith("--model="):
            return word.split("=", 1)[1]
    for index, word in enumerate(words[:-2]):
        if PurePosixPath(word).name == "vllm" and words[index + 1] == "serve":
            following = words[index + 2]
            return None if following.startswith("-") else following
    return None
