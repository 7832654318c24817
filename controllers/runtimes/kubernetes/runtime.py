"""The kubernetes runtime: one namespace of a cluster, through one shared ApiClient.

Configured from a kubeconfig file or the in-cluster service account; answers the
:class:`~controllers.runtimes.base.Runtime` protocol for ``/readyz`` and the API.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from controllers.runtimes.base import (
    OwnedObject,
    RuntimeConfigError,
    RuntimeInfo,
    RuntimeUnavailable,
)
from controllers.runtimes.kubernetes.labels import owner_selector

log = logging.getLogger(__name__)


class KubernetesRuntime:
    """Work on a Kubernetes cluster, in one namespace, through one shared ApiClient."""

    kind = "kubernetes"

    def __init__(self, *, kubeconfig: Path | None, namespace: str) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self._api: k8s.ApiClient | None = None

    @property
    def api(self) -> k8s.ApiClient:
        """The shared ApiClient (after :meth:`start`)."""
        if self._api is None:
            raise RuntimeUnavailable("the kubernetes runtime has not been started")
        return self._api

    async def start(self) -> None:
        configuration = k8s.Configuration()
        if self.kubeconfig is not None:
            if not self.kubeconfig.is_file():
                raise RuntimeConfigError(
                    f"MODELPLANE_KUBECONFIG: no kubeconfig file at {self.kubeconfig}"
                )
            try:
                await k8s_config.load_kube_config(
                    config_file=str(self.kubeconfig), client_configuration=configuration
                )
            except (ConfigException, ValueError, KeyError) as exc:
                raise RuntimeConfigError(
                    f"MODELPLANE_KUBECONFIG: {self.kubeconfig} is not a usable kubeconfig: {exc}"
                ) from exc
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            try:
                k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]  # untyped upstream
                    client_configuration=configuration
                )
            except ConfigException as exc:
                raise RuntimeConfigError(f"in-cluster configuration failed: {exc}") from exc
        else:
            raise RuntimeConfigError(
                "MODELPLANE_KUBECONFIG: the kubernetes runtime needs a kubeconfig file "
                "(or must run inside a cluster); set MODELPLANE_KUBECONFIG or use "
                "MODELPLANE_RUNTIME=local"
            )
        self._api = k8s.ApiClient(configuration)

    async def check(self) -> None:
        try:
            await k8s.VersionApi(self.api).get_code(_request_timeout=5)
        except RuntimeUnavailable:
            raise
        except Exception as exc:  # any transport or API failure means not ready
            raise RuntimeUnavailable(
                f"Kubernetes API server not reachable: {type(exc).__name__}"
            ) from exc

    async def describe(self) -> RuntimeInfo:
        info = await k8s.VersionApi(self.api).get_code(_request_timeout=5)
        return RuntimeInfo(kind=self.kind, namespace=self.namespace, version=info.git_version)

    async def storage_class_known(self, name: str) -> bool | None:
        """A ``get`` of the StorageClass (the ClusterRole grants it): False only for a 404."""
        try:
            await k8s.StorageV1Api(self.api).read_storage_class(name, _request_timeout=5)
        except ApiException as exc:
            if exc.status == 404:
                return False
            log.warning("storage class not readable", extra={"status": exc.status})
            return None
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("storage class not readable", extra={"error": type(exc).__name__})
            return None
        return True

    async def delete_owned(self, owner_id: str) -> list[OwnedObject]:
        """Delete Deployments, Jobs, Services, PVCs, ConfigMaps and Secrets we labelled."""
        selector = owner_selector(owner_id)
        apps, batch, core = (
            k8s.AppsV1Api(self.api),
            k8s.BatchV1Api(self.api),
            k8s.CoreV1Api(self.api),
        )
        kinds: list[tuple[str, Callable[..., Awaitable[Any]], Callable[..., Awaitable[Any]]]] = [
            ("Deployment", apps.list_namespaced_deployment, apps.delete_namespaced_deployment),
            ("Job", batch.list_namespaced_job, batch.delete_namespaced_job),
            ("Service", core.list_namespaced_service, core.delete_namespaced_service),
            (
                "PersistentVolumeClaim",
                core.list_namespaced_persistent_volume_claim,
                core.delete_namespaced_persistent_volume_claim,
            ),
            ("ConfigMap", core.list_namespaced_config_map, core.delete_namespaced_config_map),
            ("Secret", core.list_namespaced_secret, core.delete_namespaced_secret),
        ]
        removed: list[OwnedObject] = []
        for kind, list_fn, delete_fn in kinds:
            listing = await list_fn(self.namespace, label_selector=selector)
            for item in listing.items:
                name = item.metadata.name
                try:
                    await delete_fn(name, self.namespace, propagation_policy="Background")
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                    continue
                removed.append(OwnedObject(kind=kind, name=name))
        return removed

    async def close(self) -> None:
        if self._api is not None:
            api, self._api = self._api, None
            await api.close()
