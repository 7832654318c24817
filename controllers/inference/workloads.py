"""The seam between the inference controller, the API and the runtimes.

Two objects per runtime, each with one implementation in the runtime's own package
(:mod:`controllers.runtimes.kubernetes.inference`, :mod:`controllers.runtimes.local.inference`):

* :class:`InferenceRuntime` -- what the API needs from the runtime, built in **every** replica
  (leading or not, controllers on or off): the workload plan (the same pure planner the
  controller uses, so a dry run and a refused spec answer as the leader would), the rendered
  objects of a dry run, the engine's logs and the labelled Deployments without a document. It
  reads the runtime (the API server, the engines' log files), never a controller's memory, so a
  replica that does not lead answers like the one that does (docs/architecture.md, decision 3).
* :class:`InferenceExecutor` -- what the leader's controller drives: apply, observe, remove,
  watch. Only the controller holds one.

:class:`WorkloadPlanner` is the plan computation both share: it reads the weights document and
calls :func:`~controllers.inference.engines.plan_engine`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from controllers.inference.engines import (
    EngineImages,
    EnginePlan,
    EnginePlanError,
    host_program_field,
    plan_engine,
)
from storage.documents import (
    AutoscalerStatus,
    InferenceDocument,
    InferencePhase,
    ModelDocument,
    ModelPhase,
    WorkloadCondition,
)
from storage.repositories import WeightsRepository

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Observed:
    """What the runtime says about an inference, ready to be written to its document."""

    phase: InferencePhase
    reason: str | None = None
    message: str | None = None
    replicas: int = 0
    """Wanted (a Deployment's ``spec.replicas``, which an autoscaler sets)."""
    ready_replicas: int = 0
    counts: WorkloadCounts | None = None
    """The workload's own figures; None where nothing was observed (a route, a stop)."""


@dataclass(frozen=True, slots=True)
class WorkloadCounts:
    """What the runtime reports about a workload beyond wanted and ready; None: unknown."""

    current: int | None = None
    available: int | None = None
    updated: int | None = None
    conditions: tuple[WorkloadCondition, ...] | None = None
    autoscaler: AutoscalerStatus | None = None
    """The autoscaler's own status (Kubernetes: the HPA's or AIBrix's); None without one."""


@dataclass(frozen=True, slots=True)
class WorkloadPlan:
    """What to apply for an inference: a managed engine plan, or an unmanaged manifest."""

    engine: EnginePlan | None
    port: int
    gpu: int = 0
    """GPUs per replica (what an unschedulable message says is needed)."""


class WeightsGone(EnginePlanError):
    """The model is READY but its weights document is gone (deleted meanwhile)."""

    def __init__(self) -> None:
        super().__init__(
            "modelId",
            "the model's weights are gone; retryDownload, and the inference starts when they "
            "are READY",
        )


def manifest_plan(inference: InferenceDocument) -> WorkloadPlan:
    """The plan of an unmanaged inference, or of one applied already (observe only)."""
    return WorkloadPlan(engine=None, port=inference.spec.port, gpu=inference.spec.gpu)


class WorkloadPlanner:
    """The engine plan of an inference on one runtime (``local`` or not)."""

    def __init__(
        self,
        *,
        weights: WeightsRepository,
        images: EngineImages,
        local: bool,
        pvc_mount_path: str = "/weights",
        allow_host_commands: bool = False,
    ) -> None:
        self._weights = weights
        self._images = images
        self._local = local
        self._pvc_mount_path = pvc_mount_path
        self._allow_host_commands = allow_host_commands

    async def plan(self, inference: InferenceDocument, model: ModelDocument | None) -> WorkloadPlan:
        """The engine plan (managed) or the manifest (unmanaged); raises EnginePlanError
        (:class:`WeightsGone` when the model is READY without its weights document)."""
        if not inference.managed or model is None:
            return manifest_plan(inference)
        where = host_program_field(inference.spec) if self._local else None
        if where is not None and not self._allow_host_commands:
            # Stored before the setting was turned off: the service refuses new ones.
            raise EnginePlanError(
                where, f"{where}: programs of the user's choice are not allowed on this host"
            )
        weights = await self._weights.get(model.weights_id) if model.weights_id else None
        if model.weights_id and weights is None and model.phase is ModelPhase.READY:
            raise WeightsGone
        engine = plan_engine(
            inference.spec,
            model,
            weights,
            local=self._local,
            images=self._images,
            secret_name=None if self._local else model.secret_ref,
            pvc_mount_path=self._pvc_mount_path,
        )
        return WorkloadPlan(engine=engine, port=engine.port, gpu=engine.gpu)


class InferenceRuntime(Protocol):
    """What the API needs from the runtime; built in every replica."""

    kind: str

    async def plan(self, inference: InferenceDocument, model: ModelDocument | None) -> WorkloadPlan:
        """The plan the controller would apply; raises EnginePlanError."""

    async def render(self, inference: InferenceDocument, plan: WorkloadPlan) -> list[Obj]:
        """What applying ``plan`` would write (dry runs); writes nothing."""

    async def logs(self, inference: InferenceDocument, tail: int) -> list[str]:
        """The engine's last ``tail`` log lines, read from the runtime."""

    async def unmanaged(self) -> list[Obj]:
        """Deployments with our labels (the service keeps those without a document)."""

    async def name_taken(self, name: str, owner_id: str) -> bool:
        """Whether the runtime holds a workload object called ``name`` that is not
        ``owner_id``'s (the service then names the inference otherwise)."""


class InferenceExecutor(Protocol):
    """Runs inference workloads for the leader's controller."""

    kind: str

    def watch(self, notify: Callable[[str], None]) -> None:
        """Start reporting workload changes as inference ids to look at."""

    async def ready(self) -> bool:
        """True once the executor's view of the runtime is complete (caches synced)."""

    async def present(self, inference: InferenceDocument) -> bool:
        """True when the inference's workload exists (at the document's generation)."""

    async def exists(self, inference: InferenceDocument) -> bool:
        """True while anything of the inference's workload is left (any generation)."""

    async def apply(self, inference: InferenceDocument, plan: WorkloadPlan) -> None:
        """Create or update the workload; idempotent. Raises
        :class:`~controllers.errors.PermanentError` when the runtime refuses it for good,
        :class:`~controllers.errors.TemporaryError` when trying again may help."""

    async def observe(self, inference: InferenceDocument, plan: WorkloadPlan) -> Observed:
        """The workload's status."""

    async def remove(self, inference: InferenceDocument) -> bool:
        """Delete the workload; True once nothing of it is left. Idempotent."""

    def endpoint(self, inference: InferenceDocument, port: int) -> str:
        """The OpenAI base URL the workload answers on."""

    async def release_all(self) -> None:
        """This replica stopped leading (local processes stop; cluster objects stay)."""

    async def close(self) -> None:
        """Stop everything started here."""
