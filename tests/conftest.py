"""Session fixtures: real servers on loopback (FerretDB, etcd + kube-apiserver, MinIO, the local
hub), per-test databases, a running modelplane on a free port, and a guard that fails any test
leaving asyncio tasks behind.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from integrations.addresses import OutboundPolicy
from modelplane.app import Resources, create_app, open_resources
from modelplane.auth import issue_dev_token
from modelplane.cli import server_config
from modelplane.embedded import FerretDBProcess, free_port
from modelplane.settings import Settings, load_settings
from storage.client import Client, Database, make_client
from storage.documents import Role
from testbed import servers
from testbed.hub import LocalHub, RunningHub, running_hub

pytest_plugins = ["tests.cluster_fixtures", "tests.git_fixtures"]

HUB_TOKEN = "hf_testbedgrantedtoken0001"

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")


@pytest.fixture(scope="session")
def testbed_binaries() -> dict[str, Path]:
    """Paths of the server binaries, building any that are missing (loudly)."""
    return servers.ensure_built()


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("testbed")


@pytest.fixture(scope="session")
async def mongo_uri(testbed_binaries: dict[str, Path], session_dir: Path) -> AsyncIterator[str]:
    """A FerretDB server for the whole session."""
    ferret = FerretDBProcess(binary=testbed_binaries["ferretdb"], data_dir=session_dir / "ferretdb")
    ferret.start()
    try:
        await ferret.wait_ready()
        yield ferret.uri
    finally:
        ferret.stop()


@pytest.fixture(scope="session")
async def mongo_client(mongo_uri: str) -> AsyncIterator[Client]:
    client = make_client(mongo_uri, timeout_seconds=5)
    await client.admin.command("ping")  # start the monitor tasks before any test runs
    yield client
    await client.close()


@pytest.fixture
async def database(mongo_client: Client) -> AsyncIterator[Database]:
    """A fresh database per test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield mongo_client[name]
    await mongo_client.drop_database(name)


@pytest.fixture(scope="session")
def kube(testbed_binaries: dict[str, Path], session_dir: Path) -> Iterator[servers.KubeCluster]:
    """etcd + kube-apiserver for the session."""
    with servers.kube_apiserver(
        session_dir / "kube",
        etcd=testbed_binaries["etcd"],
        apiserver=testbed_binaries["kube-apiserver"],
    ) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def s3_server(testbed_binaries: dict[str, Path], session_dir: Path) -> Iterator[servers.S3Server]:
    """MinIO for the session."""
    with servers.minio(session_dir / "minio", binary=testbed_binaries["minio"]) as server:
        yield server


@pytest.fixture(scope="session")
def hub() -> Iterator[RunningHub]:
    """The local Hugging Face Hub stand-in, serving the sample repositories."""
    with running_hub(LocalHub(tokens=[HUB_TOKEN])) as running:
        running.hub.grant(HUB_TOKEN, "gated-org/gated-model")
        yield running


def make_settings(tmp_path: Path, mongo_uri: str, **overrides: Any) -> Settings:
    """Settings pointing at the test servers, with a per-test state dir and database."""
    values: dict[str, Any] = {
        "mongodb_uri": mongo_uri,
        "mongodb_database": f"app_{uuid.uuid4().hex[:12]}",
        "state_dir": tmp_path / "state",
        "secret_key": "test-secret-key-that-is-long-enough-0123456789",
        "log_format": "console",
        # Every test server (MinIO, the OpenAI upstream stand-in) listens on loopback, which the
        # default outbound policy refuses; tests/security runs with the default.
        "allowed_remote_networks": "127.0.0.0/8",
        **overrides,
    }
    return load_settings(**values)


class RunningApp:
    """modelplane served by uvicorn on a loopback port inside the test's event loop."""

    def __init__(self, resources: Resources, port: int) -> None:
        self.resources = resources
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.graphql_url = f"{self.base_url}/graphql"
        self.ws_url = f"ws://127.0.0.1:{port}/graphql"

    def token(
        self,
        *,
        role: Role = Role.ADMIN,
        organization: str = "default",
        ttl_seconds: int = 600,
        subject: str = "tester",
    ) -> str:
        assert self.resources.dev_key is not None
        return issue_dev_token(
            self.resources.dev_key,
            subject=subject,
            organization_id=organization,
            role=role,
            ttl_seconds=ttl_seconds,
        )


@asynccontextmanager
async def serve_app(
    settings: Settings,
    mongo_client: Client,
    *,
    keep_database: bool = False,
    outbound: OutboundPolicy | None = None,
) -> AsyncIterator[RunningApp]:
    """Run modelplane with ``settings`` on a free port until the block exits (then drop its
    database, unless another instance goes on with it: ``keep_database``); ``outbound``
    replaces the settings' outbound policy (a test resolver)."""
    async with open_resources(settings, outbound=outbound) as resources:
        app = create_app(settings, resources=resources)
        port = free_port()
        server = uvicorn.Server(
            server_config(
                app, host="127.0.0.1", port=port, ws_max_bytes=settings.graphql_max_body_bytes
            )
        )
        task = asyncio.create_task(server.serve(), name="uvicorn-test-server")
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        try:
            yield RunningApp(resources, port)
        finally:
            server.should_exit = True
            await task
    if not keep_database:
        await mongo_client.drop_database(settings.mongodb_database)


@pytest.fixture
async def running_app(
    tmp_path: Path, mongo_uri: str, mongo_client: Client, hub: RunningHub
) -> AsyncIterator[RunningApp]:
    """A full modelplane (local runtime, local hub) listening on a free port for one test."""
    settings = make_settings(tmp_path, mongo_uri, hf_endpoint=hub.endpoint)
    async with serve_app(settings, mongo_client) as running:
        yield running


@pytest.fixture
async def kube_namespace(kube: servers.KubeCluster) -> AsyncIterator[str]:
    """A fresh namespace on the test cluster, deleted afterwards."""
    from kubernetes_asyncio import client as k8s
    from kubernetes_asyncio import config as k8s_config

    name = f"mp-{uuid.uuid4().hex[:8]}"
    configuration = k8s.Configuration()
    await k8s_config.load_kube_config(
        config_file=str(kube.kubeconfig), client_configuration=configuration
    )
    async with k8s.ApiClient(configuration) as api:
        core = k8s.CoreV1Api(api)
        await core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
        try:
            yield name
        finally:
            await core.delete_namespace(name)


@pytest.fixture
async def kube_app(
    tmp_path: Path,
    mongo_uri: str,
    mongo_client: Client,
    hub: RunningHub,
    kube: servers.KubeCluster,
    kube_namespace: str,
) -> AsyncIterator[RunningApp]:
    """modelplane on the kubernetes runtime, managing a fresh namespace of the test cluster."""
    settings = kube_settings(tmp_path, mongo_uri, hub, kube, kube_namespace)
    async with serve_app(settings, mongo_client) as running:
        yield running


def kube_settings(
    tmp_path: Path,
    mongo_uri: str,
    hub: RunningHub,
    kube: servers.KubeCluster,
    namespace: str,
    **overrides: Any,
) -> Settings:
    """:func:`make_settings` for the kubernetes runtime on the test cluster's ``namespace``,
    with the local hub and ``overrides``."""
    return make_settings(
        tmp_path,
        mongo_uri,
        hf_endpoint=hub.endpoint,
        runtime="kubernetes",
        kubeconfig=kube.kubeconfig,
        namespace=namespace,
        **overrides,
    )


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running after it (and its fixtures) finished."""
    before = set(asyncio.all_tasks())
    yield
    current = asyncio.current_task()
    leaked: set[asyncio.Task[Any]] = set()
    for _ in range(50):
        leaked = {t for t in asyncio.all_tasks() - before if t is not current and not t.done()}
        if not leaked:
            return
        await asyncio.sleep(0.02)
    names = sorted(task.get_name() + ": " + repr(task.get_coro()) for task in leaked)
    for task in leaked:
        task.cancel()
    pytest.fail("test leaked asyncio tasks:\n  " + "\n  ".join(names))
