"""Download Jobs: the kubernetes runtime's way to run the one downloader (decision 7).

:class:`JobExecutor` is the leader's :class:`~controllers.downloads.executions.Executor` on
Kubernetes: it applies the claim and the Job of a download's current attempt
(:mod:`controllers.runtimes.kubernetes.job_specs` renders them), deletes the Jobs of older
attempts (``retryDownload`` bumps the attempt), observes a Job and its pods, and cleans a
volume with a short Job. Jobs and pods labelled as downloads are watched, and each change
enqueues the owning model. The pods write progress, the ledger and the outcome into MongoDB
themselves.

A refused request is typed where it happens
(:func:`controllers.runtimes.kubernetes.errors.refused`): 403 (RBAC), 422 (validation) and
an admission webhook's denial are permanent -- the download is FAILED once with the API
server's own words; 409, 429, 5xx, timeouts and dropped connections are temporary -- the
phase stays and the message says when it is tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import watch as k8s_watch
from kubernetes_asyncio.client.exceptions import ApiException

from controllers.backoff import Backoff
from controllers.downloads.executions import Execution
from controllers.runtimes.kubernetes.errors import refused
from controllers.runtimes.kubernetes.job_specs import (
    ATTEMPT,
    COMPONENT_VALUE,
    WEIGHTS_ID,
    JobTemplate,
    claim_refusal,
    get_path,
    job_execution,
    job_name,
    render_claim,
    render_clean_job,
    render_job,
)
from controllers.runtimes.kubernetes.labels import (
    FIELD_MANAGER,
    MANAGED_BY,
    MANAGED_BY_VALUE,
    OWNER_ID,
)
from storage.documents import ModelDocument, TargetKind, WeightsDocument

log = logging.getLogger(__name__)
WATCH_BACKOFF = Backoff(base=1.0, cap=30.0, spread=0.25)
"""Reconnects of a failed watch of download Jobs or pods."""


class JobExecutor:
    """Runs downloads as Jobs in one namespace and watches them."""

    def __init__(self, api: k8s.ApiClient, *, namespace: str, template: JobTemplate) -> None:
        self._batch = k8s.BatchV1Api(api)
        self._core = k8s.CoreV1Api(api)
        self._namespace = namespace
        self._template = template
        self._watches: list[asyncio.Task[None]] = []

    @property
    def selector(self) -> str:
        """Labels of every download Job and pod we made."""
        return f"{MANAGED_BY}={MANAGED_BY_VALUE},app.kubernetes.io/component={COMPONENT_VALUE}"

    def watch(self, notify: Callable[[str], None]) -> None:
        """Start watching labelled Jobs and pods; each change enqueues the owning model."""
        for kind, list_fn in (
            ("jobs", self._batch.list_namespaced_job),
            ("pods", self._core.list_namespaced_pod),
        ):
            self._watches.append(
                asyncio.create_task(self._watch(kind, list_fn, notify), name=f"watch-{kind}")
            )

    async def _watch(
        self,
        kind: str,
        list_fn: Callable[..., Awaitable[Any]],
        notify: Callable[[str], None],
    ) -> None:
        failures = 0
        while True:
            watcher = k8s_watch.Watch()
            try:
                async for event in watcher.stream(
                    list_fn, self._namespace, label_selector=self.selector, timeout_seconds=300
                ):
                    failures = 0
                    owner = get_path(event, "object", "metadata", "labels") or {}
                    if isinstance(owner, dict) and owner.get(OWNER_ID):
                        notify(owner[OWNER_ID])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  any failure: reconnect; resync covers gaps
                failures += 1
                delay = WATCH_BACKOFF.delay(failures)
                log.warning(
                    "watch of download %s failed; reconnecting",
                    kind,
                    extra={"error": type(exc).__name__, "retry_in": round(delay, 2)},
                )
                await asyncio.sleep(delay)
            finally:
                await watcher.close()

    async def close(self) -> None:
        """Stop watching (Jobs keep running in the cluster)."""
        for task in self._watches:
            task.cancel()
        for task in self._watches:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watches.clear()

    async def _claim_labels(self, name: str) -> dict[str, str] | None:
        """The labels of the claim ``name`` in our namespace; None when it does not exist."""
        try:
            claim = await self._core.read_namespaced_persistent_volume_claim(name, self._namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return None
        return dict(claim.metadata.labels or {})

    async def _apply(self, patch: Callable[..., Awaitable[Any]], body: dict[str, Any]) -> None:
        """Server-side apply under our field manager; a refusal is a typed controller error
        (:func:`~controllers.runtimes.kubernetes.errors.refused`) naming what was applied."""
        what = f"{body['kind']} {body['metadata']['name']}"
        try:
            await patch(
                body["metadata"]["name"],
                self._namespace,
                body,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type="application/apply-patch+yaml",
            )
        except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
            raise refused(exc, what) from exc

    async def observe(self, weights: WeightsDocument) -> Execution:
        """Read the current attempt's Job and its pods and say what they mean."""
        name = job_name(weights.id, weights.attempt)
        try:
            job = await self._batch.read_namespaced_job(name, self._namespace)
        except ApiException as exc:
            if exc.status == 404:
                return Execution(active=False, stale=await self._has_jobs(weights.id))
            raise
        pods = await self._core.list_namespaced_pod(
            self._namespace,
            label_selector=f"{WEIGHTS_ID}={weights.id},{ATTEMPT}={weights.attempt}",
        )
        ordered = sorted(pods.items, key=lambda p: p.metadata.creation_timestamp or 0)
        return job_execution(job, ordered, memory_limit=self._template.memory_limit)

    async def launch(
        self, model: ModelDocument | None, weights: WeightsDocument
    ) -> Execution | None:
        """Apply the claim (if we create it) and the Job; delete Jobs of older attempts.
        Returns a failure when the Job cannot be made to run (e.g. a missing claim)."""
        if weights.target.kind is TargetKind.PVC:
            labels = await self._claim_labels(weights.target.claim_name or "")
            refusal = claim_refusal(weights, labels, namespace=self._namespace)
            if refusal is not None:
                return Execution(active=False, failure=refusal)
            claim = render_claim(
                weights,
                namespace=self._namespace,
                default_size_gi=self._template.pvc_default_size_gi,
            )
            # A missing claim is created; an existing one is used as it is, unless these weights
            # created it with a size of their own (applying it again is then a no-op).
            ours = labels is not None and labels.get(OWNER_ID) == weights.id
            if claim is not None and (labels is None or (ours and weights.target.size_gi)):
                await self._apply(self._core.patch_namespaced_persistent_volume_claim, claim)
        await self._delete_jobs(weights.id, keep_attempt=weights.attempt)
        job = render_job(model, weights, self._template, namespace=self._namespace)
        await self._apply(self._batch.patch_namespaced_job, job)
        log.info(
            "download Job applied",
            extra={"job": job["metadata"]["name"], "weights_id": weights.id},
        )
        return None

    async def _has_jobs(self, weights_id: str) -> bool:
        """Whether a Job of any attempt of this download exists."""
        jobs = await self._batch.list_namespaced_job(
            self._namespace, label_selector=f"{self.selector},{WEIGHTS_ID}={weights_id}", limit=1
        )
        return bool(jobs.items)

    async def halt(self, weights_id: str) -> None:
        """Delete every Job (and, in the background, pod) of this download; idempotent."""
        await self._delete_jobs(weights_id, keep_attempt=None)

    async def _delete_jobs(self, weights_id: str, *, keep_attempt: int | None) -> None:
        jobs = await self._batch.list_namespaced_job(
            self._namespace, label_selector=f"{self.selector},{WEIGHTS_ID}={weights_id}"
        )
        for job in jobs.items:
            labels = job.metadata.labels or {}
            if keep_attempt is not None and labels.get(ATTEMPT) == str(keep_attempt):
                continue
            try:
                await self._batch.delete_namespaced_job(
                    job.metadata.name, self._namespace, propagation_policy="Background"
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise

    async def _delete_own_claim(self, weights: WeightsDocument) -> bool:
        """Delete the claim we created for these weights (its data goes with it): the one
        labelled with their id, with or without a size given."""
        if weights.target.kind is not TargetKind.PVC:
            return False
        name = weights.target.claim_name or ""
        try:
            claim = await self._core.read_namespaced_persistent_volume_claim(name, self._namespace)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        if (claim.metadata.labels or {}).get(OWNER_ID) != weights.id:
            return False  # an existing claim (or another download's): clean files only
        try:
            await self._core.delete_namespaced_persistent_volume_claim(name, self._namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
        return True

    async def release_all(self) -> None:
        """Leadership lost: Jobs keep running in the cluster; nothing to stop here."""
        return

    async def clean(self, weights: WeightsDocument, *, partials_only: bool) -> bool:
        """PVC and hostPath targets are cleaned by a short Job on the volume; S3 is reachable
        from here, so the caller cleans it through the sink."""
        if weights.target.directory(self._template.pvc_mount_path) is None:
            return False
        if not partials_only and await self._delete_own_claim(weights):
            return True
        job = render_clean_job(
            weights, self._template, namespace=self._namespace, partials_only=partials_only
        )
        await self._apply(self._batch.patch_namespaced_job, job)
        return True
