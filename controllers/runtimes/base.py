"""The protocol both execution engines answer (docs/architecture.md decision 3).

``local`` (:mod:`controllers.runtimes.local.runtime`) runs downloads as in-process tasks and
engines as supervised subprocesses; it is the embedded default. ``kubernetes``
(:mod:`controllers.runtimes.kubernetes.runtime`) talks to a cluster with kubernetes_asyncio.
Both answer :meth:`Runtime.check` for ``/readyz`` and :meth:`Runtime.describe` for the API;
they own their clients and close them on shutdown. Each runtime's package holds everything
that runtime does (its inference executor and API-side object among them); this module holds
only what every caller may name without choosing one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class RuntimeUnavailable(Exception):
    """The runtime cannot do work right now; the message says why (for ``/readyz``)."""


class RuntimeConfigError(Exception):
    """The runtime is configured wrongly; the message names the setting."""


@dataclass(frozen=True, slots=True)
class OwnedObject:
    """An object a runtime created for a resource, as reported when it is removed."""

    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """What a runtime tells about itself."""

    kind: str
    namespace: str | None
    version: str | None


class Runtime(Protocol):
    """What controllers and health checks need from an execution engine."""

    kind: str

    async def start(self) -> None:
        """Open clients; raise :class:`RuntimeConfigError` for bad configuration."""

    async def check(self) -> None:
        """Return when the runtime can do work, else raise :class:`RuntimeUnavailable`."""

    async def describe(self) -> RuntimeInfo:
        """Kind, namespace and server version, for ``clusterStatus`` and the dashboard."""

    async def delete_owned(self, owner_id: str) -> list[OwnedObject]:
        """Delete every object labelled as owned by ``owner_id``; idempotent."""

    async def storage_class_known(self, name: str) -> bool | None:
        """Whether the cluster has the StorageClass ``name``; None when it cannot tell (no
        permission, no answer, or no cluster at all)."""

    async def close(self) -> None:
        """Release every client and connection; idempotent."""
