"""One sync of a catalogue: fetch the branch, judge it, read its entries, store the snapshot.

Who syncs, with two replicas: the replica that leads the ``catalogue`` lease pulls every
catalogue on the schedule (``MODELPLANE_CATALOGUE_SYNC_SECONDS``), and the replica that
receives ``refreshCatalog`` or ``configureCatalog`` syncs that catalogue at once, into its own
bare repository under the cache directory. Both write the same MongoDB document, and every
replica answers ``catalog`` from that document, never from its checkout, so the replicas never
disagree about what the catalogue holds and a refresh's answer is the refreshed state whichever
replica took it. Only the schedule is leader-only (two replicas pulling the same remote every
period would double the load on the forge for nothing).

Two refreshes at once: inside a process an asyncio lock per catalogue queues them; across
processes sharing a cache directory, ``flock`` (:func:`integrations.git.locked`). The git
objects are only ever added to and refs move atomically, and entries are read from a commit's
tree by object id, so no refresh can observe another's half-written checkout. Between replicas
with their own caches, the document write is a compare-and-set that refuses a sync which
*started* before the one already recorded (``sync.last_attempt_at``), so a slow, older fetch
never replaces a newer snapshot.

What a sync refuses, keeping the last good snapshot and saying why in ``sync.last_error``: an
unreachable remote, a refused credential, a missing branch, and a branch whose new commit does
not contain the last accepted one (a force-push: history was rewritten, so the catalogue waits
for an admin's ``refreshCatalog(acceptForcePush: true)``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from controllers.runtimes.secrets import SecretStore, SecretStoreError
from integrations.git import (
    GitAuthRefused,
    GitBranchMissing,
    GitError,
    GitUnreachable,
    Remote,
    Repository,
    locked,
)
from services.catalogue.entries import Entry, parse_entry, with_duplicates
from services.catalogue.paths import select
from storage.catalogues import (
    CatalogueDocument,
    CatalogueRepository,
    EntryIssueRecord,
    EntryRecord,
    SyncErrorKind,
    SyncState,
)
from storage.documents import utcnow

log = logging.getLogger(__name__)

GIT_PASSWORD_KEY = "git-password"  # noqa: S105  a key name inside the Secret, not a value


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """Deployment-wide settings of the catalogue's git work."""

    cache_dir: Path
    git_timeout_seconds: float
    hub_endpoint: str
    author: tuple[str, str]
    """(name, email) of the commits ``proposeCatalogEntry`` writes."""


class SyncFailed(Exception):
    """A sync could not replace the snapshot: the kind and a message safe to show."""

    def __init__(
        self, kind: SyncErrorKind, message: str, *, remote_commit: str | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.remote_commit = remote_commit


def error_kind(exc: GitError) -> SyncErrorKind:
    """The sync state's reason for a git failure."""
    if isinstance(exc, GitAuthRefused):
        return SyncErrorKind.AUTH_REFUSED
    if isinstance(exc, GitUnreachable):
        return SyncErrorKind.UNREACHABLE
    if isinstance(exc, GitBranchMissing):
        return SyncErrorKind.BRANCH_MISSING
    return SyncErrorKind.FAILED


class Syncer:
    """Fetches, judges and stores; one per process, shared by the service and the schedule."""

    def __init__(
        self, *, catalogues: CatalogueRepository, secrets: SecretStore, config: SyncConfig
    ) -> None:
        self._catalogues = catalogues
        self._secrets = secrets
        self.config = config
        self._locks: dict[str, asyncio.Lock] = {}

    def repository(self, catalogue: CatalogueDocument) -> Repository:
        """This process's bare repository for a catalogue."""
        path = self.config.cache_dir / f"{catalogue.id}.git"
        return Repository(path, timeout=self.config.git_timeout_seconds)

    def lock(self, catalogue_id: str) -> asyncio.Lock:
        return self._locks.setdefault(catalogue_id, asyncio.Lock())

    async def remote(self, catalogue: CatalogueDocument) -> Remote:
        """The remote with its credential read from the secret store now."""
        password = None
        if catalogue.secret_ref is not None:
            try:
                stored = await self._secrets.get(catalogue.secret_ref)
            except SecretStoreError as exc:
                raise SyncFailed(
                    SyncErrorKind.FAILED, f"the credential is unreadable: {exc}"
                ) from None
            password = stored.get(GIT_PASSWORD_KEY)
        return Remote(
            url=catalogue.url,
            branch=catalogue.branch,
            username=catalogue.username,
            password=password,
        )

    async def sync(
        self, catalogue: CatalogueDocument, *, accept_force_push: bool = False
    ) -> CatalogueDocument:
        """Sync one catalogue and store the outcome; returns the document as stored."""
        started = utcnow()
        repository = self.repository(catalogue)
        try:
            async with self.lock(catalogue.id), locked(repository.path):
                catalogue = await self._catalogues.get(catalogue.id) or catalogue  # the latest
                commit, entries = await self._fetch_and_read(
                    repository, catalogue, accept_force_push=accept_force_push
                )
        except SyncFailed as exc:
            log.warning(
                "catalogue sync failed",
                extra={"catalogue": catalogue.id, "kind": exc.kind.value, "error": exc.message},
            )
            return await self._store_failure(catalogue, started, exc)
        return await self._store_success(catalogue, started, commit, entries)

    async def _fetch_and_read(
        self, repository: Repository, catalogue: CatalogueDocument, *, accept_force_push: bool
    ) -> tuple[str, list[Entry]]:
        remote = await self.remote(catalogue)
        try:
            await repository.ensure()
            commit = await repository.fetch(remote)
            accepted = catalogue.sync.commit
            if (
                accepted is not None
                and accepted != commit
                and not accept_force_push
                and not await repository.is_ancestor(accepted, commit)
            ):
                raise SyncFailed(
                    SyncErrorKind.FORCE_PUSHED,
                    f"branch {catalogue.branch!r} was rewritten (force-pushed): its commit "
                    f"{commit[:12]} does not contain the last accepted {accepted[:12]}; the "
                    "last good snapshot keeps serving until an admin accepts the new history "
                    "(refreshCatalog with acceptForcePush)",
                    remote_commit=commit,
                )
            entries = await read_entries(
                repository, commit, catalogue.folder, hub_endpoint=self.config.hub_endpoint
            )
            await repository.keep(commit)
        except GitError as exc:
            raise SyncFailed(error_kind(exc), str(exc)) from None
        return commit, entries

    async def _store_success(
        self,
        catalogue: CatalogueDocument,
        started: datetime,
        commit: str,
        entries: list[Entry],
    ) -> CatalogueDocument:
        def change(current: CatalogueDocument) -> dict[str, Any] | None:
            if not _same_source(current, catalogue) or _newer(current, started):
                return None
            sync = SyncState(
                commit=commit,
                last_success_at=utcnow(),
                last_attempt_at=started,
                remote_commit=commit,
            )
            return {
                "sync": sync.model_dump(mode="python"),
                "entries": [record(entry).model_dump(mode="python") for entry in entries],
            }

        written = await self._catalogues.modify(catalogue.id, change)
        log.info(
            "catalogue synced",
            extra={"catalogue": catalogue.id, "commit": commit, "entries": len(entries)},
        )
        return written

    async def _store_failure(
        self, catalogue: CatalogueDocument, started: datetime, failure: SyncFailed
    ) -> CatalogueDocument:
        def change(current: CatalogueDocument) -> dict[str, Any] | None:
            if not _same_source(current, catalogue) or _newer(current, started):
                return None
            sync = current.sync.model_copy(
                update={
                    "last_attempt_at": started,
                    "last_error": failure.message,
                    "last_error_kind": failure.kind,
                    "last_error_at": utcnow(),
                    "remote_commit": failure.remote_commit or current.sync.remote_commit,
                }
            )
            return {"sync": sync.model_dump(mode="python")}

        return await self._catalogues.modify(catalogue.id, change)

    async def sync_all(self) -> None:
        """The schedule: sync every catalogue (the leader calls this every period); one
        catalogue's failure is recorded on it and never stops the others."""
        for catalogue in await self._catalogues.every():
            try:
                await self.sync(catalogue)
            except Exception:  # a bug or the database: logged, the next catalogue goes on
                log.exception("catalogue sync broke", extra={"catalogue": catalogue.id})


def _same_source(current: CatalogueDocument, synced: CatalogueDocument) -> bool:
    """Whether the catalogue still has the source the sync read (not reconfigured since)."""
    return (current.url, current.branch, current.folder, current.secret_ref) == (
        synced.url,
        synced.branch,
        synced.folder,
        synced.secret_ref,
    ) and current.configured_at == synced.configured_at


def _newer(current: CatalogueDocument, started: datetime) -> bool:
    """Whether a sync that started after this one already wrote the document."""
    attempted = current.sync.last_attempt_at
    return attempted is not None and attempted > started


async def read_entries(
    repository: Repository, commit: str, folder: str, *, hub_endpoint: str
) -> list[Entry]:
    """Every entry file under ``folder`` at ``commit``, parsed; refused paths as invalid
    entries."""
    items = await repository.tree(commit, "")
    links = await repository.blobs([item.sha for item in items if item.is_symlink])
    chosen, refused = select(items, folder, links)
    blobs = await repository.blobs([sha for _, sha in chosen])
    parsed = [parse_entry(path, blobs[sha], hub_endpoint=hub_endpoint) for path, sha in chosen]
    return with_duplicates([*parsed, *refused])


def record(entry: Entry) -> EntryRecord:
    """An entry as stored."""
    return EntryRecord(
        path=entry.path,
        name=entry.name,
        repo=entry.repo,
        revision=entry.revision,
        display_name=entry.display_name,
        description=entry.description,
        engine=entry.engine,
        flags=list(entry.flags),
        cpu=entry.cpu,
        memory=entry.memory,
        gpu=entry.gpu,
        gpu_type=entry.gpu_type,
        tags=list(entry.tags),
        issues=[
            EntryIssueRecord(path=i.path, line=i.line, field=i.field, message=i.message)
            for i in entry.issues
        ],
    )
