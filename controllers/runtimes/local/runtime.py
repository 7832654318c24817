"""The local runtime: work on this machine, under the state directory.

Answers the :class:`~controllers.runtimes.base.Runtime` protocol for ``/readyz`` and the API;
its engines are supervised by :mod:`controllers.runtimes.local.processes`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from controllers.runtimes.base import (
    OwnedObject,
    RuntimeConfigError,
    RuntimeInfo,
    RuntimeUnavailable,
)


class LocalRuntime:
    """Work on this machine: weights and engine processes under ``state_dir``."""

    kind = "local"

    def __init__(self, *, state_dir: Path) -> None:
        self.state_dir = state_dir

    async def start(self) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RuntimeConfigError(
                f"MODELPLANE_STATE_DIR: cannot create {self.state_dir}: {exc.strerror}"
            ) from exc

    async def check(self) -> None:
        if not self.state_dir.is_dir():
            raise RuntimeUnavailable(f"state directory {self.state_dir} is missing")
        try:
            with tempfile.NamedTemporaryFile(dir=self.state_dir, prefix=".probe-"):
                pass
        except OSError as exc:
            raise RuntimeUnavailable(
                f"state directory {self.state_dir} is not writable: {exc.strerror}"
            ) from exc

    async def describe(self) -> RuntimeInfo:
        return RuntimeInfo(kind=self.kind, namespace=None, version=None)

    async def delete_owned(self, owner_id: str) -> list[OwnedObject]:
        # Local engines and downloads are owned by the controllers (issue: inference); the
        # runtime itself creates nothing persistent for a model yet.
        del owner_id
        return []

    async def storage_class_known(self, name: str) -> bool | None:
        del name  # no cluster, no storage classes (PVC targets are refused on this runtime)
        return None

    async def close(self) -> None:
        return None
