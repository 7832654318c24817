"""What a runtime builder hands the composition root (see :mod:`modelplane.runtimes`)."""

from __future__ import annotations

from typing import Protocol

from controllers.downloads.executions import Executor
from controllers.inference.reconciler import InferenceController, InferenceExecutor
from controllers.runtimes.base import Runtime
from controllers.runtimes.secrets import SecretStore
from storage.client import Database


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

    def inference_executor(self) -> InferenceExecutor:
        """Engines: Deployments or supervised processes. May raise
        :class:`~modelplane.startup.StartupError`."""

    def attach(self, controller: InferenceController) -> None:
        """Connect the executor's change reports to the inference controller built on it."""
