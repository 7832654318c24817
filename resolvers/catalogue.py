"""Resolvers of the git-synced catalogue: thin calls into ``services/catalogue``."""

from __future__ import annotations

from typing import Annotated

import strawberry

from resolvers.context import Info
from resolvers.errors import answers, query_errors
from resolvers.inference import _payload as inference_payload
from resolvers.models import _target as download_target
from schema.catalogue import (
    Catalog,
    CatalogEntry,
    CatalogProposal,
    CatalogSourceInput,
    ConfigureCatalogResult,
    GenerateCatalogEntryResult,
    GeneratedCatalogEntry,
    InstallCatalogEntryInput,
    InstallCatalogEntryResult,
    InstalledCatalogEntry,
    PreviewCatalogEntryResult,
    ProposeCatalogEntryResult,
    RefreshCatalogResult,
)
from schema.cluster import GpuFit
from schema.enums import InferenceEngineEnum
from schema.models import Model
from services.catalogue.entries import MAX_ENTRY_BYTES as MAX_YAML
from services.catalogue.service import SourceInput
from services.errors import InvalidInput
from storage.documents import InferenceEngine


async def resolve_catalog(info: Info) -> Catalog | None:
    """The caller's catalogue; null when none is configured (viewer role)."""
    principal = info.context.require_principal()
    with query_errors():
        found = await info.context.services.catalogue.get(principal)
    return None if found is None else Catalog.from_document(found)


@answers
async def configure_catalog(
    info: Info,
    source: Annotated[CatalogSourceInput, strawberry.argument(description="The git remote.")],
) -> ConfigureCatalogResult:
    """Set (or replace) the catalogue's git source; proves the credential, then syncs once."""
    principal = info.context.require_principal()
    document = await info.context.services.catalogue.configure(
        principal,
        SourceInput(
            url=source.url,
            branch=source.branch,
            folder=source.folder,
            username=source.username,
            password=source.password,
        ),
    )
    return Catalog.from_document(document)


@answers
async def refresh_catalog(
    info: Info,
    accept_force_push: Annotated[
        bool,
        strawberry.argument(description="Adopt a branch whose history was rewritten (admin role)."),
    ] = False,
) -> RefreshCatalogResult:
    """Pull the catalogue now; a failed pull keeps the last snapshot and says why."""
    principal = info.context.require_principal()
    document = await info.context.services.catalogue.refresh(
        principal, accept_force_push=accept_force_push
    )
    return Catalog.from_document(document)


@answers
async def preview_catalog_entry(
    info: Info,
    yaml: Annotated[str, strawberry.argument(description="An entry file's text.")],
    path: Annotated[
        str | None, strawberry.argument(description="Its file name, for the issues.")
    ] = None,
) -> PreviewCatalogEntryResult:
    """Parse and validate an entry without writing anything."""
    principal = info.context.require_principal()
    if len(yaml) > MAX_YAML:
        raise InvalidInput("yaml", "an entry file is at most 64 KiB")
    return CatalogEntry.from_entry(
        info.context.services.catalogue.preview(principal, yaml, path=path)
    )


@answers
async def install_catalog_entry(
    info: Info,
    input: Annotated[InstallCatalogEntryInput, strawberry.argument(description="What to install.")],
) -> InstallCatalogEntryResult:
    """Create the entry's model, and optionally start its inference."""
    principal = info.context.require_principal()
    installed = await info.context.services.catalogue.install(
        principal,
        input.name,
        model_name=input.model_name,
        target=download_target(input.download_target),
        start_inference=input.start_inference,
        patterns=(input.allow_patterns, input.ignore_patterns),
    )
    return InstalledCatalogEntry(
        model=Model.from_document(installed.model),
        inference=None if installed.inference is None else inference_payload(installed.inference),
    )


@answers
async def generate_catalog_entry(
    info: Info,
    *,
    repo_id: Annotated[str, strawberry.argument(description="Hub repo, `org/name` or URL.")],
    revision: Annotated[
        str | None, strawberry.argument(description="Branch, tag or commit; default branch.")
    ] = None,
    engine: Annotated[
        InferenceEngineEnum, strawberry.argument(description="VLLM or OLLAMA.")
    ] = InferenceEngineEnum.VLLM,
    gpu_type: Annotated[
        str | None, strawberry.argument(description="Size for this GPU type; default: best.")
    ] = None,
    context_length: Annotated[
        int | None, strawberry.argument(description="Context to size for (`--max-model-len`).")
    ] = None,
) -> GenerateCatalogEntryResult:
    """Draft an entry from the hub's metadata and the GPU fit (nothing written)."""
    principal = info.context.require_principal()
    generated = await info.context.services.catalogue.generate(
        principal,
        repo_id,
        revision=revision,
        engine=InferenceEngine(engine.name),
        gpu_type=gpu_type,
        context_length=context_length,
    )
    return GeneratedCatalogEntry(
        yaml=generated.yaml,
        entry=CatalogEntry.from_entry(generated.entry),
        fit=GpuFit.from_estimate(generated.fit),
    )


@answers
async def propose_catalog_entry(
    info: Info,
    *,
    yaml: Annotated[str, strawberry.argument(description="The entry file's text.")],
    path: Annotated[str, strawberry.argument(description="File name inside the catalogue folder.")],
    branch: Annotated[
        str | None, strawberry.argument(description="New branch; default `catalog/<name>-<id>`.")
    ] = None,
    message: Annotated[str | None, strawberry.argument(description="Commit message.")] = None,
) -> ProposeCatalogEntryResult:
    """Validate an entry, commit it on a new branch of the catalogue's remote, push it."""
    principal = info.context.require_principal()
    proposal = await info.context.services.catalogue.propose(
        principal, yaml, path=path, branch=branch, message=message
    )
    return CatalogProposal(
        branch=proposal.branch,
        commit=proposal.commit,
        path=proposal.path,
        base_commit=proposal.base_commit,
    )


CATALOG: Catalog | None = strawberry.field(
    resolver=resolve_catalog,
    description="Your organisation's git-synced catalogue (source, sync state, entries); "
    "null when none is configured.",
)
