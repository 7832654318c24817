"""deleteWeights(force: false) refuses while an engine may read the weights (issue 16, bug 2).

Each blocking phase is reached for real on the local runtime (a stand-in ``vllm`` on PATH and
CUSTOM engines): PENDING waits for a throttled download, CREATING never answers its health
check, RUNNING answers it, CRASH_LOOP_BACK_OFF exits at once, FAILED names a program that does
not exist. Each one refuses the deletion with a ConflictError, and the weights (document and
files) stay. Once the inference is STOPPED the same call deletes them. The guard's rule is a
pure function, table-tested over every phase.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.weights import holds_weights
from storage.client import Client
from storage.documents import InferencePhase, Role
from testbed.hub import RunningHub
from tests.conftest import RunningApp, make_settings, serve_app
from tests.graphql_client import run
from tests.test_inference_local import FAKE_VLLM, start, wait_inference
from tests.test_weights_api import create_local, ready, wait_model

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
EXITER = [sys.executable, "-c", "import sys; sys.exit(3)"]
ENGINES: dict[str, dict[str, Any] | None] = {
    "PENDING": None,  # the default vLLM, started while the download is throttled
    "CREATING": {"engine": "CUSTOM", "command": SLEEPER},
    "RUNNING": None,
    "CRASH_LOOP_BACK_OFF": {"engine": "CUSTOM", "command": EXITER},
    "FAILED": {"engine": "CUSTOM", "command": ["/nonexistent/engine"]},
}


@pytest.fixture
async def local_app(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> AsyncIterator[RunningApp]:
    """The local runtime with a stand-in ``vllm`` first on PATH; admins may run commands."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    vllm = bin_dir / "vllm"
    vllm.write_text(FAKE_VLLM.format(python=sys.executable))
    vllm.chmod(vllm.stat().st_mode | stat.S_IXUSR)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        settings = make_settings(
            tmp_path, mongo_uri, hf_endpoint=hub.endpoint, allow_host_commands=True, engine_user=""
        )
        hub.hub.faults.clear()
        try:
            async with serve_app(settings, mongo_client) as running:
                yield running
        finally:
            hub.hub.faults.clear()


def editor(app: RunningApp) -> str:
    return app.token(role=Role.EDITOR, organization="org-a")


async def delete_weights(app: RunningApp, weights_id: str) -> dict[str, Any]:
    data = await run(
        app.graphql_url, "DeleteWeights", {"id": weights_id, "force": False}, token=editor(app)
    )
    result: dict[str, Any] = data["deleteWeights"]
    return result


async def weights_of(app: RunningApp, weights_id: str) -> dict[str, Any] | None:
    data = await run(app.graphql_url, "Weights", {"id": weights_id}, token=editor(app))
    found: dict[str, Any] | None = data["weights"]
    return found


def listing(location: Path) -> set[str]:
    """Every file under the weights' directory, relative to it (empty when there is none)."""
    if not location.exists():
        return set()
    return {str(p.relative_to(location)) for p in location.rglob("*") if p.is_file()}


async def model_with_inference(
    app: RunningApp, hub: RunningHub, phase: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A model whose weights exist and an inference of it seen in ``phase``."""
    if phase == "PENDING":
        hub.hub.faults.throttle("tiny-org/tiny-model/*", 20_000, times=None)
    created = await create_local(app, "tiny-org/tiny-model")
    if phase != "PENDING":
        model = await wait_model(app, created["id"], ready)
        assert model["phase"] == "READY", model
    result = await start(app, created["id"], ENGINES[phase])
    assert result["__typename"] == "InferencePayload", result
    inference = await wait_inference(app, result["inference"]["id"], {phase}, timeout=60)
    model = await wait_model(app, created["id"], lambda m: m["weights"] is not None)
    return model, inference


@pytest.mark.parametrize("phase", list(ENGINES))
async def test_an_enabled_inference_keeps_its_weights(
    local_app: RunningApp, hub: RunningHub, phase: str
) -> None:
    model, inference = await model_with_inference(local_app, hub, phase)
    weights_id = model["weights"]["id"]
    location = Path(model["weights"]["location"])
    on_disk = listing(location)

    refused = await delete_weights(local_app, weights_id)

    assert refused["__typename"] == "ConflictError", (inference, refused)
    assert model["name"] in refused["errorMessage"]
    assert await weights_of(local_app, weights_id) is not None
    if phase == "PENDING":  # still downloading: its parts come and go, the directory stays
        assert location.exists() or not on_disk
    else:
        assert listing(location) == on_disk
        assert on_disk
    again = await run(
        local_app.graphql_url, "ModelDownload", {"id": model["id"]}, token=editor(local_app)
    )
    assert again["model"]["weights"]["id"] == weights_id


async def test_a_stopped_inference_lets_them_go(local_app: RunningApp, hub: RunningHub) -> None:
    model, inference = await model_with_inference(local_app, hub, "RUNNING")
    weights_id = model["weights"]["id"]
    location = Path(model["weights"]["location"])
    await run(
        local_app.graphql_url, "StopInference", {"modelId": model["id"]}, token=editor(local_app)
    )
    await wait_inference(local_app, inference["id"], {"STOPPED"})

    deleted = await delete_weights(local_app, weights_id)

    assert deleted == {
        "__typename": "DeletedWeights",
        "id": weights_id,
        "detachedModelIds": [model["id"]],
    }
    assert await weights_of(local_app, weights_id) is None
    assert not location.exists()


@pytest.mark.parametrize("phase", list(InferencePhase))
@pytest.mark.parametrize("enabled", [True, False])
def test_which_inferences_hold_weights(phase: InferencePhase, *, enabled: bool) -> None:
    """Enabled: the controller will (re)start the engine on them, whatever the phase says.
    Stopped: only once STOPPED, when nothing of the engine is left (until then the old phase
    stays while it is being torn down)."""
    expected = enabled or phase is not InferencePhase.STOPPED
    assert holds_weights(enabled=enabled, phase=phase) is expected
