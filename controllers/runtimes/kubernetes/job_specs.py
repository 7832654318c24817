"""What a download Job, its claim and its cleanup look like, and what the cluster's account of
them means (pure functions, table-tested in ``tests/test_download_jobs.py``).

For each downloading Weights one Job, named after the weights and the attempt
(``download-<weights id>-<attempt>``), so re-applying is idempotent and a second Job for the
same attempt cannot exist. The Job's pod runs ``modelplane download --weights-id ...`` from the
project image. Credentials reach it only through ``secretKeyRef`` env entries (the model's
credentials Secret and the MongoDB URI Secret); the Job spec never holds a value. The weights
volume is the model's PVC or, for LOCAL targets, a hostPath under an allowed root. A PVC target's
claim that does not exist is created, with the target's size or, without one, the default
(``MODELPLANE_PVC_DEFAULT_SIZE_GI``, 20 as the organisation API's ``storage_size``); an
existing claim is used as it is (never resized), unless these weights created it with a size.
:func:`job_execution` turns a Job and its pods into an
:class:`~controllers.downloads.executions.Execution`: ImagePullBackOff, OOMKilled,
DeadlineExceeded, unschedulable pods and repeated failures each get their reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controllers.downloads.executions import Execution
from controllers.runtimes.kubernetes.labels import (
    ORGANIZATION_ID,
    owned_labels,
)
from controllers.runtimes.secrets import HF_TOKEN_KEY, S3_SECRET_KEY
from storage.documents import ModelDocument, PvcTarget, TargetKind, WeightsDocument

COMPONENT_VALUE = "download"
SERVER_HF_TOKEN = "SERVER_HF_TOKEN"  # noqa: S105  a variable's name, not a value
"""The pod's variable for the server-wide hub token (used when ``HF_TOKEN`` is empty)."""
WEIGHTS_ID = "modelplane.io/weights-id"
ATTEMPT = "modelplane.io/attempt"
MONGODB_URI_KEY = "uri"
CONTAINER = "download"
WEIGHTS_VOLUME = "weights"
FINISHED_TTL_SECONDS = 24 * 3600
POD_SECURITY: dict[str, Any] = {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001}
CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}

# Waiting reasons that mean the pod will not start without someone changing something.
STUCK_WAITING = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


@dataclass(frozen=True, slots=True)
class JobTemplate:
    """Everything about download Jobs that comes from the service's settings."""

    image: str
    hf_endpoint: str
    mongodb_database: str
    mongodb_secret: str
    """Secret (in the managed namespace) whose ``uri`` key the pods connect with."""
    pvc_mount_path: str = "/weights"
    service_account: str | None = None
    image_pull_policy: str = "IfNotPresent"
    cpu_request: str = "500m"
    memory_request: str = "512Mi"
    cpu_limit: str = "2"
    memory_limit: str = "2Gi"
    deadline_seconds: int = 6 * 3600
    backoff_limit: int = 2
    download_env: tuple[tuple[str, str], ...] = ()
    """Downloader knobs passed through (``MODELPLANE_DOWNLOAD_*``)."""
    pvc_default_size_gi: int = 20
    """Size of a claim created for a PVC target that gives none."""
    hub_token_secret: str | None = None
    """Secret holding the server-wide hub token (``MODELPLANE_HUB_TOKEN_SECRET``), if any."""
    hub_token_key: str = HF_TOKEN_KEY
    """Its key (``MODELPLANE_HUB_TOKEN_KEY``)."""


def job_name(weights_id: str, attempt: int) -> str:
    """The one Job name for an attempt of a download (DNS-1123, <= 63 characters)."""
    return f"download-{weights_id}-{attempt}"[:63].rstrip("-")


def _secret_env(name: str, secret: str, key: str, *, optional: bool) -> dict[str, Any]:
    return {
        "name": name,
        "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}},
    }


def _credential_env(
    model: ModelDocument | None, weights: WeightsDocument, template: JobTemplate
) -> list[dict[str, Any]]:
    """References to the download's credentials: the server-wide hub token (used by the pod
    when the download's own is absent), then the model's credentials, else those the weights
    were stored with (prefetched)."""
    env: list[dict[str, Any]] = []
    if template.hub_token_secret:
        env.append(
            _secret_env(
                SERVER_HF_TOKEN, template.hub_token_secret, template.hub_token_key, optional=True
            )
        )
    if weights.secret_ref is not None:
        credentials = (model.secret_ref if model is not None else None) or weights.secret_ref
        env.append(_secret_env("HF_TOKEN", credentials, HF_TOKEN_KEY, optional=True))
        if S3_SECRET_KEY in weights.target.secret_keys:
            env.append(
                _secret_env("S3_SECRET_ACCESS_KEY", credentials, S3_SECRET_KEY, optional=False)
            )
    return env


def render_job(
    model: ModelDocument | None, weights: WeightsDocument, template: JobTemplate, *, namespace: str
) -> dict[str, Any]:
    """The Job manifest for the current attempt of a download (pure; no values of secrets).
    Owned by the model whose reconcile launched it, or by the weights themselves (prefetched,
    no model): the watch hands the owner back to the controller."""
    owner = model.id if model is not None else weights.id
    labels = {
        **owned_labels(owner, weights.organization_id, component=COMPONENT_VALUE),
        WEIGHTS_ID: weights.id,
        ATTEMPT: str(weights.attempt),
    }
    env: list[dict[str, Any]] = [
        _secret_env(
            "MODELPLANE_MONGODB_URI", template.mongodb_secret, MONGODB_URI_KEY, optional=False
        ),
        {"name": "MODELPLANE_MONGODB_DATABASE", "value": template.mongodb_database},
        {"name": "MODELPLANE_HF_ENDPOINT", "value": template.hf_endpoint},
        {"name": "MODELPLANE_ENVIRONMENT", "value": "production"},
        {"name": "MODELPLANE_RUNTIME", "value": "kubernetes"},
        {"name": "MODELPLANE_LOG_FORMAT", "value": "json"},
        {"name": "MODELPLANE_PVC_MOUNT_PATH", "value": template.pvc_mount_path},
        *({"name": k, "value": v} for k, v in template.download_env),
    ]
    env += _credential_env(model, weights, template)
    volumes, mounts = _weights_volume(weights, template)
    volumes.append({"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})  # noqa: S108  a private emptyDir
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": template.image,
        "imagePullPolicy": template.image_pull_policy,
        "command": ["modelplane", "download", "--weights-id", weights.id],
        "env": env,
        "resources": {
            "requests": {"cpu": template.cpu_request, "memory": template.memory_request},
            "limits": {"cpu": template.cpu_limit, "memory": template.memory_limit},
        },
        "volumeMounts": mounts,
        "securityContext": CONTAINER_SECURITY,
    }
    return _job_manifest(
        name=job_name(weights.id, weights.attempt),
        namespace=namespace,
        labels=labels,
        container=container,
        volumes=volumes,
        backoff_limit=template.backoff_limit,
        deadline_seconds=template.deadline_seconds,
        ttl_seconds=FINISHED_TTL_SECONDS,
        service_account=template.service_account,
    )


def _job_manifest(
    *,
    name: str,
    namespace: str,
    labels: dict[str, str],
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
    backoff_limit: int,
    deadline_seconds: int,
    ttl_seconds: int,
    service_account: str | None = None,
) -> dict[str, Any]:
    """A one-container, never-restarting, non-root Job with no service-account token."""
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # our pods talk to MongoDB and the hub only
        "containers": [container],
        "volumes": volumes,
        "securityContext": POD_SECURITY,
    }
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": backoff_limit,
            "activeDeadlineSeconds": deadline_seconds,
            "ttlSecondsAfterFinished": ttl_seconds,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def _weights_volume(
    weights: WeightsDocument, template: JobTemplate
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The volume holding a PVC or LOCAL (hostPath) target, and its mount; none for S3."""
    target = weights.target
    if target.kind is TargetKind.PVC:
        return (
            [{"name": WEIGHTS_VOLUME, "persistentVolumeClaim": {"claimName": target.claim_name}}],
            [{"name": WEIGHTS_VOLUME, "mountPath": template.pvc_mount_path}],
        )
    if target.kind is TargetKind.LOCAL and target.local_path:
        return (
            [
                {
                    "name": WEIGHTS_VOLUME,
                    "hostPath": {"path": target.local_path, "type": "DirectoryOrCreate"},
                }
            ],
            [{"name": WEIGHTS_VOLUME, "mountPath": target.local_path}],
        )
    return [], []


def target_directory(weights: WeightsDocument, template: JobTemplate) -> str:
    """The download's directory as a pod sees it."""
    return weights.target.directory(template.pvc_mount_path) or ""


def render_clean_job(
    weights: WeightsDocument, template: JobTemplate, *, namespace: str, partials_only: bool
) -> dict[str, Any]:
    """A short Job that removes a download's partials (or all its files) on its volume."""
    owner = weights.model_ids[0] if weights.model_ids else weights.id
    labels = {
        **owned_labels(owner, weights.organization_id, component="cleanup"),
        WEIGHTS_ID: weights.id,
    }
    volumes, mounts = _weights_volume(weights, template)
    command = [
        "modelplane",
        "clean",
        "--dir",
        target_directory(weights, template),
        "--weights-id",
        weights.id,
    ]
    if partials_only:
        command.append("--partials-only")
    what = "partials" if partials_only else "all"
    return _job_manifest(
        name=f"clean-{weights.id}-{weights.attempt}-{what}"[:63].rstrip("-"),
        namespace=namespace,
        labels=labels,
        container={
            "name": "clean",
            "image": template.image,
            "imagePullPolicy": template.image_pull_policy,
            "command": command,
            "resources": {
                "requests": {"cpu": "50m", "memory": "64Mi"},
                "limits": {"cpu": "500m", "memory": "256Mi"},
            },
            "volumeMounts": mounts,
            "securityContext": CONTAINER_SECURITY,
        },
        volumes=volumes,
        backoff_limit=template.backoff_limit,
        deadline_seconds=600,
        ttl_seconds=600,
    )


def render_claim(
    weights: WeightsDocument, *, namespace: str, default_size_gi: int = 20
) -> dict[str, Any] | None:
    """The PVC to create for a PVC target (its size, else ``default_size_gi``); None for other
    targets."""
    target = weights.target
    if not isinstance(target, PvcTarget):
        return None
    size = target.size_gi if target.size_gi is not None else default_size_gi
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": f"{size}Gi"}},
    }
    if target.storage_class:
        spec["storageClassName"] = target.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": target.claim_name,
            "namespace": namespace,
            # Owned by the weights, not the model: deleting a model keeps the weights (and other
            # models may share them); deleteWeights removes the claim.
            "labels": owned_labels(weights.id, weights.organization_id, component="weights"),
        },
        "spec": spec,
    }


def claim_refusal(
    weights: WeightsDocument, labels: dict[str, str] | None, *, namespace: str
) -> str | None:
    """Why a download may not use the PVC target's claim (None: it may), given the claim's
    labels (None: no such claim). A claim is usable by the organisation its
    ``modelplane.io/organization-id`` label names: claims modelplane created for that
    organisation's weights, or ones an operator labelled for it. Any other claim of the
    namespace (a database's, another team's) is refused: a download would write into it, and
    applying our labels to it would make deleteWeights delete it. Only the weights that
    created a claim apply it again (:meth:`JobExecutor.launch`)."""
    if not isinstance(weights.target, PvcTarget):
        return None  # only a claim can be refused
    name = weights.target.claim_name
    if labels is None:
        return None  # created by this download (with the default size when none is given)
    if labels.get(ORGANIZATION_ID) != weights.organization_id:
        return (
            f"PersistentVolumeClaim {name} exists in namespace {namespace} and is not labelled "
            f"for this organisation ({ORGANIZATION_ID}={weights.organization_id}); choose "
            "another claimName to have it created, or ask an operator to label it"
        )
    return None


# -- status mapping ------------------------------------------------------------------------


def get_path(obj: Any, *path: str) -> Any:
    """Walk attributes of a kubernetes_asyncio model or keys of a dict, None when absent."""
    for key in path:
        if obj is None:
            return None
        obj = obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
    return obj


def _condition(conditions: list[Any] | None, kind: str) -> Any:
    for condition in conditions or []:
        if get_path(condition, "type") == kind and get_path(condition, "status") == "True":
            return condition
    return None


def _pod_problem(pod: Any, memory_limit: str | None) -> tuple[str | None, str | None]:
    """(failure, note) for one pod: a reason it cannot start, or why it waits/restarts."""
    for status in get_path(pod, "status", "container_statuses") or []:
        waiting = get_path(status, "state", "waiting")
        reason = get_path(waiting, "reason")
        if reason in STUCK_WAITING:
            detail = get_path(waiting, "message") or ""
            return f"download pod cannot start: {reason}" + (f": {detail}" if detail else ""), None
        terminated = get_path(status, "state", "terminated") or get_path(
            status, "last_state", "terminated"
        )
        if get_path(terminated, "reason") == "OOMKilled":
            limit = f" (memory limit {memory_limit})" if memory_limit else ""
            return None, f"download pod was OOMKilled{limit}"
    if get_path(pod, "status", "phase") == "Pending":
        scheduled = next(
            (
                c
                for c in get_path(pod, "status", "conditions") or []
                if get_path(c, "type") == "PodScheduled"
            ),
            None,
        )
        if get_path(scheduled, "status") == "False":
            message = (
                get_path(scheduled, "message") or get_path(scheduled, "reason") or "no node fits"
            )
            return None, f"download pod cannot be scheduled: {message}"
    return None, None


def _last_termination(pods: list[Any]) -> str | None:
    """Why the most recent failed pod ended (OOMKilled, exit code ...)."""
    for pod in reversed(pods):
        for status in get_path(pod, "status", "container_statuses") or []:
            terminated = get_path(status, "state", "terminated")
            if terminated is None:
                continue
            reason = get_path(terminated, "reason") or "Error"
            code = get_path(terminated, "exit_code")
            return f"{reason} (exit code {code})" if code is not None else reason
    return None


def job_execution(job: Any, pods: list[Any], *, memory_limit: str | None = None) -> Execution:
    """What a Job and its pods say about a download (pure; models or dicts accepted).

    Pods are given oldest first. A Job that failed or can never start is a ``failure`` (the
    weights go FAILED with it); an unscheduled or OOMKilled-and-retrying pod is a ``note``.
    """
    if job is None:
        return Execution(active=False)
    conditions = get_path(job, "status", "conditions")
    failed = _condition(conditions, "Failed")
    if failed is not None:
        reason = get_path(failed, "reason")
        if reason == "DeadlineExceeded":
            deadline = get_path(job, "spec", "active_deadline_seconds")
            limit = f" of {deadline} s" if deadline else ""
            return Execution(
                active=False,
                failure=f"download Job exceeded its deadline{limit} (DeadlineExceeded)",
            )
        ended = _last_termination(pods)
        if ended and ended.startswith("OOMKilled") and memory_limit:
            ended = f"{ended}, memory limit {memory_limit}"
        tail = f"; last pod: {ended}" if ended else ""
        message = get_path(failed, "message") or reason or "failed"
        return Execution(active=False, failure=f"download Job failed: {message}{tail}")
    if _condition(conditions, "Complete") is not None:
        return Execution(
            active=False, failure="download Job completed without recording an outcome"
        )
    note = None
    for pod in reversed(pods):
        failure, pod_note = _pod_problem(pod, memory_limit)
        if failure is not None:
            return Execution(active=True, failure=failure)
        note = note or pod_note
    return Execution(active=True, note=note)


# -- the executor --------------------------------------------------------------------------
