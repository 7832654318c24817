"""Install options, part 3: the server-wide hub token (``MODELPLANE_HUB_TOKEN_SECRET``).

Against the local hub (whose gated repo needs a granted token for its files) and FerretDB,
and the Kubernetes testbed for the download Job: a model created without a token is checked
and downloaded with the server's; previews, searches and GPU fits carry it; the Job gets it
only as a ``secretKeyRef``. The token is never in an answer, a document, an event or a log
line.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s

from controllers.runtimes.kubernetes.job_specs import SERVER_HF_TOKEN, JobTemplate, render_job
from controllers.runtimes.kubernetes.runtime import KubernetesRuntime
from controllers.runtimes.secrets import EncryptedSecretStore, fernet_for
from storage.client import Client
from storage.documents import LocalTarget, Role, WeightsDocument
from storage.repositories import SecretRepository
from testbed import kubelet, servers
from testbed.hub import RunningHub
from tests.conftest import HUB_TOKEN, RunningApp, kube_settings, make_settings, serve_app
from tests.graphql_client import execute, run
from tests.helpers import weights_area
from tests.test_weights_api import wait_model

GATED = "gated-org/gated-model"
ENTRY = "server-hub-token"


@pytest.fixture(autouse=True)
def clean_hub(hub: RunningHub) -> Iterator[None]:
    hub.hub.faults.clear()
    hub.hub.log.clear()
    yield
    hub.hub.faults.clear()


async def _store_entry(app: RunningApp, values: dict[str, str]) -> None:
    settings = app.resources.settings
    assert settings.secret_key is not None
    store = EncryptedSecretStore(
        SecretRepository(app.resources.database),
        cipher=fernet_for(settings.secret_key.get_secret_value()),
    )
    await store.put_entry(ref=ENTRY, values=values)


@pytest.fixture
async def token_app(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> AsyncIterator[RunningApp]:
    """The local runtime with a server-wide hub token stored in the encrypted store."""
    settings = make_settings(tmp_path, mongo_uri, hf_endpoint=hub.endpoint, hub_token_secret=ENTRY)
    async with serve_app(settings, mongo_client) as app:
        await _store_entry(app, {"hf-token": HUB_TOKEN})
        yield app


def editor(app: RunningApp) -> str:
    return app.token(role=Role.EDITOR, organization="org-a")


async def _create_gated(app: RunningApp, directory: str) -> dict[str, Any]:
    root = weights_area(app.resources.settings.local_roots)
    value = {
        "source": {"url": GATED, "accessMode": "LOCAL"},
        "downloadTarget": {"local": {"localPath": str(root / directory)}},
    }
    data = await run(app.graphql_url, "CreateModel", {"input": value}, token=editor(app))
    result: dict[str, Any] = data["createModel"]
    return result


async def _everything_stored(app: RunningApp) -> str:
    """Every document of every collection, as text (the encrypted secrets as stored)."""
    database = app.resources.database
    texts = []
    for name in await database.list_collection_names():
        async for document in database[name].find({}):
            texts.append(json.dumps(document, default=str))
    return "\n".join(texts)


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)


async def test_a_model_without_a_token_uses_the_servers(
    token_app: RunningApp, hub: RunningHub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers: list[str] = []
    created = await _create_gated(token_app, "gated")
    answers.append(json.dumps(created))
    assert created["__typename"] == "Model", created
    assert created["source"]["hasToken"] is False
    model = await wait_model(token_app, created["id"], lambda m: m["phase"] in ("READY", "FAILED"))
    answers.append(json.dumps(model))
    assert model["phase"] == "READY", model
    location = Path(model["weights"]["location"])
    for file in hub.hub.repos[GATED].files:
        data = (location / file.path).read_bytes()
        assert hashlib.sha256(data).digest() == hashlib.sha256(file.content).digest()
    fetched = [r for r in hub.hub.log.records(method="GET") if "/resolve/" in r.path]
    assert fetched
    assert all(r.authorization for r in fetched)

    # Previews, searches and GPU fits carry the server's token too.
    hub.hub.log.clear()
    viewer = token_app.token(role=Role.VIEWER, organization="org-a")
    for name, variables in (
        ("HuggingFaceModel", {"repoId": GATED}),
        ("HuggingFaceSearch", {"query": "gated"}),
        ("GpuFit", {"repoId": GATED}),
    ):
        body = await execute(token_app.graphql_url, _operation(name), variables, token=viewer)
        answers.append(json.dumps(body))
        assert "errors" not in body, body
    api_calls = [r for r in hub.hub.log.records() if r.path.startswith("/api/models")]
    assert api_calls
    assert all(r.authorization for r in api_calls), api_calls

    # Never returned, stored in the clear, appended to the event log or logged.
    assert all(HUB_TOKEN not in answer for answer in answers)
    assert HUB_TOKEN not in await _everything_stored(token_app)
    assert HUB_TOKEN not in _logged(caplog)


def _operation(name: str) -> str:
    from tests.operations import operation

    return operation(name)


async def test_a_missing_entry_is_no_token(
    tmp_path: Path,
    mongo_uri: str,
    mongo_client: Client,
    hub: RunningHub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The setting names an entry that holds no token: the hub answers as to anyone (a gated
    repo's files are refused, on the field) and the log names the entry, not a value."""
    settings = make_settings(tmp_path, mongo_uri, hf_endpoint=hub.endpoint, hub_token_secret=ENTRY)
    async with serve_app(settings, mongo_client) as app:
        await _store_entry(app, {"another-key": HUB_TOKEN})
        refused = await _create_gated(app, "gated")
        assert refused["__typename"] == "ValidationError", refused
        assert refused["field"] == "source.token"
        assert await app.resources.database["models"].count_documents({}) == 0
    assert ENTRY in _logged(caplog)
    assert HUB_TOKEN not in _logged(caplog)


async def test_without_the_setting_a_gated_repo_needs_a_token(running_app: RunningApp) -> None:
    refused = await _create_gated(running_app, "gated")
    assert refused["__typename"] == "ValidationError", refused
    assert refused["field"] == "source.token"


def test_the_job_gets_the_servers_token_as_a_reference() -> None:
    weights = WeightsDocument(
        id="weights-x",
        organization_id="org",
        repo_id="org/x",
        commit_sha="c" * 40,
        target=LocalTarget(local_path="/data/x"),
        location="/data/x",
        prefetched=True,
    )
    template = JobTemplate(
        image="modelplane:test",
        hf_endpoint="http://hub",
        mongodb_database="db",
        mongodb_secret="mongo",
        hub_token_secret="hub-token",
        hub_token_key="token",
    )
    job = render_job(None, weights, template, namespace="ns")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env[SERVER_HF_TOKEN] == {
        "name": SERVER_HF_TOKEN,
        "valueFrom": {"secretKeyRef": {"name": "hub-token", "key": "token", "optional": True}},
    }
    assert "HF_TOKEN" not in env  # prefetched weights without credentials of their own
    assert job["metadata"]["labels"]["modelplane.io/owner-id"] == "weights-x"
    without = render_job(
        None,
        weights,
        JobTemplate(image="i", hf_endpoint="h", mongodb_database="d", mongodb_secret="m"),
        namespace="ns",
    )
    assert SERVER_HF_TOKEN not in json.dumps(without)


@pytest.fixture
async def kube_token_app(
    tmp_path: Path,
    mongo_uri: str,
    mongo_client: Client,
    hub: RunningHub,
    kube: servers.KubeCluster,
    kube_namespace: str,
) -> AsyncIterator[RunningApp]:
    settings = kube_settings(
        tmp_path,
        mongo_uri,
        hub,
        kube,
        kube_namespace,
        hub_token_secret=ENTRY,
    )
    async with serve_app(settings, mongo_client) as running:
        yield running


async def test_a_download_job_uses_the_servers_secret_and_the_patterns(
    kube_token_app: RunningApp, hub: RunningHub, mongo_uri: str, tmp_path: Path
) -> None:
    app = kube_token_app
    runtime = app.resources.runtime
    assert isinstance(runtime, KubernetesRuntime)
    api = runtime.api
    namespace = app.resources.settings.namespace
    core = k8s.CoreV1Api(api)
    for name, values in (
        (ENTRY, {"hf-token": HUB_TOKEN}),
        ("modelplane-mongodb", {"uri": mongo_uri}),
    ):
        await core.create_namespaced_secret(
            namespace, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name=name), string_data=values)
        )
    value = {
        "source": {"url": GATED, "accessMode": "LOCAL", "allowPatterns": ["*.json"]},
        "downloadTarget": {"pvc": {"claimName": "weights-t", "subPath": "g"}},
    }
    data = await run(app.graphql_url, "CreateModel", {"input": value}, token=editor(app))
    created = data["createModel"]
    assert created["__typename"] == "Model", created

    batch = k8s.BatchV1Api(api)
    job = None
    for _ in range(300):
        jobs = await batch.list_namespaced_job(
            namespace, label_selector="app.kubernetes.io/component=download"
        )
        if jobs.items:
            (job,) = jobs.items
            break
        await _sleep()
    assert job is not None, "no download Job"
    serialized = json.dumps(api.sanitize_for_serialization(job))
    assert HUB_TOKEN not in serialized
    (container,) = job.spec.template.spec.containers
    env = {e.name: e for e in container.env}
    assert env[SERVER_HF_TOKEN].value is None
    assert env[SERVER_HF_TOKEN].value_from.secret_key_ref.name == ENTRY
    assert "HF_TOKEN" not in env  # the model has no credentials of its own

    pvc = tmp_path / "pvc"
    code = await kubelet.run_job_pod(api, namespace, job.metadata.name, volumes={"weights": pvc})
    assert code == 0
    model = await wait_model(app, created["id"], lambda m: m["phase"] in ("READY", "FAILED"))
    assert model["phase"] == "READY", model
    wanted = sorted(f.path for f in hub.hub.repos[GATED].files if f.path.endswith(".json"))
    assert sorted(f["path"] for f in model["weights"]["files"]) == wanted
    on_disk = sorted(
        str(p.relative_to(pvc / "g"))
        for p in (pvc / "g").rglob("*")
        if p.is_file() and not p.name.startswith(".modelplane")
    )
    assert on_disk == wanted


async def _sleep() -> None:
    import asyncio

    await asyncio.sleep(0.1)
