"""The Helm chart against a real kube-apiserver: it renders, the server accepts every object it
renders, and its RBAC grants the service account exactly the calls the service makes.

Why a real server: a rule too narrow shows up only in production, as a 403 inside a
reconcile; a rule too wide is a privilege nobody notices. The tables below say what the
service calls (written from the controllers' code, not copied from ``rbac.yaml``); the
apiserver, asked as the chart's service account, says what the chart grants. The checks:

- ``SelfSubjectRulesReview`` under the account's token, minus what an account with no
  bindings already gets, equals the tables exactly (nothing missing, nothing extra);
- each call in the tables, made for real with that token (server-side apply under the
  field manager ``modelplane``, list, watch, get, delete), is not refused;
- a handful of calls outside the tables (another namespace, cluster objects, ``update``,
  subresources, collections) are refused with 403;
- the service's own Kubernetes code (runtime, Secret store, download Job executor, inference
  executor, cluster inventory) runs a full cycle on the account's token.

Before that, the chart renders with default and non-default values (checked in the
Deployment's env), lints clean, passes a server-side dry run, and installs with Helm.

An apply that creates an object is authorized as ``create`` as well as ``patch`` (found
here: with ``patch`` alone the apiserver refuses it), so applied resources carry both.

Authorization runs before the object is looked up, so a 404 on ``get`` of an absent pod or
node proves the call was allowed. The test server runs no controllers, so Deployments make no
pods and deleted namespaces stay Terminating; both are harmless here.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from controllers.inference.engines import EngineImages, plan_engine
from controllers.inference.workloads import WorkloadPlan, WorkloadPlanner
from controllers.runtimes.base import OwnedObject
from controllers.runtimes.inventory import read_inventory
from controllers.runtimes.kubernetes.inference import (
    KubernetesInferenceExecutor,
    KubernetesInferenceRuntime,
)
from controllers.runtimes.kubernetes.job_specs import JobTemplate
from controllers.runtimes.kubernetes.jobs import JobExecutor
from controllers.runtimes.kubernetes.manifests import ENGINE_CONTAINER, Integrations, labels_for
from controllers.runtimes.kubernetes.runtime import KubernetesRuntime
from controllers.runtimes.secrets import KubernetesSecretStore
from storage.documents import (
    AccessMode,
    AutoscalingSpec,
    InferenceDocument,
    InferenceSpec,
    LocalTarget,
    ModelDocument,
    ModelSource,
    PvcTarget,
    WeightsDocument,
)
from storage.repositories import WeightsRepository
from testbed.servers import REPO_ROOT, KubeCluster

CHART = REPO_ROOT / "deploy" / "helm" / "modelplane"
_NO_PLANNER = WorkloadPlanner(  # the RBAC test reads logs and Deployments; it plans nothing
    weights=cast("WeightsRepository", None), images=EngineImages(), local=False
)
RELEASE = "mp"
FIELD_MANAGER = "modelplane"
MANAGED = {"app.kubernetes.io/managed-by": "modelplane"}
CHART_KINDS = {
    "Deployment",
    "Service",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
}
RBAC_KINDS = CHART_KINDS - {"Deployment", "Service"}
ISSUER = "https://login.example.test/realms/models"
JWKS_URL = "https://login.example.test/realms/models/certs"
LOCAL_ROOTS = ["/data/models", "/mnt/weights"]
REMOTE_HOSTS = ["llm.internal.example.test"]
REMOTE_NETWORKS = ["10.0.0.0/8", "fd00::/8"]

Manifest = dict[str, Any]


# -- what the service calls ---------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    """One API resource the service touches: where it lives and a minimal valid object."""

    group: str
    version: str
    plural: str
    kind: str
    spec: Callable[[str], Manifest] = field(default=lambda _name: {})
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def collection(self, namespace: str | None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        scope = f"/namespaces/{namespace}" if namespace is not None else ""
        return f"{base}{scope}/{self.plural}"

    def manifest(self, name: str, namespace: str) -> Manifest:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "metadata": {"name": name, "namespace": namespace, "labels": dict(MANAGED)},
            **self.spec(name),
        }


def _pod_template(name: str) -> Manifest:
    return {
        "metadata": {"labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "registry.example.test/engine:1"}],
        },
    }


def _deployment(name: str) -> Manifest:
    template = _pod_template(name)
    template["spec"]["restartPolicy"] = "Always"
    return {"spec": {"selector": {"matchLabels": {"app": name}}, "template": template}}


JOBS = Resource("batch", "v1", "jobs", "Job", lambda n: {"spec": {"template": _pod_template(n)}})
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment", _deployment)
REPLICASETS = Resource("apps", "v1", "replicasets", "ReplicaSet")
SERVICES = Resource(
    "",
    "v1",
    "services",
    "Service",
    lambda n: {"spec": {"selector": {"app": n}, "ports": [{"port": 80}]}},
)
SECRETS = Resource("", "v1", "secrets", "Secret", lambda _n: {"stringData": {"token": "hf_x"}})
CLAIMS = Resource(
    "",
    "v1",
    "persistentvolumeclaims",
    "PersistentVolumeClaim",
    lambda _n: {
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    },
)
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap", lambda _n: {"data": {"k": "v"}})
PODS = Resource("", "v1", "pods", "Pod")
POD_LOGS = Resource("", "v1", "pods/log", "Pod")
EVENTS = Resource("", "v1", "events", "Event")
EVENTS_V1 = Resource("events.k8s.io", "v1", "events", "Event")
HPAS = Resource(
    "autoscaling",
    "v2",
    "horizontalpodautoscalers",
    "HorizontalPodAutoscaler",
    lambda n: {
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": n},
            "minReplicas": 1,
            "maxReplicas": 2,
        }
    },
)
SERVICE_MONITORS = Resource(
    "monitoring.coreos.com",
    "v1",
    "servicemonitors",
    "ServiceMonitor",
    lambda n: {"spec": {"selector": {"matchLabels": {"app": n}}, "endpoints": [{"port": "http"}]}},
)
POD_AUTOSCALERS = Resource(
    "autoscaling.aibrix.ai",
    "v1alpha1",
    "podautoscalers",
    "PodAutoscaler",
    lambda n: {"spec": {"scaleTargetRef": {"kind": "Deployment", "name": n}, "maxReplicas": 2}},
)
NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
STORAGE_CLASSES = Resource(
    "storage.k8s.io", "v1", "storageclasses", "StorageClass", namespaced=False
)
CRDS = Resource(
    "apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
    namespaced=False,
)  # fmt: skip

READ = ("get", "list", "watch")
WRITE = ("get", "list", "apply", "delete")

NAMESPACED_CALLS: list[tuple[Resource, tuple[str, ...]]] = [
    (JOBS, (*READ, "apply", "delete")),  # download/cleanup Jobs; delete_owned
    (DEPLOYMENTS, (*READ, "apply", "delete")),  # inference Deployments
    (SERVICES, (*READ, "apply", "delete")),  # inference Services
    (SECRETS, WRITE),  # KubernetesSecretStore put/get/delete; delete_owned
    (CLAIMS, WRITE),  # weights claims; delete_owned
    (CONFIGMAPS, WRITE),  # engine configuration; delete_owned
    (PODS, READ),  # download and inference pods
    (POD_LOGS, ("get",)),  # a failed pod's log tail
    (EVENTS, ("list", "watch")),  # the inference controller's event informer
    (HPAS, (*READ, "apply", "delete")),  # applied, and watched for their status
    (SERVICE_MONITORS, WRITE),
    (POD_AUTOSCALERS, (*READ, "apply", "delete")),  # applied, and watched once AIBrix is found
]
"""Calls in the workload namespace (the Role)."""

CLUSTER_CALLS: list[tuple[Resource, tuple[str, ...]]] = [
    (NODES, ("list",)),  # GPU inventory
    (PODS, ("list",)),  # GPU requests of every pod, for free counts
    (STORAGE_CLASSES, ("get",)),  # a PVC target's storageClass exists
]
"""Calls across the cluster (the ClusterRole); read only."""

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)


APPLY_VERBS = ("create", "patch")
"""What a server-side apply needs: ``patch``, and ``create`` when the object is new (the
apiserver authorizes both; an apply without ``create`` is refused for a missing object)."""


def _grants(calls: list[tuple[Resource, tuple[str, ...]]]) -> set[Grant]:
    """The RBAC verbs the calls need."""
    return {
        (r.group, r.plural, rbac_verb)
        for r, verbs in calls
        for verb in verbs
        for rbac_verb in (APPLY_VERBS if verb == "apply" else (verb,))
    }


# -- talking to the apiserver --------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """An HTTP status and body; shown as the status and the apiserver's message."""

    status: int
    body: str

    def __repr__(self) -> str:
        try:
            message = json.loads(self.body).get("message", self.body)
        except ValueError:
            message = self.body
        return f"HTTP {self.status}: {message}"


async def call(
    api: k8s.ApiClient,
    method: str,
    path: str,
    *,
    query: dict[str, str] | None = None,
    body: Any = None,
    content_type: str = "application/json",
) -> Reply:
    """One HTTP request with the client's credentials; the status instead of an exception,
    and no body read from a watch (its stream is simply closed)."""
    response = await api.call_api(
        path,
        method,
        query_params=list((query or {}).items()),
        header_params={"Accept": "application/json", "Content-Type": content_type},
        body=body,
        auth_settings=["BearerToken"],
        _preload_content=False,
    )
    try:
        streaming = (query or {}).get("watch") == "true" and response.status == 200
        text = "" if streaming else await response.text()
        return Reply(response.status, text)
    finally:
        response.close()


async def apply(
    api: k8s.ApiClient,
    resource: Resource,
    manifest: Manifest,
    *,
    dry_run: bool = False,
    manager: str = FIELD_MANAGER,
) -> Reply:
    """Server-side apply, as the service writes (force: the service owns its fields)."""
    namespace = manifest["metadata"].get("namespace") if resource.namespaced else None
    query = {"fieldManager": manager, "force": "true", "fieldValidation": "Strict"}
    if dry_run:
        query["dryRun"] = "All"
    return await call(
        api,
        "PATCH",
        f"{resource.collection(namespace)}/{manifest['metadata']['name']}",
        query=query,
        body=manifest,
        content_type="application/apply-patch+yaml",
    )


async def resource_of(api: k8s.ApiClient, manifest: Manifest) -> Resource:
    """The API resource serving a manifest's kind, from discovery."""
    api_version: str = manifest["apiVersion"]
    group, _, version = api_version.rpartition("/")
    base = f"/apis/{api_version}" if group else f"/api/{version}"
    reply = await call(api, "GET", base)
    assert reply.status == 200, reply
    for entry in yaml.safe_load(reply.body)["resources"]:
        if entry["kind"] == manifest["kind"] and "/" not in entry["name"]:
            return Resource(
                group, version, entry["name"], entry["kind"], namespaced=entry["namespaced"]
            )
    raise AssertionError(f"{api_version} serves no {manifest['kind']}")


def client_for(kube: KubeCluster, token: str) -> k8s.ApiClient:
    """A client authenticating with a bearer token (a service account's), trusting the
    test server's certificate."""
    configuration = k8s.Configuration(
        host=kube.server,
        api_key={"BearerToken": token},
        api_key_prefix={"BearerToken": "Bearer"},
    )
    configuration.ssl_ca_cert = str(kube.workdir / "certs" / "apiserver.crt")
    return k8s.ApiClient(configuration)


async def service_account_token(api: k8s.ApiClient, namespace: str, name: str) -> str:
    """A short-lived token for a service account (TokenRequest API)."""
    reply = await call(
        api,
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
        body={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        },
    )
    assert reply.status == 201, reply
    token: str = yaml.safe_load(reply.body)["status"]["token"]
    return token


# -- rendering -----------------------------------------------------------------------------


def custom_values(workload_namespace: str) -> dict[str, Any]:
    return {
        "workloadNamespace": workload_namespace,
        "image": {"repository": "registry.example.test/modelplane", "tag": "9.9.9"},
        "oidc": {"issuer": ISSUER, "jwksUrl": JWKS_URL, "audience": "models-api"},
        "allowedLocalRoots": LOCAL_ROOTS,
        "allowedRemoteHosts": REMOTE_HOSTS,
        "allowedRemoteNetworks": REMOTE_NETWORKS,
        "mongodb": {"existingSecret": "mongo-conn", "database": "mp_prod"},
        "engines": {"vllmImage": "mirror.example.test/vllm:1", "s3SyncImage": "mirror/aws:2"},
        "metrics": {"existingSecret": "scrape-token"},
    }


def helm(binary: Path, workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run helm with its cache, config and data under ``workdir`` (never the user's)."""
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(workdir / "cache"),
        "HELM_CONFIG_HOME": str(workdir / "config"),
        "HELM_DATA_HOME": str(workdir / "data"),
    }
    return subprocess.run(
        [str(binary), *args], capture_output=True, text=True, env=env, check=False, timeout=60
    )


def render(
    binary: Path,
    workdir: Path,
    *,
    namespace: str,
    values: dict[str, Any],
    release: str = RELEASE,
) -> list[Manifest]:
    """``helm template`` with these values, as a list of manifests."""
    workdir.mkdir(parents=True, exist_ok=True)
    values_file = workdir / f"values-{uuid.uuid4().hex[:6]}.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = helm(
        binary, workdir, "template", release, str(CHART), "--namespace", namespace,
        "--values", str(values_file),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def deployment_env(manifests: list[Manifest]) -> dict[str, Any]:
    (deployment,) = by_kind(manifests, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm_binary(testbed_binaries: dict[str, Path]) -> Path:
    return testbed_binaries["helm"]


@pytest.fixture(scope="module")
async def admin(kube: KubeCluster) -> AsyncIterator[k8s.ApiClient]:
    configuration = k8s.Configuration()
    await k8s_config.load_kube_config(
        config_file=str(kube.kubeconfig), client_configuration=configuration
    )
    async with k8s.ApiClient(configuration) as api:
        yield api


def _crd(resource: Resource) -> Manifest:
    """A permissive CRD standing in for the Prometheus Operator's or AIBrix's."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{resource.plural}.{resource.group}"},
        "spec": {
            "group": resource.group,
            "scope": "Namespaced",
            "names": {
                "plural": resource.plural,
                "singular": resource.kind.lower(),
                "kind": resource.kind,
                "listKind": f"{resource.kind}List",
            },
            "versions": [
                {
                    "name": resource.version,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


@pytest.fixture(scope="module")
async def crds(admin: k8s.ApiClient) -> AsyncIterator[None]:
    """ServiceMonitor and PodAutoscaler CRDs (the test server has neither), removed after
    unless they were there before."""
    created = []
    for resource in (SERVICE_MONITORS, POD_AUTOSCALERS):
        manifest = _crd(resource)
        path = f"{CRDS.collection(None)}/{manifest['metadata']['name']}"
        if (await call(admin, "GET", path)).status == 404:
            reply = await apply(admin, CRDS, manifest, manager="modelplane-test")
            assert reply.status in {200, 201}, reply
            created.append(path)
    for resource in (SERVICE_MONITORS, POD_AUTOSCALERS):
        for _ in range(100):
            if (await call(admin, "GET", resource.collection("default"))).status == 200:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"{resource.plural} never served")
    yield
    for path in created:
        await call(admin, "DELETE", path)


@dataclass
class Installed:
    """The chart's RBAC and service account, applied for real, and clients acting as them."""

    release_namespace: str
    workload_namespace: str
    manifests: list[Manifest]
    token: str  # the chart's service account's
    service: k8s.ApiClient  # acting as the chart's service account
    nobody: k8s.ApiClient  # a service account with no bindings: the baseline


async def _namespace(admin: k8s.ApiClient, name: str) -> None:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    reply = await call(admin, "POST", "/api/v1/namespaces", body=body)
    assert reply.status == 201, reply


@pytest.fixture(scope="module")
async def installed(
    kube: KubeCluster,
    admin: k8s.ApiClient,
    crds: None,
    helm_binary: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Installed]:
    suffix = uuid.uuid4().hex[:6]
    release_ns, workload_ns = f"mp-release-{suffix}", f"mp-workload-{suffix}"
    for name in (release_ns, workload_ns):
        await _namespace(admin, name)
    manifests = render(
        helm_binary,
        tmp_path_factory.mktemp("helm"),
        namespace=release_ns,
        values=custom_values(workload_ns),
    )
    applied: list[tuple[Resource, Manifest]] = []
    for manifest in manifests:
        if manifest["kind"] not in RBAC_KINDS:
            continue
        resource = await resource_of(admin, manifest)
        manifest["metadata"].setdefault("namespace", release_ns)
        reply = await apply(admin, resource, manifest, manager="helm")
        assert reply.status in {200, 201}, reply
        applied.append((resource, manifest))
    nobody = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nobody"}}
    reply = await call(
        admin, "POST", f"/api/v1/namespaces/{release_ns}/serviceaccounts", body=nobody
    )
    assert reply.status == 201, reply
    token = await service_account_token(admin, release_ns, RELEASE)
    service = client_for(kube, token)
    baseline = client_for(kube, await service_account_token(admin, release_ns, "nobody"))
    try:
        yield Installed(release_ns, workload_ns, manifests, token, service, baseline)
    finally:
        await service.close()
        await baseline.close()
        for resource, manifest in applied:
            if not resource.namespaced:
                await call(
                    admin, "DELETE", f"{resource.collection(None)}/{manifest['metadata']['name']}"
                )
        for name in (release_ns, workload_ns):
            await call(admin, "DELETE", f"/api/v1/namespaces/{name}")


# -- rendering and values ------------------------------------------------------------------


def test_chart_renders_the_service_and_its_rbac(helm_binary: Path, tmp_path: Path) -> None:
    manifests = render(
        helm_binary, tmp_path, namespace="models-system", values=custom_values("models")
    )
    assert sorted(m["kind"] for m in manifests) == sorted(CHART_KINDS)
    for manifest in manifests:
        kind, namespace = manifest["kind"], manifest["metadata"].get("namespace")
        if kind in {"Role", "RoleBinding"}:
            assert namespace == "models", kind
        elif kind in {"ClusterRole", "ClusterRoleBinding"}:
            assert namespace is None, kind
            assert manifest["metadata"]["name"] == "models-system-mp-read"
        else:
            assert namespace == "models-system", kind
        # The chart's objects must not look like workloads the service manages.
        assert "app.kubernetes.io/managed-by" not in manifest["metadata"].get("labels", {})
    for binding in by_kind(manifests, "RoleBinding") + by_kind(manifests, "ClusterRoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": RELEASE, "namespace": "models-system"}
        ]
    (service,) = by_kind(manifests, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_deployment_env_carries_the_values(helm_binary: Path, tmp_path: Path) -> None:
    env = deployment_env(
        render(helm_binary, tmp_path, namespace="models-system", values=custom_values("models"))
    )
    assert env["MODELPLANE_RUNTIME"] == "kubernetes"
    assert env["MODELPLANE_ENVIRONMENT"] == "production"
    assert env["MODELPLANE_NAMESPACE"] == "models"
    assert env["MODELPLANE_OIDC_ISSUER"] == ISSUER
    assert env["MODELPLANE_OIDC_JWKS_URL"] == JWKS_URL
    assert env["MODELPLANE_OIDC_AUDIENCE"] == "models-api"
    assert env["MODELPLANE_ALLOWED_LOCAL_ROOTS"] == ",".join(LOCAL_ROOTS)
    assert env["MODELPLANE_ALLOWED_REMOTE_HOSTS"] == ",".join(REMOTE_HOSTS)
    assert env["MODELPLANE_ALLOWED_REMOTE_NETWORKS"] == ",".join(REMOTE_NETWORKS)
    assert env["MODELPLANE_MONGODB_DATABASE"] == "mp_prod"
    assert env["MODELPLANE_MONGODB_URI"] == {"secretKeyRef": {"name": "mongo-conn", "key": "uri"}}
    assert env["MODELPLANE_DOWNLOAD_MONGODB_SECRET"] == "mongo-conn"
    assert env["MODELPLANE_DOWNLOAD_IMAGE"] == "registry.example.test/modelplane:9.9.9"
    assert env["MODELPLANE_VLLM_IMAGE"] == "mirror.example.test/vllm:1"
    assert env["MODELPLANE_S3_SYNC_IMAGE"] == "mirror/aws:2"
    assert env["MODELPLANE_METRICS_TOKEN"] == {
        "secretKeyRef": {"name": "scrape-token", "key": "token"}
    }
    assert "MODELPLANE_OLLAMA_IMAGE" not in env  # unset: the service's default


def test_defaults_put_workloads_in_the_release_namespace(helm_binary: Path, tmp_path: Path) -> None:
    manifests = render(
        helm_binary, tmp_path, namespace="models-system", values={"oidc": {"issuer": ISSUER}}
    )
    env = deployment_env(manifests)
    assert env["MODELPLANE_NAMESPACE"] == "models-system"
    assert "MODELPLANE_ALLOWED_LOCAL_ROOTS" not in env
    assert "MODELPLANE_ALLOWED_REMOTE_NETWORKS" not in env  # public addresses only
    assert "MODELPLANE_OIDC_JWKS_URL" not in env
    assert "MODELPLANE_METRICS_TOKEN" not in env
    assert not [name for name in env if name.endswith("_IMAGE") and "DOWNLOAD" not in name]
    (role,) = by_kind(manifests, "Role")
    assert role["metadata"]["namespace"] == "models-system"


def test_chart_refuses_to_render_without_an_issuer(helm_binary: Path, tmp_path: Path) -> None:
    result = helm(helm_binary, tmp_path, "template", RELEASE, str(CHART))
    assert result.returncode != 0
    assert "oidc.issuer is required" in result.stderr


def test_chart_lints_clean(helm_binary: Path, tmp_path: Path) -> None:
    result = helm(
        helm_binary, tmp_path, "lint", "--strict", str(CHART), "--set", f"oidc.issuer={ISSUER}"
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- every object accepted by the apiserver ------------------------------------------------


@pytest.mark.parametrize("values", ["defaults", "custom"])
async def test_every_rendered_object_passes_server_side_dry_run(
    values: str,
    admin: k8s.ApiClient,
    helm_binary: Path,
    tmp_path: Path,
) -> None:
    """Each object, applied with dryRun=All and strict field validation (an unknown or
    misplaced field is an error), is accepted; the release name is fresh, so every apply is
    a create."""
    suffix = uuid.uuid4().hex[:6]
    release_ns, workload_ns = f"dry-release-{suffix}", f"dry-workload-{suffix}"
    chart_values = (
        custom_values(workload_ns) if values == "custom" else {"oidc": {"issuer": ISSUER}}
    )
    namespaces = [release_ns, workload_ns] if values == "custom" else [release_ns]
    for name in namespaces:
        await _namespace(admin, name)
    try:
        manifests = render(
            helm_binary, tmp_path, namespace=release_ns, values=chart_values, release="dry"
        )
        assert {m["kind"] for m in manifests} == CHART_KINDS
        refused = {}
        for manifest in manifests:
            resource = await resource_of(admin, manifest)
            reply = await apply(admin, resource, manifest, dry_run=True, manager="helm")
            if reply.status != 201:
                refused[f"{manifest['kind']}/{manifest['metadata']['name']}"] = reply
        assert not refused
        # Dry run: nothing was stored.
        reply = await call(admin, "GET", f"/apis/apps/v1/namespaces/{release_ns}/deployments/dry")
        assert reply.status == 404
    finally:
        for name in namespaces:
            await call(admin, "DELETE", f"/api/v1/namespaces/{name}")


async def test_helm_installs_and_uninstalls_the_release(
    kube: KubeCluster, admin: k8s.ApiClient, helm_binary: Path, tmp_path: Path
) -> None:
    """``helm install`` itself (server-side apply, the release record as a Secret) works on
    the chart; nothing waits for the pod, which this control plane never runs."""
    namespace = f"install-{uuid.uuid4().hex[:6]}"
    await _namespace(admin, namespace)
    kubeconfig = ("--kubeconfig", str(kube.kubeconfig), "--namespace", namespace)
    try:
        installed = helm(
            helm_binary, tmp_path, "install", "inst", str(CHART), *kubeconfig,
            "--set", f"oidc.issuer={ISSUER}", "--wait=hookOnly", "--timeout", "60s",
        )  # fmt: skip
        assert installed.returncode == 0, installed.stderr
        cluster_role = f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{namespace}-inst-read"
        for path in (f"{DEPLOYMENTS.collection(namespace)}/inst", cluster_role):
            reply = await call(admin, "GET", path)
            assert reply.status == 200, reply
        removed = helm(helm_binary, tmp_path, "uninstall", "inst", *kubeconfig, "--wait=hookOnly")
        assert removed.returncode == 0, removed.stderr
        reply = await call(admin, "GET", cluster_role)
        assert reply.status == 404, reply  # cluster-scoped objects go with the release
    finally:
        await call(admin, "DELETE", f"/api/v1/namespaces/{namespace}")


# -- exactly the service's calls -----------------------------------------------------------


async def _rules(api: k8s.ApiClient, namespace: str) -> tuple[set[Grant], set[tuple[str, str]]]:
    """What ``api``'s identity may do in ``namespace`` (bindings of both kinds), flattened."""
    reply = await call(
        api,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        body={
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectRulesReview",
            "spec": {"namespace": namespace},
        },
    )
    assert reply.status == 201, reply
    status = yaml.safe_load(reply.body)["status"]
    assert not status.get("incomplete"), status
    grants = set()
    for rule in status.get("resourceRules", []):
        assert not rule.get("resourceNames"), rule
        grants |= {
            (group, resource, verb)
            for group in rule.get("apiGroups", [])
            for resource in rule.get("resources", [])
            for verb in rule["verbs"]
        }
    urls = {
        (url, verb)
        for rule in status.get("nonResourceRules", [])
        for url in rule["nonResourceURLs"]
        for verb in rule["verbs"]
    }
    return grants, urls


@pytest.mark.parametrize("scope", ["workload-namespace", "release-namespace"])
async def test_rbac_grants_exactly_the_calls_the_service_makes(
    scope: str, installed: Installed
) -> None:
    """In the workload namespace: the Role and the ClusterRole; anywhere else only the
    ClusterRole. Compared with a service account that has no bindings, nothing more."""
    namespace = (
        installed.workload_namespace
        if scope == "workload-namespace"
        else installed.release_namespace
    )
    granted, urls = await _rules(installed.service, namespace)
    baseline, baseline_urls = await _rules(installed.nobody, namespace)
    expected = _grants(CLUSTER_CALLS)
    if scope == "workload-namespace":
        expected |= _grants(NAMESPACED_CALLS)
    extra = sorted(granted - baseline - expected)
    missing = sorted(expected - granted)
    assert not extra, f"granted beyond the service's calls: {extra}"
    assert not missing, f"calls the service makes but may not: {missing}"
    assert urls == baseline_urls  # no non-resource URL beyond what every account may read


@dataclass(frozen=True)
class Case:
    """One API call as the service account and the statuses that count as success."""

    resource: Resource
    verb: str
    cluster_wide: bool = False

    @property
    def id(self) -> str:
        scope = "cluster" if self.cluster_wide else "ns"
        group = self.resource.group or "core"
        return f"{scope}-{group}-{self.resource.plural.replace('/', '-')}-{self.verb}"


ALLOWED = [Case(r, verb) for r, verbs in NAMESPACED_CALLS for verb in verbs] + [
    Case(r, verb, cluster_wide=True) for r, verbs in CLUSTER_CALLS for verb in verbs
]
# Reading pods and logs of a pod we did not make (a 404 proves authorization passed).
_ABSENT_OK = {
    PODS.plural,
    POD_LOGS.plural,
    REPLICASETS.plural,
    EVENTS.plural,
    NODES.plural,
    STORAGE_CLASSES.plural,
}


async def _exercise(case: Case, admin: k8s.ApiClient, installed: Installed) -> Reply:
    """Make the call ``case`` names as the service account; objects it reads or deletes
    are first applied by the admin."""
    resource, verb, sa = case.resource, case.verb, installed.service
    namespace = None if not resource.namespaced else installed.workload_namespace
    if case.cluster_wide and resource.namespaced:
        namespace = None  # e.g. /api/v1/pods: every namespace
    name = f"t-{verb}-{uuid.uuid4().hex[:6]}"
    if resource is POD_LOGS:
        return await call(sa, "GET", f"{PODS.collection(namespace)}/{name}/log")
    collection = resource.collection(namespace)
    if verb in {"list", "watch"}:
        query = {"labelSelector": _selector()}
        if verb == "watch":
            query |= {"watch": "true", "timeoutSeconds": "1"}
        return await call(sa, "GET", collection, query=query)
    if verb == "apply":
        return await _apply_new_then_change(sa, resource, resource.manifest(name, namespace or ""))
    if resource is CRDS:
        name = f"{SERVICE_MONITORS.plural}.{SERVICE_MONITORS.group}"
    elif resource.plural not in _ABSENT_OK:
        made = await apply(admin, resource, resource.manifest(name, namespace or ""))
        assert made.status == 201, made
    if verb == "get":
        return await call(sa, "GET", f"{collection}/{name}")
    assert verb == "delete", case
    return await call(
        sa, "DELETE", f"{collection}/{name}", query={"propagationPolicy": "Background"}
    )


async def _apply_new_then_change(
    api: k8s.ApiClient, resource: Resource, manifest: Manifest
) -> Reply:
    """As the service does: an apply that creates the object, then one that changes it."""
    created = await apply(api, resource, manifest)
    if created.status != 201:
        return created
    manifest["metadata"]["labels"]["modelplane.io/revision"] = "2"
    return await apply(api, resource, manifest)


def _selector() -> str:
    return ",".join(f"{k}={v}" for k, v in MANAGED.items())


@pytest.mark.parametrize("case", ALLOWED, ids=[c.id for c in ALLOWED])
async def test_service_call_is_allowed(
    case: Case, admin: k8s.ApiClient, installed: Installed
) -> None:
    reply = await _exercise(case, admin, installed)
    allowed = {200, 201, 202}
    if case.verb == "get" and case.resource.plural in _ABSENT_OK:
        allowed.add(404)
    assert reply.status in allowed, reply


@dataclass(frozen=True)
class Refused:
    """A call the service never makes; the apiserver must answer 403."""

    id: str
    method: str
    path: str  # {workload} and {release} are the namespaces
    body: Manifest | None = None
    content_type: str = "application/json"


REFUSED = [
    Refused("delete-a-node", "DELETE", "/api/v1/nodes/node-1"),
    Refused("list-secrets-in-the-release-namespace", "GET", "/api/v1/namespaces/{release}/secrets"),
    Refused("list-secrets-in-every-namespace", "GET", "/api/v1/secrets"),
    Refused("watch-secrets", "GET", "/api/v1/namespaces/{workload}/secrets?watch=true"),
    Refused(
        "get-a-pod-outside-the-workload-namespace", "GET", "/api/v1/namespaces/{release}/pods/p"
    ),
    Refused("delete-a-pod", "DELETE", "/api/v1/namespaces/{workload}/pods/p"),
    Refused("exec-into-a-pod", "POST", "/api/v1/namespaces/{workload}/pods/p/exec"),
    Refused(
        "scale-a-deployment",
        "PATCH",
        "/apis/apps/v1/namespaces/{workload}/deployments/d/scale",
        {"spec": {"replicas": 3}},
        "application/merge-patch+json",
    ),
    Refused(
        "update-a-configmap",
        "PUT",
        "/api/v1/namespaces/{workload}/configmaps/c",
        CONFIGMAPS.manifest("c", "{workload}"),
    ),
    Refused("delete-every-job", "DELETE", "/apis/batch/v1/namespaces/{workload}/jobs"),
    Refused(
        "apply-a-deployment-in-the-release-namespace",
        "PATCH",
        "/apis/apps/v1/namespaces/{release}/deployments/mp?fieldManager=modelplane",
        DEPLOYMENTS.manifest("mp", "{release}"),
        "application/apply-patch+yaml",
    ),
    Refused(
        "apply-a-role-in-the-workload-namespace",
        "PATCH",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/{workload}/roles/r?fieldManager=modelplane",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "r"},
            "rules": [],
        },
        "application/apply-patch+yaml",
    ),
    Refused(
        "create-a-clusterrole",
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "escalate"},
            "rules": [],
        },
    ),
    Refused(
        "patch-a-namespace",
        "PATCH",
        "/api/v1/namespaces/{workload}",
        {"metadata": {"labels": {"x": "y"}}},
        "application/merge-patch+json",
    ),
    Refused(
        "request-a-token-for-itself",
        "POST",
        "/api/v1/namespaces/{release}/serviceaccounts/mp/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    ),
    Refused(
        "create-an-event",
        "POST",
        "/api/v1/namespaces/{workload}/events",
        EVENTS.manifest("e", "{workload}"),
    ),
    Refused(
        "delete-a-crd",
        "DELETE",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/servicemonitors.monitoring.coreos.com",
    ),
]


def _fill(value: Any, namespaces: dict[str, str]) -> Any:
    """Substitute ``{workload}`` / ``{release}`` throughout a path or manifest."""
    if isinstance(value, str):
        return value.format(**namespaces)
    if isinstance(value, dict):
        return {k: _fill(v, namespaces) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, namespaces) for v in value]
    return value


@pytest.mark.parametrize("case", REFUSED, ids=[c.id for c in REFUSED])
async def test_call_outside_the_rbac_is_forbidden(case: Refused, installed: Installed) -> None:
    namespaces = {"workload": installed.workload_namespace, "release": installed.release_namespace}
    path, _, query_string = _fill(case.path, namespaces).partition("?")
    query = dict(part.split("=", 1) for part in query_string.split("&") if part)
    reply = await call(
        installed.service,
        case.method,
        path,
        query=query,
        body=_fill(case.body, namespaces),
        content_type=case.content_type,
    )
    assert reply.status == 403, reply


# -- the service's own code under the chart's RBAC -----------------------------------------


def _kubeconfig(kube: KubeCluster, token: str, path: Path) -> Path:
    """A kubeconfig for the service account, as in-cluster configuration would give it."""
    ca = kube.workdir / "certs" / "apiserver.crt"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "testbed",
                        "cluster": {"server": kube.server, "certificate-authority": str(ca)},
                    }
                ],
                "users": [{"name": "modelplane", "user": {"token": token}}],
                "contexts": [
                    {"name": "sa", "context": {"cluster": "testbed", "user": "modelplane"}}
                ],
                "current-context": "sa",
            }
        )
    )
    return path


async def test_the_service_code_runs_under_the_chart_rbac(
    kube: KubeCluster, installed: Installed, tmp_path: Path
) -> None:
    """The runtime, the Secret store and the download Job executor, on the service account's
    token, each through a full cycle: nothing they call is refused."""
    namespace = installed.workload_namespace
    runtime = KubernetesRuntime(
        kubeconfig=_kubeconfig(kube, installed.token, tmp_path / "kubeconfig"),
        namespace=namespace,
    )
    await runtime.start()
    try:
        await runtime.check()  # /version
        assert (await runtime.describe()).namespace == namespace

        store = KubernetesSecretStore(runtime.api, namespace=namespace)
        ref = await store.put(organization_id="org", owner_id="model-rbac", values={"t": "v"})
        assert await store.get(ref) == {"t": "v"}
        assert await store.delete(ref)
        ref = await store.put(organization_id="org", owner_id="model-rbac", values={"t": "w"})

        model = ModelDocument(
            id="model-rbac",
            organization_id="org",
            name="rbac",
            name_key="rbac",
            display_name="RBAC",
            source=ModelSource(url="org/rbac", access_mode=AccessMode.LOCAL),
        )
        weights = WeightsDocument(
            id="weights-rbac",
            organization_id="org",
            repo_id="org/rbac",
            commit_sha="c" * 40,
            target=PvcTarget(claim_name="weights-rbac", size_gi=1),
            location="pvc://weights-rbac",
            attempt=1,
        )
        executor = JobExecutor(
            runtime.api,
            namespace=namespace,
            template=JobTemplate(
                image="modelplane:test",
                hf_endpoint="http://hub.invalid",
                mongodb_database="modelplane",
                mongodb_secret="modelplane-mongodb",
            ),
        )
        assert await executor.launch(model, weights) is None  # claim + Job applied
        assert (await executor.observe(weights)).active
        weights = weights.model_copy(update={"attempt": 2})
        assert await executor.launch(model, weights) is None  # attempt 1's Job deleted
        await executor.halt(weights.id)
        assert await executor.clean(weights, partials_only=False)  # our claim: deleted
        assert not (await executor.observe(weights)).active

        removed = await runtime.delete_owned("model-rbac")
        assert removed == [OwnedObject(kind="Secret", name=ref)]
    finally:
        await runtime.close()


async def _until(predicate: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_the_inference_executor_runs_under_the_chart_rbac(
    kube: KubeCluster, admin: k8s.ApiClient, installed: Installed, tmp_path: Path
) -> None:
    """The Kubernetes inference executor on the service account's token: its informers list
    and watch, it applies every object kind it renders (with and without the optional CRDs),
    reads an engine's log and removes it all. Its deletes of optional objects swallow errors,
    so the admin checks afterwards that they really went."""
    namespace = installed.workload_namespace
    runtime = KubernetesRuntime(
        kubeconfig=_kubeconfig(kube, installed.token, tmp_path / "kubeconfig"),
        namespace=namespace,
    )
    found = Integrations(service_monitor=True, aibrix=True)

    async def integrations() -> Integrations:
        return found

    spec = InferenceSpec(gpu=0, autoscaling=AutoscalingSpec(min_replicas=1, max_replicas=2))
    inference = InferenceDocument(
        id="inf-rbac1",
        organization_id="org",
        model_id="model-rbac",
        model_name="rbac",
        name="inf-rbac1",
        active_key="model-rbac",
        runtime="kubernetes",
        spec=spec,
    )
    model = ModelDocument(
        id="model-rbac",
        organization_id="org",
        name="rbac",
        name_key="rbac",
        display_name="RBAC",
        source=ModelSource(url="org/rbac", access_mode=AccessMode.LOCAL),
        download_target=LocalTarget(local_path="/data/models/rbac"),
    )
    plan = WorkloadPlan(
        engine=plan_engine(spec, model, None, local=False, images=EngineImages(), secret_name=None),
        port=8000,
    )
    # A pod of the inference (this control plane has no controllers to make one).
    pod = PODS.manifest(f"{inference.name}-5d8f-x1", namespace)
    pod["metadata"]["labels"] = labels_for(inference)
    pod["spec"] = {"containers": [{"name": ENGINE_CONTAINER, "image": "engine:1"}]}
    assert (await apply(admin, PODS, pod)).status == 201

    await runtime.start()
    executor = KubernetesInferenceExecutor(
        runtime.api, namespace=namespace, integrations=integrations
    )
    try:
        executor.watch(lambda _key: None)
        await _until(lambda: bool(executor.pods.items), "the pod informer to list the pod")
        # Each informer lists on its own: the pods' can be done before the others' (the check
        # right after it failed once in a full run). A list RBAC refuses never syncs.
        await _until(
            lambda: all(informer.synced.is_set() for informer in executor.informers),
            "every informer to list under the chart's RBAC",
        )
        assert await executor.ready()

        await executor.apply(inference, plan)  # Deployment, Service, ServiceMonitor, AIBrix
        executor.pod_autoscalers.start()  # what observing an AIBrix-scaled inference starts
        await _until(
            lambda: inference.name in executor.pod_autoscalers.items,
            "the PodAutoscaler informer to list and watch under the chart's RBAC",
        )
        found = Integrations()
        await executor.apply(inference, plan)  # ... and a HorizontalPodAutoscaler instead
        await _until(
            lambda: inference.name in executor.deployments.items,
            "the Deployment informer to see the applied Deployment",
        )
        for resource in (DEPLOYMENTS, SERVICES, HPAS, SERVICE_MONITORS, POD_AUTOSCALERS):
            reply = await call(admin, "GET", f"{resource.collection(namespace)}/{inference.name}")
            assert reply.status == 200, (resource.plural, reply)
        # The pod was never scheduled: no log lines, but the read is allowed (it raises on 403).
        api_side = KubernetesInferenceRuntime(
            runtime.api, namespace=namespace, planner=_NO_PLANNER, integrations=integrations
        )
        assert isinstance(await api_side.logs(inference, 10), list)
        assert inference.name in [d["metadata"]["name"] for d in await api_side.unmanaged()]

        found = Integrations(service_monitor=True, aibrix=True)
        await executor.remove(inference)
    finally:
        await executor.close()
        await runtime.close()
    for resource in (DEPLOYMENTS, SERVICES, HPAS, SERVICE_MONITORS, POD_AUTOSCALERS):
        reply = await call(admin, "GET", f"{resource.collection(namespace)}/{inference.name}")
        assert reply.status == 404, (resource.plural, reply)


async def test_the_cluster_inventory_reads_under_the_chart_rbac(
    kube: KubeCluster, admin: k8s.ApiClient, installed: Installed, tmp_path: Path
) -> None:
    """clusterStatus / gpuFit's inventory on the service account's token: GPU nodes, the GPUs
    pods in every namespace request on them (here a pod outside the workload namespace), and
    the optional integrations from discovery. It reports a refusal as a problem, not an
    error, so the test asserts there are none and that the numbers arrived."""
    node = f"gpu-node-{uuid.uuid4().hex[:6]}"
    body = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node, "labels": {"nvidia.com/gpu.product": "NVIDIA-L4"}},
    }
    assert (await call(admin, "POST", "/api/v1/nodes", body=body)).status == 201
    status = {
        "status": {
            "capacity": {"nvidia.com/gpu": "4"},
            "allocatable": {"nvidia.com/gpu": "4"},
            "conditions": [{"type": "Ready", "status": "True"}],
        }
    }
    reply = await call(
        admin,
        "PATCH",
        f"/api/v1/nodes/{node}/status",
        body=status,
        content_type="application/merge-patch+json",
    )
    assert reply.status == 200, reply
    # Another tenant's pod on that node, in a namespace the Role does not cover.
    pod = PODS.manifest("tenant-job", installed.release_namespace)
    gpu = {"nvidia.com/gpu": "3"}
    pod["spec"] = {
        "nodeName": node,
        "containers": [
            {"name": "c", "image": "x:1", "resources": {"requests": gpu, "limits": gpu}}
        ],
    }
    assert (await apply(admin, PODS, pod)).status == 201
    runtime = KubernetesRuntime(
        kubeconfig=_kubeconfig(kube, installed.token, tmp_path / "kubeconfig"),
        namespace=installed.workload_namespace,
    )
    await runtime.start()
    try:
        inventory = await read_inventory(runtime)
    finally:
        await runtime.close()
        await call(admin, "DELETE", f"/api/v1/nodes/{node}")
    assert inventory.problems == ()
    (gpu_node,) = [n for n in inventory.nodes if n.name == node]
    assert (gpu_node.allocatable, gpu_node.requested, gpu_node.free) == (4, 3, 1)
    assert inventory.integrations.service_monitor
    assert inventory.integrations.pod_autoscaler
