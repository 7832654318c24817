"""One-call deploys: a model and its inference from an image and a command (``deployModel``).

The organisation API creates a model from a name, an image and a command in one request, and
the command fetches the model itself (``vllm serve meta-llama/...``); the ModelAPI resource's
hosted mode does the same from an Ollama model reference (``smollm2:135m``). Here that is an
ENGINE model: nothing to download (READY at once, no download target), served by the engine
given. ``source.url`` records what the engine fetches (the vLLM command's ``--model``, the
Ollama model) or else the image.

Everything is checked before anything is written: the catalogue fields, the hub token, the
inference request and its engine plan (the same planner the controller runs, with the model
as drafted: a vLLM command with a wrong ``--served-model-name`` is refused here, naming
``input.inference.command``), the name's availability. Then the hub token goes to the secret
store (the engine reads it as ``HF_TOKEN`` through a ``secretKeyRef``; it is never in the pod
spec, a log or an answer), the model document, the inference document; if the inference
cannot be written the model is deleted again, with its Secret. A dry run writes nothing and
answers the objects the controller would apply.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from controllers.inference.commands import fetched_model
from controllers.runtimes.secrets import HF_TOKEN_KEY, secret_name
from services import validation as v
from services.errors import InvalidInput
from services.inference import InferenceService
from services.inference_inputs import InferenceRequest
from services.models import ModelService
from services.principals import Principal
from storage.documents import (
    AccessMode,
    InferenceDocument,
    InferenceEngine,
    ModelDocument,
    ModelPhase,
    ModelSource,
    Resources,
    Role,
    new_id,
)

log = logging.getLogger(__name__)
INFERENCE_FIELD = "input.inference"


@dataclass(frozen=True, slots=True)
class DeploySpec:
    """Everything ``deployModel`` accepts."""

    name: str
    inference: InferenceRequest
    display_name: str | None = None
    description: str | None = None
    tags: Sequence[str] | None = None
    hub_token: str | None = None


@dataclass(frozen=True, slots=True)
class DeployOutcome:
    """The model and its inference (written, or planned by a dry run) and the planned objects."""

    model: ModelDocument
    inference: InferenceDocument
    dry_run: bool = False
    manifests: list[dict[str, Any]] = field(default_factory=list)


class DeployService:
    """The ``deployModel`` use case, over the catalogue and the inference services."""

    def __init__(self, *, models: ModelService, inference: InferenceService) -> None:
        self._models = models
        self._inference = inference

    async def deploy(
        self, principal: Principal, spec: DeploySpec, *, dry_run: bool = False
    ) -> DeployOutcome:
        """Check everything, then store the token, the model and its inference (see the
        module docstring)."""
        principal.require(Role.EDITOR)
        model = _draft(principal, spec)
        try:
            doc, manifests = await self._inference.prepare(principal, model, spec.inference)
        except InvalidInput as exc:
            raise InvalidInput(_nested(exc.field), exc.message) from None
        model.source.url = _source(doc, model.name)
        model.resources = Resources(cpu=doc.spec.cpu, memory=doc.spec.memory, gpu=doc.spec.gpu)
        if dry_run:
            return DeployOutcome(model=model, inference=doc, dry_run=True, manifests=manifests)
        secrets = {HF_TOKEN_KEY: spec.hub_token} if spec.hub_token else {}
        model = await self._models.store_new(principal, model, secrets, name_field="input.name")
        try:
            written = await self._inference.store(doc, None)
        except BaseException:
            await self._models.delete(principal, model.id)  # and its Secret
            raise
        log.info(
            "model deployed",
            extra={"model_id": model.id, "inference_id": written.id, "engine": doc.spec.engine},
        )
        return DeployOutcome(model=model, inference=written)


def _draft(principal: Principal, spec: DeploySpec) -> ModelDocument:
    """The ENGINE model's document from checked catalogue fields (nothing written)."""
    name = v.check_name("input.name", spec.name.strip())
    display_name = v.check_text("input.displayName", spec.display_name, limit=v.MAX_DISPLAY_NAME)
    description = v.check_text(
        "input.description", spec.description, limit=v.MAX_DESCRIPTION_BYTES, in_bytes=True
    )
    tags = v.check_tags("input.tags", spec.tags)
    token = v.check_secret_value("input.hubToken", spec.hub_token, required=False)
    model_id = new_id("model")
    return ModelDocument(
        id=model_id,
        organization_id=principal.organization_id,
        name=name,
        name_key=name,
        display_name=display_name or name,
        description=description,
        tags=tags,
        source=ModelSource(url="", access_mode=AccessMode.ENGINE, has_token=token is not None),
        secret_ref=secret_name(model_id) if token is not None else None,
        phase=ModelPhase.READY,
        message="served by its engine, which fetches the model itself",
        created_by=principal.subject,
    )


def _source(doc: InferenceDocument, name: str) -> str:
    """What the engine serves: the Ollama model, a vLLM command's ``--model``, the image."""
    spec = doc.spec
    if spec.engine is InferenceEngine.OLLAMA:
        return spec.ollama_model or name
    fetched = fetched_model(list(spec.command or []), list(spec.args or []))
    return fetched or spec.image or name


def _nested(where: str) -> str:
    """An inference input's path inside ``deployModel``'s input (``input.command`` ->
    ``input.inference.command``); the model's own fields (``modelId``) are the input's."""
    if where.startswith("input."):
        return f"{INFERENCE_FIELD}.{where.removeprefix('input.')}"
    return "input" if where == "modelId" else where
