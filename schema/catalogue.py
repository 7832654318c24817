"""The git-synced catalogue in GraphQL: its source, sync state, entries, and the results of
configure, refresh, install, generate and propose.

An entry's problems are data (``CatalogEntry.issues``, each with file, line and field), not
errors: a catalogue with a bad file still lists every entry. A refused *request* (a bad URL,
a refused credential, an unsafe path) is a ``ValidationError`` naming the input field.
The git credential is never returned: ``hasCredentials`` says whether one is stored.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated

import strawberry

from schema.cluster import GpuFit
from schema.enums import InferenceEngineEnum
from schema.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from schema.inference import InferencePayload
from schema.models import DownloadTargetInput, Model
from services.catalogue.entries import Entry
from storage.catalogues import CatalogueDocument, EntryRecord, SyncState


@strawberry.enum(description="Why the last sync did not replace the catalogue's snapshot.")
class CatalogSyncErrorKind(Enum):
    """The reason of ``CatalogSync.lastError``."""

    UNREACHABLE = strawberry.enum_value(
        "UNREACHABLE", description="The remote could not be reached (network, DNS, 5xx, timeout)."
    )
    AUTH_REFUSED = strawberry.enum_value(
        "AUTH_REFUSED", description="The remote refused the stored credential."
    )
    BRANCH_MISSING = strawberry.enum_value(
        "BRANCH_MISSING", description="The remote has no such branch any more."
    )
    FORCE_PUSHED = strawberry.enum_value(
        "FORCE_PUSHED",
        description="The branch was rewritten: its commit does not contain the last accepted "
        "one. An admin accepts it with `refreshCatalog(acceptForcePush: true)`.",
    )
    FAILED = strawberry.enum_value("FAILED", description="git failed otherwise (see message).")


@strawberry.type(description="One problem of one entry file.")
class CatalogEntryIssue:
    """Where and what."""

    path: str = strawberry.field(description="The file, relative to the repository root.")
    line: int | None = strawberry.field(description="1-based line; null for the whole file.")
    field: str | None = strawberry.field(
        description="The entry field at fault, e.g. `source.repo`, `flags[2]`; null if general."
    )
    message: str = strawberry.field(description="What is wrong, written for a person.")


@strawberry.type(description="Compute an entry asks for.")
class CatalogEntryResources:
    """Kubernetes quantities and a GPU type."""

    cpu: str | None = strawberry.field(description='CPU, e.g. "4"; null: the default.')
    memory: str | None = strawberry.field(description='Memory, e.g. "16Gi"; null: the default.')
    gpu: int | None = strawberry.field(description="Whole GPUs; null: the default.")
    gpu_type: str | None = strawberry.field(description="GPU type to run on; null: any.")


@strawberry.type(
    description="A model configuration from the catalogue repository (valid or not: see "
    "`valid` and `issues`)."
)
class CatalogEntry:
    """One entry file, parsed."""

    name: str = strawberry.field(description="Entry name (the file's stem when not given).")
    path: str = strawberry.field(description="The file, relative to the repository root.")
    valid: bool = strawberry.field(description="True when `issues` is empty: installable.")
    issues: list[CatalogEntryIssue] = strawberry.field(
        description="Every problem found, each with file, line and field."
    )
    repo: str | None = strawberry.field(description="Hugging Face repo id (`source.repo`).")
    revision: str | None = strawberry.field(description="Branch, tag or commit; null: default.")
    display_name: str | None = strawberry.field(description="Human-readable name.")
    description: str | None = strawberry.field(description="Free text.")
    engine: InferenceEngineEnum = strawberry.field(description="Recommended engine.")
    flags: list[str] = strawberry.field(description="The engine's extra flags, as argv tokens.")
    resources: CatalogEntryResources = strawberry.field(description="Compute asked for.")
    tags: list[str] = strawberry.field(description="Tags.")

    @classmethod
    def from_entry(cls, entry: Entry | EntryRecord) -> CatalogEntry:
        """API view of a parsed or stored entry."""
        issues = [
            CatalogEntryIssue(path=i.path, line=i.line, field=i.field, message=i.message)
            for i in entry.issues
        ]
        return cls(
            name=entry.name,
            path=entry.path,
            valid=not issues,
            issues=issues,
            repo=entry.repo,
            revision=entry.revision,
            display_name=entry.display_name,
            description=entry.description,
            engine=InferenceEngineEnum(entry.engine.value),
            flags=list(entry.flags),
            resources=CatalogEntryResources(
                cpu=entry.cpu, memory=entry.memory, gpu=entry.gpu, gpu_type=entry.gpu_type
            ),
            tags=list(entry.tags),
        )


@strawberry.type(description="What the syncs of the catalogue did.")
class CatalogSync:
    """The last commit, the last success, the last error."""

    commit: str | None = strawberry.field(
        description="Commit the entries were read from; null before the first success."
    )
    remote_commit: str | None = strawberry.field(
        description="The branch's commit as last seen on the remote (differs from `commit` "
        "while a force-pushed branch waits to be accepted)."
    )
    last_success_at: datetime | None = strawberry.field(description="Last successful sync.")
    last_attempt_at: datetime | None = strawberry.field(description="When the last sync began.")
    last_error: str | None = strawberry.field(
        description="Why the last failed sync failed; null when the last sync succeeded."
    )
    last_error_kind: CatalogSyncErrorKind | None = strawberry.field(
        description="The reason, as an enum; null when the last sync succeeded."
    )
    last_error_at: datetime | None = strawberry.field(description="When that sync failed.")

    @classmethod
    def from_state(cls, state: SyncState) -> CatalogSync:
        failed = state.last_error_at is not None and (
            state.last_success_at is None or state.last_error_at > state.last_success_at
        )
        return cls(
            commit=state.commit,
            remote_commit=state.remote_commit,
            last_success_at=state.last_success_at,
            last_attempt_at=state.last_attempt_at,
            last_error=state.last_error if failed else None,
            last_error_kind=CatalogSyncErrorKind(state.last_error_kind.value)
            if failed and state.last_error_kind
            else None,
            last_error_at=state.last_error_at if failed else None,
        )


@strawberry.type(description="One page of catalogue entries and the number of all matches.")
class CatalogEntryPage:
    """A `limit`/`offset` page, by path."""

    total: int = strawberry.field(description="Matches across all pages.")
    items: list[CatalogEntry] = strawberry.field(description="This page, by file path.")
    limit: int = strawberry.field(description="Page size asked for.")
    offset: int = strawberry.field(description="Matches skipped before this page.")


def _entries(
    root: strawberry.Parent[Catalog],
    valid: Annotated[
        bool | None, strawberry.argument(description="Only valid (or invalid) ones.")
    ] = None,
    limit: Annotated[int, strawberry.argument(description="Page size, 1 to 200.")] = 50,
    offset: Annotated[int, strawberry.argument(description="Entries to skip.")] = 0,
) -> CatalogEntryPage:
    limit = max(1, min(limit, 200))
    offset = max(0, offset)
    matches = [e for e in root.document.entries if valid is None or (not e.issues) is valid]
    return CatalogEntryPage(
        total=len(matches),
        items=[CatalogEntry.from_entry(e) for e in matches[offset : offset + limit]],
        limit=limit,
        offset=offset,
    )


def _entry(
    root: strawberry.Parent[Catalog],
    name: Annotated[str, strawberry.argument(description="Entry name.")],
) -> CatalogEntry | None:
    found = next((e for e in root.document.entries if e.name == name), None)
    return None if found is None else CatalogEntry.from_entry(found)


@strawberry.type(
    description="Your organisation's git-synced catalogue of model configurations: its "
    "source, sync state and the last good snapshot of its entries."
)
class Catalog:
    """Source, sync, entries."""

    url: str = strawberry.field(description="The git remote (http or https, no credentials).")
    branch: str = strawberry.field(description="The branch synced.")
    folder: str = strawberry.field(description="Folder of entry files; empty: the root.")
    username: str | None = strawberry.field(description="User name sent to the remote.")
    has_credentials: bool = strawberry.field(
        description="Whether a password or token is stored (it is never returned)."
    )
    sync: CatalogSync = strawberry.field(description="What the syncs did.")
    entries_total: int = strawberry.field(description="Entry files in the snapshot.")
    invalid_total: int = strawberry.field(description="Entry files with problems.")
    document: strawberry.Private[CatalogueDocument]

    entries: CatalogEntryPage = strawberry.field(
        resolver=_entries, description="Entries of the snapshot by path; `valid` filters."
    )
    entry: CatalogEntry | None = strawberry.field(
        resolver=_entry, description="One entry by name; null when the snapshot has none."
    )

    @classmethod
    def from_document(cls, document: CatalogueDocument) -> Catalog:
        """API view of the stored catalogue (the credential stays in the secret store)."""
        return cls(
            url=document.url,
            branch=document.branch,
            folder=document.folder,
            username=document.username,
            has_credentials=document.secret_ref is not None,
            sync=CatalogSync.from_state(document.sync),
            entries_total=len(document.entries),
            invalid_total=sum(1 for e in document.entries if e.issues),
            document=document,
        )


@strawberry.input(description="Where the catalogue lives: a git remote over http(s).")
class CatalogSourceInput:
    """configureCatalog input."""

    url: str = strawberry.field(
        description="http(s) URL of the repository, without credentials, query or fragment."
    )
    branch: str = strawberry.field(default="main", description="Branch to sync.")
    folder: str | None = strawberry.field(
        default=None, description="Folder of entry files (relative, no `..`); null: the root."
    )
    username: str | None = strawberry.field(default=None, description="User name for the remote.")
    password: str | None = strawberry.field(
        default=None,
        description="Password or token; kept in the secret store, never returned or logged.",
    )


@strawberry.input(description="How to install a catalogue entry.")
class InstallCatalogEntryInput:
    """installCatalogEntry input."""

    name: str = strawberry.field(description="The entry's name.")
    model_name: str | None = strawberry.field(
        default=None, description="The new model's name; null: the entry's name."
    )
    download_target: DownloadTargetInput | None = strawberry.field(
        default=None, description="Where the weights go (as in createModel)."
    )
    allow_patterns: list[str] | None = strawberry.field(
        default=None,
        description="Download only the files matching one of these globs (as createModel's "
        "`source.allowPatterns`); null: every file.",
    )
    ignore_patterns: list[str] | None = strawberry.field(
        default=None, description="Do not download files matching one of these globs."
    )
    start_inference: bool = strawberry.field(
        default=False,
        description="Also start the model's inference with the entry's engine, flags and "
        "resources.",
    )


@strawberry.type(description="A catalogue entry installed as a model.")
class InstalledCatalogEntry:
    """The model, and its inference when one was started."""

    model: Model = strawberry.field(description="The new model (downloading its weights).")
    inference: InferencePayload | None = strawberry.field(
        description="The started inference; null when `startInference` was false."
    )


@strawberry.type(description="An entry drafted from a hub repo (nothing written).")
class GeneratedCatalogEntry:
    """The YAML to commit, the entry it parses to, and the fit it was sized with."""

    yaml: str = strawberry.field(description="The entry file's text.")
    entry: CatalogEntry = strawberry.field(description="The entry, parsed and validated.")
    fit: GpuFit = strawberry.field(
        description="The GPU fit the resources and vLLM flags come from."
    )


@strawberry.type(description="An entry committed on a new branch and pushed.")
class CatalogProposal:
    """Where the proposal is."""

    branch: str = strawberry.field(description="The new branch on the remote.")
    commit: str = strawberry.field(description="The commit pushed.")
    path: str = strawberry.field(description="The file written, relative to the root.")
    base_commit: str = strawberry.field(description="The catalogue branch's commit it builds on.")


ConfigureCatalogResult = Annotated[
    Catalog | ValidationError | ConflictError | ForbiddenError,
    strawberry.union("ConfigureCatalogResult", description="configureCatalog's outcome."),
]
RefreshCatalogResult = Annotated[
    Catalog | NotFoundError | ConflictError | ForbiddenError,
    strawberry.union("RefreshCatalogResult", description="refreshCatalog's outcome."),
]
InstallCatalogEntryResult = Annotated[
    InstalledCatalogEntry | ValidationError | NotFoundError | ConflictError | ForbiddenError,
    strawberry.union("InstallCatalogEntryResult", description="installCatalogEntry's outcome."),
]
GenerateCatalogEntryResult = Annotated[
    GeneratedCatalogEntry | ValidationError | NotFoundError | ForbiddenError,
    strawberry.union("GenerateCatalogEntryResult", description="generateCatalogEntry's outcome."),
]
ProposeCatalogEntryResult = Annotated[
    CatalogProposal | ValidationError | NotFoundError | ConflictError | ForbiddenError,
    strawberry.union("ProposeCatalogEntryResult", description="proposeCatalogEntry's outcome."),
]
PreviewCatalogEntryResult = Annotated[
    CatalogEntry | ValidationError | ForbiddenError,
    strawberry.union("PreviewCatalogEntryResult", description="previewCatalogEntry's outcome."),
]
