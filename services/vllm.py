"""vLLM compatibility of a hub repo or a catalogue model: is its architecture served, since which
vLLM release, and the flags to start it with on each GPU type.

One use case, :meth:`VllmService.compatibility`, the function other use cases call too (the
catalogue generates entries with it). It gathers the facts exactly as ``gpuFit`` does
(:meth:`services.cluster.ClusterService.facts`: the same input checks, hub reads, GPU offers)
and derives the flags from the same estimate (:mod:`services.vllm_flags`), so the two answers
cannot disagree. The architecture is looked up in the table kept in the repo
(:mod:`services.vllm_support`).

``huggingFaceSearch(vllmCompatible:)`` is decided by the architectures of the config summary
the hub returns with each search result (``config.json``'s ``architectures``; the hub's tags do
not say which engine serves a repo): one hub request for ``vllm_search_scan`` results instead of
``limit``, filtered here, no request per repo. A repo without ``config.json`` (GGUF-only, say)
counts as not compatible.

Refusals name the argument: no ``config.json`` (vLLM cannot pick an architecture without it)
on ``repoId``/``modelId``; a context above the model's maximum (vLLM refuses a longer
``--max-model-len``) on ``contextLength``; an unknown GPU type on ``gpuType``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from integrations.huggingface import HubModel
from services.cluster import ClusterService, FitFacts
from services.errors import InvalidInput
from services.fitting import FitEstimate, ShapeUnknown
from services.models import ModelService
from services.principals import Principal
from services.vllm_flags import VllmFlags, plan_flags, quantization_method
from services.vllm_support import ArchitectureSupport, SupportTable, support_table
from storage.documents import InferenceEngine

DEFAULT_SEARCH_SCAN = 200
"""Hub results a filtered search looks through (the ``vllm_search_scan`` setting)."""


@dataclass(frozen=True, slots=True)
class VllmCompatibility:
    """The answer for one model."""

    architectures: tuple[str, ...]
    """The ``architectures`` of its ``config.json``, in order."""
    support: ArchitectureSupport | None
    """The first of them vLLM serves (by the table); None when none is known."""
    quantization: str | None
    fit: FitEstimate
    """The GPU fit the flags were read from (what ``gpuFit`` answers for VLLM)."""
    flags: tuple[VllmFlags, ...]
    """One per GPU type of the fit; empty when the architecture is not supported."""
    notes: tuple[str, ...]
    table: SupportTable

    @property
    def supported(self) -> bool:
        """True when vLLM serves one of the architectures."""
        return self.support is not None

    @property
    def chosen(self) -> VllmFlags | None:
        """The flags for the fit's chosen GPU type (the requested one, else the best: fits
        now, then fewest GPUs, then the smallest), for a catalogue entry's recommended
        command; None when not supported or nothing fits."""
        if self.fit.chosen is None:
            return None
        wanted = self.fit.chosen.gpu_type
        found = next((f for f in self.flags if f.gpu_type == wanted), None)
        return found if found is not None and found.servable else None


class VllmService:
    """Answers vLLM compatibility questions from the GPU fit's facts and the support table."""

    def __init__(
        self,
        *,
        cluster: ClusterService,
        models: ModelService,
        search_scan: int = DEFAULT_SEARCH_SCAN,
        table: SupportTable | None = None,
    ) -> None:
        self._cluster = cluster
        self._models = models
        self._scan = search_scan
        self._table = table or support_table()

    def serves(self, model: HubModel) -> bool:
        """True when the hub says the repo's ``config.json`` lists an architecture vLLM serves
        (the hub's config summary: no extra request)."""
        return self._table.find(model.architectures) is not None

    async def search(
        self, principal: Principal, query: str, *, limit: int, compatible: bool
    ) -> list[HubModel]:
        """``huggingFaceSearch`` filtered on :meth:`serves` (``compatible``) or its opposite:
        one hub request for ``search_scan`` results, the first ``limit`` that pass."""
        found = await self._models.hub_search(principal, query, limit=limit, scan=self._scan)
        return [m for m in found if self.serves(m) is compatible][:limit]

    @property
    def table(self) -> SupportTable:
        """The architectures table in use."""
        return self._table

    async def compatibility(
        self,
        principal: Principal,
        *,
        model_id: str | None = None,
        repo_id: str | None = None,
        revision: str | None = None,
        gpu_type: str | None = None,
        context_length: int | None = None,
    ) -> VllmCompatibility:
        """Whether vLLM serves the model (``model_id``) or hub repo (``repo_id``), and the
        flags per GPU type (only ``gpu_type`` when given; else the cluster's types, or the
        catalogue of common GPUs when it has none)."""
        try:
            facts = await self._cluster.facts(
                principal,
                model_id=model_id,
                repo_id=repo_id,
                revision=revision,
                engine=InferenceEngine.VLLM,
                gpu_type=gpu_type,
                context_length=context_length,
            )
        except InvalidInput as exc:
            if exc.field != "engine":  # a REMOTE_API model: no engine argument here
                raise
            raise InvalidInput("modelId", "a REMOTE_API model has no weights for vLLM") from None
        return self.from_facts(facts, context_length=context_length)

    def from_facts(self, facts: FitFacts, *, context_length: int | None) -> VllmCompatibility:
        """The answer for facts already gathered (pure)."""
        if facts.config is None:
            why = ("config.json", "the hub could not be asked")
            reason = next((n for n in facts.notes if n.startswith(why)), None)
            raise InvalidInput(
                facts.field,
                f"{reason or 'config.json could not be read'}: vLLM picks the architecture "
                "from its `architectures`",
            )
        architectures = _architectures(facts.config.get("architectures"))
        if not architectures:
            raise InvalidInput(facts.field, "config.json lists no `architectures`")
        maximum = facts.shape.max_context
        if context_length is not None and maximum is not None and context_length > maximum:
            raise InvalidInput(
                "contextLength",
                f"vLLM refuses a --max-model-len above the model's maximum of {maximum} tokens",
            )
        support = self._table.find(architectures)
        try:
            plan = plan_flags(
                facts.shape,
                offers=facts.offers,
                config=facts.config,
                context_length=context_length,
                requested_type=facts.requested_type,
            )
        except ShapeUnknown as exc:
            raise InvalidInput(facts.field, str(exc)) from None
        fit = dataclasses.replace(
            plan.fit, notes=tuple(dict.fromkeys([*facts.notes, *plan.fit.notes]))
        )
        notes = list(plan.notes)
        if support is None:
            notes.insert(
                0,
                f"{', '.join(architectures)}: not in modelplane's table of vLLM architectures "
                f"(checked against vLLM {self._table.latest_checked} on {self._table.checked})",
            )
        return VllmCompatibility(
            architectures=architectures,
            support=support,
            quantization=quantization_method(facts.config),
            fit=fit,
            flags=plan.flags if support is not None else (),
            notes=tuple(notes),
            table=self._table,
        )


def _architectures(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, Sequence):
        return ()
    return tuple(item for item in value if isinstance(item, str) and item)
