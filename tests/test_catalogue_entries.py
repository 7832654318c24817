"""Table tests of the catalogue's pure parts: the entry parser, flag rules, path selection."""

from __future__ import annotations

import pytest

from integrations.git import TreeItem
from services.catalogue.entries import flag_problem, parse_entry, render, with_duplicates
from services.catalogue.paths import check_entry_path, check_folder, select
from services.catalogue.service import split_flags
from services.errors import InvalidInput
from storage.documents import InferenceEngine

HUB = "https://huggingface.co"

GOOD = """\
name: qwen-small
displayName: Qwen small
description: A small chat model.
source:
  repo: Qwen/Qwen2-0.5B-Instruct
  revision: main
engine: vllm
flags:
  max-model-len: 4096
  enforce-eager: true
  disable-log-stats: false
resources: {cpu: "4", memory: 16Gi, gpu: 1, gpuType: L4}
tags: [chat, small]
"""


def test_a_good_entry_is_read_with_every_field() -> None:
    entry = parse_entry("models/qwen.yaml", GOOD, hub_endpoint=HUB)
    assert entry.valid, entry.issues
    assert entry.name == "qwen-small"
    assert entry.repo == "Qwen/Qwen2-0.5B-Instruct"
    assert entry.revision == "main"
    assert entry.engine is InferenceEngine.VLLM
    assert entry.flags == ("--max-model-len=4096", "--enforce-eager")
    assert (entry.cpu, entry.memory, entry.gpu, entry.gpu_type) == ("4", "16Gi", 1, "L4")
    assert entry.tags == ("chat", "small")


def test_rendering_an_entry_parses_back_to_the_same_entry() -> None:
    entry = parse_entry("models/qwen.yaml", GOOD, hub_endpoint=HUB)
    again = parse_entry("models/qwen.yaml", render(entry), hub_endpoint=HUB)
    assert again == entry


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        ("source: {repo: a/b}\ncolour: red\n", 2, "colour", "unknown field 'colour'"),
        ("source: {repo: a/b, branch: x}\n", 1, "source.branch", "unknown field"),
        ("source: {repo: a/b}\nresources:\n  gpus: 2\n", 3, "resources.gpus", "unknown field"),
        ("name: x\n", None, "source.repo", "source.repo is required"),
        ("source: {revision: main}\n", 1, "source.repo", "source.repo is required"),
        ("source: a/b\n", 1, "source", "must be a mapping"),
        ("source: {repo: [a, b]}\n", 1, "source.repo", "must be a string"),
        ("source: {repo: not-a-repo}\n", 1, "source.repo", "not a Hugging Face repo id"),
        ("source: {repo: a/b}\nresources: {gpu: two}\n", 2, "resources.gpu", "whole number"),
        ("source: {repo: a/b}\nresources: {gpu: true}\n", 2, "resources.gpu", "whole number"),
        ("source: {repo: a/b}\nresources: {memory: lots}\n", 2, "resources.memory", "memory"),
        ("source: {repo: a/b}\ntags: chat\n", 2, "tags", "must be a list"),
        ("source: {repo: a/b}\nname: Not A Label\n", 2, "name", "DNS-1123"),
        ("source: {repo: a/b}\nengine: tgi\n", 2, "engine", "unknown"),
        ("source: {repo: a/b}\nengine: CUSTOM\n", 2, "engine", "not supported"),
        ("source: {repo: a/b}\nengine: LITELLM_PROXY\n", 2, "engine", "not supported"),
        ("source: {repo: a/b}\nengine: OLLAMA\nflags: [--x]\n", 3, "flags", "no flags"),
        ("source: {repo: a/b}\nflags: [--trust-remote-code]\n", 2, "flags[0]", "not allowed"),
        (
            "source: {repo: a/b}\nflags: {trust-remote-code: true}\n",
            2,
            "flags.trust-remote-code",
            "not allowed",
        ),
        ("source: {repo: a/b}\nflags: [--port=1]\n", 2, "flags[0]", "not allowed"),
        ("source: {repo: a/b}\nflags: [-tp, '2']\n", 2, "flags[0]", "long form"),
        ("source: {repo: a/b}\nflags: ['--chat-template=/etc/passwd']\n", 2, "flags[0]", "paths"),
        ("source: {repo: a/b}\nflags: ['--x=../../etc']\n", 2, "flags[0]", "paths"),
        ('source: {repo: a/b}\nflags: "--x; rm -rf /"\n', 2, "flags", "mapping"),
        ("source: {repo: a/b}\nname: a\nname: b\n", 3, "name", "given twice"),
        ("source: {repo: a/b\n", 2, None, "not valid YAML"),
        ("- a\n- b\n", 1, None, "must be a YAML mapping"),
        ("source: &x {repo: a/b}\nother: *x\n", None, None, "anchors"),
    ],
)
def test_a_bad_entry_names_the_file_line_and_field(
    text: str, line: int | None, field: str | None, words: str
) -> None:
    entry = parse_entry("models/bad.yaml", text, hub_endpoint=HUB)
    assert not entry.valid
    matching = [i for i in entry.issues if words in i.message]
    assert matching, entry.issues
    issue = matching[0]
    assert issue.path == "models/bad.yaml"
    assert issue.field == field
    if line is not None:
        assert issue.line == line


def test_every_problem_of_an_entry_is_reported_not_only_the_first() -> None:
    text = "colour: red\nsource: {repo: nope}\nengine: tgi\nflags: [--port=1]\n"
    entry = parse_entry("models/bad.yaml", text, hub_endpoint=HUB)
    assert {i.field for i in entry.issues} == {"colour", "source.repo", "engine", "flags[0]"}


def test_a_file_that_is_not_utf8_or_too_large_is_an_invalid_entry() -> None:
    assert "UTF-8" in parse_entry("a.yaml", b"\xff\xfe", hub_endpoint=HUB).issues[0].message
    big = parse_entry("a.yaml", b"#" * 70_000, hub_endpoint=HUB)
    assert "bytes" in big.issues[0].message
    assert big.name == "a"


@pytest.mark.parametrize(
    ("token", "allowed"),
    [
        ("--max-model-len=4096", True),
        ("--enforce-eager", True),
        ("4096", True),
        ("-1", True),
        ("--model=/weights", False),
        ("--served-model-name=x", False),
        ("--download-dir=x", False),
        ("--x=~/secrets", False),
        ("--x=a\nb", False),
        ("-O3", False),
        ("--Upper", False),
    ],
)
def test_flag_rules(token: str, allowed: bool) -> None:
    assert (flag_problem(token) is None) is allowed


def test_a_repeated_name_marks_the_later_file() -> None:
    a = parse_entry("m/a.yaml", "name: same\nsource: {repo: a/b}\n", hub_endpoint=HUB)
    b = parse_entry("m/b.yaml", "name: same\nsource: {repo: a/c}\n", hub_endpoint=HUB)
    first, second = with_duplicates([b, a])
    assert first.valid
    assert second.issues[0].field == "name"
    assert "m/a.yaml" in second.issues[0].message


def _item(path: str, sha: str = "1" * 40, mode: str = "100644") -> TreeItem:
    return TreeItem(mode, "blob", sha, path)


def test_paths_are_selected_under_the_folder_and_unsafe_ones_refused() -> None:
    items = [
        _item("models/a.yaml", "a" * 40),
        _item("models/sub/b.yml", "b" * 40),
        _item("models/readme.md"),
        _item("other/c.yaml"),
        _item("models/inside.yaml", "d" * 40, mode="120000"),
        _item("models/out.yaml", "e" * 40, mode="120000"),
        _item("models/abs.yaml", "f" * 40, mode="120000"),
        _item("models/dangling.yaml", "9" * 40, mode="120000"),
        _item("models/../escape.yaml"),
    ]
    links = {
        "d" * 40: b"a.yaml",
        "e" * 40: b"../../etc/passwd",
        "f" * 40: b"/etc/passwd",
        "9" * 40: b"nothing.yaml",
    }
    chosen, refused = select(items, "models", links)
    assert chosen == [
        ("models/a.yaml", "a" * 40),
        ("models/sub/b.yml", "b" * 40),
        ("models/inside.yaml", "a" * 40),
    ]
    messages = {entry.path: entry.issues[0].message for entry in refused}
    assert "out of the checkout" in messages["models/out.yaml"]
    assert "absolute" in messages["models/abs.yaml"]
    assert "not a file" in messages["models/dangling.yaml"]
    assert "'..'" in messages["models/../escape.yaml"]


@pytest.mark.parametrize("folder", ["/etc", "../up", "a/../b", "a/./b", "a\\b"])
def test_an_unsafe_folder_is_refused_naming_the_field(folder: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_folder("source.folder", folder)
    assert refused.value.field == "source.folder"


def test_folder_and_entry_path_forms() -> None:
    assert check_folder("f", "models/") == "models"  # a trailing slash is trimmed
    assert check_folder("f", None) == ""
    assert check_entry_path("path", "new.yaml", folder="models") == "models/new.yaml"
    for bad in ("/abs.yaml", "../x.yaml", "x.txt"):
        with pytest.raises(InvalidInput):
            check_entry_path("path", bad, folder="models")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ((), (None, None, [])),
        (("--max-model-len=4096",), (4096, None, [])),
        (("--max-model-len", "4096", "--tensor-parallel-size=2"), (4096, 2, [])),
        (("--enforce-eager", "--max-model-len=8"), (8, None, ["--enforce-eager"])),
        (("--max-model-len=auto",), (None, None, ["--max-model-len=auto"])),
    ],
)
def test_the_flags_an_inference_carries_are_split_from_the_rest(
    flags: tuple[str, ...], expected: tuple[int | None, int | None, list[str]]
) -> None:
    assert split_flags(flags) == expected
