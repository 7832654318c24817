"""The kubernetes runtime's parts: download Jobs, inference Deployments, Kubernetes Secrets.

Cluster discovery and the GPU inventory are cached for ten seconds (:class:`Cached`): the
inference controller asks for them per reconcile only while something is unschedulable or
applied. Callers that miss together share one read: eight reconcile workers and the starts'
plans missed at once and read it 15 times in a 10 s run of ``bench/controllers.py --count 40``
(four requests each: version, nodes, every pod, discovery)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from controllers.downloads.executions import Executor
from controllers.inference.reconciler import InferenceController
from controllers.inference.workloads import InferenceExecutor, InferenceRuntime
from controllers.runtimes.inventory import ClusterInventory, read_inventory
from controllers.runtimes.kubernetes.inference import (
    KubernetesInferenceExecutor,
    KubernetesInferenceRuntime,
)
from controllers.runtimes.kubernetes.job_specs import JobTemplate
from controllers.runtimes.kubernetes.jobs import JobExecutor
from controllers.runtimes.kubernetes.manifests import Integrations
from controllers.runtimes.kubernetes.runtime import KubernetesRuntime
from controllers.runtimes.secrets import KubernetesSecretStore, SecretStore
from modelplane.runtimes.base import workload_planner
from modelplane.settings import Settings
from storage.client import Database


class KubernetesParts:
    """Everything the kubernetes runtime does differently; see
    :class:`~modelplane.runtimes.base.RuntimeParts`."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._runtime = KubernetesRuntime(
            kubeconfig=settings.kubeconfig, namespace=settings.namespace
        )
        runtime = self._runtime
        self._inventory = Cached(lambda: read_inventory(runtime), seconds=10.0)

    @property
    def runtime(self) -> KubernetesRuntime:
        return self._runtime

    @property
    def namespace(self) -> str | None:
        return self._runtime.namespace

    def prepare(self) -> None:
        # The local roots are node paths here (hostPath volumes of download pods), not this
        # container's: creating them fails on a read-only root.
        return None

    def secret_store(self, database: Database) -> SecretStore:
        del database  # Kubernetes Secrets in the runtime's namespace
        return KubernetesSecretStore(self._runtime.api, namespace=self._runtime.namespace)

    def download_executor(self) -> Executor | None:
        settings = self._settings
        return JobExecutor(
            self._runtime.api,
            namespace=self._runtime.namespace,
            template=JobTemplate(
                image=settings.download_image,
                image_pull_policy=settings.download_image_pull_policy,
                hf_endpoint=settings.hf_endpoint,
                mongodb_database=settings.mongodb_database,
                mongodb_secret=settings.download_mongodb_secret,
                pvc_mount_path=str(settings.pvc_mount_path),
                pvc_default_size_gi=settings.pvc_default_size_gi,
                service_account=settings.download_service_account,
                cpu_limit=settings.download_cpu_limit,
                memory_limit=settings.download_memory_limit,
                deadline_seconds=settings.download_deadline_seconds,
                backoff_limit=settings.download_backoff_limit,
                download_env=settings.download_env(),
                hub_token_secret=settings.hub_token_secret,
                hub_token_key=settings.hub_token_key,
            ),
        )

    def inference_runtime(self, database: Database) -> InferenceRuntime:
        return KubernetesInferenceRuntime(
            self._runtime.api,
            namespace=self._runtime.namespace,
            planner=workload_planner(self._settings, database, local=False),
            integrations=self._integrations,
        )

    def inference_executor(self, database: Database, secrets: SecretStore) -> InferenceExecutor:
        del database, secrets  # Secret references stay references in the pod spec
        return KubernetesInferenceExecutor(
            self._runtime.api,
            namespace=self._runtime.namespace,
            largest_free_gpus=self._largest_free,
            integrations=self._integrations,
        )

    async def _largest_free(self) -> int | None:
        nodes = (await self._inventory()).nodes
        return max((node.free for node in nodes), default=0)

    async def _integrations(self) -> Integrations:
        found = (await self._inventory()).integrations
        return Integrations(service_monitor=found.service_monitor, aibrix=found.pod_autoscaler)

    def attach(self, controller: InferenceController) -> None:
        del controller  # the executor reports to the controller through its own watch


class Cached:
    """The last answer of an async call, reused for ``seconds``; concurrent callers that miss
    wait for one call."""

    def __init__(self, call: Callable[[], Awaitable[ClusterInventory]], *, seconds: float) -> None:
        self._call = call
        self._seconds = seconds
        self._value: ClusterInventory | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    async def __call__(self) -> ClusterInventory:
        async with self._lock:
            now = time.monotonic()
            if self._value is None or now - self._at > self._seconds:
                self._value = await self._call()
                self._at = time.monotonic()
            return self._value
