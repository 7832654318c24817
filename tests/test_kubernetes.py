"""The kubernetes runtime against a real kube-apiserver (etcd-backed, envtest style)."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import watch
from kubernetes_asyncio.client.exceptions import ApiException

from controllers.runtimes.base import RuntimeConfigError, RuntimeUnavailable
from controllers.runtimes.kubernetes.runtime import KubernetesRuntime
from testbed.servers import KubeCluster


@pytest.fixture
async def runtime(kube: KubeCluster) -> AsyncIterator[KubernetesRuntime]:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    rt = KubernetesRuntime(kubeconfig=kube.kubeconfig, namespace=namespace)
    await rt.start()
    core = k8s.CoreV1Api(rt.api)
    await core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
    try:
        yield rt
    finally:
        await core.delete_namespace(namespace)
        await rt.close()


async def test_runtime_reports_server_version(runtime: KubernetesRuntime) -> None:
    await runtime.check()
    info = await runtime.describe()
    assert info.kind == "kubernetes"
    assert info.version == "v1.36.3"
    assert info.namespace == runtime.namespace


async def test_configmap_create_read_watch_delete(runtime: KubernetesRuntime) -> None:
    core = k8s.CoreV1Api(runtime.api)
    ns = runtime.namespace
    labels = {"app.kubernetes.io/managed-by": "modelplane", "modelplane.io/model-id": "model-x"}
    seen: list[tuple[str, str]] = []
    started = asyncio.Event()

    async def watch_configmaps() -> None:
        w = watch.Watch()
        try:
            started.set()
            async for event in w.stream(
                core.list_namespaced_config_map,
                ns,
                label_selector="app.kubernetes.io/managed-by=modelplane",
                timeout_seconds=10,
            ):
                seen.append((event["type"], event["object"].metadata.name))
                if event["type"] == "DELETED":
                    return
        finally:
            w.stop()
            await w.close()

    watcher = asyncio.create_task(watch_configmaps())
    await started.wait()
    await asyncio.sleep(0.3)  # let the watch request reach the server before the writes
    body = k8s.V1ConfigMap(
        metadata=k8s.V1ObjectMeta(name="weights-config", labels=labels),
        data={"repo": "tiny-org/tiny-model"},
    )
    await core.create_namespaced_config_map(ns, body)
    read = await core.read_namespaced_config_map("weights-config", ns)
    assert read.data == {"repo": "tiny-org/tiny-model"}
    assert read.metadata.labels == labels

    read.data["repo"] = "tiny-org/sharded-model"
    await core.replace_namespaced_config_map("weights-config", ns, read)
    await core.delete_namespaced_config_map("weights-config", ns)
    await asyncio.wait_for(watcher, timeout=15)
    assert [kind for kind, _ in seen] == ["ADDED", "MODIFIED", "DELETED"]
    with pytest.raises(ApiException) as missing:
        await core.read_namespaced_config_map("weights-config", ns)
    assert missing.value.status == 404


async def test_secret_round_trip_and_delete(runtime: KubernetesRuntime) -> None:
    core = k8s.CoreV1Api(runtime.api)
    ns = runtime.namespace
    secret = k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name="hf-token"),
        string_data={"token": "hf_canary_value_123456"},
        type="Opaque",
    )
    await core.create_namespaced_secret(ns, secret)
    stored = await core.read_namespaced_secret("hf-token", ns)
    assert base64.b64decode(stored.data["token"]).decode() == "hf_canary_value_123456"
    with pytest.raises(ApiException) as duplicate:
        await core.create_namespaced_secret(ns, secret)
    assert duplicate.value.status == 409
    await core.delete_namespaced_secret("hf-token", ns)
    remaining = await core.list_namespaced_secret(ns)
    assert "hf-token" not in [s.metadata.name for s in remaining.items]


async def test_missing_kubeconfig_is_a_clear_configuration_error(tmp_path: Path) -> None:
    rt = KubernetesRuntime(kubeconfig=tmp_path / "nope", namespace="x")
    with pytest.raises(RuntimeConfigError, match="MODELPLANE_KUBECONFIG: no kubeconfig file"):
        await rt.start()


async def test_garbage_kubeconfig_is_a_clear_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text("this: is\nnot: a kubeconfig\n")
    rt = KubernetesRuntime(kubeconfig=path, namespace="x")
    with pytest.raises(RuntimeConfigError, match="not a usable kubeconfig"):
        await rt.start()


async def test_unreachable_api_server_makes_check_fail(kube: KubeCluster, tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    text = kube.kubeconfig.read_text().replace(kube.server, "https://127.0.0.1:1")
    path.write_text(text)
    rt = KubernetesRuntime(kubeconfig=path, namespace="x")
    await rt.start()
    try:
        with pytest.raises(RuntimeUnavailable, match="not reachable"):
            await rt.check()
    finally:
        await rt.close()
