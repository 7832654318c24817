"""Catalogue entry files: YAML in, a typed :class:`Entry` with its problems out (pure).

An entry file describes one model configuration::

    name: qwen2-0-5b                 # optional: the file name's stem
    displayName: Qwen2 0.5B Instruct
    description: Small chat model for tests.
    source:
      repo: Qwen/Qwen2-0.5B-Instruct # required: a Hugging Face repo id
      revision: main                 # optional: branch, tag or commit
    engine: VLLM                     # VLLM (default) or OLLAMA
    flags:                           # the engine's extra flags: a mapping or a list
      max-model-len: 4096
      enforce-eager: true
    resources: {cpu: "4", memory: 16Gi, gpu: 1, gpuType: L4}
    tags: [chat, small]

Nothing here raises for a bad entry: every problem is an :class:`Issue` with the file, the
line and the field (``source.repo``, ``flags[2]``), and the entry is kept, marked invalid, so
one bad file never hides another and a person sees everything to fix at once. The YAML is read
with the manifest loader's bounds (no anchors or aliases, bounded nodes and depth).

Flags are argv tokens, never a shell line; the same rules as an inference's ``engineArgs``
(:mod:`controllers.inference.engine_args`), so an entry that validates also installs.
Refused: flags modelplane sets itself (``--model``, ``--served-model-name``, ``--host``,
``--port``, ``--uds``, and a prefix vLLM's parser would expand to one), flags that run code
from the repository or read files of the host (``--trust-remote-code``, ``--download-dir``,
``--ssl-keyfile`` ...; :data:`UNSAFE_FLAGS`), short forms (write the long one, so the list
above cannot be side-stepped), a value with no ``--flag`` before it, and values that are
absolute paths, contain ``..`` or control characters. ``--max-model-len`` and
``--tensor-parallel-size`` become the inference's ``contextLength`` and GPU count, so they
take a whole number. CUSTOM
engines (a program of the repository's choosing) and LITELLM_PROXY (a remote API, not a repo)
are not catalogue engines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from controllers.inference.engine_args import (
    HOST_FLAGS,
    OWNED_FLAGS,
    flag_name,
    owner_of,
    token_problems,
)
from services import validation as v
from services.errors import InvalidInput
from services.manifest_yaml import _BoundedLoader
from storage.documents import InferenceEngine

MAX_ENTRY_BYTES = 64 * 1024
MAX_FLAGS = 64
MAX_FLAG_VALUE = 512
ENTRY_SUFFIXES = (".yaml", ".yml")
SUPPORTED_ENGINES = (InferenceEngine.VLLM, InferenceEngine.OLLAMA)
TOP_FIELDS = (
    "name",
    "displayName",
    "description",
    "source",
    "engine",
    "flags",
    "resources",
    "tags",
)
SOURCE_FIELDS = ("repo", "revision")
RESOURCE_FIELDS = ("cpu", "memory", "gpu", "gpuType")
MAPPED_FLAGS = ("max-model-len", "tensor-parallel-size")
"""Flags an entry gives that become the inference's own input (``contextLength``, the GPU
count), so they must be whole numbers; modelplane sets every other owned flag itself."""
ENTRY_OWNED = {name: setter for name, setter in OWNED_FLAGS.items() if name not in MAPPED_FLAGS}
UNSAFE_FLAGS = frozenset(ENTRY_OWNED) | HOST_FLAGS
"""Set by modelplane from the model and the inference (:data:`OWNED_FLAGS`), or run code or
touch files of the host (:data:`HOST_FLAGS`)."""
_FLAG = re.compile(r"^--(?P<name>[a-z0-9][a-z0-9-]*)(=(?P<value>.*))?\Z", re.DOTALL)
_NUMBER = re.compile(r"^-?[0-9]+(\.[0-9]+)?\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem of one entry: where (file, line, field) and what."""

    path: str
    line: int | None
    field: str | None
    message: str


@dataclass(frozen=True, slots=True)
class Entry:
    """A parsed entry file; ``issues`` empty means valid."""

    path: str
    name: str
    repo: str | None = None
    revision: str | None = None
    display_name: str | None = None
    description: str | None = None
    engine: InferenceEngine = InferenceEngine.VLLM
    flags: tuple[str, ...] = ()
    cpu: str | None = None
    memory: str | None = None
    gpu: int | None = None
    gpu_type: str | None = None
    tags: tuple[str, ...] = ()
    issues: tuple[Issue, ...] = ()

    @property
    def valid(self) -> bool:
        return not self.issues


@dataclass
class _Reading:
    """The state of one file's parse: the problems so far and the values read."""

    path: str
    issues: list[Issue] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)

    def issue(self, node: Node | None, name: str | None, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None and node.start_mark else None
        self.issues.append(Issue(self.path, line, name, message))


def stem_name(path: str) -> str:
    """The default entry name: the file name without its suffix, as a DNS label."""
    base = path.rsplit("/", 1)[-1]
    for suffix in ENTRY_SUFFIXES:
        base = base.removesuffix(suffix)
    return v.derive_name(base)


def invalid(path: str, message: str, *, line: int | None = None, name: str | None = None) -> Entry:
    """An entry that could not be read at all (unsafe path, too large, not YAML)."""
    return Entry(path=path, name=stem_name(path), issues=(Issue(path, line, name, message),))


def parse_entry(path: str, data: bytes | str, *, hub_endpoint: str) -> Entry:
    """The entry in ``data`` (the file at ``path``), with every problem found."""
    if len(data) > MAX_ENTRY_BYTES:
        return invalid(path, f"the file is {len(data):,} bytes; at most {MAX_ENTRY_BYTES:,}")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        return invalid(path, "the file is not UTF-8 text")
    try:
        root = _compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        return invalid(
            path, f"not valid YAML: {exc.problem or exc}", line=mark.line + 1 if mark else None
        )
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        return invalid(path, f"not valid YAML: {str(exc).splitlines()[0] if str(exc) else exc}")
    reading = _Reading(path)
    if not isinstance(root, MappingNode):
        return invalid(path, "an entry must be a YAML mapping (name, source, engine ...)", line=1)
    fields = _fields(reading, root, TOP_FIELDS, prefix="")
    _read_top(reading, fields, hub_endpoint=hub_endpoint)
    return _entry(reading)


def _compose(text: str) -> Node | None:
    loader = _BoundedLoader(text)
    try:
        node: Node | None = loader.get_single_node()
        return node
    finally:
        loader.dispose()


def _fields(
    reading: _Reading, node: MappingNode, known: Sequence[str], *, prefix: str
) -> dict[str, Node]:
    """The mapping's values by key; unknown and repeated keys are issues."""
    found: dict[str, Node] = {}
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, ScalarNode) else None
        name = f"{prefix}{key}"
        if not isinstance(key, str) or key not in known:
            hint = ", ".join(known)
            reading.issue(
                key_node, name if key else prefix or None, f"unknown field {name!r}; known: {hint}"
            )
        elif key in found:
            reading.issue(key_node, name, f"{name} is given twice")
        else:
            found[key] = value_node
    return found


def _scalar(reading: _Reading, node: Node, name: str, kind: type) -> Any:
    """A scalar of the wanted type (str accepts numbers written plainly), or None + an issue."""
    if not isinstance(node, ScalarNode):
        reading.issue(node, name, f"{name} must be a {_kind_name(kind)}, not a {_shape(node)}")
        return None
    value = _construct(node)
    if kind is str and isinstance(value, int | float) and not isinstance(value, bool):
        value = node.value
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        reading.issue(node, name, f"{name} must be a {_kind_name(kind)}, not {node.value!r}")
        return None
    return value


def _kind_name(kind: type) -> str:
    return {str: "string", int: "whole number", bool: "boolean"}.get(kind, kind.__name__)


def _shape(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "mapping"
    return "list" if isinstance(node, SequenceNode) else "value"


def _read_top(reading: _Reading, fields: Mapping[str, Node], *, hub_endpoint: str) -> None:
    values = reading.values
    for name in ("name", "displayName", "description", "engine"):
        if name in fields:
            values[name] = _scalar(reading, fields[name], name, str)
    source = fields.get("source")
    if source is None:
        reading.issue(None, "source.repo", "source.repo is required (the Hugging Face repo)")
    elif not isinstance(source, MappingNode):
        reading.issue(source, "source", f"source must be a mapping, not a {_shape(source)}")
    else:
        _read_source(reading, source, hub_endpoint=hub_endpoint)
    if "resources" in fields:
        _read_resources(reading, fields["resources"])
    if "tags" in fields:
        values["tags"] = _string_list(reading, fields["tags"], "tags")
    _check_texts(reading, fields)
    engine = _engine(reading, fields.get("engine"))
    if "flags" in fields:
        values["flags"] = _flags(reading, fields["flags"], engine)


def _read_source(reading: _Reading, node: MappingNode, *, hub_endpoint: str) -> None:
    fields = _fields(reading, node, SOURCE_FIELDS, prefix="source.")
    repo_node = fields.get("repo")
    if repo_node is None:
        reading.issue(node, "source.repo", "source.repo is required (the Hugging Face repo)")
    else:
        repo = _scalar(reading, repo_node, "source.repo", str)
        if repo is not None:
            _checked(
                reading,
                repo_node,
                "source.repo",
                lambda: reading.values.__setitem__(
                    "repo", v.normalize_repo_id("source.repo", repo, hub_endpoint=hub_endpoint)
                ),
            )
    if "revision" in fields:
        revision = _scalar(reading, fields["revision"], "source.revision", str)
        _checked(
            reading,
            fields["revision"],
            "source.revision",
            lambda: reading.values.__setitem__(
                "revision", v.check_revision("source.revision", revision)
            ),
        )


def _checked(reading: _Reading, node: Node, name: str, check: Any) -> None:
    """Run a service check, turning its refusal into an issue on ``node``."""
    try:
        check()
    except InvalidInput as exc:
        reading.issue(node, exc.field or name, exc.message)


def _read_resources(reading: _Reading, node: Node) -> None:
    if not isinstance(node, MappingNode):
        reading.issue(node, "resources", f"resources must be a mapping, not a {_shape(node)}")
        return
    fields = _fields(reading, node, RESOURCE_FIELDS, prefix="resources.")
    values = reading.values
    if "cpu" in fields:
        cpu = _scalar(reading, fields["cpu"], "resources.cpu", str)
        _checked(
            reading,
            fields["cpu"],
            "resources.cpu",
            lambda: values.__setitem__("cpu", v.check_cpu("resources.cpu", cpu)),
        )
    if "memory" in fields:
        memory = _scalar(reading, fields["memory"], "resources.memory", str)
        _checked(
            reading,
            fields["memory"],
            "resources.memory",
            lambda: values.__setitem__("memory", v.check_memory("resources.memory", memory)),
        )
    if "gpu" in fields:
        gpu = _scalar(reading, fields["gpu"], "resources.gpu", int)
        _checked(
            reading,
            fields["gpu"],
            "resources.gpu",
            lambda: values.__setitem__("gpu", v.check_gpu("resources.gpu", gpu)),
        )
    if "gpuType" in fields:
        gpu_type = _scalar(reading, fields["gpuType"], "resources.gpuType", str)
        _checked(
            reading,
            fields["gpuType"],
            "resources.gpuType",
            lambda: values.__setitem__(
                "gpuType", v.check_text("resources.gpuType", gpu_type, limit=128)
            ),
        )


def _string_list(reading: _Reading, node: Node, name: str) -> list[str]:
    if not isinstance(node, SequenceNode):
        reading.issue(node, name, f"{name} must be a list, not a {_shape(node)}")
        return []
    items = [_scalar(reading, item, f"{name}[{i}]", str) for i, item in enumerate(node.value)]
    return [item for item in items if item is not None]


def _check_texts(reading: _Reading, fields: Mapping[str, Node]) -> None:
    values = reading.values
    checks = {
        "name": lambda value: v.check_name("name", value),
        "displayName": lambda value: v.check_text("displayName", value, limit=v.MAX_DISPLAY_NAME),
        "description": lambda value: v.check_text(
            "description", value, limit=v.MAX_DESCRIPTION_BYTES, in_bytes=True
        ),
        "tags": lambda value: v.check_tags("tags", value),
    }
    for name, check in checks.items():
        if values.get(name) is not None:
            _checked(
                reading,
                fields[name],
                name,
                lambda c=check, n=name: values.__setitem__(n, c(values[n])),
            )


def _engine(reading: _Reading, node: Node | None) -> InferenceEngine:
    text = reading.values.get("engine")
    if node is None or text is None:
        return InferenceEngine.VLLM
    supported = ", ".join(e.value for e in SUPPORTED_ENGINES)
    try:
        engine = InferenceEngine(str(text).upper())
    except ValueError:
        reading.issue(node, "engine", f"engine {text!r} is unknown; supported: {supported}")
        return InferenceEngine.VLLM
    if engine not in SUPPORTED_ENGINES:
        reading.issue(
            node,
            "engine",
            f"engine {engine.value} is not supported in the catalogue; supported: {supported}",
        )
    return engine


def _flags(reading: _Reading, node: Node, engine: InferenceEngine) -> list[str]:
    """The flags as argv tokens (a mapping ``name: value`` or a list of tokens), checked."""
    tokens = _flag_tokens(reading, node)
    if tokens is None:
        reading.issue(node, "flags", "flags must be a mapping (name: value) or a list of tokens")
        return []
    if tokens and engine is InferenceEngine.OLLAMA:
        reading.issue(node, "flags", "engine OLLAMA takes no flags")
    if len(tokens) > MAX_FLAGS:
        reading.issue(node, "flags", f"{len(tokens)} flags; at most {MAX_FLAGS}")
    flagged = set()
    for index, (token, where, name) in enumerate(tokens):
        problem = flag_problem(token)
        if problem is not None:
            flagged.add(index)
            reading.issue(where, name, problem)
    for index, problem in _sequence_problems([token for token, _, _ in tokens]):
        if index not in flagged:
            _, where, name = tokens[index]
            reading.issue(where, name, problem)
    return [token for token, _, _ in tokens]


def _sequence_problems(tokens: list[str]) -> list[tuple[int, str]]:
    """What only the order shows: a value with no ``--flag`` before it, and the value after
    a bare mapped flag (``--max-model-len``, ``4096``) that is not a whole number."""
    problems = token_problems(tokens, ENTRY_OWNED)
    for index, token in enumerate(tokens):
        if flag_name(token) not in MAPPED_FLAGS or "=" in token:
            continue
        value = tokens[index + 1] if index + 1 < len(tokens) else ""
        if not value.isdigit() or int(value) < 1:
            problems.append((min(index + 1, len(tokens) - 1), _mapped_problem(token)))
    return problems


def _mapped_problem(flag: str) -> str:
    setter = OWNED_FLAGS[flag_name(flag) or ""]
    return f"{flag} takes a whole number (the inference's {setter})"


def _flag_tokens(reading: _Reading, node: Node) -> list[tuple[str, Node, str]] | None:
    """(token, node, field) of each flag; None when ``flags`` is neither form."""
    tokens: list[tuple[str, Node, str]] = []
    if isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            token = _scalar(reading, item, f"flags[{i}]", str)
            if token is not None:
                tokens.append((token, item, f"flags[{i}]"))
        return tokens
    if not isinstance(node, MappingNode):
        return None
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, ScalarNode) else None
        name = f"flags.{key}"
        if not isinstance(key, str) or not isinstance(value_node, ScalarNode):
            reading.issue(key_node, name, f"{name}: write `name: value` with a plain value")
            continue
        value = _construct(value_node)
        flag = "--" + key.removeprefix("--")
        if value is True or value is None:
            tokens.append((flag, key_node, name))
        elif value is not False:
            tokens.append((f"{flag}={value_node.value}", value_node, name))
    return tokens


def _construct(node: ScalarNode) -> Any:
    """A scalar's value as YAML's safe schema reads it (``true``, ``4096``, ``text``)."""
    return _BoundedLoader("").construct_object(node)


def flag_problem(token: str) -> str | None:
    """Why an argv token may not be passed to an engine, or None when it may."""
    match = _FLAG.match(token)
    if match is None:
        if token.startswith("-") and not _NUMBER.match(token):
            return f"{token!r}: write flags in their long form (--name or --name=value)"
        return _value_problem(token)
    name = match.group("name")
    problem = _name_problem(name)
    if problem is not None:
        return problem
    value = match.group("value")
    if name in MAPPED_FLAGS and value is not None and (not value.isdigit() or int(value) < 1):
        return _mapped_problem(f"--{name}")
    return None if value is None else _value_problem(value)


def _name_problem(name: str) -> str | None:
    """Why ``--name`` may not be in an entry: it touches the host, or modelplane owns it (an
    exact mapped flag excepted: it becomes the inference's own input)."""
    if name in HOST_FLAGS:
        return (
            f"--{name} is not allowed in a catalogue entry (it runs code or reads files of "
            "the host)"
        )
    owned = owner_of(name)
    if owned is None or (owned[0] == name and name in MAPPED_FLAGS):
        return None
    flag, setter = owned
    if flag in MAPPED_FLAGS:
        return f"--{name}: write --{flag} in full (it becomes the inference's {setter})"
    alias = "" if flag == name else f" (vLLM reads it as --{flag})"
    return f"--{name}{alias} is not allowed in a catalogue entry: modelplane sets it from {setter}"


def _value_problem(value: str) -> str | None:
    if len(value) > MAX_FLAG_VALUE:
        return f"a flag value is {len(value)} characters; at most {MAX_FLAG_VALUE}"
    if _CONTROL.search(value):
        return "a flag value may not hold control characters (newlines, tabs, NUL)"
    if value.startswith(("/", "~")) or ".." in value:
        return f"{value!r}: flag values may not name paths of the host (absolute, ~ or ..)"
    return None


def _entry(reading: _Reading) -> Entry:
    values = reading.values
    return Entry(
        path=reading.path,
        name=values.get("name") or stem_name(reading.path),
        repo=values.get("repo"),
        revision=values.get("revision"),
        display_name=values.get("displayName"),
        description=values.get("description"),
        engine=_engine_value(values.get("engine")),
        flags=tuple(values.get("flags") or ()),
        cpu=values.get("cpu"),
        memory=values.get("memory"),
        gpu=values.get("gpu"),
        gpu_type=values.get("gpuType"),
        tags=tuple(values.get("tags") or ()),
        issues=tuple(reading.issues),
    )


def _engine_value(text: object) -> InferenceEngine:
    try:
        return InferenceEngine(str(text).upper()) if text else InferenceEngine.VLLM
    except ValueError:
        return InferenceEngine.VLLM


def with_duplicates(entries: Iterable[Entry]) -> list[Entry]:
    """Entries sorted by path, each later one of a repeated name marked invalid."""
    seen: dict[str, str] = {}
    result: list[Entry] = []
    for entry in sorted(entries, key=lambda e: e.path):
        first = seen.setdefault(entry.name, entry.path)
        if first != entry.path:
            issue = Issue(entry.path, None, "name", f"name {entry.name!r} is used by {first} too")
            result.append(replace(entry, issues=(*entry.issues, issue)))
        else:
            result.append(entry)
    return result


def render(entry: Entry) -> str:
    """The entry as YAML, in the documented order (what generate returns and propose
    commits); parsing it again gives the same entry."""
    document: dict[str, Any] = {"name": entry.name}
    if entry.display_name:
        document["displayName"] = entry.display_name
    if entry.description:
        document["description"] = entry.description
    source: dict[str, Any] = {"repo": entry.repo}
    if entry.revision:
        source["revision"] = entry.revision
    document["source"] = source
    document["engine"] = entry.engine.value
    if entry.flags:
        document["flags"] = list(entry.flags)
    resources = {
        key: value
        for key, value in (
            ("cpu", entry.cpu),
            ("memory", entry.memory),
            ("gpu", entry.gpu),
            ("gpuType", entry.gpu_type),
        )
        if value is not None
    }
    if resources:
        document["resources"] = resources
    if entry.tags:
        document["tags"] = list(entry.tags)
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
