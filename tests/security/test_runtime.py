"""Attacker-style reproducers for the runtime findings of issue 15 (#2, #5, #6, #9-manifests).

#2, the local runtime runs engines on the control-plane host: an editor must not choose the
program (CUSTOM, a command, args, a program-loading variable); an admin may only when the
server allows it; and even then the engine runs as an unprivileged user that cannot read the
state directory's keys or the server's environment, while the weights stay readable.
Production refuses the local runtime unless it is allowed.

Everything goes through HTTP with real development tokens against the real servers; after a
refusal the database is checked: no inference document, no inference event.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from live.log import COLLECTION as EVENTS
from storage.client import Client
from storage.documents import Role
from testbed.hub import RunningHub
from tests import helpers
from tests.conftest import RunningApp, make_settings, serve_app
from tests.graphql_client import run
from tests.helpers import weights_area
from tests.test_cli import assert_one_clear_line, run_cli
from tests.test_weights_api import create_local, ready, wait_model

ORG = "org-a"


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A state directory others may traverse (pytest's tmp_path is 0700, which would hide
    the keys from the engine user whatever modelplane does): the modes tested are ours."""
    parent = Path(tempfile.mkdtemp(prefix="mp-runtime-"))
    parent.chmod(0o755)
    try:
        yield parent
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@asynccontextmanager
async def host_app(
    state: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub, **overrides: Any
) -> AsyncIterator[RunningApp]:
    """A local-runtime modelplane with its keys generated into ``state`` (no secret key set)."""
    settings = make_settings(
        state, mongo_uri, hf_endpoint=hub.endpoint, secret_key=None, **overrides
    )
    async with serve_app(settings, mongo_client) as running:
        yield running


def token(app: RunningApp, role: Role) -> str:
    return app.token(role=role, organization=ORG)


async def ready_model(app: RunningApp) -> dict[str, Any]:
    created = await create_local(app, "tiny-org/tiny-model")
    model = await wait_model(app, created["id"], ready)
    assert model["phase"] == "READY", model
    return model


async def start(
    app: RunningApp, model_id: str, value: dict[str, Any], role: Role, *, dry_run: bool = False
) -> dict[str, Any]:
    data = await run(
        app.graphql_url,
        "StartInference",
        {"modelId": model_id, "input": value, "dryRun": dry_run},
        token=token(app, role),
    )
    result: dict[str, Any] = data["startInference"]
    return result


async def assert_nothing_written(app: RunningApp) -> None:
    database = app.resources.database
    assert await database["inferences"].count_documents({}) == 0
    assert await database[EVENTS].count_documents({"resource_kind": "INFERENCE"}) == 0


HOST_PROGRAMS: list[tuple[str, dict[str, Any], str]] = [
    ("custom", {"engine": "CUSTOM", "command": ["/bin/sh", "-c", "id"]}, "input.engine"),
    ("vllm-command", {"command": ["/bin/sh", "-c", "id --served-model-name x"]}, "input.command"),
    ("vllm-args-only", {"args": ["/bin/sh", "-c", "id"]}, "input.args"),
    ("path-variable", {"env": [{"name": "PATH", "value": "/srv/evil"}]}, "input.env[0].name"),
    ("ld-preload", {"env": [{"name": "LD_PRELOAD", "value": "/x.so"}]}, "input.env[0].name"),
    ("python-startup", {"env": [{"name": "PYTHONPATH", "value": "/x"}]}, "input.env[0].name"),
    (
        "litellm-config",
        {"engine": "LITELLM_PROXY", "litellm": {"mode": "CONFIG", "configYaml": "model_list: []"}},
        "input.litellm.configYaml",
    ),
]


async def test_host_programs_are_refused_by_default_even_to_admins(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> None:
    async with host_app(tmp_path, mongo_uri, mongo_client, hub) as app:
        model = await ready_model(app)
        for name, value, field in HOST_PROGRAMS:
            for role in (Role.EDITOR, Role.ADMIN):
                for dry_run in (False, True):
                    result = await start(app, model["id"], value, role, dry_run=dry_run)
                    assert result["__typename"] == "ValidationError", (name, role, result)
                    assert result["field"] == field, (name, result)
                    assert "MODELPLANE_ALLOW_HOST_COMMANDS" in result["errorMessage"]
        await assert_nothing_written(app)
        assert not (app.resources.settings.state_dir / "engines").exists()


async def test_with_host_commands_allowed_an_editor_is_still_refused(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> None:
    async with host_app(tmp_path, mongo_uri, mongo_client, hub, allow_host_commands=True) as app:
        model = await ready_model(app)
        for name, value, field in HOST_PROGRAMS:
            result = await start(app, model["id"], value, Role.EDITOR)
            assert result["__typename"] == "ForbiddenError", (name, result)
            assert result["requiredRole"] == "ADMIN"
            assert field in result["errorMessage"]
        await assert_nothing_written(app)


ENGINE_SCRIPT = """
echo "uid=$(id -u)"
cat "$STATE/keys/secret-key"
cat "$STATE/keys/dev-signing-key"
cat "/proc/$PPID/environ"
config="$(find "$MODEL_PATH" -name config.json | head -n 1)"
test -n "$config" && cat "$config" >/dev/null && echo weights-readable
echo engine-done
exec sleep 600
"""


async def test_an_admins_engine_cannot_read_the_keys_but_reads_the_weights(
    open_dir: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> None:
    async with host_app(open_dir, mongo_uri, mongo_client, hub, allow_host_commands=True) as app:
        state = app.resources.settings.state_dir.resolve()
        assert (state / "keys" / "secret-key").is_file()  # generated: no secret key was set
        assert (state / "keys" / "dev-signing-key").is_file()
        model = await ready_model(app)
        value = {
            "engine": "CUSTOM",
            "command": ["/bin/sh", "-c", ENGINE_SCRIPT],
            "env": [{"name": "STATE", "value": str(state)}],
        }
        result = await start(app, model["id"], value, Role.ADMIN)
        assert result["__typename"] == "InferencePayload", result
        lines = await engine_output(app, result["inference"]["id"])
        text = "\n".join(lines)
        secret = (state / "keys" / "secret-key").read_text().strip()
        assert secret not in text
        assert "uid=0" not in text, text
        denied = [line for line in lines if "Permission denied" in line]
        assert any("secret-key" in line for line in denied), text
        assert any("dev-signing-key" in line for line in denied), text
        assert any("environ" in line for line in denied), text
        assert "weights-readable" in lines, text
        await run(
            app.graphql_url,
            "StopInference",
            {"modelId": model["id"]},
            token=token(app, Role.ADMIN),
        )
        await helpers.wait_inference(
            app.graphql_url,
            token(app, Role.ADMIN),
            result["inference"]["id"],
            {"STOPPED"},
        )
        # Switching the admin's command back on is starting it: an editor may not.
        toggled = await run(
            app.graphql_url,
            "ToggleInference",
            {"modelId": model["id"], "enabled": True},
            token=token(app, Role.EDITOR),
        )
        assert toggled["toggleInference"]["__typename"] == "ForbiddenError", toggled


@pytest.mark.parametrize("blocked", ["state-dir", "program", "weights"])
async def test_an_engine_user_that_cannot_reach_its_paths_is_told_which_folder(
    blocked: str,
    tmp_path: Path,
    open_dir: Path,
    mongo_uri: str,
    mongo_client: Client,
    hub: RunningHub,
) -> None:
    """What a deployment gets wrong, named before the spawn: a state directory under a 0700
    folder (pytest's tmp_path is one, like root's home), an engine installed under one, or
    weights made unreadable. FAILED once, reason PermissionDenied, the folder and its mode in
    the message (before: a bare "Permission denied" from the exec, or the engine's own error)."""
    private = open_dir / "private"
    private.mkdir(mode=0o700)
    program = private / "engine"
    program.write_text("#!/bin/sh\nexec sleep 600\n")
    program.chmod(0o755)
    state = tmp_path if blocked == "state-dir" else open_dir
    async with host_app(state, mongo_uri, mongo_client, hub, allow_host_commands=True) as app:
        model = await ready_model(app)
        weights = weights_area(app.resources.settings.local_roots) / "tiny-org--tiny-model"
        if blocked == "weights":
            weights.chmod(0o700)
        command = [str(program)] if blocked == "program" else ["/bin/sh", "-c", "exec sleep 600"]
        result = await start(app, model["id"], {"engine": "CUSTOM", "command": command}, Role.ADMIN)
        assert result["__typename"] == "InferencePayload", result
        failed = await helpers.wait_inference(
            app.graphql_url,
            token(app, Role.ADMIN),
            result["inference"]["id"],
            {"FAILED", "RUNNING", "CRASH_LOOP_BACK_OFF"},
        )
        assert failed["phase"] == "FAILED", failed
        assert failed["reason"] == "PermissionDenied", failed
        folder, words = {
            "state-dir": (str(tmp_path.parents[1]), "cannot enter its working directory"),
            "program": (str(private), f"cannot run {program}"),
            "weights": (str(weights), f"cannot read {weights}"),
        }[blocked]
        assert f"{folder} is drwx------ root:root" in failed["message"], failed
        assert words in failed["message"], failed
        assert "MODELPLANE_ENGINE_USER" in failed["message"], failed


async def engine_output(app: RunningApp, inference_id: str) -> list[str]:
    """The engine's output once it printed its last marker."""
    deadline = time.monotonic() + 30
    while True:
        data = await run(
            app.graphql_url,
            "InferenceLogs",
            {"id": inference_id, "tail": 200},
            token=token(app, Role.ADMIN),
        )
        lines: list[str] = data["inferenceLogs"]["lines"]
        if "engine-done" in lines:
            return lines
        assert time.monotonic() < deadline, lines
        await asyncio.sleep(0.1)


PRODUCTION = {
    "MODELPLANE_ENVIRONMENT": "production",
    "MODELPLANE_MONGODB_URI": "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=100",
    "MODELPLANE_SECRET_KEY": "production-secret-key-that-is-long-enough-0123",
    "MODELPLANE_OIDC_ISSUER": "https://issuer.example.test",
}


def test_production_refuses_the_local_runtime_unless_allowed(tmp_path: Path) -> None:
    env = {**PRODUCTION, "MODELPLANE_STATE_DIR": str(tmp_path), "MODELPLANE_RUNTIME": "local"}
    refused = run_cli("serve", env=env)
    assert refused.returncode == 2
    assert_one_clear_line(refused, "MODELPLANE_ALLOW_LOCAL_RUNTIME_IN_PRODUCTION")
    allowed = run_cli("serve", env={**env, "MODELPLANE_ALLOW_LOCAL_RUNTIME_IN_PRODUCTION": "true"})
    # Past the settings check, it stops at the unreachable database instead.
    assert allowed.returncode == 1, allowed.stderr
    assert_one_clear_line(allowed, "MODELPLANE_MONGODB_URI")


# -- #5, #6, #9: manifests on the kubernetes runtime --------------------------------------


def manifest_cases() -> list[tuple[str, str, str]]:
    """Each item of finding #5, plus billion laughs (#6) and malformed documents (#9)."""
    from tests.test_manifests import DANGEROUS, MALFORMED, WRONG_TYPES

    picked = {
        "secret-volume",
        "secret-key-ref",
        "env-from",
        "service-account",
        "automount-token",
        "capability-cap_sys_admin",
        "capability-sys_module",
        "capability-sys_ptrace",
        "capability-dac_read_search",
        "capability-bpf",
        "capability-sys_rawio",
        "sysctls",
        "external-ips",
        "node-port",
        "host-network",
        "privileged",
        "aliases",
        "a-list",
        "not-yaml",
        "config-map",
        "non-string-key",
        "containers-map",
        "gpu-word",
        "huge-integer",
    }
    cases = [case for case in DANGEROUS + MALFORMED + WRONG_TYPES if case[0] in picked]
    assert len(cases) == len(picked)
    return [(name, text, field) for name, text, field, _ in cases]


async def test_dangerous_and_malformed_manifests_are_refused_and_nothing_is_created(
    kube_app: RunningApp, kube_namespace: str
) -> None:
    from kubernetes_asyncio import client as k8s

    root = kube_app.resources.settings.local_roots[0]
    cases = [
        *manifest_cases(),
        (
            "host-path-root",
            MANIFEST_WITH_HOST_PATH.format(path=root),
            "manifest[0].spec.template.spec.volumes[0].hostPath.path",
        ),
    ]
    for name, text, field in cases:
        for dry_run in (False, True):
            data = await run(
                kube_app.graphql_url,
                "CreateInferenceFromManifest",
                {"yaml": text, "dryRun": dry_run},
                token=token(kube_app, Role.ADMIN),
            )
            result = data["createInferenceFromManifest"]
            assert result["__typename"] == "ValidationError", (name, result)
            assert result["field"] == field, (name, result)
    await assert_nothing_written(kube_app)
    config = k8s.Configuration()
    from kubernetes_asyncio import config as k8s_config

    await k8s_config.load_kube_config(
        config_file=str(kube_app.resources.settings.kubeconfig), client_configuration=config
    )
    async with k8s.ApiClient(config) as api:
        deployments = await k8s.AppsV1Api(api).list_namespaced_deployment(kube_namespace)
        services = await k8s.CoreV1Api(api).list_namespaced_service(kube_namespace)
    assert deployments.items == []
    assert services.items == []


MANIFEST_WITH_HOST_PATH = """
apiVersion: apps/v1
kind: Deployment
metadata: {{name: srv}}
spec:
  selector: {{matchLabels: {{app: srv}}}}
  template:
    metadata: {{labels: {{app: srv}}}}
    spec:
      volumes: [{{name: w, hostPath: {{path: "{path}"}}}}]
      containers:
        - name: server
          image: registry.example.com/server:1
          volumeMounts: [{{name: w, mountPath: /w, readOnly: true}}]
"""


async def test_billion_laughs_is_refused_at_once(kube_app: RunningApp) -> None:
    from tests.test_manifests import BILLION_LAUGHS

    started = time.monotonic()
    data = await run(
        kube_app.graphql_url,
        "CreateInferenceFromManifest",
        {"yaml": BILLION_LAUGHS},
        token=token(kube_app, Role.EDITOR),
    )
    print(f"billion laughs refused in {time.monotonic() - started:.3f} s")  # noqa: T201
    result = data["createInferenceFromManifest"]
    assert result["__typename"] == "ValidationError", result
    assert result["field"] == "manifest"
    assert "aliases are not allowed" in result["errorMessage"]
    await assert_nothing_written(kube_app)
