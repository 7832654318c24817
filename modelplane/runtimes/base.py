"""What a runtime builder hands the composition root (see :mod:`modelplane.runtimes`)."""

from __future__ import annotations

from typing import Protocol

from controllers.downloads.executions import Executor
from controllers.inference.engines import EngineImages
from controllers.inference.reconciler import InferenceController
from controllers.inference.workloads import InferenceExecutor, InferenceRuntime, WorkloadPlanner
from controllers.runtimes.base import Runtime
from controllers.runtimes.secrets import SecretStore
from modelplane.settings import Settings
from storage.client import Database
from storage.repositories import WeightsRepository


class RuntimeParts(Protocol):
    """The runtime and the pieces that differ per runtime, built from the settings."""

    @property
    def runtime(self) -> Runtime:
        """The runtime (started by the composition root, closed with its stack)."""

    @property
    def namespace(self) -> str | None:
        """The Kubernetes namespace work goes to; None on the local runtime."""

    def prepare(self) -> None:
        """Anything to create on this machine before the services run; idempotent."""

    def secret_store(self, database: Database) -> SecretStore:
        """Where hub tokens and S3 keys are kept."""

    def download_executor(self) -> Executor | None:
        """Download workers; None for the controller's own in-process workers."""

    def inference_runtime(self, database: Database) -> InferenceRuntime:
        """What the API reads from the runtime about inferences (plans, dry runs, logs,
        labelled Deployments); built in every replica, controllers or not."""

    def inference_executor(self, database: Database, secrets: SecretStore) -> InferenceExecutor:
        """Engines: Deployments or supervised processes (the leader's controller only). May
        raise :class:`~modelplane.startup.StartupError`."""

    def attach(self, controller: InferenceController) -> None:
        """Connect the executor's change reports to the inference controller built on it."""


def workload_planner(settings: Settings, database: Database, *, local: bool) -> WorkloadPlanner:
    """The engine planner both runtimes' inference objects share, from the settings."""
    return WorkloadPlanner(
        weights=WeightsRepository(database),
        images=EngineImages(
            vllm=settings.vllm_image,
            ollama=settings.ollama_image,
            litellm=settings.litellm_image,
            s3_sync=settings.s3_sync_image,
        ),
        local=local,
        pvc_mount_path=str(settings.pvc_mount_path),
        allow_host_commands=settings.allow_host_commands,
    )
