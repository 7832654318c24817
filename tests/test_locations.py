"""Weights locations on disk: organisation areas, overlap, and removal of only what a download
wrote, never through a symlink (controllers/transfer/locations.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controllers.transfer import locations
from controllers.transfer.downloader import CleanupRefused, LocalSink, PreflightError
from services.errors import InvalidInput
from services.validation import check_weights_directory
from storage.documents import LocalTarget, WeightsDocument, WeightsFile

FILES = ("config.json", "model.safetensors", "onnx/model.onnx", "onnx/deep/x.bin")


@pytest.mark.parametrize(
    ("organization", "expected"),
    [
        ("org-a", "org-a"),
        ("Acme.Inc_1", "Acme.Inc_1"),
        ("..", None),
        (".", None),
        ("a/b", None),
        ("", None),
        ("-x", None),
        ("x" * 101, None),
    ],
)
def test_area_name_is_one_safe_component(organization: str, expected: str | None) -> None:
    name = locations.area_name(organization)
    if expected is not None:
        assert name == expected
    else:
        assert name.startswith("_")
        assert "/" not in name
        assert len(name) == 33
    assert locations.AREA_NAME.match(name) or name.startswith("_")


def test_area_names_of_distinct_organisations_differ() -> None:
    names = {locations.area_name(o) for o in ["a/b", "a_b", "_a", "A", "a", "..", "."]}
    assert len(names) == 7


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("/r/a/x", "/r/a/x", True),
        ("/r/a", "/r/a/x", True),
        ("/r/a/x/y", "/r/a/x", True),
        ("/r/a/x", "/r/a/xy", False),
        ("/r/a/x", "/r/a/y", False),
    ],
)
def test_overlaps(first: str, second: str, expected: bool) -> None:
    assert locations.overlaps(first, second) is expected


def test_weights_directory_must_be_inside_the_organisations_area(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "org-a" / "m").mkdir(parents=True)
    (root / "org-b").mkdir()
    (root / "org-b" / "link").symlink_to(root / "org-a" / "m")
    field = "downloadTarget.local.localPath"
    area_b = root / "org-b"
    ok = check_weights_directory(field, str(area_b / "m"), roots=[root], organization_id="org-b")
    assert ok == str(root / "org-b" / "m")
    for bad in [
        root,
        root / "org-b",
        root / "org-a",
        root / "org-a" / "m",
        root / "org-a" / "m" / "sub",
        root / "org-b" / "link",
        root / "org-b" / "link" / "sub",
        root / "elsewhere",
        tmp_path / "outside",
    ]:
        with pytest.raises(InvalidInput) as refused:
            check_weights_directory(field, str(bad), roots=[root], organization_id="org-b")
        assert refused.value.field == field


def _weights(directory: Path, weights_id: str = "weights-1") -> WeightsDocument:
    return WeightsDocument(
        id=weights_id,
        organization_id="org-a",
        repo_id="o/r",
        commit_sha="c" * 40,
        target=LocalTarget(local_path=str(directory)),
        location=str(directory),
        files=[WeightsFile(path=p, size=1) for p in FILES],
    )


async def _download(sink: LocalSink) -> None:
    """What a download leaves: the directory prepared, every recorded file, a partial."""
    await sink.preflight(needed=0)
    for path in FILES:
        (sink.directory / path).write_bytes(b"x")
    (sink.sidecar / "onnx").mkdir(parents=True)
    (sink.sidecar / "onnx" / "model.onnx.part").write_bytes(b"p")


async def test_remove_all_removes_only_recorded_files_and_created_directories(
    tmp_path: Path,
) -> None:
    area = tmp_path / "root" / "org-a"
    area.mkdir(parents=True)
    directory = area / "team" / "model"
    sink = LocalSink.for_weights(_weights(directory))
    await _download(sink)
    marker = json.loads((directory / locations.MARKER).read_text())
    assert marker["created"][:1] == ["."]
    assert marker["ancestors"] == 1
    (directory / "mine.txt").write_bytes(b"not the download's")
    (directory / "onnx" / "deep" / "also-mine").write_bytes(b"kept")
    await sink.remove_all()
    left = sorted(str(p.relative_to(area)) for p in area.rglob("*"))
    assert left == [
        "team",
        "team/model",
        "team/model/mine.txt",
        "team/model/onnx",
        "team/model/onnx/deep",
        "team/model/onnx/deep/also-mine",
    ]
    (directory / "mine.txt").unlink()
    (directory / "onnx" / "deep" / "also-mine").unlink()
    await LocalSink.for_weights(_weights(directory)).remove_all()  # marker gone: files only
    assert directory.exists()


async def test_remove_all_of_a_clean_download_leaves_the_area(tmp_path: Path) -> None:
    area = tmp_path / "root" / "org-a"
    area.mkdir(parents=True)
    sink = LocalSink.for_weights(_weights(area / "team" / "model"))
    await _download(sink)
    await sink.remove_all()
    assert area.is_dir()
    assert list(area.iterdir()) == []


async def test_remove_all_never_follows_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "root" / "org-a" / "victim"
    victim.mkdir(parents=True)
    for path in FILES:
        (victim / path).parent.mkdir(parents=True, exist_ok=True)
        (victim / path).write_bytes(b"victim")
    area = tmp_path / "root" / "org-b"
    directory = area / "model"
    sink = LocalSink.for_weights(_weights(directory))
    await _download(sink)
    # Recorded files and a subdirectory replaced by symlinks into the victim's directory.
    (directory / "config.json").unlink()
    (directory / "config.json").symlink_to(victim / "config.json")
    for path in ("onnx/model.onnx", "onnx/deep/x.bin"):
        (directory / path).unlink()
    (directory / "onnx" / "deep").rmdir()
    (directory / "onnx").rmdir()
    (directory / "onnx").symlink_to(victim / "onnx")
    await sink.remove_all()
    assert sorted(p.name for p in victim.rglob("*")) == sorted(
        ["config.json", "model.safetensors", "onnx", "model.onnx", "deep", "x.bin"]
    )
    assert (directory / "config.json").is_symlink()  # not ours: left alone
    # The weights directory itself swapped for a symlink: refused, nothing removed.
    os.rename(directory, area / "moved")
    directory.symlink_to(victim)
    with pytest.raises(CleanupRefused):
        await sink.remove_all()
    with pytest.raises(CleanupRefused):
        await sink.discard_partials([])
    assert (victim / "model.safetensors").read_bytes() == b"victim"


async def test_a_directory_of_other_weights_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "root" / "org-a" / "model"
    first = LocalSink.for_weights(_weights(directory, "weights-1"))
    await _download(first)
    second = LocalSink.for_weights(_weights(directory, "weights-2"))
    with pytest.raises(PreflightError, match="holds other weights"):
        await second.preflight(needed=0)
    with pytest.raises(CleanupRefused):
        await second.remove_all()
    assert (directory / "model.safetensors").exists()
    # A cleanup Job (no database) names the weights; the marker lists their files.
    await LocalSink(directory, weights_id="weights-1").remove_all()
    assert not directory.exists()


async def test_preflight_refuses_a_path_through_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "root" / "org-a"
    victim.mkdir(parents=True)
    (tmp_path / "root" / "org-b").mkdir()
    (tmp_path / "root" / "org-b" / "link").symlink_to(victim)
    sink = LocalSink.for_weights(_weights(tmp_path / "root" / "org-b" / "link" / "m"))
    with pytest.raises(PreflightError, match="symlink"):
        await sink.preflight(needed=0)
    assert list(victim.iterdir()) == []


async def test_the_cleanup_command_removes_only_what_the_marker_names(tmp_path: Path) -> None:
    """What a kubernetes cleanup Job runs on a PVC or hostPath volume (no database there)."""
    directory = tmp_path / "volume" / "sub"
    await _download(LocalSink.for_weights(_weights(directory, "weights-9")))
    (directory / "someone-elses.bin").write_bytes(b"kept")
    command = [sys.executable, "-m", "modelplane", "clean", "--dir", str(directory)]
    refused = subprocess.run(
        [*command, "--weights-id", "weights-8"], capture_output=True, check=False
    )
    assert refused.returncode != 0
    assert (directory / "model.safetensors").exists()
    done = subprocess.run([*command, "--weights-id", "weights-9"], capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in directory.rglob("*")) == ["someone-elses.bin"]
