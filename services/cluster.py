"""The cluster as a place to serve models: its status, and whether a model fits its GPUs.

``status`` reads the runtime's inventory (:mod:`controllers.runtimes.inventory`). ``fit`` gathers
what
the hub says about a checkpoint (the safetensors summary of parameters per dtype from the
model info, and ``config.json``) and hands it, with the GPU types on offer, to the pure
estimator (:mod:`services.fitting`). :meth:`ClusterService.fit_for_model` is the part other
use cases call (``startInference(dryRun: true)``).

The safetensors summary comes with the model info the hub computes from every shard's header:
one request, where ``get_safetensors_metadata`` would make two or more per shard and write the
shard index into the local hub cache. When the summary is missing, the parameter count and
then the weight files' sizes stand in (the estimate notes it). For a catalogue model whose
hub cannot be reached, the facts recorded when it was added are used.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controllers.runtimes.base import Runtime
from controllers.runtimes.inventory import (
    GPU_CATALOGUE,
    ClusterInventory,
    ClusterOffer,
    gpu_product,
    read_inventory,
    read_offer,
)
from controllers.runtimes.secrets import HF_TOKEN_KEY, SecretStore, SecretStoreError
from integrations.huggingface import (
    HubAccessDenied,
    HubClient,
    HubError,
    HubFile,
    HubRepoNotFound,
    HubRevisionNotFound,
)
from services import validation as v
from services.errors import InvalidInput, Missing
from services.fitting import FitEstimate, GpuOffer, ModelShape, ShapeUnknown, estimate
from services.models import ModelService
from services.offers import check_offer
from services.principals import Principal
from storage.documents import AccessMode, InferenceEngine, InferenceSpec, ModelDocument, Role

log = logging.getLogger(__name__)

MAX_CONTEXT_LENGTH = 10_000_000
MAX_BATCH_SIZE = 4096
OFFER_SECONDS = 5.0
"""How long one reading of what the runtime can offer (nodes, installed CRDs) is used to accept
a start; a refusal always reads it again."""
WEIGHT_SUFFIXES: tuple[tuple[str, ...], ...] = (
    (".safetensors",),
    (".bin", ".pt", ".pth"),
    (".gguf",),
)
"""Weight files by preference: a repo shipping both formats is served from safetensors. GGUF
(llama.cpp, Ollama) comes last: the hub gives no parameter count for it, so without this its
fit was unknown (a repo of several quantisations counts them all: an upper bound)."""


class ClusterService:
    """Use cases about the cluster: its status and model fit."""

    def __init__(
        self,
        *,
        runtime: Runtime,
        hub: HubClient,
        models: ModelService,
        secrets: SecretStore,
        hub_endpoint: str,
        refuse_unfit_gpus: bool = True,
    ) -> None:
        self._runtime = runtime
        self._hub = hub
        self._models = models
        self._secrets = secrets
        self._hub_endpoint = hub_endpoint
        self._refuse_unfit_gpus = refuse_unfit_gpus
        self._offer: tuple[float, ClusterOffer] | None = None
        self._offer_lock = asyncio.Lock()

    async def status(self, principal: Principal) -> ClusterInventory:
        """Runtime, version, namespace, GPU nodes and integrations, read now."""
        principal.require(Role.VIEWER)
        return await read_inventory(self._runtime)

    async def check_offer(self, spec: InferenceSpec) -> None:
        """Refuse (:class:`InvalidInput`) what the runtime can never give ``spec``
        (:mod:`services.offers`); the caller checked the role."""
        if spec.engine is None:
            return  # a gateway route: no workload
        try:
            check_offer(spec, await self._recent_offer(), refuse_gpus=self._refuse_unfit_gpus)
        except InvalidInput:
            # Refuse only on what the runtime says now: a CRD or a node may have just come.
            check_offer(
                spec, await self._recent_offer(fresh=True), refuse_gpus=self._refuse_unfit_gpus
            )

    async def _recent_offer(self, *, fresh: bool = False) -> ClusterOffer:
        """The runtime's offer, read at most every :data:`OFFER_SECONDS` (a node list and API
        discovery, 3 to 5 requests: 200 ``startInference`` calls in ``bench/controllers.py``
        each read it before); concurrent callers share one read."""
        async with self._offer_lock:
            now = time.monotonic()
            if fresh or self._offer is None or now - self._offer[0] > OFFER_SECONDS:
                self._offer = (now, await read_offer(self._runtime))
            return self._offer[1]

    async def fit(
        self,
        principal: Principal,
        *,
        model_id: str | None,
        repo_id: str | None,
        revision: str | None = None,
        engine: InferenceEngine = InferenceEngine.VLLM,
        gpu_type: str | None = None,
        context_length: int | None = None,
        batch_size: int | None = None,
    ) -> FitEstimate:
        """The fit of a catalogue model or of a hub repo (exactly one of the two)."""
        facts = await self.facts(
            principal,
            model_id=model_id,
            repo_id=repo_id,
            revision=revision,
            engine=engine,
            gpu_type=gpu_type,
            context_length=context_length,
            batch_size=batch_size,
        )
        return facts.estimate(engine=engine, context_length=context_length, batch_size=batch_size)

    async def facts(
        self,
        principal: Principal,
        *,
        model_id: str | None,
        repo_id: str | None,
        revision: str | None = None,
        engine: InferenceEngine = InferenceEngine.VLLM,
        gpu_type: str | None = None,
        context_length: int | None = None,
        batch_size: int | None = None,
    ) -> FitFacts:
        """What a fit of a catalogue model or of a hub repo (exactly one) is estimated from:
        the input checks and hub reads of :meth:`fit`, without the estimate (the vLLM flags
        make theirs from the very same facts)."""
        principal.require(Role.VIEWER)
        if model_id is not None and repo_id is not None:
            raise InvalidInput("repoId", "give either modelId or repoId, not both")
        _check_sizes(context_length, batch_size)
        if model_id is not None:
            if revision is not None:
                raise InvalidInput(
                    "revision", "revision goes with repoId; a model uses its recorded commit"
                )
            model = await self._models.get(principal, model_id)
            if model is None or model.is_deleted:
                raise Missing(model_id, f"model {model_id} not found")
            return await self.model_facts(principal, model, engine=engine, gpu_type=gpu_type)
        if repo_id is None:
            raise InvalidInput("modelId", "give modelId (a catalogue model) or repoId (a hub repo)")
        repo = v.normalize_repo_id("repoId", repo_id, hub_endpoint=self._hub_endpoint)
        revision = v.check_revision("revision", revision)
        inventory = await read_inventory(self._runtime)
        offers, notes = _offers(inventory, gpu_type)
        shape, config = ModelShape(), None
        if engine is not InferenceEngine.LITELLM_PROXY:
            shape, config = await self._repo_shape(repo, revision=revision, token=None, notes=notes)
        return FitFacts(
            shape=shape,
            config=config,
            offers=tuple(offers),
            notes=tuple(notes),
            requested=gpu_type is not None,
            field="repoId",
        )

    async def fit_for_model(
        self,
        principal: Principal,
        model: ModelDocument,
        *,
        engine: InferenceEngine = InferenceEngine.VLLM,
        gpu_type: str | None = None,
        context_length: int | None = None,
        batch_size: int | None = None,
    ) -> FitEstimate:
        """The fit of a model the caller has already read (organisation checked by them).

        Raises :class:`InvalidInput` for a bad ``gpuType``, ``contextLength`` or ``batchSize``,
        or an engine a REMOTE_API model cannot use.
        """
        _check_sizes(context_length, batch_size)
        facts = await self.model_facts(principal, model, engine=engine, gpu_type=gpu_type)
        return facts.estimate(engine=engine, context_length=context_length, batch_size=batch_size)

    async def model_facts(
        self,
        principal: Principal,
        model: ModelDocument,
        *,
        engine: InferenceEngine = InferenceEngine.VLLM,
        gpu_type: str | None = None,
    ) -> FitFacts:
        """The facts of :meth:`fit_for_model` (organisation checked by the caller)."""
        principal.require(Role.VIEWER)
        inventory = await read_inventory(self._runtime)
        offers, notes = _offers(inventory, gpu_type)
        shape, config = ModelShape(), None
        if model.source.access_mode is AccessMode.REMOTE_API:
            if engine is not InferenceEngine.LITELLM_PROXY:
                raise InvalidInput(
                    "engine",
                    "a REMOTE_API model has no weights to serve: it is proxied (LITELLM_PROXY)",
                )
        elif engine is not InferenceEngine.LITELLM_PROXY and _on_the_hub(model):
            shape, config = await self._model_shape(model, notes)
        return FitFacts(
            shape=shape,
            config=config,
            offers=tuple(offers),
            notes=tuple(notes),
            requested=gpu_type is not None,
            field="modelId",
        )

    async def _model_shape(
        self, model: ModelDocument, notes: list[str]
    ) -> tuple[ModelShape, dict[str, Any] | None]:
        facts = model.hub
        revision = (facts.commit_sha if facts else None) or model.source.revision
        token = await self._token(model)
        try:
            return await self._repo_shape(
                model.source.url, revision=revision, token=token, notes=notes
            )
        except (InvalidInput, Missing) as exc:
            notes.append(f"the hub could not be asked ({exc.message}): recorded facts used")
        shape = ModelShape(
            parameters=facts.parameters if facts else None,
            weight_file_bytes=facts.weight_bytes if facts else None,
        )
        return shape, None

    async def _repo_shape(
        self, repo_id: str, *, revision: str | None, token: str | None, notes: list[str]
    ) -> tuple[ModelShape, dict[str, Any] | None]:
        try:
            found = await self._hub.model(repo_id, revision=revision, token=token)
        except HubRepoNotFound as exc:
            raise Missing(repo_id, str(exc)) from None
        except HubRevisionNotFound as exc:
            raise InvalidInput("revision", str(exc)) from None
        except HubAccessDenied as exc:
            raise InvalidInput("repoId", str(exc)) from None
        except HubError as exc:
            raise InvalidInput("repoId", f"the hub could not be asked: {exc}") from None
        config = await self._hub.json_file(repo_id, sha=found.sha, path="config.json", token=token)
        if config is None:
            gated = " (a gated repo needs a token with access)" if found.gated else ""
            notes.append(f"config.json could not be read{gated}")
        shape = ModelShape.from_config(
            config,
            parameters_by_dtype=found.parameters_by_dtype,
            parameters=found.parameters,
            weight_file_bytes=_weight_file_bytes(found.files),
        )
        return shape, config

    async def _token(self, model: ModelDocument) -> str | None:
        if model.secret_ref is None:
            return None
        try:
            return (await self._secrets.get(model.secret_ref)).get(HF_TOKEN_KEY)
        except SecretStoreError:
            log.warning("the model's credentials could not be read", extra={"model_id": model.id})
            return None


def _check_sizes(context_length: int | None, batch_size: int | None) -> None:
    if context_length is not None and not 1 <= context_length <= MAX_CONTEXT_LENGTH:
        raise InvalidInput(
            "contextLength", f"contextLength must be between 1 and {MAX_CONTEXT_LENGTH}"
        )
    if batch_size is not None and not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise InvalidInput("batchSize", f"batchSize must be between 1 and {MAX_BATCH_SIZE}")


def _weight_file_bytes(files: Sequence[HubFile]) -> int | None:
    for suffixes in WEIGHT_SUFFIXES:
        sizes = [f.size or 0 for f in files if f.path.endswith(suffixes)]
        if sizes:
            return sum(sizes)
    return None


def _offers(inventory: ClusterInventory, gpu_type: str | None) -> tuple[list[GpuOffer], list[str]]:
    """GPU types to fit on: those in the cluster (most free on one node each), else the
    catalogue; only the requested one when ``gpu_type`` is given. The notes say what of the
    inventory could not be read or used."""
    notes: list[str] = list(inventory.problems)
    present: dict[str, GpuOffer] = {}
    for node in inventory.nodes:
        if node.memory_bytes_per_gpu is None:
            why = (
                "no nvidia.com/gpu.product or nvidia.com/gpu.memory label"
                if node.gpu_type == "unknown"
                else f"unknown product {node.gpu_type!r} and no nvidia.com/gpu.memory label"
            )
            notes.append(f"node {node.name}: GPU memory unknown ({why}); left out")
            continue
        seen = present.get(node.gpu_type)
        present[node.gpu_type] = GpuOffer(
            gpu_type=node.gpu_type,
            memory_bytes=min(node.memory_bytes_per_gpu, seen.memory_bytes)
            if seen
            else node.memory_bytes_per_gpu,
            free_on_one_node=max(node.free, seen.free_on_one_node if seen else 0),
            in_cluster=True,
        )
    catalogue = [GpuOffer(gpu_type=p.name, memory_bytes=p.memory_bytes) for p in GPU_CATALOGUE]
    if gpu_type is None:
        return (list(present.values()) or catalogue), notes
    wanted = v.require_text("gpuType", gpu_type, limit=128)
    for offer in present.values():
        if offer.gpu_type.lower() == wanted.lower():
            return [offer], notes
    product = gpu_product(wanted)
    if product is None:
        known = ", ".join([*present, *(p.name for p in GPU_CATALOGUE)])
        raise InvalidInput("gpuType", f"unknown GPU type {wanted!r}; known: {known}")
    for offer in present.values():
        if gpu_product(offer.gpu_type) == product:
            return [offer], notes
    return [GpuOffer(gpu_type=product.name, memory_bytes=product.memory_bytes)], notes


@dataclass(frozen=True, slots=True)
class FitFacts:
    """What a fit is estimated from: the model's shape and ``config.json`` (None when it could
    not be read), the GPU types on offer and what was noted while gathering them."""

    shape: ModelShape
    config: dict[str, Any] | None
    offers: tuple[GpuOffer, ...]
    notes: tuple[str, ...]
    requested: bool
    """True when the caller named a GPU type (``offers`` then holds only it)."""
    field: str
    """The argument that named the model (``modelId`` or ``repoId``), for errors."""

    @property
    def requested_type(self) -> str | None:
        """The offer's name when the caller asked for one GPU type."""
        return self.offers[0].gpu_type if self.requested and self.offers else None

    def estimate(
        self,
        *,
        engine: InferenceEngine,
        context_length: int | None,
        batch_size: int | None,
    ) -> FitEstimate:
        """The estimate, with the notes of gathering first; :class:`InvalidInput` on the
        naming argument when nothing tells the weights' size."""
        try:
            result = estimate(
                self.shape,
                engine=engine,
                offers=self.offers,
                context_length=context_length,
                batch_size=batch_size,
                requested_type=self.requested_type,
            )
        except ShapeUnknown as exc:
            raise InvalidInput(self.field, str(exc)) from None
        return dataclasses.replace(result, notes=tuple(dict.fromkeys([*self.notes, *result.notes])))


_HUB_REPO = re.compile(r"[\w.-]+/[\w.-]+")


def _on_the_hub(model: ModelDocument) -> bool:
    """A LOCAL model's repo, or an ENGINE model whose command fetches a hub repo (not an
    Ollama model or an image): the fit asks the hub its shape."""
    url = model.source.url
    return model.source.access_mode is AccessMode.LOCAL or bool(_HUB_REPO.fullmatch(url))
