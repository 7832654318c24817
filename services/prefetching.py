"""Weights without a model: ``downloadWeights`` pre-fetches a repo (or a subset of its files)
into a download target, to be attached to models later (``createModel`` with ``weightsId``).

The request is checked exactly like a LOCAL model's source (:mod:`services.model_sources`):
the repo and revision on the hub, the token's access to the files, the file patterns against
the repo's file list, the target and its directory. Then, with nothing written before the
last check, the credentials go to the secret store under the weights' id and the weights
document is inserted PENDING with its file list, ``prefetched``, and its CREATED event; the
leading replica's download controller starts the download on that event (services never call
controllers, docs/architecture.md decision 10), so it works whichever replica took the call.
Asking again for weights that exist (same organisation, location, commit and file selection)
returns them: the same copy is never downloaded twice.

Prefetched weights differ from a model's in two ways only: their own reconcile drives the
download while no model uses them, and deleting the last model that used them leaves them
(deleteWeights removes them, and the credentials stored for them).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from controllers.downloads.running import weights_location
from controllers.runtimes.base import Runtime
from controllers.runtimes.secrets import HF_TOKEN_KEY, SecretStore, SecretStoreError
from integrations.huggingface import HubClient, HubModel
from live import EventType, Recorder
from services import validation as v
from services.errors import InvalidInput
from services.model_sources import LocalSources, ModelPolicy
from services.principals import Principal
from services.selections import check_against_repo, checked_selection
from services.targets import TargetSpec, check_storage_class
from storage.documents import Role, WeightsDocument, WeightsFile, new_id
from storage.repositories import ModelRepository, WeightsRepository

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PrefetchSpec:
    """Everything ``downloadWeights`` accepts."""

    repo: str
    target: TargetSpec | None
    revision: str | None = None
    token: str | None = None
    allow_patterns: Sequence[str] | None = None
    ignore_patterns: Sequence[str] | None = None


class PrefetchService:
    """``downloadWeights``: check, store the credentials, insert the weights, record."""

    def __init__(
        self,
        *,
        weights: WeightsRepository,
        models: ModelRepository,
        secrets: SecretStore,
        hub: HubClient,
        runtime: Runtime,
        policy: ModelPolicy,
        recorder: Recorder | None = None,
    ) -> None:
        self._weights = weights
        self._secrets = secrets
        self._runtime = runtime
        self._policy = policy
        self._record = recorder or Recorder(None)
        self._sources = LocalSources(hub=hub, models=models, weights=weights)

    async def download(self, principal: Principal, spec: PrefetchSpec) -> WeightsDocument:
        """The weights asked for, new (PENDING, downloaded by the leader) or found."""
        principal.require(Role.EDITOR)
        weights = await self._checked(principal, spec)
        found = await self._weights.for_location(
            organization_id=weights.organization_id,
            location=weights.location,
            commit_sha=weights.commit_sha,
            selection=weights.selection,
        )
        if found is not None:
            return found
        values = _secret_values(spec)
        if values:
            try:
                weights.secret_ref = await self._secrets.put(
                    organization_id=principal.organization_id, owner_id=weights.id, values=values
                )
            except SecretStoreError as exc:
                raise InvalidInput("token", f"credentials could not be stored: {exc}") from None
        try:
            await self._weights.insert(weights, event=EventType.CREATED)
        except BaseException:
            if weights.secret_ref is not None:
                with contextlib.suppress(SecretStoreError):
                    await self._secrets.delete(weights.secret_ref)
            raise
        await self._record.weights(weights, EventType.CREATED)
        log.info(
            "weights requested",
            extra={"weights_id": weights.id, "organization_id": weights.organization_id},
        )
        return weights

    async def _checked(self, principal: Principal, spec: PrefetchSpec) -> WeightsDocument:
        """The new weights' document from a checked request (nothing written)."""
        hub_endpoint = self._policy.hub_endpoint
        repo_id = v.normalize_repo_id("repo", spec.repo, hub_endpoint=hub_endpoint)
        revision = v.check_revision("revision", spec.revision)
        token = v.check_secret_value("token", spec.token, required=False)
        selection = checked_selection("", spec.allow_patterns, spec.ignore_patterns)
        if spec.target is None:
            raise InvalidInput("downloadTarget", "downloadTarget is required")
        target = await spec.target.checked(self._policy.targets, principal.organization_id)
        await check_storage_class(self._runtime, target)
        hub = await self._describe(repo_id, revision, token)
        check_against_repo("", selection, hub)
        await self._sources.check_location_free(principal, target, repo_id, hub.sha, selection)
        return WeightsDocument(
            id=new_id("weights"),
            organization_id=principal.organization_id,
            repo_id=repo_id,
            requested_revision=revision,
            commit_sha=hub.sha,
            target=target,
            location=weights_location(target, repo_id, hub.sha, selection),
            files=[
                WeightsFile(path=f.path, size=f.size or 0, sha256=f.sha256, blob_id=f.blob_id)
                for f in hub.files
                if selection.takes(f.path)
            ],
            selection=selection,
            prefetched=True,
        )

    async def _describe(self, repo_id: str, revision: str | None, token: str | None) -> HubModel:
        """The hub's facts, with refusals naming this mutation's fields."""
        try:
            return await self._sources.describe(repo_id, revision, token, field_prefix="source.")
        except InvalidInput as exc:
            field = (exc.field or "").removeprefix("source.")
            raise InvalidInput("repo" if field == "url" else field, exc.message) from None


def _secret_values(spec: PrefetchSpec) -> dict[str, str]:
    values: dict[str, str] = {}
    if spec.token:
        values[HF_TOKEN_KEY] = spec.token.strip()
    if spec.target is not None:
        values.update(spec.target.secret_values())
    return values
