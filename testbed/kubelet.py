"""A stand-in for the Job controller and the kubelet, for tests on a bare kube-apiserver.

The testbed runs etcd + kube-apiserver only: nothing turns a Job into a pod or runs it. This
module does the two steps a real cluster would, faithfully enough to test what modelplane puts
into a Job and what it reads back:

* :func:`create_job_pod` creates the Pod a Job controller would (the template's labels plus
  ``batch.kubernetes.io/job-name`` and ``controller-uid``, an ownerReference to the Job);
* :func:`run_job_pod` runs that pod's container *as a local process*: ``env`` is resolved the
  way the kubelet does (literal values, ``secretKeyRef`` read from the API server, optional keys
  skipped), volume mounts are mapped to local directories (env values naming a mount path are
  rewritten to the directory), the pod's status goes Running then Succeeded/Failed with the
  container's exit code, and the Job gets the conditions the Job controller would write
  (``SuccessCriteriaMet`` + ``Complete``, or ``FailureTarget`` + ``Failed``);
* :func:`set_waiting` / :func:`set_unschedulable` / :func:`fail_job` write the statuses a
  cluster reports when an image cannot be pulled, no node fits, or a deadline passes.

It never decides anything modelplane should: it only executes and reports.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def create_job_pod(api: k8s.ApiClient, namespace: str, job_name: str) -> str:
    """Create the pod the Job controller would create for ``job_name``; returns its name."""
    job = await k8s.BatchV1Api(api).read_namespaced_job(job_name, namespace)
    template = api.sanitize_for_serialization(job.spec.template)
    labels = dict(template["metadata"].get("labels") or {})
    labels["batch.kubernetes.io/job-name"] = job_name
    labels["batch.kubernetes.io/controller-uid"] = job.metadata.uid
    name = f"{job_name[:52]}-{uuid.uuid4().hex[:5]}"
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": job_name,
                    "uid": job.metadata.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": template["spec"],
    }
    await k8s.CoreV1Api(api).create_namespaced_pod(namespace, body)  # type: ignore[arg-type]  # a dict body is accepted and serialised as is
    return name


async def _patch_pod_status(
    api: k8s.ApiClient, namespace: str, pod: str, status: dict[str, Any]
) -> None:
    await k8s.CoreV1Api(api).patch_namespaced_pod_status(pod, namespace, {"status": status})


async def _patch_job_status(
    api: k8s.ApiClient, namespace: str, job: str, status: dict[str, Any]
) -> None:
    await k8s.BatchV1Api(api).patch_namespaced_job_status(job, namespace, {"status": status})


def _condition(kind: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": _now(),
        "lastTransitionTime": _now(),
    }


async def _resolve_env(
    api: k8s.ApiClient, namespace: str, container: dict[str, Any], mounts: dict[str, Path]
) -> dict[str, str]:
    core = k8s.CoreV1Api(api)
    env: dict[str, str] = {}
    for entry in container.get("env") or []:
        if "value" in entry:
            value = entry["value"]
            for mount_path in sorted(mounts, key=len, reverse=True):  # the deepest mount wins
                if value == mount_path or value.startswith(mount_path + "/"):
                    value = str(mounts[mount_path]) + value[len(mount_path) :]
                    break
            env[entry["name"]] = value
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        try:
            secret = await core.read_namespaced_secret(ref["name"], namespace)
        except ApiException as exc:
            if exc.status == 404 and ref.get("optional"):
                continue
            raise
        data = secret.data or {}
        if ref["key"] not in data:
            if ref.get("optional"):
                continue
            raise KeyError(f"Secret {ref['name']} has no key {ref['key']}")
        env[entry["name"]] = base64.b64decode(data[ref["key"]]).decode()
    return env


async def run_job_pod(
    api: k8s.ApiClient,
    namespace: str,
    job_name: str,
    *,
    volumes: dict[str, Path],
    limit_seconds: float = 120,
) -> int:
    """Create the Job's pod, run its one container here, report the outcome; the exit code.

    ``volumes`` maps the pod's volume names to local directories; volumes not named get a
    fresh temporary directory beside the first one given.
    """
    pod_name = await create_job_pod(api, namespace, job_name)
    core = k8s.CoreV1Api(api)
    pod = api.sanitize_for_serialization(await core.read_namespaced_pod(pod_name, namespace))
    (container,) = pod["spec"]["containers"]
    scratch = next(iter(volumes.values())).parent / f"scratch-{pod_name}"
    by_volume = {
        v["name"]: volumes.get(v["name"], scratch / v["name"]) for v in pod["spec"]["volumes"]
    }
    mounts = {m["mountPath"]: by_volume[m["name"]] for m in container.get("volumeMounts") or []}
    for directory in mounts.values():
        directory.mkdir(parents=True, exist_ok=True)
    env = await _resolve_env(api, namespace, container, mounts)
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    env["HOME"] = str(scratch)
    command = [*container.get("command", []), *container.get("args", [])]
    if command and command[0] == "modelplane":
        command = [sys.executable, "-m", "modelplane", *command[1:]]
    started = _now()
    await _patch_job_status(api, namespace, job_name, {"startTime": started, "active": 1})
    await _patch_pod_status(
        api,
        namespace,
        pod_name,
        {
            "phase": "Running",
            "startTime": started,
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": "",
                    "ready": True,
                    "restartCount": 0,
                    "started": True,
                    "state": {"running": {"startedAt": started}},
                }
            ],
        },
    )
    process = await asyncio.create_subprocess_exec(
        *command, env=env, cwd=str(scratch.parent), stdin=asyncio.subprocess.DEVNULL
    )
    try:
        code = await asyncio.wait_for(process.wait(), limit_seconds)
    except TimeoutError:
        process.kill()
        code = await process.wait()
    finished = _now()
    await _patch_pod_status(
        api,
        namespace,
        pod_name,
        {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": code,
                            "reason": "Completed" if code == 0 else "Error",
                            "startedAt": started,
                            "finishedAt": finished,
                        }
                    },
                }
            ],
        },
    )
    if code == 0:
        await _patch_job_status(
            api,
            namespace,
            job_name,
            {
                "active": 0,
                "succeeded": 1,
                "ready": 0,
                "terminating": 0,
                "completionTime": finished,
                "conditions": [
                    _condition("SuccessCriteriaMet", "CompletionsReached", "Reached completions"),
                    _condition("Complete", "CompletionsReached", "Reached completions"),
                ],
            },
        )
    else:
        await fail_job(
            api,
            namespace,
            job_name,
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        )
    return code


async def fail_job(
    api: k8s.ApiClient, namespace: str, job_name: str, reason: str, message: str
) -> None:
    """Mark a Job failed the way the Job controller does (FailureTarget, then Failed)."""
    await _patch_job_status(
        api,
        namespace,
        job_name,
        {
            "active": 0,
            "failed": 1,
            "ready": 0,
            "terminating": 0,
            "startTime": _now(),
            "conditions": [
                _condition("FailureTarget", reason, message),
                _condition("Failed", reason, message),
            ],
        },
    )


async def set_waiting(
    api: k8s.ApiClient, namespace: str, pod_name: str, reason: str, message: str
) -> None:
    """Report the pod's container as waiting (e.g. ImagePullBackOff), as the kubelet does."""
    core = k8s.CoreV1Api(api)
    pod = await core.read_namespaced_pod(pod_name, namespace)
    container = pod.spec.containers[0]
    await _patch_pod_status(
        api,
        namespace,
        pod_name,
        {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": container.name,
                    "image": container.image,
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": reason, "message": message}},
                }
            ],
        },
    )


async def set_unschedulable(
    api: k8s.ApiClient, namespace: str, pod_name: str, message: str
) -> None:
    """Report the pod as unschedulable, as the scheduler does."""
    await _patch_pod_status(
        api,
        namespace,
        pod_name,
        {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                    "lastTransitionTime": _now(),
                }
            ],
        },
    )
