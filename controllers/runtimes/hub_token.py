"""The server-wide hub token: used for hub requests and downloads that carry no token of their
own (a model, or prefetched weights, created without one).

The setting names an entry of the runtime's secret store (``MODELPLANE_HUB_TOKEN_SECRET``, key
``MODELPLANE_HUB_TOKEN_KEY``): a Secret in the managed namespace on the kubernetes runtime, an
encrypted document on the local runtime (``modelplane hub-token set NAME`` stores one). It is
read here, where credentials are read, and nowhere else: the hub client asks for it
(:meth:`ServerHubToken.value`) when a call has no token, the local download workers get it
through the controller's credentials, and a download Job gets it as a ``secretKeyRef`` to the
same Secret (``controllers/runtimes/kubernetes/job_specs.py``), so the value is never in a pod
spec, a document, an answer or a log line.

A read is kept for :data:`CACHE_SECONDS`: a hub search or a page of previews must not read
the Secret once per request, and a rotated token is in use within that time. An entry that is
missing, or a store that cannot be read, means "no server token" (logged once per failure with
the entry's name, never its value): the hub then answers as it does to anyone.
"""

from __future__ import annotations

import asyncio
import logging
import time

from controllers.runtimes.secrets import SecretStore, SecretStoreError

log = logging.getLogger(__name__)

CACHE_SECONDS = 30.0


class ServerHubToken:
    """One key of one entry of the secret store, read on demand and kept for a while."""

    def __init__(
        self, store: SecretStore, *, ref: str, key: str, cache_seconds: float = CACHE_SECONDS
    ) -> None:
        self.ref = ref
        self.key = key
        self._store = store
        self._cache_seconds = cache_seconds
        self._value: str | None = None
        self._read_at: float | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:  # never the value
        return f"ServerHubToken(ref={self.ref!r}, key={self.key!r})"

    async def value(self) -> str | None:
        """The token, or None when the entry or its key is absent or unreadable."""
        async with self._lock:
            now = time.monotonic()
            if self._read_at is not None and now - self._read_at < self._cache_seconds:
                return self._value
            try:
                values = await self._store.get(self.ref)
            except SecretStoreError as exc:
                log.warning(
                    "the server hub token could not be read",
                    extra={"ref": self.ref, "reason": str(exc)},
                )
                values = {}
            token = (values.get(self.key) or "").strip() or None
            if token is None and self._value is None and self._read_at is None:
                log.warning(
                    "the server hub token entry has no value",
                    extra={"ref": self.ref, "key": self.key},
                )
            self._value, self._read_at = token, now
            return token
