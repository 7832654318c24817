"""List-and-watch caches of Kubernetes objects (what client-go calls informers), raw JSON.

Controllers must not poll the API server (issue: inference; its benchmark counts requests per
steady-state minute): each :class:`Informer` lists a kind once, then follows a watch from the
list's ``resourceVersion`` (with bookmarks, so a reconnect resumes where it stopped), keeps the
objects in a dictionary, and calls ``on_event`` for each change. A ``410 Gone`` (the version
fell out of etcd's window) relists; any other failure reconnects with jittered backoff.
Reconciles read the cache, never the API. Objects stay as the API's JSON dictionaries:
deserialising them into kubernetes_asyncio models costs more than everything else here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from controllers.backoff import Backoff

log = logging.getLogger(__name__)

Obj = dict[str, Any]
ListFn = Callable[..., Awaitable[Any]]
OnEvent = Callable[[str, Obj], None]
"""Called with the watch event type (ADDED, MODIFIED, DELETED) and the object."""

WATCH_SECONDS = 300
RECONNECT = Backoff(base=1.0, cap=30.0, spread=0.25)
"""Pauses before reconnecting a failed watch (the one backoff policy)."""


class ListFailed(Exception):
    """The API server refused a list or watch (the status is in the message)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


class Informer:
    """One kind in one namespace, filtered by label or field selector, cached by name."""

    def __init__(
        self,
        kind: str,
        list_fn: ListFn,
        *,
        namespace: str,
        on_event: OnEvent,
        label_selector: str | None = None,
        field_selector: str | None = None,
        keep: Callable[[Obj], bool] | None = None,
    ) -> None:
        self.kind = kind
        self._list_fn = list_fn
        self._namespace = namespace
        self._on_event = on_event
        self._selectors: dict[str, str] = {}
        if label_selector:
            self._selectors["label_selector"] = label_selector
        if field_selector:
            self._selectors["field_selector"] = field_selector
        self._keep = keep or (lambda _obj: True)
        self.items: dict[str, Obj] = {}
        self.synced = asyncio.Event()
        self.refused: str | None = None
        """Why the last list was refused (401/403: this kind may not be read); None once a list
        succeeds. The informer keeps trying, so a grant is picked up."""
        self._task: asyncio.Task[None] | None = None
        self.requests = 0
        """API requests made (lists and watch connections), for the benchmark."""

    def start(self) -> None:
        """Start listing and watching in an owned task."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"informer-{self.kind}")

    async def close(self) -> None:
        """Stop watching; idempotent."""
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        failures = 0
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await self._list()
                version = await self._watch(version)
                failures = 0
            except asyncio.CancelledError:
                raise
            except _Gone:
                version = None
            except Exception as exc:  # noqa: BLE001  any failure: reconnect after a pause
                failures += 1
                delay = RECONNECT.delay(failures)
                log.warning(
                    "watch failed; reconnecting",
                    extra={"kind": self.kind, "error": type(exc).__name__, "retry_in": delay},
                )
                await asyncio.sleep(delay)

    async def _list(self) -> str:
        self.requests += 1
        response = await self._list_fn(self._namespace, _preload_content=False, **self._selectors)
        try:
            raw = await response.read()
            if response.status >= 300:
                if response.status in (401, 403):
                    self.refused = f"listing {self.kind} answered {response.status}"
                raise ListFailed(
                    f"listing {self.kind} answered {response.status}: {raw[:200]!r}",
                    response.status,
                )
            body = json.loads(raw)
        finally:
            response.release()
        fresh = {
            item["metadata"]["name"]: item for item in body.get("items") or [] if self._keep(item)
        }
        gone = [obj for name, obj in self.items.items() if name not in fresh]
        self.items = fresh
        self.refused = None
        for obj in gone:
            self._on_event("DELETED", obj)
        for obj in fresh.values():
            self._on_event("ADDED", obj)
        self.synced.set()
        return str(body.get("metadata", {}).get("resourceVersion") or "")

    async def _watch(self, version: str) -> str:
        """Follow changes from ``version``; returns the last version seen when the server
        ends the watch (it does every ``WATCH_SECONDS``)."""
        self.requests += 1
        response = await self._list_fn(
            self._namespace,
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _preload_content=False,
            _request_timeout=WATCH_SECONDS + 30,
            **self._selectors,
        )
        try:
            if response.status >= 300:
                if response.status == 410:
                    raise _Gone
                raise ListFailed(
                    f"watching {self.kind} answered {response.status}", response.status
                )
            while True:
                line = await response.content.readline()
                if not line:
                    return version
                event = json.loads(line)
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone
                    raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('reason')}")
                version = str(obj.get("metadata", {}).get("resourceVersion") or version)
                if kind == "BOOKMARK" or not self._keep(obj):
                    continue
                name = obj["metadata"]["name"]
                if kind == "DELETED":
                    self.items.pop(name, None)
                else:
                    self.items[name] = obj
                self._on_event(str(kind), obj)
        finally:
            response.release()
