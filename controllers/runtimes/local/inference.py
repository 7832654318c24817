"""Inference on the local runtime: engines as supervised subprocesses, bound to loopback.

:class:`LocalInferenceExecutor` is the leader's (it owns the
:class:`~controllers.runtimes.local.processes.ProcessSupervisor`); :class:`LocalInferenceRuntime`
is built in every replica for the API: the plan, a dry run's process description and the
engine's log, read from the log files the supervisor appends to (not from its memory, which only
the leader has).

Errors at this boundary are typed: a program that cannot be spawned (not found, not executable,
a spec that cannot run) makes :meth:`LocalInferenceExecutor.apply` raise
:class:`~controllers.errors.PermanentError` with the supervisor's reason, so the inference is
FAILED once; a busy port or a transient spawn error (EAGAIN, ENOMEM) is the supervisor's
backoff, reported as CREATING with its reason (``PortInUse``) while it retries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from controllers.errors import PermanentError
from controllers.inference.engines import EnginePlan
from controllers.inference.workloads import (
    Obj,
    Observed,
    WorkloadCounts,
    WorkloadPlan,
    WorkloadPlanner,
)
from controllers.runtimes.local.logfiles import tail_lines
from controllers.runtimes.local.processes import (
    ProcessPhase,
    ProcessSpec,
    ProcessStatus,
    ProcessSupervisor,
)
from controllers.runtimes.secrets import SecretStore, SecretStoreError
from storage.documents import InferenceDocument, InferencePhase, ModelDocument
from storage.repositories import ModelRepository

SPAWN_REFUSED = frozenset({"InvalidSpec", "ProgramNotFound", "PermissionDenied", "StartError"})
"""Supervisor reasons of a process that cannot be spawned at all (no retry loop)."""


def _engine(plan: WorkloadPlan) -> EnginePlan:
    engine = plan.engine
    assert engine is not None  # noqa: S101  manifests are refused on the local runtime
    return engine


def process_spec(
    inference: InferenceDocument,
    plan: WorkloadPlan,
    work_dir: Path,
    env: dict[str, str],
    *,
    write: bool,
) -> ProcessSpec:
    """The process an inference's plan runs; ``write`` creates its directory and config files
    (a dry run writes nothing)."""
    engine = _engine(plan)
    cwd = work_dir / inference.id
    if write:
        cwd.mkdir(parents=True, exist_ok=True)
    argv = list(engine.argv)
    for name, content in engine.config_files.items():
        path = cwd / name
        if write:
            path.write_text(content)
        argv = [str(path) if a.endswith("/" + name) else a for a in argv]
    return ProcessSpec(
        argv=argv,
        env=env,
        cwd=cwd,
        port=plan.port,
        health_path=engine.health_path,
        initial_delay_seconds=0.0,
        startup_timeout_seconds=max(600.0, float(inference.spec.initial_delay_seconds) * 10),
        reads=() if engine.weights is None else (Path(engine.weights.path),),
    )


class LocalInferenceRuntime:
    """What the API reads about local engines, in every replica on this host."""

    kind = "local"

    def __init__(self, *, planner: WorkloadPlanner, work_dir: Path, log_dir: Path) -> None:
        self._planner = planner
        self._work_dir = work_dir
        self._log_dir = log_dir

    async def plan(self, inference: InferenceDocument, model: ModelDocument | None) -> WorkloadPlan:
        return await self._planner.plan(inference, model)

    async def render(self, inference: InferenceDocument, plan: WorkloadPlan) -> list[Obj]:
        names = {var.name: "" for var in _engine(plan).env}
        spec = process_spec(inference, plan, self._work_dir, names, write=False)
        return [
            {
                "kind": "LocalProcess",
                "argv": spec.argv,
                "env": sorted(spec.env),
                "cwd": str(spec.cwd),
                "port": spec.port,
                "healthPath": spec.health_path,
            }
        ]

    async def logs(self, inference: InferenceDocument, tail: int) -> list[str]:
        return tail_lines(self._log_dir / f"{inference.id}.log", tail)

    async def unmanaged(self) -> list[Obj]:
        return []

    async def name_taken(self, name: str, owner_id: str) -> bool:
        del name, owner_id  # local engines are keyed by inference id: no name can clash
        return False


class LocalInferenceExecutor:
    """Engines as supervised subprocesses on this machine, bound to loopback."""

    kind = "local"

    def __init__(
        self,
        *,
        supervisor: ProcessSupervisor,
        work_dir: Path,
        models: ModelRepository,
        secrets: SecretStore,
    ) -> None:
        self._supervisor = supervisor
        self._work_dir = work_dir
        self._models = models
        self._secrets = secrets

    async def _env(self, inference: InferenceDocument, plan: EnginePlan) -> dict[str, str]:
        """Literal values, and secret references resolved from the model's stored secret."""
        env: dict[str, str] = {}
        stored: dict[str, str] | None = None
        for var in plan.env:
            if var.value is not None:
                env[var.name] = var.value
                continue
            if stored is None:
                model = await self._models.get(inference.model_id or "")
                stored = {}
                if model is not None and model.secret_ref:
                    with contextlib.suppress(SecretStoreError):
                        stored = await self._secrets.get(model.secret_ref)
            if var.secret_key in stored:
                env[var.name] = stored[var.secret_key or ""]
        return env

    def watch(self, notify: Callable[[str], None]) -> None:
        del notify  # the supervisor was built with the controller's notify

    async def ready(self) -> bool:
        return True

    async def present(self, inference: InferenceDocument) -> bool:
        status = self._supervisor.status(inference.id)
        return status is not None and status.phase is not ProcessPhase.STOPPED

    async def exists(self, inference: InferenceDocument) -> bool:
        return await self.present(inference)

    async def apply(self, inference: InferenceDocument, plan: WorkloadPlan) -> None:
        env = await self._env(inference, _engine(plan))
        spec = process_spec(inference, plan, self._work_dir, env, write=True)
        status = await self._supervisor.ensure(inference.id, spec)
        if status.phase is ProcessPhase.FAILED and status.reason in SPAWN_REFUSED:
            # Decided before a spawn: the program is missing, or the spec cannot run.
            raise PermanentError(status.reason, status.message or status.reason)

    async def observe(self, inference: InferenceDocument, plan: WorkloadPlan) -> Observed:
        del plan  # the supervisor knows the process it runs
        status = self._supervisor.status(inference.id)
        if status is None:
            return Observed(
                InferencePhase.CREATING, "Starting", "the engine process is starting", 1, 0
            )
        return process_observed(status)

    async def remove(self, inference: InferenceDocument) -> bool:
        await self._supervisor.stop(inference.id)
        return True

    def endpoint(self, inference: InferenceDocument, port: int) -> str:
        del inference
        return f"http://127.0.0.1:{port}/v1"

    async def release_all(self) -> None:
        for key in list(self._supervisor.keys()):  # stop() changes the set
            await self._supervisor.stop(key)

    async def close(self) -> None:
        await self._supervisor.close()


def process_observed(status: ProcessStatus) -> Observed:
    """A supervised process's status in inference terms, with its counts (one replica)."""
    observed = _process_phase(status)
    alive = 0 if status.phase is ProcessPhase.STOPPED else 1
    counts = WorkloadCounts(
        current=alive, available=observed.ready_replicas, updated=alive, conditions=None
    )
    return replace(observed, counts=counts)


def _process_phase(status: ProcessStatus) -> Observed:
    ready = 1 if status.ready else 0
    if status.phase is ProcessPhase.RUNNING and status.ready:
        return Observed(
            InferencePhase.RUNNING, None, f"pid {status.pid}, answering its health check", 1, ready
        )
    if status.phase is ProcessPhase.CRASH_LOOP:
        return Observed(
            InferencePhase.CRASH_LOOP_BACK_OFF,
            status.reason or "CrashLoopBackOff",
            status.message,
            1,
            ready,
        )
    if status.phase is ProcessPhase.FAILED:
        return Observed(InferencePhase.FAILED, status.reason or "Failed", status.message, 1, ready)
    if status.phase is ProcessPhase.STOPPED:
        return Observed(InferencePhase.STOPPED, None, status.message, 0, 0)
    return Observed(
        InferencePhase.CREATING,
        status.reason or ("Restarting" if status.phase is ProcessPhase.BACKOFF else "Starting"),
        status.message or "waiting for the engine to answer its health check",
        1,
        ready,
    )
