"""The ``modelplane`` command as a user runs it: embedded defaults, and bad configuration."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from modelplane.embedded import free_port

BASE_ENV = {
    key: value
    for key, value in os.environ.items()
    if not key.startswith("MODELPLANE_") or key == "MODELPLANE_TESTBED_CACHE"
}


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelplane", *args],
        env={**BASE_ENV, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_clear_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unreachable_mongodb_is_one_line(tmp_path: Path) -> None:
    result = run_cli(
        "serve",
        env={
            "MODELPLANE_MONGODB_URI": "mongodb://127.0.0.1:1/",
            "MODELPLANE_MONGODB_TIMEOUT_SECONDS": "0.5",
            "MODELPLANE_STATE_DIR": str(tmp_path),
        },
    )
    assert result.returncode == 1
    assert_one_clear_line(result, "MODELPLANE_MONGODB_URI", "not reachable")


def test_malformed_mongodb_uri_is_one_line_and_hides_the_password(tmp_path: Path) -> None:
    result = run_cli(
        "serve",
        env={
            "MODELPLANE_MONGODB_URI": "mongo://user:hunter2secret@",
            "MODELPLANE_STATE_DIR": str(tmp_path),
        },
    )
    assert result.returncode == 2
    assert_one_clear_line(result, "MODELPLANE_MONGODB_URI", "not a valid mongodb:// URI")
    assert "hunter2secret" not in result.stderr


def test_kubernetes_runtime_without_kubeconfig_is_one_line(tmp_path: Path, mongo_uri: str) -> None:
    result = run_cli(
        "serve",
        env={
            "MODELPLANE_MONGODB_URI": mongo_uri,
            "MODELPLANE_RUNTIME": "kubernetes",
            "MODELPLANE_STATE_DIR": str(tmp_path),
            "KUBERNETES_SERVICE_HOST": "",
        },
    )
    assert result.returncode == 1
    assert_one_clear_line(result, "MODELPLANE_KUBECONFIG", "needs a kubeconfig")


def test_missing_kubeconfig_file_is_one_line(tmp_path: Path, mongo_uri: str) -> None:
    result = run_cli(
        "serve",
        env={
            "MODELPLANE_MONGODB_URI": mongo_uri,
            "MODELPLANE_RUNTIME": "kubernetes",
            "MODELPLANE_KUBECONFIG": str(tmp_path / "absent.yaml"),
            "MODELPLANE_STATE_DIR": str(tmp_path),
        },
    )
    assert result.returncode == 1
    assert_one_clear_line(result, "MODELPLANE_KUBECONFIG", "absent.yaml")


@pytest.mark.parametrize(
    ("variable", "value", "needle"),
    [
        ("MODELPLANE_RUNTIME", "docker", "MODELPLANE_RUNTIME"),
        ("MODELPLANE_PORT", "eighty", "MODELPLANE_PORT"),
        ("MODELPLANE_SECRET_KEY", "short", "at least 32 characters"),
        (
            "MODELPLANE_ENVIRONMENT",
            "production",
            "MODELPLANE_MONGODB_URI is required in production",
        ),
        (
            "MODELPLANE_MONGODB_URI",
            "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=100",
            "MODELPLANE_SECRET_KEY is required in production",
        ),
    ],
)
def test_invalid_settings_are_one_line(
    tmp_path: Path, variable: str, value: str, needle: str
) -> None:
    env = {variable: value, "MODELPLANE_STATE_DIR": str(tmp_path)}
    if variable == "MODELPLANE_MONGODB_URI":
        env["MODELPLANE_ENVIRONMENT"] = "production"
    result = run_cli("serve", env=env)
    assert result.returncode == 2
    assert_one_clear_line(result, needle)


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_serve_on_embedded_defaults_answers_graphql(
    tmp_path: Path, testbed_binaries: dict[str, Path], event_loop: str
) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "modelplane", "serve", "--port", str(port)],
        env={
            **BASE_ENV,
            "MODELPLANE_STATE_DIR": str(tmp_path / "state"),
            "MODELPLANE_EVENT_LOOP": event_loop,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "modelplane serve did not come up"
            time.sleep(0.2)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/graphql", json={"query": "{ __typename }"}, timeout=5
        )
        assert answer.json() == {"data": {"__typename": "Query"}}
        assert (tmp_path / "state" / "ferretdb" / "sqlite").is_dir()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert f"GraphiQL:    http://127.0.0.1:{port}/graphql" in stderr
    assert f"Dashboard:   http://127.0.0.1:{port}/?token=ey" in stderr
    token_lines = [line for line in stderr.splitlines() if "admin token:" in line]
    assert len(token_lines) == 1
    assert token_lines[0].split("admin token:")[1].strip().count(".") == 2  # a JWT
    # The embedded FerretDB went down with the service: nothing listens on its port any more.
    started = [json.loads(line) for line in stderr.splitlines() if "embedded FerretDB" in line]
    assert len(started) == 1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", started[0]["port"]), timeout=2).close()
    ferret_log = (tmp_path / "state" / "ferretdb" / "ferretdb.log").read_text()
    assert "panic" not in ferret_log.lower()


def test_schema_check_detects_drift(tmp_path: Path) -> None:
    stale = tmp_path / "schema.graphql"
    stale.write_text("type Query { old: Int }\n")
    result = run_cli("schema", "check", "--path", str(stale), env={})
    assert result.returncode == 1
    assert "out of date" in result.stderr
    exported = run_cli("schema", "export", "--path", str(stale), env={})
    assert exported.returncode == 0
    assert run_cli("schema", "check", "--path", str(stale), env={}).returncode == 0


def test_download_command_refusals_are_one_line(tmp_path: Path, mongo_uri: str) -> None:
    """What a download Job's pod runs (``modelplane/jobs.py``) refuses a missing database URI
    and unknown weights with one line and exit code 2, and an unreachable database with 1."""
    env = {"MODELPLANE_STATE_DIR": str(tmp_path)}
    result = run_cli("download", "--weights-id", "weights-x", env=env)
    assert result.returncode == 2
    assert_one_clear_line(result, "MODELPLANE_MONGODB_URI is required")

    unreachable = {
        **env,
        "MODELPLANE_MONGODB_URI": "mongodb://127.0.0.1:1/",
        "MODELPLANE_MONGODB_TIMEOUT_SECONDS": "0.5",
    }
    result = run_cli("download", "--weights-id", "weights-x", env=unreachable)
    assert result.returncode == 1
    assert_one_clear_line(result, "MODELPLANE_MONGODB_URI", "not reachable")

    found = {
        **env,
        "MODELPLANE_MONGODB_URI": mongo_uri,
        "MODELPLANE_MONGODB_DATABASE": f"cli-{os.getpid()}",
    }
    result = run_cli("download", "--weights-id", "weights-missing", env=found)
    assert result.returncode == 2
    assert_one_clear_line(result, "no weights weights-missing")
