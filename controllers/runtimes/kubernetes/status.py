"""An inference's status from what Kubernetes reports (pure, table-tested).

:func:`derive_status` reads the Deployment, the pods of the current generation and the recent
events of those pods and their ReplicaSet, and says what a person needs to hear: not
"Creating" while the truth is "no GPU free". Checks run from the most specific to the least:

1. all wanted replicas ready -> RUNNING;
2. an image that cannot be pulled, or a container that cannot be created (missing Secret
   key) -> FAILED, with the kubelet's words;
3. a container in CrashLoopBackOff -> CRASH_LOOP_BACK_OFF, naming the last end (OOMKilled with
   the memory limit, or the exit code);
4. a pod the scheduler cannot place -> PENDING; for GPUs "insufficient nvidia.com/gpu (needs
   2, largest free 1)", from the scheduler's message and the cluster's free GPUs;
5. the ReplicaSet cannot create pods (quota, admission) -> FAILED;
6. a volume that does not mount -> PENDING with the kubelet's message;
7. init steps running (model pull, S3 sync), containers being created, readiness probes
   failing after the initial delay -> CREATING with that as the reason;
8. the Deployment's progress deadline passed -> FAILED.

:func:`workload_counts` adds the Deployment's own figures (current, available and updated
replicas, its conditions) to whatever the checks said.

Inputs are the API's JSON (camelCase dictionaries), so tests write them as the API server
would send them.
"""

from __future__ import annotations

import re
from typing import Any

from controllers.inference.workloads import Observed, WorkloadCounts
from controllers.runtimes.kubernetes.manifests import GENERATION, GPU_RESOURCE
from storage.documents import InferencePhase, WorkloadCondition

Obj = dict[str, Any]
__all__ = ["Observed", "current_pods", "derive_status", "workload_counts"]

_IMAGE_FAILURES = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
_CREATE_FAILURES = frozenset({"CreateContainerConfigError", "CreateContainerError"})
_INSUFFICIENT_GPU = re.compile(r"Insufficient " + re.escape(GPU_RESOURCE))


def _get(obj: Obj | None, *path: str) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(key)
    return cur


def current_pods(pods: list[Obj], generation: int | None) -> list[Obj]:
    """Pods of the current generation (every pod when ``generation`` is None: an unmanaged
    Deployment carries no generation of ours) that are not being deleted."""
    wanted = None if generation is None else str(generation)
    return [
        pod
        for pod in pods
        if (wanted is None or _get(pod, "metadata", "annotations", GENERATION) == wanted)
        and not _get(pod, "metadata", "deletionTimestamp")
    ]


def _statuses(pod: Obj, key: str = "containerStatuses") -> list[Obj]:
    return list(_get(pod, "status", key) or [])


def _container(pod: Obj, name: str, key: str = "containers") -> Obj:
    for container in _get(pod, "spec", key) or []:
        if container.get("name") == name:
            return dict(container)
    return {}


def _describe_end(pod: Obj, status: Obj) -> str:
    """'OOMKilled (exit code 137), memory limit 2Gi' or 'Error (exit code 1)'."""
    ended = _get(status, "lastState", "terminated") or _get(status, "state", "terminated") or {}
    reason = ended.get("reason") or "exited"
    text = f"{reason} (exit code {ended.get('exitCode', '?')})"
    if reason == "OOMKilled":
        spec = _container(pod, str(status.get("name")))
        limit = _get(spec, "resources", "limits", "memory")
        if limit:
            text += f", memory limit {limit}"
    return text


def _events_for(events: list[Obj], names: set[str]) -> list[Obj]:
    found = [e for e in events if _get(e, "involvedObject", "name") in names]
    return sorted(found, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))


def _gpu_message(needed: int, largest_free: int | None) -> str:
    if largest_free is None:
        return f"insufficient {GPU_RESOURCE} (needs {needed} on one node)"
    return f"insufficient {GPU_RESOURCE} (needs {needed}, largest free {largest_free})"


def _unschedulable(
    pods: list[Obj], events: list[Obj], requested_gpus: int, largest_free: int | None
) -> tuple[str, str] | None:
    for pod in pods:
        for condition in _get(pod, "status", "conditions") or []:
            if (
                condition.get("type") == "PodScheduled"
                and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"
            ):
                text = str(condition.get("message") or "")
                if _INSUFFICIENT_GPU.search(text):
                    return "InsufficientGPU", _gpu_message(requested_gpus, largest_free)
                return "Unschedulable", text or "no node can run the pod"
    names = {str(_get(p, "metadata", "name")) for p in pods if not _get(p, "spec", "nodeName")}
    for event in reversed(_events_for(events, names)):
        if event.get("reason") == "FailedScheduling":
            text = str(event.get("message") or "")
            if _INSUFFICIENT_GPU.search(text):
                return "InsufficientGPU", _gpu_message(requested_gpus, largest_free)
            return "Unschedulable", text
    return None


def _init_state(pods: list[Obj]) -> Observed | None:
    for pod in pods:
        for status in _statuses(pod, "initContainerStatuses"):
            name = status.get("name")
            waiting = _get(status, "state", "waiting") or {}
            if waiting.get("reason") in _IMAGE_FAILURES:
                return Observed(
                    InferencePhase.FAILED,
                    str(waiting.get("reason")),
                    f"init step {name}: image {status.get('image')} cannot be pulled: "
                    f"{waiting.get('message') or waiting.get('reason')}",
                )
            if waiting.get("reason") == "CrashLoopBackOff":
                return Observed(
                    InferencePhase.CRASH_LOOP_BACK_OFF,
                    "InitCrashLoopBackOff",
                    f"init step {name} keeps failing: {_describe_end(pod, status)}",
                )
            if _get(status, "state", "running") is not None:
                return Observed(
                    InferencePhase.CREATING, "Initializing", f"init step {name} is running"
                )
    return None


def _container_failure(pods: list[Obj]) -> Observed | None:
    for pod in pods:
        for status in _statuses(pod):
            waiting = _get(status, "state", "waiting") or {}
            reason = waiting.get("reason")
            if reason in _IMAGE_FAILURES:
                return Observed(
                    InferencePhase.FAILED,
                    str(reason),
                    f"image {status.get('image')} cannot be pulled: "
                    f"{waiting.get('message') or reason}",
                )
            if reason in _CREATE_FAILURES:
                return Observed(
                    InferencePhase.FAILED, str(reason), str(waiting.get("message") or reason)
                )
    for pod in pods:
        for status in _statuses(pod):
            if _get(status, "state", "waiting", "reason") == "CrashLoopBackOff":
                last = _get(status, "lastState", "terminated", "reason")
                return Observed(
                    InferencePhase.CRASH_LOOP_BACK_OFF,
                    "OOMKilled" if last == "OOMKilled" else "CrashLoopBackOff",
                    f"container {status.get('name')} restarted {status.get('restartCount', 0)} "
                    f"times; last end: {_describe_end(pod, status)}",
                )
    return None


def _starting(
    pods: list[Obj], events: list[Obj], initial_delay: int, ready: int, desired: int
) -> Observed:
    names = {str(_get(p, "metadata", "name")) for p in pods}
    recent = _events_for(events, names)
    for event in reversed(recent):
        if event.get("reason") in {"FailedMount", "FailedAttachVolume"}:
            return Observed(InferencePhase.PENDING, "FailedMount", str(event.get("message")))
    for pod in pods:
        for status in _statuses(pod):
            waiting = _get(status, "state", "waiting") or {}
            if waiting.get("reason") == "ContainerCreating":
                return Observed(
                    InferencePhase.CREATING,
                    "ContainerCreating",
                    "the engine container is being created",
                )
            last = _get(status, "lastState", "terminated", "reason")
            if last == "OOMKilled" and not status.get("ready"):
                return Observed(
                    InferencePhase.CREATING,
                    "OOMKilled",
                    f"restarting after {_describe_end(pod, status)}",
                )
    probe_failures = [
        e
        for e in recent
        if e.get("reason") == "Unhealthy" and "Readiness probe failed" in str(e.get("message"))
    ]
    if probe_failures:
        return Observed(
            InferencePhase.CREATING,
            "ReadinessProbeFailed",
            str(probe_failures[-1].get("message")),
        )
    if not pods:
        return Observed(InferencePhase.CREATING, "Starting", "waiting for pods to be created")
    return Observed(
        InferencePhase.CREATING,
        "NotReady",
        f"{ready}/{desired} replicas ready; the engine answers its health check after loading "
        f"the model (readiness checks start after {initial_delay} s)",
    )


def derive_status(  # noqa: PLR0911  checks in the docstring order, one return each
    deployment: Obj | None,
    pods: list[Obj],
    events: list[Obj],
    *,
    generation: int | None,
    requested_gpus: int,
    initial_delay: int,
    largest_free_gpus: int | None = None,
) -> Observed:
    """The inference's phase, reason and message from its objects (module docstring order)."""
    if deployment is None:
        return Observed(InferencePhase.CREATING, "Applying", "the Deployment is being created")
    wanted = _get(deployment, "spec", "replicas")
    desired = int(wanted if wanted is not None else 1)
    ready = int(_get(deployment, "status", "readyReplicas") or 0)
    mine = current_pods(pods, generation)
    counts = (desired, ready)
    up_to_date = int(_get(deployment, "status", "observedGeneration") or 0) >= int(
        _get(deployment, "metadata", "generation") or 0
    )
    ready_now = sum(
        1
        for pod in mine
        for c in _get(pod, "status", "conditions") or []
        if c.get("type") == "Ready" and c.get("status") == "True"
    )
    if desired > 0 and ready >= desired and up_to_date and ready_now >= desired:
        return Observed(InferencePhase.RUNNING, None, f"{ready}/{desired} replicas ready", *counts)
    for check in (_container_failure(mine), _init_state_failure(mine)):
        if check is not None:
            return _with(check, counts)
    unschedulable = _unschedulable(mine, events, requested_gpus, largest_free_gpus)
    if unschedulable is not None:
        return Observed(InferencePhase.PENDING, *unschedulable, *counts)
    for event in reversed(events):
        if (
            _get(event, "involvedObject", "kind") == "ReplicaSet"
            and event.get("reason") == "FailedCreate"
        ):
            return Observed(
                InferencePhase.FAILED, "FailedCreate", str(event.get("message")), *counts
            )
    for condition in _get(deployment, "status", "conditions") or []:
        if condition.get("reason") == "ProgressDeadlineExceeded":
            return Observed(
                InferencePhase.FAILED,
                "ProgressDeadlineExceeded",
                str(condition.get("message") or "the rollout did not progress in time"),
                *counts,
            )
    initializing = _init_state(mine)
    if initializing is not None:
        return _with(initializing, counts)
    return _with(_starting(mine, events, initial_delay, ready, desired), counts)


def workload_counts(deployment: Obj | None) -> WorkloadCounts | None:
    """The Deployment's own figures (002's deployment status): replicas that exist,
    available and updated ones, and its conditions without their timestamps. None before the
    Deployment exists."""
    if deployment is None:
        return None
    status = _get(deployment, "status") or {}
    conditions = tuple(
        WorkloadCondition(
            type=str(condition.get("type")),
            status=str(condition.get("status")),
            reason=condition.get("reason"),
            message=condition.get("message"),
        )
        for condition in status.get("conditions") or []
    )
    return WorkloadCounts(
        current=int(status.get("replicas") or 0),
        available=int(status.get("availableReplicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        conditions=conditions,
    )


def _init_state_failure(pods: list[Obj]) -> Observed | None:
    state = _init_state(pods)
    if state is not None and state.phase is not InferencePhase.CREATING:
        return state
    return None


def _with(observed: Observed, counts: tuple[int, int]) -> Observed:
    return Observed(observed.phase, observed.reason, observed.message, *counts)
