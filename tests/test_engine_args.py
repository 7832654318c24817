"""``InferenceInput.engineArgs``, the pure parts, table-tested: the VLLM command line with the
flags appended, every refusal with its field, the local runtime's host gate, and the
catalogue's entries and install request agreeing with them."""

from __future__ import annotations

import pytest

from controllers.inference.commands import EnginePlanError
from controllers.inference.engine_args import MAX_ENGINE_ARGS, check_engine_args
from controllers.inference.engines import EngineImages, host_program_field, plan_engine
from services.catalogue.entries import flag_problem, parse_entry
from services.catalogue.service import inference_request
from storage.documents import (
    AccessMode,
    InferenceEngine,
    InferenceSpec,
    LocalTarget,
    ModelDocument,
    ModelSource,
)

IMAGES = EngineImages()
HUB = "https://huggingface.co"


def model() -> ModelDocument:
    return ModelDocument(
        id="model-abc12",
        organization_id="org-a",
        name="qwen-small",
        name_key="qwen-small",
        display_name="Qwen small",
        source=ModelSource(url="Qwen/Qwen2.5-0.5B", access_mode=AccessMode.LOCAL),
        download_target=LocalTarget(local_path="/data/models/qwen"),
    )


@pytest.mark.parametrize(
    ("spec", "local", "tail"),
    [
        (
            InferenceSpec(engine_args=["--dtype=float16", "--gpu-memory-utilization=0.8"]),
            True,
            ["--port", "8000", "--dtype=float16", "--gpu-memory-utilization=0.8"],
        ),
        (
            InferenceSpec(
                gpu=2,
                context_length=4096,
                engine_args=["--enforce-eager", "--max-num-seqs", "16"],
            ),
            False,
            ["--max-model-len", "4096", "--enforce-eager", "--max-num-seqs", "16"],
        ),
        (InferenceSpec(), False, ["--host", "0.0.0.0", "--port", "8000"]),  # noqa: S104
    ],
    ids=["local-two-flags", "kube-after-owned-flags", "none"],
)
def test_vllm_appends_the_flags_after_the_command_line_it_builds(
    spec: InferenceSpec, local: bool, tail: list[str]
) -> None:
    plan = plan_engine(spec, model(), None, local=local, images=IMAGES, secret_name=None)
    assert plan.argv[:5] == [
        "vllm",
        "serve",
        "/data/models/qwen",
        "--served-model-name",
        "qwen-small",
    ]
    assert plan.argv[-len(tail) :] == tail


REFUSED: list[tuple[str, dict[str, object], str, str]] = [
    ("model", {"engine_args": ["--model", "x"]}, "input.engineArgs[0]", "model's weights"),
    ("model-eq", {"engine_args": ["--model=x"]}, "input.engineArgs[0]", "model's weights"),
    (
        "served-name",
        {"engine_args": ["--dtype=half", "--served-model-name=x"]},
        "input.engineArgs[1]",
        "the model's name",
    ),
    (
        "served-underscore",
        {"engine_args": ["--served_model_name", "x"]},
        "input.engineArgs[0]",
        "vLLM reads it as --served-model-name",
    ),
    ("port", {"engine_args": ["--port=9000"]}, "input.engineArgs[0]", "input.port"),
    ("host", {"engine_args": ["--host", "0.0.0.0"]}, "input.engineArgs[0]", "input.port"),  # noqa: S104
    ("uds", {"engine_args": ["--uds=/tmp/s"]}, "input.engineArgs[0]", "input.port"),
    (
        "tp",
        {"engine_args": ["--tensor-parallel-size=2"]},
        "input.engineArgs[0]",
        "input.resources.gpu",
    ),
    ("tp-short", {"engine_args": ["-tp", "2"]}, "input.engineArgs[0]", "long form"),
    (
        "max-len",
        {"engine_args": ["--max-model-len", "8"]},
        "input.engineArgs[0]",
        "input.contextLength",
    ),
    (
        "max-len-prefix",
        {"engine_args": ["--max-model=8"]},
        "input.engineArgs[0]",
        "input.contextLength",
    ),
    (
        "value-first",
        {"engine_args": ["float16"]},
        "input.engineArgs[0]",
        "value following a --flag",
    ),
    (
        "value-after-eq",
        {"engine_args": ["--dtype=half", "x"]},
        "input.engineArgs[1]",
        "value following",
    ),
    ("end-of-options", {"engine_args": ["--"]}, "input.engineArgs[0]", "long form"),
    ("control", {"engine_args": ["--dtype=a\nb"]}, "input.engineArgs[0]", "control characters"),
    (
        "too-many",
        {"engine_args": ["--enforce-eager"] * (MAX_ENGINE_ARGS + 1)},
        "input.engineArgs",
        "at most 64",
    ),
    ("too-large", {"engine_args": ["--x=" + "a" * 4100]}, "input.engineArgs", "4096"),
    (
        "with-command",
        {"engine_args": ["--dtype=half"], "command": ["vllm", "serve"]},
        "input.engineArgs",
        "input.command",
    ),
    (
        "with-args",
        {"engine_args": ["--dtype=half"], "args": ["serve", "/w"]},
        "input.engineArgs",
        "input.args",
    ),
    (
        "ollama",
        {"engine_args": ["--dtype=half"], "engine": InferenceEngine.OLLAMA},
        "input.engineArgs",
        "OLLAMA",
    ),
    (
        "custom",
        {"engine_args": ["--dtype=half"], "engine": InferenceEngine.CUSTOM},
        "input.engineArgs",
        "CUSTOM",
    ),
    (
        "litellm",
        {"engine_args": ["--dtype=half"], "engine": InferenceEngine.LITELLM_PROXY},
        "input.engineArgs",
        "LITELLM_PROXY",
    ),
    ("route", {"engine_args": ["--dtype=half"], "engine": None}, "input.engineArgs", "route"),
]


@pytest.mark.parametrize(
    ("values", "field", "words"), [row[1:] for row in REFUSED], ids=[row[0] for row in REFUSED]
)
def test_each_bad_input_is_refused_naming_the_field(
    values: dict[str, object], field: str, words: str
) -> None:
    args = values.pop("engine_args")
    assert isinstance(args, list)
    engine = values.get("engine", InferenceEngine.VLLM)
    assert engine is None or isinstance(engine, InferenceEngine)
    replaced = (
        "input.command" if values.get("command") else "input.args" if values.get("args") else None
    )
    with pytest.raises(EnginePlanError) as refused:
        check_engine_args(args, engine=engine, replaced_by=replaced)
    assert refused.value.field == field
    assert words in refused.value.message
    if engine is not None:  # the planner refuses the same (the controller's FAILED, not a crash)
        spec = InferenceSpec(engine_args=args, **values)
        with pytest.raises(EnginePlanError) as planned:
            plan_engine(spec, model(), None, local=False, images=IMAGES, secret_name=None)
        assert planned.value.field == field


@pytest.mark.parametrize(
    "args",
    [
        ["--dtype", "bfloat16"],
        ["--gpu-memory-utilization=0.9", "--enforce-eager"],
        ["--seed", "-1"],
        ["--lora-modules", "a=x", "b=y"],  # a flag taking a list
        ["--compilation-config", '{"level": 3}'],
        ["--max-num-seqs=8", "--model-impl=transformers"],  # --model-impl is not --model
        [],
    ],
)
def test_good_flags_pass(args: list[str]) -> None:
    check_engine_args(args, engine=InferenceEngine.VLLM, replaced_by=None)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--dtype=half"], None),
        (["--dtype=half", "--trust-remote-code"], "input.engineArgs[1]"),
        (["--chat-template=/etc/passwd"], "input.engineArgs[0]"),
        (["--chat-template", "../x.jinja"], "input.engineArgs[1]"),
        (["--ssl-keyfile", "k.pem"], "input.engineArgs[0]"),
    ],
)
def test_on_the_local_runtime_host_touching_flags_are_a_program_of_the_users(
    args: list[str], field: str | None
) -> None:
    assert host_program_field(InferenceSpec(engine_args=args)) == field


def _entry(flags: str) -> str:
    return f"name: e\nsource: {{repo: Qwen/Qwen2.5-0.5B}}\nengine: VLLM\nflags: {flags}\n"


@pytest.mark.parametrize(
    ("flags", "field", "line", "words"),
    [
        ("[--port=1]", "flags[0]", 4, "input.port"),
        ("[--dtype=half, --por=1]", "flags[1]", 4, "vLLM reads it as --port"),
        ("[--max-model=8]", "flags[0]", 4, "write --max-model-len in full"),
        ("{max-model-len: auto}", "flags.max-model-len", 4, "whole number"),
        ("[--tensor-parallel-size, two]", "flags[1]", 4, "whole number"),
        ("[float16]", "flags[0]", 4, "value following a --flag"),
        ("{served-model-name: x}", "flags.served-model-name", 4, "the model's name"),
    ],
)
def test_entries_refuse_the_owned_flags_with_file_line_and_field(
    flags: str, field: str, line: int, words: str
) -> None:
    entry = parse_entry("models/e.yaml", _entry(flags), hub_endpoint=HUB)
    assert not entry.valid
    issue = next(i for i in entry.issues if i.field == field)
    assert (issue.path, issue.line) == ("models/e.yaml", line)
    assert words in issue.message


def test_an_entrys_other_flags_become_engine_args() -> None:
    text = _entry(
        "{max-model-len: 2048, tensor-parallel-size: 1, dtype: float16, "
        "gpu-memory-utilization: 0.8, enforce-eager: true}"
    )
    entry = parse_entry("models/e.yaml", text, hub_endpoint=HUB)
    assert entry.valid, entry.issues
    request = inference_request(entry)
    assert (request.context_length, request.gpu) == (2048, 1)
    assert request.engine_args == [
        "--dtype=float16",
        "--gpu-memory-utilization=0.8",
        "--enforce-eager",
    ]
    check_engine_args(request.engine_args, engine=InferenceEngine.VLLM, replaced_by=None)
    assert flag_problem("--dtype=float16") is None
