"""A LOCAL model's source: what the hub says about the repo, and a free place for its weights.

Split from :mod:`services.models` along the seam between the catalogue (names, text fields,
credentials, the document's life) and the download that a LOCAL model asks for: the hub is
consulted (the repo, the revision, the token's access to the files), the target is checked
(allowed, its storage class known, its directory used by no other weights) and the catalogue
fields the hub can fill are filled. Everything here reads; nothing is written. The same checks
serve anything else that asks for a download (``downloadWeights``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from controllers.transfer import locations
from integrations.addresses import OutboundPolicy
from integrations.huggingface import (
    HubAccessDenied,
    HubClient,
    HubError,
    HubModel,
    HubRepoNotFound,
    HubRevisionNotFound,
)
from services import validation as v
from services.errors import InvalidInput
from services.principals import Principal
from services.targets import TargetRules
from storage.documents import HubFacts, ModelDocument, ModelPhase
from storage.repositories import ModelRepository, WeightsRepository
from storage.selection import ALL_FILES, FileSelection
from storage.targets import DownloadTarget, Place, TargetKind

SelectionKey = tuple[tuple[str, ...], tuple[str, ...]]

LocationUser = tuple[str, Place | None, tuple[str, str | None, SelectionKey]]
"""(organisation, (volume, directory), (repo, commit, file selection)) of a download using a
volume."""
DIRECTORY_FIELDS = {
    TargetKind.LOCAL: "downloadTarget.local.localPath",
    TargetKind.PVC: "downloadTarget.pvc.subPath",
}
"""The input field naming a target's directory, for overlap refusals."""


@dataclass(frozen=True, slots=True)
class ModelPolicy:
    """Deployment-wide rules for what users may ask for."""

    runtime_kind: str
    local_roots: tuple[Path, ...]
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy)
    """Where REMOTE_API URLs and S3 endpoints may point (checked again at every connection)."""
    hub_endpoint: str = "https://huggingface.co"

    @property
    def targets(self) -> TargetRules:
        """What download targets may be."""
        return TargetRules(
            runtime_kind=self.runtime_kind, local_roots=self.local_roots, outbound=self.outbound
        )


class LocalSources:
    """The hub's facts about a repo and the checks of where its weights may go."""

    def __init__(
        self,
        *,
        hub: HubClient,
        models: ModelRepository,
        weights: WeightsRepository | None,
    ) -> None:
        self._hub = hub
        self._models = models
        self._weights = weights

    async def describe(
        self,
        repo_id: str,
        revision: str | None,
        token: str | None,
        *,
        field_prefix: str,
        files: bool = True,
    ) -> HubModel:
        """Hub metadata; ``files``: the repo's files must be readable with ``token`` (a
        download follows), else only the metadata the hub shows anyone (a preview)."""
        try:
            return await self._hub.describe(repo_id, revision=revision, token=token, files=files)
        except HubRepoNotFound as exc:
            raise InvalidInput(
                f"{field_prefix}url" if field_prefix else "repoId", str(exc)
            ) from None
        except HubRevisionNotFound as exc:
            raise InvalidInput(f"{field_prefix}revision", str(exc)) from None
        except HubAccessDenied as exc:
            raise InvalidInput(f"{field_prefix}token", str(exc)) from None
        except HubError as exc:
            raise InvalidInput(f"{field_prefix}url", f"the hub could not be asked: {exc}") from None

    async def check_location_free(
        self,
        principal: Principal,
        target: DownloadTarget,
        repo_id: str,
        commit_sha: str,
        selection: FileSelection = ALL_FILES,
    ) -> None:
        """A directory holds one download: refuse one that is, contains or lies inside another
        download's directory on the same volume, unless it is the same repo at the same commit
        with the same file selection (reused; another subset is another copy). Other
        organisations' LOCAL areas were refused already; a PVC claim serves one organisation
        only (its sub-paths are checked like LOCAL directories)."""
        place = target.place()
        if place is None or self._weights is None:
            return
        wanted = (repo_id, commit_sha, selection.key())
        for organization, other, identity in await self._location_users(principal, target):
            if organization != principal.organization_id:
                raise InvalidInput(
                    "downloadTarget.pvc.claimName",
                    f"{target.location('', '')} holds another organisation's weights",
                )
            if other is None or other[0] != place[0] or not locations.overlaps(other[1], place[1]):
                continue
            if other[1] == place[1] and identity == wanted:
                continue  # the same weights: reused, not downloaded twice
            field = DIRECTORY_FIELDS[target.kind]
            raise InvalidInput(
                field,
                f"{field} {place[1]} overlaps the directory of other weights ({other[1]}); "
                "choose a directory of its own",
            )

    async def _location_users(
        self, principal: Principal, target: DownloadTarget
    ) -> list[LocationUser]:
        """(organisation, place, repo, commit) of the weights, and of the models about to
        create weights, that may share the target's volume: the caller's LOCAL ones, or every
        organisation's on the same PVC claim."""
        assert self._weights is not None  # noqa: S101  checked by the caller
        scope: dict[str, str] = {} if target.shared_volume else dict(principal.scope)
        volume = target.volume_filter()
        weights = await self._weights.find(
            where={**scope, **{f"target.{k}": v for k, v in volume.items()}}, limit=10_000
        )
        models = await self._models.find(
            where={
                **scope,
                **{f"download_target.{k}": v for k, v in volume.items()},
                "is_deleted": False,
                "weights_id": None,
                "phase": {"$in": [ModelPhase.PENDING, ModelPhase.PULLING]},
            },
            limit=10_000,
        )
        found: list[LocationUser] = [
            (w.organization_id, w.target.place(), (w.repo_id, w.commit_sha, w.selection.key()))
            for w in weights.items
        ]
        found += [
            (
                m.organization_id,
                m.download_target.place() if m.download_target else None,
                (m.source.url, m.hub.commit_sha if m.hub else None, m.source.selection.key()),
            )
            for m in models.items
        ]
        return found


def fill_from_hub(model: ModelDocument, repo_id: str, hub: HubModel) -> None:
    """Catalogue fields the user left empty, from the hub; the hub's facts."""
    model.display_name = model.display_name or repo_id.split("/", 1)[1]
    model.description = model.description or hub.summary
    model.icon = model.icon or hub.avatar_url
    model.label = model.label or hub.author
    model.tags = model.tags or hub_tags(hub)
    model.hub = hub_facts(hub)


def hub_facts(hub: HubModel) -> HubFacts:
    """What the document keeps of the hub's answer."""
    return HubFacts(
        commit_sha=hub.sha,
        parameters=hub.parameters,
        weight_bytes=hub.total_bytes,
        architecture=hub.architectures[0] if hub.architectures else None,
        license=hub.license,
        gated=hub.gated,
        pipeline_tag=hub.pipeline_tag,
        library_name=hub.library_name,
    )


def hub_tags(hub: HubModel) -> list[str]:
    """Tags from the hub: pipeline, library, card tags (bounded like user tags)."""
    tags: list[str] = []
    for tag in [hub.pipeline_tag, hub.library_name, *hub.card_tags]:
        if tag and tag not in tags and len(tags) < v.MAX_TAGS:
            tags.append(tag[: v.MAX_TAG])
    return tags
