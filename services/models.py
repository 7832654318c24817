"""The model catalogue: create, read, list, update and delete, scoped to the caller.

Every method takes the calling :class:`Principal`; reads are confined to its organisation by
the repository filter, writes need the editor role, deleted models are visible to admins only.
Creation validates everything before anything is written, then stores the credentials
(secret store) and the document, undoing the first if the second fails, so a refused request
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from controllers.runtimes.base import OwnedObject, Runtime
from controllers.runtimes.secrets import HF_TOKEN_KEY, SecretStore, SecretStoreError
from integrations.huggingface import HubClient, HubError, HubModel
from live import EventType, Recorder
from services import validation as v
from services.errors import Conflict, InvalidInput, Missing
from services.model_sources import LocalSources, fill_from_hub
from services.model_sources import ModelPolicy as ModelPolicy  # noqa: PLC0414  re-exported
from services.principals import Principal
from services.retiring import InferenceRetirement
from services.selections import check_against_repo, checked_selection
from services.targets import TargetSpec, check_storage_class
from storage.documents import (
    AccessMode,
    ModelDocument,
    ModelPhase,
    ModelSource,
    Resources,
    Role,
    new_id,
    utcnow,
)
from storage.errors import DuplicateKey, NotFound
from storage.repositories import ModelFilter, ModelRepository, Page, WeightsRepository
from storage.selection import FileSelection

log = logging.getLogger(__name__)

MAX_PAGE = 100
MAX_SEARCH_RESULTS = 50


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """``source`` of ``createModel``."""

    url: str
    access_mode: AccessMode
    token: str | None = None
    revision: str | None = None
    allow_patterns: Sequence[str] | None = None
    ignore_patterns: Sequence[str] | None = None


@dataclass(frozen=True, slots=True)
class ResourcesSpec:
    """``resources``: Kubernetes quantities."""

    cpu: str | None = None
    memory: str | None = None
    gpu: int | None = None


@dataclass(frozen=True, slots=True)
class CreateModelSpec:
    """Everything ``createModel`` accepts."""

    source: SourceSpec
    name: str | None = None
    display_name: str | None = None
    description: str | None = None
    icon: str | None = None
    label: str | None = None
    tags: Sequence[str] | None = None
    download_target: TargetSpec | None = None
    resources: ResourcesSpec | None = None
    weights_id: str | None = None
    """LOCAL: use these existing weights (``downloadWeights``); the target comes from them."""


@dataclass(frozen=True, slots=True)
class UpdateModelSpec:
    """``updateModel``: None leaves a field unchanged; an empty string clears optional text."""

    display_name: str | None = None
    description: str | None = None
    icon: str | None = None
    label: str | None = None
    tags: Sequence[str] | None = None
    resources: ResourcesSpec | None = None


@dataclass(frozen=True, slots=True)
class DeleteOutcome:
    """What ``deleteModel`` did: the model as it now is and what was removed."""

    model: ModelDocument
    removed: list[OwnedObject] = field(default_factory=list)
    already_deleted: bool = False


class ModelService:
    """Use cases of the model catalogue."""

    def __init__(
        self,
        *,
        models: ModelRepository,
        secrets: SecretStore,
        hub: HubClient,
        runtime: Runtime,
        policy: ModelPolicy,
        recorder: Recorder | None = None,
        weights: WeightsRepository | None = None,
        retire: InferenceRetirement | None = None,
    ) -> None:
        self._weights = weights
        self._sources = LocalSources(hub=hub, models=models, weights=weights)
        self._retire = retire
        self._record = recorder or Recorder(None)
        self._models = models
        self._secrets = secrets
        self._hub = hub
        self._runtime = runtime
        self._policy = policy

    @property
    def policy(self) -> ModelPolicy:
        """The deployment's rules for what users may ask for."""
        return self._policy

    # -- reads ---------------------------------------------------------------------------

    async def get(self, principal: Principal, model_id: str) -> ModelDocument | None:
        """The model, or None when absent, in another organisation, or deleted (non-admins)."""
        principal.require(Role.VIEWER)
        model = await self._models.get(model_id, scope=principal.scope)
        if model is None or (model.is_deleted and not principal.role.allows(Role.ADMIN)):
            return None
        return model

    async def page(
        self, principal: Principal, model_filter: ModelFilter, *, limit: int, offset: int
    ) -> Page[ModelDocument]:
        """A page of the organisation's models, newest first, with the total."""
        principal.require(Role.VIEWER)
        if model_filter.include_deleted:
            principal.require(Role.ADMIN)
        if not 0 <= limit <= MAX_PAGE:
            raise InvalidInput("limit", f"limit must be between 0 and {MAX_PAGE}")
        if offset < 0:
            raise InvalidInput("offset", "offset must not be negative")
        if model_filter.search is not None:
            v.check_text("filter.search", model_filter.search, limit=256)
        if model_filter.has_inference is False and model_filter.inference_phase is not None:
            raise InvalidInput(
                "filter.hasInference",
                "hasInference: false finds models without an inference; drop inferencePhase",
            )
        if model_filter.name is not None:
            v.check_name("filter.name", model_filter.name)
        return await self._models.list_page(
            organization_id=principal.organization_id,
            model_filter=model_filter,
            limit=limit,
            offset=offset,
        )

    async def hub_preview(
        self, principal: Principal, repo: str, *, revision: str | None, token: str | None = None
    ) -> HubModel:
        """Hub metadata for a repo id or URL, before anything is created."""
        principal.require(Role.VIEWER)
        repo_id = v.normalize_repo_id("repoId", repo, hub_endpoint=self._policy.hub_endpoint)
        revision = v.check_revision("revision", revision)
        return await self._sources.describe(repo_id, revision, token, field_prefix="", files=False)

    async def hub_search(
        self, principal: Principal, query: str, *, limit: int, scan: int | None = None
    ) -> list[HubModel]:
        """Hub models matching ``query``: ``limit``, or ``scan`` (a filtering caller's) of them."""
        principal.require(Role.VIEWER)
        text = v.require_text("query", query, limit=256)
        if not 1 <= limit <= MAX_SEARCH_RESULTS:
            raise InvalidInput("limit", f"limit must be between 1 and {MAX_SEARCH_RESULTS}")
        try:
            return await self._hub.search(text, limit=max(limit, scan or 0), token=None)
        except HubError as exc:
            raise InvalidInput("query", str(exc)) from None

    # -- writes --------------------------------------------------------------------------

    async def create(self, principal: Principal, spec: CreateModelSpec) -> ModelDocument:
        """Validate, consult the hub (LOCAL), store credentials and the document."""
        principal.require(Role.EDITOR)
        model = await self._build(principal, spec)
        return await self.store_new(principal, model, _secret_values(spec), name_field="name")

    async def store_new(
        self,
        principal: Principal,
        model: ModelDocument,
        secrets: dict[str, str],
        *,
        name_field: str,
    ) -> ModelDocument:
        """Store a checked new model: its credentials first, then the document (undoing the
        first if the second fails); a taken name is a Conflict on ``name_field``."""
        if await self._models.by_name(organization_id=principal.organization_id, name=model.name):
            raise Conflict(name_field, f"a model named {model.name!r} already exists")
        if secrets:
            try:
                model.secret_ref = await self._secrets.put(
                    organization_id=principal.organization_id, owner_id=model.id, values=secrets
                )
            except SecretStoreError as exc:
                raise InvalidInput(
                    "source.token", f"credentials could not be stored: {exc}"
                ) from None
        try:
            await self._models.insert(model, event=EventType.CREATED)
        except DuplicateKey:
            await self._forget_secret(model.secret_ref)
            raise Conflict(name_field, f"a model named {model.name!r} already exists") from None
        except BaseException:
            await self._forget_secret(model.secret_ref)
            raise
        log.info(
            "model created",
            extra={"model_id": model.id, "organization_id": model.organization_id},
        )
        await self._record.model(model, EventType.CREATED)
        return model

    async def update(
        self, principal: Principal, model_id: str, spec: UpdateModelSpec
    ) -> ModelDocument:
        """Change catalogue fields (compare-and-set, re-decided on a concurrent write)."""
        principal.require(Role.EDITOR)
        changes = _catalogue_changes(spec)

        def change(current: ModelDocument) -> dict[str, object]:
            if current.is_deleted:
                raise Missing(model_id, f"model {model_id} not found")
            return changes

        try:
            updated = await self._models.modify(
                model_id, change, scope=principal.scope, event=EventType.UPDATED
            )
        except NotFound:
            raise Missing(model_id, f"model {model_id} not found") from None
        if changes:  # an empty update writes nothing and owes no event
            await self._record.model(updated, EventType.UPDATED)
        return updated

    async def delete(self, principal: Principal, model_id: str) -> DeleteOutcome:
        """Soft delete; remove credentials and every owned object. Idempotent."""
        principal.require(Role.EDITOR)
        model = await self._models.get(model_id, scope=principal.scope)
        if model is None:
            raise Missing(model_id, f"model {model_id} not found")
        already = model.is_deleted
        try:
            model = await self._models.modify(
                model.id,
                _soft_delete,
                scope=principal.scope,
                event=EventType.DELETED,
                current=model,
            )
        except NotFound:
            raise Missing(model_id, f"model {model_id} not found") from None
        if self._retire is not None:
            await self._retire(model.id)
        removed = await self._runtime.delete_owned(model.id)
        already_listed = any(o.kind == "Secret" and o.name == model.secret_ref for o in removed)
        if model.secret_ref and await self._secrets.delete(model.secret_ref) and not already_listed:
            removed.append(OwnedObject(kind=self._secrets.kind, name=model.secret_ref))
        log.info("model deleted", extra={"model_id": model.id, "removed": len(removed)})
        if not already:
            await self._record.model(model, EventType.DELETED)
        model = await self._credentials_gone(principal, model)
        return DeleteOutcome(model=model, removed=removed, already_deleted=already)

    async def _credentials_gone(self, principal: Principal, model: ModelDocument) -> ModelDocument:
        """Once the secret is deleted the document says so: no ``secret_ref``, no token, no S3
        secret key. A second write after the soft delete (whose DELETED event is recorded
        already), with no event of its own: the model is gone for subscribers. A failure
        before this point leaves the ref, so deleting again retries the secret."""
        try:
            return await self._models.modify(
                model.id, _without_credentials, scope=principal.scope, current=model
            )
        except NotFound:
            raise Missing(model.id, f"model {model.id} not found") from None

    # -- helpers -------------------------------------------------------------------------

    async def _build(self, principal: Principal, spec: CreateModelSpec) -> ModelDocument:
        """The new model's document from a checked request (nothing written yet)."""
        display_name = v.check_text("displayName", spec.display_name, limit=v.MAX_DISPLAY_NAME)
        description = v.check_text(
            "description", spec.description, limit=v.MAX_DESCRIPTION_BYTES, in_bytes=True
        )
        icon = _check_icon(spec.icon) if spec.icon else None
        label = v.check_text("label", spec.label, limit=v.MAX_LABEL)
        tags = v.check_tags("tags", spec.tags)
        resources = _resources(spec.resources) if spec.resources else Resources()
        token = v.check_secret_value("source.token", spec.source.token, required=False)
        name = v.check_name("name", spec.name.strip()) if spec.name else None
        model = ModelDocument(
            id=new_id("model"),
            organization_id=principal.organization_id,
            name="",
            name_key="",
            display_name=display_name or "",
            description=description,
            icon=icon,
            label=label,
            tags=tags,
            resources=resources,
            source=ModelSource(
                url="", access_mode=spec.source.access_mode, has_token=token is not None
            ),
            created_by=principal.subject,
        )
        if spec.source.access_mode is AccessMode.ENGINE:
            raise InvalidInput(
                "source.accessMode",
                "an ENGINE model is created with its inference by deployModel (an image and a "
                "command, or an Ollama model)",
            )
        if spec.source.access_mode is AccessMode.REMOTE_API:
            await self._remote(model, spec)
        else:
            await self._local(principal, model, spec, token)
        model.name = model.name_key = name or v.derive_name(
            model.display_name if model.download_target is None else model.source.url
        )
        return model

    async def _remote(self, model: ModelDocument, spec: CreateModelSpec) -> None:
        """A REMOTE_API model: a display name and an allowed URL; nothing to download."""
        if not model.display_name:
            raise InvalidInput("displayName", "displayName is required for REMOTE_API models")
        if spec.download_target is not None:
            raise InvalidInput(
                "downloadTarget", "REMOTE_API models are not downloaded: omit downloadTarget"
            )
        for name, given in (
            ("allow", spec.source.allow_patterns),
            ("ignore", spec.source.ignore_patterns),
        ):
            if given:
                raise InvalidInput(
                    f"source.{name}Patterns", "REMOTE_API models are not downloaded: omit it"
                )
        outbound = self._policy.outbound
        url = v.check_remote_url("source.url", spec.source.url, outbound=outbound)
        await v.check_resolved("source.url", url, outbound=outbound)
        model.source.url = url
        model.phase = ModelPhase.READY
        model.message = "ready: a REMOTE_API model is proxied, nothing is downloaded"

    async def _local(
        self,
        principal: Principal,
        model: ModelDocument,
        spec: CreateModelSpec,
        token: str | None,
    ) -> None:
        """A LOCAL model: the hub's facts, a free target, catalogue fields from the hub."""
        repo_id = v.normalize_repo_id(
            "source.url", spec.source.url, hub_endpoint=self._policy.hub_endpoint
        )
        revision = v.check_revision("source.revision", spec.source.revision)
        source = spec.source
        selection = checked_selection("source.", source.allow_patterns, source.ignore_patterns)
        if spec.weights_id is not None:
            await self._attach(principal, model, spec, token, (repo_id, revision, selection))
            return
        if spec.download_target is None:
            raise InvalidInput("downloadTarget", "downloadTarget is required for LOCAL models")
        target = await spec.download_target.checked(self._policy.targets, principal.organization_id)
        await check_storage_class(self._runtime, target)
        hub = await self._sources.describe(repo_id, revision, token, field_prefix="source.")
        check_against_repo("source.", selection, hub)
        await self._sources.check_location_free(principal, target, repo_id, hub.sha, selection)
        fill_from_hub(model, repo_id, hub)
        model.source.url, model.source.revision = repo_id, revision
        model.source.selection = selection
        model.download_target = target
        model.phase = ModelPhase.PENDING
        model.message = "waiting for the download to start"

    async def _attach(
        self,
        principal: Principal,
        model: ModelDocument,
        spec: CreateModelSpec,
        token: str | None,
        asked: tuple[str, str | None, FileSelection],
    ) -> None:
        """A LOCAL model on existing weights: they must hold what ``source`` asks for (the
        repo, the revision if given, the patterns if given) where ``downloadTarget`` says, if
        given; the download controller then finds and lists the model in them."""
        repo_id, revision, selection = asked
        weights_id = spec.weights_id or ""
        weights = (
            await self._weights.get(weights_id, scope=principal.scope) if self._weights else None
        )
        if weights is None:
            raise InvalidInput("weightsId", f"no weights {weights_id} in your organisation")
        if weights.deletion is not None and weights.deletion.refused is None:
            raise InvalidInput("weightsId", f"weights {weights_id} are being removed")
        if weights.repo_id != repo_id:
            raise InvalidInput(
                "source.url", f"weights {weights_id} hold {weights.repo_id}, not {repo_id}"
            )
        given = spec.source.allow_patterns is not None or spec.source.ignore_patterns is not None
        if given and selection.key() != weights.selection.key():
            raise InvalidInput(
                "source.allowPatterns",
                f"weights {weights_id} hold the files of allow {weights.selection.allow} / "
                f"ignore {weights.selection.ignore}; omit the patterns or give those",
            )
        if spec.download_target is not None:
            target = await spec.download_target.checked(
                self._policy.targets, principal.organization_id
            )
            if target != weights.target:
                raise InvalidInput(
                    "downloadTarget", f"weights {weights_id} are at {weights.location}; omit it"
                )
        hub = await self._sources.describe(
            repo_id, revision or weights.commit_sha, token, field_prefix="source.", files=False
        )
        if hub.sha != weights.commit_sha:
            raise InvalidInput(
                "source.revision",
                f"weights {weights_id} hold commit {weights.commit_sha[:12]}; {revision} is "
                f"{hub.sha[:12]} now",
            )
        fill_from_hub(model, repo_id, hub)
        model.source.url = repo_id
        model.source.revision = revision or weights.requested_revision
        model.source.selection = weights.selection
        model.download_target = weights.target
        model.phase = ModelPhase.PENDING
        model.message = f"attaching weights {weights_id}"

    async def _forget_secret(self, ref: str | None) -> None:
        if ref is None:
            return
        with contextlib.suppress(SecretStoreError):
            await self._secrets.delete(ref)


def _secret_values(spec: CreateModelSpec) -> dict[str, str]:
    values: dict[str, str] = {}
    if spec.source.token:
        values[HF_TOKEN_KEY] = spec.source.token.strip()
    if spec.download_target is not None:
        values.update(spec.download_target.secret_values())
    return values


def _catalogue_changes(spec: UpdateModelSpec) -> dict[str, object]:
    """The checked fields ``updateModel`` sets."""
    changes: dict[str, object] = {}
    if spec.display_name is not None:
        changes["display_name"] = v.require_text(
            "displayName", spec.display_name, limit=v.MAX_DISPLAY_NAME
        )
    if spec.description is not None:
        changes["description"] = v.check_text(
            "description", spec.description, limit=v.MAX_DESCRIPTION_BYTES, in_bytes=True
        )
    if spec.icon is not None:
        changes["icon"] = _check_icon(spec.icon)
    if spec.label is not None:
        changes["label"] = v.check_text("label", spec.label, limit=v.MAX_LABEL)
    if spec.tags is not None:
        changes["tags"] = v.check_tags("tags", spec.tags)
    if spec.resources is not None:
        changes["resources"] = _resources(spec.resources).model_dump()
    return changes


def _soft_delete(model: ModelDocument) -> dict[str, object] | None:
    """Mark deleted and free the name; nothing when deleted already."""
    if model.is_deleted:
        return None
    return {"is_deleted": True, "deletion_time": utcnow(), "name_key": f"{model.name}#{model.id}"}


def _without_credentials(model: ModelDocument) -> dict[str, object] | None:
    """Forget the secret reference and say no token or key is stored; nothing when so."""
    target = model.download_target
    if not (
        model.secret_ref or model.source.has_token or (target is not None and target.has_secret)
    ):
        return None
    changes: dict[str, object] = {
        "secret_ref": None,
        "source": model.source.model_copy(update={"has_token": False}).model_dump(),
    }
    if target is not None:
        changes["download_target"] = target.without_secret().model_dump()
    return changes


def _resources(spec: ResourcesSpec) -> Resources:
    return Resources(
        cpu=v.check_cpu("resources.cpu", spec.cpu),
        memory=v.check_memory("resources.memory", spec.memory),
        gpu=v.check_gpu("resources.gpu", spec.gpu),
    )


def _check_icon(value: str) -> str | None:
    text = v.check_text("icon", value, limit=v.MAX_URL)
    if text is None:
        return None
    if urlsplit(text).scheme not in ("http", "https"):
        raise InvalidInput("icon", "icon must be an http:// or https:// URL")
    return text
