"""The catalogue's use cases: configure the git source, refresh, read, preview, generate,
install and propose entries (roles, validation, the refusals naming their field).

The source is configured per organisation with ``configureCatalog`` (admin role), not with a
setting: a URL, branch and folder are refused with the field at fault before anything is
stored, and the credential is proven by asking the remote for the branch (``git ls-remote``)
first, so a wrong password is a ``ValidationError`` on ``source.password`` rather than a
catalogue that silently never syncs. The password goes to the secret store (a Kubernetes
Secret or the encrypted store); the document keeps its reference and answers only
``hasCredentials``. Syncing is :mod:`services.catalogue.syncing`.

Installing an entry goes through the model service (``createModel``'s rules, tenancy and
events) and, when asked, the inference service with the entry's engine, flags and resources;
a start the inference service refuses deletes the model it just created (the soft delete of
``deleteModel``: its download is cancelled and its objects removed), so the refusal leaves no
live model behind; the refusal names ``input.startInference`` and quotes the inference's field.
How an entry's flags reach the inference (the context length, the GPU count, every other
flag as ``engineArgs``) is :func:`inference_request`'s concern.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from controllers.runtimes.secrets import SecretStore, SecretStoreError
from integrations.addresses import OutboundPolicy
from integrations.git import (
    GitAuthRefused,
    GitBranchMissing,
    GitError,
    GitMissing,
    GitPushRejected,
    locked,
)
from services import validation as v
from services.catalogue.entries import Entry, Issue, parse_entry, render
from services.catalogue.paths import check_entry_path, check_folder
from services.catalogue.syncing import GIT_PASSWORD_KEY, Syncer, SyncFailed
from services.cluster import ClusterService
from services.errors import Conflict, InvalidInput, Missing
from services.fitting import FitEstimate
from services.inference import InferenceService, StartOutcome
from services.inference_inputs import InferenceRequest
from services.models import CreateModelSpec, ModelService, ResourcesSpec, SourceSpec
from services.principals import Principal
from services.targets import TargetSpec
from storage.catalogues import CatalogueDocument, CatalogueRepository, SyncState, catalogue_id
from storage.documents import AccessMode, InferenceEngine, ModelDocument, Role, new_id
from storage.errors import DuplicateKey, NotFound

log = logging.getLogger(__name__)

_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}\Z")
MAX_USERNAME = 256
VLLM_DTYPES = {"BF16": "bfloat16", "F16": "float16"}
"""The fit's serving dtype -> vLLM's ``--dtype``."""


@dataclass(frozen=True, slots=True)
class SourceInput:
    """``configureCatalog``'s source."""

    url: str
    branch: str = "main"
    folder: str | None = None
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True, slots=True)
class Installed:
    """What ``installCatalogEntry`` did."""

    model: ModelDocument
    inference: StartOutcome | None


@dataclass(frozen=True, slots=True)
class Generated:
    """A drafted entry, its YAML, and the GPU fit it was sized with."""

    entry: Entry
    yaml: str
    fit: FitEstimate


@dataclass(frozen=True, slots=True)
class Proposal:
    """A pushed proposal: the new branch and commit, the file, the commit it is based on."""

    branch: str
    commit: str
    path: str
    base_commit: str


def check_branch(field: str, value: str) -> str:
    """A branch name git accepts (and that cannot be read as an option)."""
    text = value.strip()
    if (
        not _BRANCH.match(text)
        or ".." in text
        or "//" in text
        or text.endswith(("/", ".", ".lock"))
        or "/." in text
    ):
        raise InvalidInput(field, f"{field} {value!r} is not a valid branch name")
    return text


class CatalogueService:
    """Use cases of an organisation's catalogue."""

    def __init__(
        self,
        *,
        catalogues: CatalogueRepository,
        syncer: Syncer,
        secrets: SecretStore,
        models: ModelService,
        inference: InferenceService,
        cluster: ClusterService,
        outbound: OutboundPolicy,
    ) -> None:
        self._catalogues = catalogues
        self._syncer = syncer
        self._secrets = secrets
        self._models = models
        self._inference = inference
        self._cluster = cluster
        self._outbound = outbound

    @property
    def hub_endpoint(self) -> str:
        return self._syncer.config.hub_endpoint

    async def get(self, principal: Principal) -> CatalogueDocument | None:
        """The caller's catalogue (snapshot and sync state), or None when none is configured."""
        principal.require(Role.VIEWER)
        return await self._catalogues.get(
            catalogue_id(principal.organization_id), scope=principal.scope
        )

    async def _require(self, principal: Principal) -> CatalogueDocument:
        found = await self.get(principal)
        if found is None:
            raise Missing("catalog", "no catalogue is configured: configureCatalog first")
        return found

    # -- configuration -------------------------------------------------------------------

    async def configure(self, principal: Principal, source: SourceInput) -> CatalogueDocument:
        """Check the source, prove the credential on the remote, store it, sync once."""
        principal.require(Role.ADMIN)
        url = v.check_remote_url("source.url", source.url, outbound=self._outbound)
        await v.check_resolved("source.url", url, outbound=self._outbound)
        branch = check_branch("source.branch", source.branch)
        folder = check_folder("source.folder", source.folder)
        username = v.check_text("source.username", source.username, limit=MAX_USERNAME)
        if username is not None and ":" in username:
            raise InvalidInput("source.username", "source.username may not contain ':'")
        password = v.check_secret_value("source.password", source.password, required=False)
        draft = CatalogueDocument(
            id=catalogue_id(principal.organization_id),
            organization_id=principal.organization_id,
            url=url,
            branch=branch,
            folder=folder,
            username=username,
            configured_by=principal.subject,
        )
        await self._probe(draft, password)
        stored = await self._store_source(principal, draft, password)
        log.info("catalogue configured", extra={"catalogue": stored.id, "url": url})
        return await self._syncer.sync(stored)

    async def _probe(self, draft: CatalogueDocument, password: str | None) -> None:
        """Ask the remote for the branch with the credential; refusals name the field."""
        remote = replace(await self._syncer.remote(draft), password=password)
        repository = self._syncer.repository(draft)
        try:
            async with self._syncer.lock(draft.id), locked(repository.path):
                await repository.ensure()
                await repository.remote_head(remote)
        except GitAuthRefused:
            field = "source.password" if password else "source.username"
            raise InvalidInput(
                field,
                "the remote refused the credential"
                if password
                else "the remote asks for a credential: give source.username and source.password",
            ) from None
        except GitBranchMissing:
            raise InvalidInput(
                "source.branch", f"the remote has no branch {draft.branch!r}"
            ) from None
        except GitMissing as exc:
            raise Conflict(None, str(exc)) from None
        except GitError as exc:
            raise InvalidInput("source.url", f"source.url could not be read: {exc}") from None

    async def _store_source(
        self, principal: Principal, draft: CatalogueDocument, password: str | None
    ) -> CatalogueDocument:
        """The credential into the secret store, then the document (an older configuration and
        its snapshot replaced in one compare-and-set); the new credential is removed again if
        the write fails, the old one once it is replaced."""
        previous = await self._catalogues.get(draft.id)
        ref: str | None = None
        if password is not None:
            try:
                ref = await self._secrets.put(
                    organization_id=principal.organization_id,
                    owner_id=draft.id,
                    values={GIT_PASSWORD_KEY: password},
                )
            except SecretStoreError as exc:
                raise Conflict(
                    "source.password", f"the credential could not be stored: {exc}"
                ) from None
        draft.secret_ref = ref
        try:
            written = await self._write_source(draft, previous)
        except BaseException:
            if ref is not None:
                with contextlib.suppress(SecretStoreError):
                    await self._secrets.delete(ref)
            raise
        if previous is not None and previous.secret_ref and previous.secret_ref != ref:
            with contextlib.suppress(SecretStoreError):
                await self._secrets.delete(previous.secret_ref)
        return written

    async def _write_source(
        self, draft: CatalogueDocument, previous: CatalogueDocument | None
    ) -> CatalogueDocument:
        if previous is None:
            try:
                return await self._catalogues.insert(draft)
            except DuplicateKey:
                raise Conflict(
                    None, "the catalogue is being configured concurrently; try again"
                ) from None
        fields = ("url", "branch", "folder", "username", "secret_ref", "configured_by")
        changes = {name: getattr(draft, name) for name in fields}
        changes |= {
            "configured_at": draft.configured_at,
            "sync": SyncState().model_dump(mode="python"),
            "entries": [],
        }
        try:
            return await self._catalogues.modify(draft.id, lambda _: changes)
        except NotFound:
            raise Conflict(
                None, "the catalogue changed while being configured; try again"
            ) from None

    async def refresh(
        self, principal: Principal, *, accept_force_push: bool = False
    ) -> CatalogueDocument:
        """Sync now (editor; accepting a rewritten branch needs admin). A failed sync is not
        an error: the answer's sync state says why and the last snapshot stays."""
        principal.require(Role.ADMIN if accept_force_push else Role.EDITOR)
        catalogue = await self._require(principal)
        return await self._syncer.sync(catalogue, accept_force_push=accept_force_push)

    # -- entries -------------------------------------------------------------------------

    def preview(self, principal: Principal, text: str, *, path: str | None = None) -> Entry:
        """Parse and validate an entry without writing anything."""
        principal.require(Role.VIEWER)
        name = check_entry_path("path", path, folder="") if path else "entry.yaml"
        return parse_entry(name, text, hub_endpoint=self.hub_endpoint)

    async def entry(self, principal: Principal, name: str) -> Entry:
        """A valid entry of the snapshot by name (refusals name ``name``)."""
        catalogue = await self._require(principal)
        record = next((e for e in catalogue.entries if e.name == name), None)
        if record is None:
            raise Missing(name, f"the catalogue has no entry {name!r}")
        if record.issues:
            first = record.issues[0]
            where = f"{first.path}:{first.line}" if first.line else first.path
            raise InvalidInput(
                "name", f"entry {name!r} is invalid ({where}: {first.field}: {first.message})"
            )
        return Entry(
            path=record.path,
            name=record.name,
            repo=record.repo,
            revision=record.revision,
            display_name=record.display_name,
            description=record.description,
            engine=record.engine,
            flags=tuple(record.flags),
            cpu=record.cpu,
            memory=record.memory,
            gpu=record.gpu,
            gpu_type=record.gpu_type,
            tags=tuple(record.tags),
        )

    async def install(
        self,
        principal: Principal,
        name: str,
        *,
        model_name: str | None = None,
        target: TargetSpec | None = None,
        start_inference: bool = False,
        patterns: tuple[Sequence[str] | None, Sequence[str] | None] = (None, None),
    ) -> Installed:
        """Create the entry's model (and start its inference with the entry's engine);
        ``patterns``: (allow, ignore) file patterns of its download."""
        principal.require(Role.EDITOR)
        entry = await self.entry(principal, name)
        request = inference_request(entry) if start_inference else None
        spec = CreateModelSpec(
            source=SourceSpec(
                url=entry.repo or "",
                access_mode=AccessMode.LOCAL,
                revision=entry.revision,
                allow_patterns=patterns[0],
                ignore_patterns=patterns[1],
            ),
            name=model_name or entry.name,
            display_name=entry.display_name,
            description=entry.description,
            tags=list(entry.tags),
            download_target=target,
            resources=ResourcesSpec(cpu=entry.cpu, memory=entry.memory, gpu=entry.gpu),
        )
        try:
            model = await self._models.create(principal, spec)
        except InvalidInput as exc:
            if exc.field in ("source.allowPatterns", "source.ignorePatterns"):
                raise InvalidInput(exc.field.removeprefix("source."), exc.message) from None
            raise
        if request is None:
            return Installed(model=model, inference=None)
        try:
            started = await self._inference.start(principal, model.id, request)
        except InvalidInput as exc:
            await self._models.delete(principal, model.id)
            raise InvalidInput(
                "input.startInference",
                f"entry {name!r} cannot start here ({exc.field}: {exc.message}); the model was "
                "not kept: install it without startInference, or start it with other input",
            ) from None
        except BaseException:
            await self._models.delete(principal, model.id)
            raise
        return Installed(model=model, inference=started)

    async def generate(
        self,
        principal: Principal,
        repo_id: str,
        *,
        revision: str | None = None,
        engine: InferenceEngine = InferenceEngine.VLLM,
        gpu_type: str | None = None,
        context_length: int | None = None,
    ) -> Generated:
        """Draft an entry from the hub's metadata and the GPU fit (writes nothing)."""
        principal.require(Role.VIEWER)
        repo = v.normalize_repo_id("repoId", repo_id, hub_endpoint=self.hub_endpoint)
        hub = await self._models.hub_preview(principal, repo, revision=revision)
        fit = await self._cluster.fit(
            principal,
            model_id=None,
            repo_id=repo,
            revision=hub.sha,
            engine=engine,
            gpu_type=gpu_type,
            context_length=context_length,
        )
        chosen = fit.chosen
        draft = Entry(
            path=f"{v.derive_name(repo)}.yaml",
            name=v.derive_name(repo),
            repo=repo,
            revision=hub.sha,
            display_name=repo.rsplit("/", 1)[-1],
            description=(hub.summary or "")[: v.MAX_DESCRIPTION_BYTES // 2] or None,
            engine=engine,
            flags=tuple(vllm_flags(fit)) if engine is InferenceEngine.VLLM else (),
            gpu=chosen.gpus_needed if chosen and chosen.gpus_needed else None,
            gpu_type=chosen.gpu_type if chosen and chosen.gpus_needed else None,
            tags=tuple(t for t in (hub.pipeline_tag, hub.library_name) if t),
        )

        text = render(draft)
        return Generated(
            entry=parse_entry(draft.path, text, hub_endpoint=self.hub_endpoint),
            yaml=text,
            fit=fit,
        )

    async def propose(
        self,
        principal: Principal,
        text: str,
        *,
        path: str,
        branch: str | None = None,
        message: str | None = None,
    ) -> Proposal:
        """Validate the entry, commit it on a new branch from the synced branch, push."""
        principal.require(Role.EDITOR)
        catalogue = await self._require(principal)
        full_path = check_entry_path("path", path, folder=catalogue.folder)
        entry = parse_entry(full_path, text, hub_endpoint=self.hub_endpoint)
        if not entry.valid:
            raise InvalidInput("yaml", describe(entry.issues[0]))
        target = check_branch("branch", branch or f"catalog/{entry.name}-{new_id('p')[2:]}")
        if target == catalogue.branch:
            raise InvalidInput("branch", "a proposal goes to a new branch, not the catalogue's")
        summary = v.check_text("message", message, limit=2000, in_bytes=True)
        body = summary or f"Add catalogue entry {entry.name} ({full_path})"
        body += f"\n\nProposed by {principal.subject} through modelplane."
        return await self._push(catalogue, full_path, text, target, body)

    async def _push(
        self, catalogue: CatalogueDocument, path: str, text: str, branch: str, message: str
    ) -> Proposal:
        repository = self._syncer.repository(catalogue)
        try:
            remote = await self._syncer.remote(catalogue)
            async with self._syncer.lock(catalogue.id), locked(repository.path):
                await repository.ensure()
                base = await repository.fetch(remote)
                with contextlib.suppress(GitBranchMissing):
                    await repository.remote_head(replace(remote, branch=branch))
                    raise InvalidInput("branch", f"branch {branch!r} exists on the remote")
                commit = await repository.commit_file(
                    parent=base,
                    path=path,
                    content=text.encode(),
                    message=message,
                    author=self._syncer.config.author,
                )
                await repository.push_new_branch(remote, commit, branch)
        except GitPushRejected as exc:
            raise Conflict("branch", f"the remote refused the push: {exc}") from None
        except (GitError, SyncFailed) as exc:
            raise Conflict(None, f"the catalogue's remote could not be written: {exc}") from None
        log.info("catalogue entry proposed", extra={"branch": branch, "path": path})
        return Proposal(branch=branch, commit=commit, path=path, base_commit=base)


def describe(issue: Issue) -> str:
    """An issue as one line: ``models/a.yaml:3: source.repo: ...``."""
    where = f"{issue.path}:{issue.line}" if issue.line else issue.path
    return (
        f"{where}: {issue.field}: {issue.message}" if issue.field else f"{where}: {issue.message}"
    )


def inference_request(entry: Entry) -> InferenceRequest:
    """The inference an entry asks for: its engine, resources and flags. ``--max-model-len``
    becomes the context length and ``--tensor-parallel-size`` the GPU count (modelplane puts
    both on the command line itself); every other flag goes as it is into ``engineArgs``,
    appended to the command line modelplane builds, so a generated entry's ``--dtype`` and
    ``--gpu-memory-utilization`` are served as written. The entry's validation
    (:mod:`services.catalogue.entries`) refuses the flags ``engineArgs`` refuses, so a valid
    entry's flags are never dropped nor refused here; a start the inference service refuses
    anyway names ``input.startInference`` and quotes the inference's field."""
    context, parallel, rest = split_flags(entry.flags)
    if parallel is not None and entry.gpu is not None and parallel != entry.gpu:
        raise InvalidInput(
            "input.startInference",
            f"entry {entry.name!r}: --tensor-parallel-size={parallel} but resources.gpu is "
            f"{entry.gpu}",
        )
    return InferenceRequest(
        engine=entry.engine,
        cpu=entry.cpu,
        memory=entry.memory,
        gpu=parallel if parallel is not None else entry.gpu,
        gpu_type=entry.gpu_type,
        context_length=context,
        engine_args=rest or None,
    )


def split_flags(flags: Sequence[str]) -> tuple[int | None, int | None, list[str]]:
    """(``--max-model-len``, ``--tensor-parallel-size``, every other token) of a flag list;
    each of the two as ``--name=value`` or ``--name value``."""
    known: dict[str, int | None] = {"max-model-len": None, "tensor-parallel-size": None}
    rest: list[str] = []
    tokens = list(flags)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        name, has_value, value = token.removeprefix("--").partition("=")
        if token.startswith("--") and name in known:
            if not has_value and index + 1 < len(tokens):
                index += 1
                value = tokens[index]
            if not value.isdigit():
                rest.append(token)
            else:
                known[name] = int(value)
        else:
            rest.append(token)
        index += 1
    return known["max-model-len"], known["tensor-parallel-size"], rest


def vllm_flags(fit: FitEstimate) -> list[str]:
    """vLLM flags that agree with the fit: the tensor-parallel size it chose, the context
    it sized the KV cache for, the dtype it assumed, the memory share it counted."""
    flags: list[str] = []
    chosen = fit.chosen
    if chosen is not None and chosen.gpus_needed and chosen.gpus_needed > 1:
        flags.append(f"--tensor-parallel-size={chosen.gpus_needed}")
    flags.append(f"--max-model-len={fit.context_length}")
    dtype = VLLM_DTYPES.get((fit.dtype or "").upper())
    if dtype is not None:  # F32 checkpoints: vLLM's "auto" serves half, as the fit counted
        flags.append(f"--dtype={dtype}")
    flags.append("--gpu-memory-utilization=0.9")
    return flags
