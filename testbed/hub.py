"""A local stand-in for the public Hugging Face Hub, which this machine cannot reach.

modelplane talks to the Hub through ``huggingface_hub`` (2.4) and, for weights, through
resumable HTTP range downloads. Without internet access neither can be exercised against the
real service, and a generic mirror was measured to differ from it where it matters (no
``/api/models/<repo>`` without a revision, no ``blobs=true``, ``Range`` answered with the
whole body, no LFS sha256, no gated repos). This module is a small ASGI server that answers the
requests ``huggingface_hub`` makes with the status codes, headers and JSON the real Hub uses,
for the in-memory repositories of ``testbed.repos``.

Modelled:

* ``GET /api/models`` (search, author, filter, pipeline_tag, gated, sort, limit, full, config,
  cardData, expand; cursor pagination through a ``Link: <...>; rel="next"`` header);
* ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``, with ``blobs=true``
  (sibling size, blobId, lfs), ``expand``, cardData from the README front matter, the config
  summary the Hub shows (architectures, model_type, tokenizer_config), safetensors parameter
  counts read from the real file headers, usedStorage;
* ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (recursive, expand) and
  ``POST /api/models/{repo}/paths-info/{rev}``; ``GET /api/models/{repo}/safetensors-metadata/
  {index}`` (used by ``get_sharded_safetensors_metadata``);
* ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag`` (git blob id,
  or sha256 for LFS), ``X-Linked-Etag``/``X-Linked-Size`` for LFS, ``Accept-Ranges``, single
  ``Range`` requests (206 + ``Content-Range``, 416 + ``bytes */size``), ``If-None-Match`` (304).
  As on the Hub, LFS files answer **302 to a signed URL on a different origin** (the "CDN": a
  second port of the same server, see `running_hub`), so ``huggingface_hub`` reads the
  metadata from the redirect itself and downloads from the CDN without the Authorization
  header. Without a CDN endpoint (or with ``LocalHub(lfs_redirect=False)``) LFS files are served
  directly, with the same X-Linked headers.
* Errors with ``X-Error-Code``/``X-Error-Message``: RepoNotFound (401 anonymous, 404 with a
  token), RevisionNotFound, EntryNotFound (with X-Repo-Commit), GatedRepo (401 anonymous, 403
  token without a grant), 401 "Invalid credentials in Authorization header" for unknown tokens.
  Like the Hub, metadata of gated repos is public; their files are not. Private repos are
  invisible without a granted token.

Test hooks (not part of the Hub): fault injection per file (glob) settable from Python
(``hub.faults``) or ``POST``/``GET``/``DELETE /_testbed/faults``: ``fail_next`` (5xx for the next
n requests; the model-info API too, as the pseudo-path ``<repo>/@info/<revision>``),
``stall_after`` (stop sending mid-body for a while), ``drop_after`` and ``throttle``; a
request log (``hub.log``, ``GET /_testbed/requests``), written before the last body byte
leaves so a client that has its response can already read its record; and a live transfer
log (``hub.transfers``): per file body, its first byte and the bytes sent so far, updated as
they leave, so a test sees which ranges of a file were served (a resumed download must not
fetch again what it had recorded) and whether any are still streaming. Bodies
are streamed in chunks from memory. A drop ends the ASGI response without its final message:
uvicorn logs "ASGI callable returned without completing response." and closes the socket,
and httpx reports ``RemoteProtocolError: peer closed connection without sending complete
message body (received N bytes, expected M)`` after exactly N body bytes.

Not modelled: datasets, spaces and buckets; uploads, commits and every write API; several
revisions per repo, tags, ``refs/pr/*`` and short shas (a repo has one commit, reachable as
``main`` or by its full sha); repo ids without a namespace; Xet storage (no ``X-Xet-Hash``, so
clients use plain HTTP); gzip transfer encoding; multi-range requests (ignored, full body);
rate limits; whoami, likes, discussions and other user endpoints; the real Hub's exact
``config`` and ``tags`` heuristics (approximated).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import hashlib
import hmac
import json
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import parse_qs, quote, urlencode

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Headers, QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from testbed.repos import HubFile, HubRepo, parameter_counts, sample_repos

CHUNK_SIZE = 256 * 1024
_REPO = "/{namespace}/{name}"
# fmt: off
_EXPANDABLE = frozenset((
    "author", "baseModels", "cardData", "childrenModelCount", "config", "createdAt", "disabled",
    "downloads", "downloadsAllTime", "evalResults", "gated", "gguf", "inference",
    "inferenceProviderMapping", "lastModified", "library_name", "likes", "mask_token",
    "model-index", "pipeline_tag", "private", "resourceGroup", "safetensors", "sha", "siblings",
    "spaces", "tags", "transformersInfo", "trendingScore", "usedStorage", "widgetData",
))
_LIST_FIELDS = frozenset((
    "_id", "id", "modelId", "likes", "downloads", "trendingScore", "private", "tags",
    "pipeline_tag", "library_name", "createdAt",
))
# fmt: on

# --------------------------------------------------------------------------- request log


@dataclass(frozen=True)
class RequestRecord:
    """One request the hub answered (``/_testbed`` requests are not recorded)."""

    method: str
    path: str
    query: str
    range: str | None
    status: int
    bytes_sent: int
    authorization: bool
    completed: bool
    started_at: float


class RequestLog:
    """Thread-safe list of `RequestRecord`s, oldest first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def append(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def records(self, path: str | None = None, method: str | None = None) -> list[RequestRecord]:
        """Records, optionally only those whose path matches the glob ``path`` / ``method``."""
        with self._lock:
            found = list(self._records)
        return [
            r
            for r in found
            if (path is None or fnmatch.fnmatchcase(r.path, path)) and method in (None, r.method)
        ]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


@dataclass
class Transfer:
    """One file body being sent or sent: bytes ``start`` to ``start + sent`` of ``path``."""

    repo_id: str
    path: str
    start: int
    started_at: float
    """``time.monotonic()`` when the body started (the hub runs in the tests' process)."""
    sent: int = 0
    ended_at: float | None = None


class TransferLog:
    """Every file body the hub sends, updated as its bytes leave (the request log only
    records a request once it has ended, and names an LFS file by its CDN object)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._transfers: list[Transfer] = []

    def begin(self, repo_id: str, path: str, start: int) -> Transfer:
        transfer = Transfer(repo_id, path, start, started_at=time.monotonic())
        with self._lock:
            self._transfers.append(transfer)
        return transfer

    def of(self, repo_id: str, path: str | None = None) -> list[Transfer]:
        """Copies of the transfers of ``repo_id`` (one file's with ``path``), oldest first."""
        with self._lock:
            found = [Transfer(**asdict(t)) for t in self._transfers if t.repo_id == repo_id]
        return [t for t in found if path is None or t.path == path]

    def clear(self) -> None:
        with self._lock:
            self._transfers.clear()


# --------------------------------------------------------------------------- faults

INFO_FAULTS = "@info"
"""The pseudo-path of the model-info API in fault patterns: ``fail_next("<repo>/@info/<rev>")``
fails ``GET /api/models/<repo>/revision/<rev>`` (``@info/main`` is the call without a revision),
so a test can fail a controller's look at a commit and not the API's look at the branch."""

FaultKind = Literal["fail_next", "stall_after", "drop_after", "throttle"]


@dataclass
class Fault:
    """An injected fault for files matching ``pattern``; ``remaining`` None means forever."""

    kind: FaultKind
    pattern: str
    remaining: int | None
    status: int = 503
    after_bytes: int = 0
    seconds: float = 0.0
    bytes_per_second: int = 0


@dataclass(frozen=True)
class BodyPlan:
    """How to misbehave while sending one response body (offsets count body bytes)."""

    stall_at: int | None = None
    stall_seconds: float = 0.0
    drop_at: int | None = None
    bytes_per_second: int | None = None


class FaultInjector:
    """Faults applied to files whose ``path`` or ``repo_id/path`` matches a glob.

    ``fail_next`` counts every request for the file (HEAD or GET on ``/resolve`` and on the
    CDN); the body faults count GET requests that send a body.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def _add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def fail_next(self, pattern: str, n: int = 1, *, status: int = 503) -> None:
        self._add(Fault("fail_next", pattern, n, status=status))

    def stall_after(
        self, pattern: str, nbytes: int, seconds: float, *, times: int | None = 1
    ) -> None:
        self._add(Fault("stall_after", pattern, times, after_bytes=nbytes, seconds=seconds))

    def drop_after(self, pattern: str, nbytes: int, *, times: int | None = 1) -> None:
        self._add(Fault("drop_after", pattern, times, after_bytes=nbytes))

    def throttle(self, pattern: str, bytes_per_second: int, *, times: int | None = None) -> None:
        self._add(Fault("throttle", pattern, times, bytes_per_second=bytes_per_second))

    def add(self, spec: Mapping[str, Any]) -> None:
        """Add a fault from its JSON form (see ``POST /_testbed/faults``)."""
        kind, pattern = spec["kind"], spec["path"]
        if kind == "fail_next":
            self.fail_next(pattern, int(spec.get("count", 1)), status=int(spec.get("status", 503)))
        elif kind == "stall_after":
            self.stall_after(
                pattern, int(spec["bytes"]), float(spec["seconds"]), times=spec.get("times", 1)
            )
        elif kind == "drop_after":
            self.drop_after(pattern, int(spec["bytes"]), times=spec.get("times", 1))
        elif kind == "throttle":
            self.throttle(pattern, int(spec["bytes_per_second"]), times=spec.get("times"))
        else:
            raise ValueError(f"unknown fault kind {kind!r}")

    def active(self) -> list[Fault]:
        with self._lock:
            return [Fault(**asdict(f)) for f in self._faults]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def _consume(self, repo_id: str, path: str, kinds: Iterable[str]) -> list[Fault]:
        taken: list[Fault] = []
        with self._lock:
            for fault in self._faults:
                matches = fnmatch.fnmatchcase(path, fault.pattern) or fnmatch.fnmatchcase(
                    f"{repo_id}/{path}", fault.pattern
                )
                if fault.kind in kinds and matches and all(t.kind != fault.kind for t in taken):
                    taken.append(fault)
                    if fault.remaining is not None:
                        fault.remaining -= 1
            self._faults = [f for f in self._faults if f.remaining is None or f.remaining > 0]
        return taken

    def take_failure(self, repo_id: str, path: str) -> int | None:
        """Status to fail this request with, if a ``fail_next`` fault applies."""
        taken = self._consume(repo_id, path, ("fail_next",))
        return taken[0].status if taken else None

    def body_plan(self, repo_id: str, path: str) -> BodyPlan:
        taken = {
            f.kind: f
            for f in self._consume(repo_id, path, ("stall_after", "drop_after", "throttle"))
        }
        stall, drop, throttle = (
            taken.get("stall_after"),
            taken.get("drop_after"),
            taken.get("throttle"),
        )
        return BodyPlan(
            stall_at=stall.after_bytes if stall else None,
            stall_seconds=stall.seconds if stall else 0.0,
            drop_at=drop.after_bytes if drop else None,
            bytes_per_second=throttle.bytes_per_second if throttle else None,
        )


# --------------------------------------------------------------------------- hub state


class LocalHub:
    """Repos, accepted tokens, grants (gated and private access), faults and request log."""

    def __init__(
        self,
        repos: Iterable[HubRepo] | None = None,
        *,
        tokens: Iterable[str] = (),
        lfs_redirect: bool = True,
    ) -> None:
        self.repos: dict[str, HubRepo] = {}
        for repo in sample_repos() if repos is None else repos:
            self.add_repo(repo)
        self.tokens: set[str] = set(tokens)
        self.grants: dict[str, set[str]] = {}
        self.faults = FaultInjector()
        self.log = RequestLog()
        self.transfers = TransferLog()
        self.lfs_redirect = lfs_redirect
        self.cdn_endpoint: str | None = None
        self.stopping = threading.Event()
        self._signing_key = secrets.token_bytes(32)

    def add_repo(self, repo: HubRepo) -> None:
        """Serve ``repo``; its hashes are computed now rather than inside a request."""
        _ = repo.sha, repo.safetensors_headers
        self.repos[repo.repo_id] = repo

    def add_token(self, token: str) -> None:
        self.tokens.add(token)

    def grant(self, token: str, repo_id: str) -> None:
        """Accept ``token`` and give it access to a gated or private repo."""
        self.tokens.add(token)
        self.grants.setdefault(repo_id, set()).add(token)

    def granted(self, token: str | None, repo_id: str) -> bool:
        return token is not None and token in self.grants.get(repo_id, set())

    def sign(self, *parts: str) -> str:
        return hmac.new(self._signing_key, "\n".join(parts).encode(), hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- errors


class HubError(Exception):
    """An error answered the way the Hub does: JSON body plus X-Error-* headers."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = dict(headers or {})


def _error_response(_request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HubError):  # pragma: no cover - only registered for HubError
        raise exc
    headers = {**exc.headers, "X-Error-Message": exc.message}
    if exc.code:
        headers["X-Error-Code"] = exc.code
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)


def _token(hub: LocalHub, request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if not token:
        return None
    if scheme.lower() != "bearer" or token.strip() not in hub.tokens:
        raise HubError(401, "Invalid credentials in Authorization header")
    return token.strip()


def _repo(hub: LocalHub, request: Request, *, content: bool) -> tuple[HubRepo, str | None]:
    """The requested repo, checking visibility and, for file content, gating."""
    token = _token(hub, request)
    repo_id = f"{request.path_params['namespace']}/{request.path_params['name']}"
    repo = hub.repos.get(repo_id)
    if repo is None or (repo.private and not hub.granted(token, repo_id)):
        raise HubError(401 if token is None else 404, "Repository not found", "RepoNotFound")
    if content and repo.gated and not hub.granted(token, repo_id):
        if token is None:
            message = (
                f"Access to model {repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in."
            )
            raise HubError(401, message, "GatedRepo")
        message = (
            f"Access to model {repo_id} is restricted and you are not in the authorized list. "
            f"Visit {request.base_url}{repo_id} to ask for access."
        )
        raise HubError(403, message, "GatedRepo")
    return repo, token


def _commit(repo: HubRepo, revision: str) -> str:
    commit = repo.resolve_revision(revision)
    if commit is None:
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
    return commit


# --------------------------------------------------------------------------- JSON shapes


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _flag(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def _expand(request: Request) -> list[str]:
    wanted = request.query_params.getlist("expand") + request.query_params.getlist("expand[]")
    unknown = sorted(set(wanted) - _EXPANDABLE)
    if unknown:
        raise HubError(400, f'"expand" contains invalid values: {", ".join(unknown)}')
    return wanted


def _tags(repo: HubRepo) -> list[str]:
    card, config = repo.card_data or {}, repo.json_file("config.json") or {}
    languages = card.get("language") or []
    tags = [
        card.get("library_name"),
        "safetensors" if repo.safetensors_headers else None,
        config.get("model_type"),
        *(card.get("tags") or []),
        *([languages] if isinstance(languages, str) else languages),
        f"license:{card['license']}" if card.get("license") else None,
        "region:us",
    ]
    return list(dict.fromkeys(str(t) for t in tags if t))


def _config_summary(repo: HubRepo) -> dict[str, Any] | None:
    config = repo.json_file("config.json")
    if config is None:
        return None
    keep = ("architectures", "model_type", "quantization_config")
    summary: dict[str, Any] = {k: config[k] for k in keep if k in config}
    tokenizer = repo.json_file("tokenizer_config.json") or {}
    keys = ("bos_token", "eos_token", "unk_token", "pad_token", "chat_template")
    if subset := {k: tokenizer[k] for k in keys if k in tokenizer}:
        summary["tokenizer_config"] = subset
    return summary


def _safetensors_info(repo: HubRepo) -> dict[str, Any] | None:
    if not repo.safetensors_headers:
        return None
    params: dict[str, int] = {}
    for header in repo.safetensors_headers.values():
        for dtype, count in parameter_counts(header).items():
            params[dtype] = params.get(dtype, 0) + count
    return {"parameters": params, "total": sum(params.values())}


def _sibling(f: HubFile, blobs: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"rfilename": f.path}
    if blobs:
        entry |= {"size": f.size, "blobId": f.blob_id}
        if f.lfs:
            entry["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": len(f.lfs_pointer)}
    return entry


def _model_json(repo: HubRepo, *, blobs: bool = False) -> dict[str, Any]:
    card = repo.card_data
    config = repo.json_file("config.json") or {}
    architectures = config.get("architectures") or []
    transformers_info = None
    if (card or {}).get("library_name") == "transformers" and architectures:
        auto = "AutoModelForCausalLM" if architectures[0].endswith("ForCausalLM") else "AutoModel"
        transformers_info = {
            "auto_model": auto,
            "pipeline_tag": (card or {}).get("pipeline_tag"),
            "processor": "AutoTokenizer",
        }
    data = {
        "_id": hashlib.sha1(repo.repo_id.encode(), usedforsecurity=False).hexdigest()[:24],
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "author": repo.author,
        "sha": repo.sha,
        "lastModified": _iso(repo.last_modified),
        "createdAt": _iso(repo.created_at),
        "private": repo.private,
        "gated": repo.gated,
        "disabled": False,
        "downloads": repo.downloads,
        "likes": repo.likes,
        "trendingScore": 0,
        "library_name": (card or {}).get("library_name"),
        "pipeline_tag": (card or {}).get("pipeline_tag"),
        "tags": _tags(repo),
        "cardData": card,
        "config": _config_summary(repo),
        "transformersInfo": transformers_info,
        "siblings": [_sibling(f, blobs) for f in sorted(repo.files, key=lambda f: f.path)],
        "spaces": [],
        "safetensors": _safetensors_info(repo),
        "usedStorage": repo.used_storage,
    }
    return {k: v for k, v in data.items() if v is not None}


def _tree_entry(repo: HubRepo, path: str, *, expand: bool) -> dict[str, Any]:
    f = repo.by_path.get(path)
    if f is None:
        entry: dict[str, Any] = {
            "type": "directory",
            "oid": repo.tree_id(path),
            "size": 0,
            "path": path,
        }
    else:
        entry = {"type": "file", "oid": f.blob_id, "size": f.size, "path": path}
        if f.lfs:
            entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(f.lfs_pointer)}
    if expand:
        entry["lastCommit"] = {
            "id": repo.sha,
            "title": repo.commit_title,
            "date": _iso(repo.last_modified),
        }
        if f is not None:
            entry["securityFileStatus"] = {
                "status": "safe",
                "avScan": {"virusFound": False, "virusNames": None},
                "pickleImportScan": None,
            }
    return entry


def _paginated(request: Request, items: Sequence[Any], page_size: int) -> JSONResponse:
    """One page of ``items`` with a GitHub-style ``Link`` header to the next one."""
    offset = int(request.query_params.get("cursor", "0") or 0)
    page = list(items[offset : offset + page_size])
    headers = {}
    if offset + page_size < len(items):
        query = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
        query.append(("cursor", str(offset + page_size)))
        headers["Link"] = f'<{request.url.replace(query=urlencode(query))}>; rel="next"'
    return JSONResponse(page, headers=headers)


# --------------------------------------------------------------------------- API endpoints


_LIST_EXTRAS = {
    "full": ("author", "sha", "lastModified", "gated", "disabled", "siblings"),
    "config": ("config",),
    "cardData": ("cardData",),
}


def _listed(hub: LocalHub, repo: HubRepo, token: str | None, params: QueryParams) -> bool:
    data = _model_json(repo)
    return (
        (not repo.private or hub.granted(token, repo.repo_id))
        and set(params.getlist("filter")) <= set(data["tags"])
        and params.get("search", "").lower() in repo.repo_id.lower()
        and params.get("author") in (None, repo.author)
        and params.get("pipeline_tag") in (None, data.get("pipeline_tag"))
        and ("gated" not in params or _flag(params["gated"]) == bool(repo.gated))
    )


async def avatar(request: Request) -> Response:
    """``/api/organizations/{name}/avatar`` (and ``/api/users/...``): the avatar URL of an
    author who owns at least one repo here, as JSON; 404 otherwise, as the hub does."""
    hub: LocalHub = request.app.state.hub
    name = request.path_params["name"]
    if not any(repo_id.split("/", 1)[0] == name for repo_id in hub.repos):
        return JSONResponse({"error": "Not Found"}, status_code=404)
    base = hub.cdn_endpoint or str(request.base_url).rstrip("/")
    return JSONResponse({"avatarUrl": f"{base}/avatars/{name}.png"})


async def list_models(request: Request) -> Response:
    hub: LocalHub = request.app.state.hub
    token, params = _token(hub, request), request.query_params
    found = [_model_json(repo) for repo in hub.repos.values() if _listed(hub, repo, token, params)]
    if sort := params.get("sort"):
        found.sort(key=lambda d: d.get(sort) or 0, reverse=params.get("direction", "-1") == "-1")
    keep = {"_id", "id", *_expand(request)}
    if keep == {"_id", "id"}:
        keep = set(_LIST_FIELDS)
        for flag, extra in _LIST_EXTRAS.items():
            keep.update(extra if _flag(params.get(flag)) else ())
    items = [{k: v for k, v in d.items() if k in keep} for d in found]
    return _paginated(request, items, min(int(params.get("limit") or 1000), 1000))


async def model_info(request: Request) -> Response:
    hub: LocalHub = request.app.state.hub
    repo, _ = _repo(hub, request, content=False)
    revision = request.path_params.get("revision", "main")
    if (status := hub.faults.take_failure(repo.repo_id, f"{INFO_FAULTS}/{revision}")) is not None:
        raise HubError(status, "Injected failure (testbed fault)")
    _commit(repo, revision)
    data = _model_json(repo, blobs=_flag(request.query_params.get("blobs")))
    if expand := _expand(request):
        data = {k: v for k, v in data.items() if k in {"_id", "id", *expand}}
    return JSONResponse(data)


async def tree(request: Request) -> Response:
    hub: LocalHub = request.app.state.hub
    repo, _ = _repo(hub, request, content=False)
    _commit(repo, request.path_params["revision"])
    folder = request.path_params.get("path", "").strip("/")
    if folder and folder not in repo.folders:
        raise HubError(
            404, f"Entry not found: {folder}", "EntryNotFound", {"X-Repo-Commit": repo.sha}
        )
    recursive = _flag(request.query_params.get("recursive"))
    expand = _flag(request.query_params.get("expand"))
    prefix = f"{folder}/" if folder else ""
    paths = [p for p in [*repo.folders, *repo.by_path] if p.startswith(prefix)]
    if not recursive:
        paths = [p for p in paths if "/" not in p[len(prefix) :]]
    paths.sort(key=lambda p: (p in repo.by_path, p))
    entries = [_tree_entry(repo, p, expand=expand) for p in paths]
    return _paginated(request, entries, 50 if expand else 1000)


async def paths_info(request: Request) -> Response:
    hub: LocalHub = request.app.state.hub
    repo, _ = _repo(hub, request, content=False)
    _commit(repo, request.path_params["revision"])
    body = await request.body()
    if request.headers.get("content-type", "").startswith("application/json"):
        spec = json.loads(body or b"{}")
        paths, expand = list(spec.get("paths", [])), bool(spec.get("expand"))
    else:
        form = parse_qs(body.decode())
        paths, expand = form.get("paths", []), _flag(form.get("expand", [""])[0])
    known = [
        p.strip("/") for p in paths if p.strip("/") in repo.by_path or p.strip("/") in repo.folders
    ]
    return JSONResponse([_tree_entry(repo, p, expand=expand) for p in known])


async def safetensors_metadata(request: Request) -> Response:
    hub: LocalHub = request.app.state.hub
    repo, _ = _repo(hub, request, content=True)
    index = repo.json_file(request.path_params["path"])
    if index is None:
        raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": repo.sha})
    shards = sorted(set(index.get("weight_map", {}).values()))
    headers = {s: repo.safetensors_headers[s] for s in shards if s in repo.safetensors_headers}
    summary = {k: v for k, v in index.items() if k != "weight_map"}
    return JSONResponse({"index": summary, "headers": headers})


# --------------------------------------------------------------------------- file content

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, stop)`` for a single-range header, None to send it all; 416 if unsatisfiable."""
    match = _RANGE.fullmatch((header or "").strip())
    if match is None or match.groups() == ("", ""):
        return None  # absent, multi-range or another unit: ignored, as RFC 9110 allows
    first, last = match.groups()
    if not first:  # suffix: the last n bytes; n == 0 can never be satisfied
        start, stop = (max(size - int(last), 0) if int(last) else size), size
    else:
        start = int(first)
        stop = min(int(last) + 1, size) if last else size
        if last and int(last) < start:
            return None  # syntactically invalid: ignored
    if start >= size:
        raise HubError(
            416, "Requested Range Not Satisfiable", headers={"Content-Range": f"bytes */{size}"}
        )
    return start, stop


class FileBody(Response):
    """Sends a file (or a range of it) in chunks, applying the injected body faults."""

    def __init__(
        self,
        hub: LocalHub,
        request: Request,
        f: HubFile,
        repo_id: str,
        headers: Mapping[str, str],
    ) -> None:
        span = _byte_range(request.headers.get("range"), f.size)
        self.start, self.stop = span or (0, f.size)
        all_headers = {**headers, "Content-Length": str(self.stop - self.start)}
        if span is not None:
            all_headers["Content-Range"] = f"bytes {self.start}-{self.stop - 1}/{f.size}"
        super().__init__(status_code=206 if span else 200, headers=all_headers)
        self.content = f.content
        self.head = request.method == "HEAD"
        self.plan = BodyPlan() if self.head else hub.faults.body_plan(repo_id, f.path)
        self.stopping = hub.stopping
        self.transfers, self.repo_id, self.path = hub.transfers, repo_id, f.path

    async def __call__(self, _scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        if self.head or self.start == self.stop:
            await send({"type": "http.response.body", "body": b""})
            return
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        transfer = self.transfers.begin(self.repo_id, self.path, self.start)
        try:
            if await self._stream(send, gone, transfer):
                await send({"type": "http.response.body", "body": b""})
            # otherwise return without completing: the server closes the connection mid-body
        finally:
            transfer.ended_at = time.monotonic()
            watcher.cancel()

    async def _pause(self, seconds: float, gone: asyncio.Event) -> bool:
        """Sleep, waking early if the client left or the hub stops; False if so."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if gone.is_set() or self.stopping.is_set():
                return False
            await asyncio.sleep(min(left, 0.05))
        return not gone.is_set()

    async def _stream(self, send: Send, gone: asyncio.Event, transfer: Transfer) -> bool:
        plan, view = self.plan, memoryview(self.content)[self.start : self.stop]
        chunk = CHUNK_SIZE
        if plan.bytes_per_second:
            chunk = max(1024, min(chunk, plan.bytes_per_second // 20))
        began, sent, stalled = time.monotonic(), 0, False
        while sent < len(view):
            if plan.drop_at is not None and sent >= plan.drop_at:
                return False
            if plan.stall_at is not None and sent >= plan.stall_at and not stalled:
                stalled = True
                if not await self._pause(plan.stall_seconds, gone):
                    return False
            size = min(chunk, len(view) - sent)
            for limit in (plan.drop_at, None if stalled else plan.stall_at):
                if limit is not None and limit > sent:
                    size = min(size, limit - sent)
            await send(
                {
                    "type": "http.response.body",
                    "body": bytes(view[sent : sent + size]),
                    "more_body": True,
                }
            )
            sent += size
            transfer.sent = sent
            if gone.is_set():
                return False
            if plan.bytes_per_second:
                ahead = began + sent / plan.bytes_per_second - time.monotonic()
                if ahead > 0 and not await self._pause(ahead, gone):
                    return False
        return True


def _content_headers(f: HubFile) -> dict[str, str]:
    name = f.path.rsplit("/", 1)[-1]
    return {
        "ETag": f'"{f.etag}"',
        "Accept-Ranges": "bytes",
        "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";",
    }


def _not_modified(request: Request, f: HubFile) -> bool:
    wanted = request.headers.get("if-none-match")
    return wanted is not None and (wanted.strip() == "*" or f'"{f.etag}"' in wanted)


def _media_type(path: str) -> str:
    if path.endswith(".json"):
        return "application/json; charset=utf-8"
    if path.endswith((".md", ".txt", ".py", ".yaml", ".yml", ".jinja")):
        return "text/plain; charset=utf-8"
    return "application/octet-stream"


async def resolve(request: Request) -> Response:
    hub: LocalHub = request.app.state.hub
    repo_id = f"{request.path_params['namespace']}/{request.path_params['name']}"
    path = request.path_params["path"]
    if (status := hub.faults.take_failure(repo_id, path)) is not None:
        raise HubError(status, "Injected failure (testbed fault)")
    repo, _ = _repo(hub, request, content=True)
    commit = _commit(repo, request.path_params["revision"])
    f = repo.by_path.get(path)
    if f is None:
        raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit})
    headers = {**_content_headers(f), "X-Repo-Commit": commit, "Vary": "Origin, Accept"}
    if f.lfs:
        headers |= {"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size)}
    if _not_modified(request, f):
        return Response(status_code=304, headers=headers)
    if f.lfs and hub.lfs_redirect and hub.cdn_endpoint:
        expires = str(int(time.time()) + 3600)
        query = {
            "response-content-disposition": headers["Content-Disposition"],
            "path": path,
            "Expires": expires,
            "Signature": hub.sign(repo_id, f.sha256, path, expires),
        }
        location = f"{hub.cdn_endpoint}/cdn-lfs/repos/{repo_id}/{f.sha256}?{urlencode(query)}"
        del headers["Content-Disposition"]
        body = f"Found. Redirecting to {location}"
        return Response(body, 302, {**headers, "Location": location}, media_type="text/plain")
    headers["Content-Type"] = _media_type(path)
    return FileBody(hub, request, f, repo_id, headers)


async def cdn_object(request: Request) -> Response:
    """The LFS "CDN": signed, content-addressed URLs that need no Authorization header."""
    hub: LocalHub = request.app.state.hub
    repo_id = f"{request.path_params['namespace']}/{request.path_params['name']}"
    oid, params = request.path_params["oid"], request.query_params
    path, expires = params.get("path", ""), params.get("Expires", "0")
    signature = hub.sign(repo_id, oid, path, expires)
    if (
        not hmac.compare_digest(signature, params.get("Signature", ""))
        or int(expires) < time.time()
    ):
        return Response(
            "<Error><Code>AccessDenied</Code></Error>", 403, media_type="application/xml"
        )
    if (status := hub.faults.take_failure(repo_id, path)) is not None:
        return Response(
            "<Error><Code>ServiceUnavailable</Code></Error>", status, media_type="application/xml"
        )
    f = hub.repos[repo_id].by_path[path]
    headers = {
        **_content_headers(f),
        "Content-Type": "application/octet-stream",
        "Content-Disposition": params.get("response-content-disposition", "inline"),
        "Cache-Control": "public, max-age=604800, immutable",
    }
    if _not_modified(request, f):
        return Response(status_code=304, headers=headers)
    return FileBody(hub, request, f, repo_id, headers)


# --------------------------------------------------------------------------- testbed hooks


async def faults_endpoint(request: Request) -> Response:
    hub: LocalHub = request.app.state.hub
    if request.method == "POST":
        try:
            hub.faults.add(await request.json())
        except (KeyError, TypeError, ValueError) as exc:
            return JSONResponse({"error": f"bad fault: {exc}"}, status_code=400)
    elif request.method == "DELETE":
        hub.faults.clear()
    return JSONResponse([asdict(f) for f in hub.faults.active()])


async def requests_endpoint(request: Request) -> Response:
    hub: LocalHub = request.app.state.hub
    if request.method == "DELETE":
        hub.log.clear()
    return JSONResponse([asdict(r) for r in hub.log.records()])


async def health(_request: Request) -> Response:
    return JSONResponse({"ok": True})


class RequestLogger:
    """ASGI middleware recording every request in ``hub.log`` before its body completes."""

    def __init__(self, app: ASGIApp, hub: LocalHub) -> None:
        self.app, self.hub = app, hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_testbed/"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        state = {"status": 0, "sent": 0, "logged": False}
        started = time.time()

        def record(completed: bool) -> None:
            if not state["logged"]:
                state["logged"] = True
                self.hub.log.append(
                    RequestRecord(
                        method=scope["method"],
                        path=scope["path"],
                        query=scope["query_string"].decode("latin-1"),
                        range=headers.get("range"),
                        status=int(state["status"]),
                        bytes_sent=int(state["sent"]),
                        authorization="authorization" in headers,
                        completed=completed,
                        started_at=started,
                    )
                )

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body" and scope["method"] != "HEAD":
                state["sent"] += len(message.get("body", b""))
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                record(True)
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            record(False)


def create_hub_app(hub: LocalHub) -> Starlette:
    """The hub as an ASGI app; CDN URLs point at ``hub.cdn_endpoint`` when it is set."""
    api = "/api/models" + _REPO
    routes = [
        Route("/_testbed/health", health),
        Route("/_testbed/faults", faults_endpoint, methods=["GET", "POST", "DELETE"]),
        Route("/_testbed/requests", requests_endpoint, methods=["GET", "DELETE"]),
        Route("/cdn-lfs/repos" + _REPO + "/{oid}", cdn_object, methods=["GET", "HEAD"]),
        Route("/api/models", list_models),
        Route("/api/organizations/{name}/avatar", avatar),
        Route("/api/users/{name}/avatar", avatar),
        Route(api, model_info),
        Route(api + "/revision/{revision:path}", model_info),
        Route(api + "/tree/{revision}", tree),
        Route(api + "/tree/{revision}/{path:path}", tree),
        Route(api + "/paths-info/{revision}", paths_info, methods=["POST"]),
        Route(api + "/safetensors-metadata/{path:path}", safetensors_metadata),
        Route(_REPO + "/resolve/{revision}/{path:path}", resolve, methods=["GET", "HEAD"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HubError: _error_response})
    app.state.hub = hub
    app.add_middleware(RequestLogger, hub=hub)
    return app


# --------------------------------------------------------------------------- runner


@dataclass(frozen=True)
class RunningHub:
    """A hub served on loopback: ``endpoint`` is what to pass as HF endpoint."""

    endpoint: str
    cdn_endpoint: str
    hub: LocalHub = field(repr=False)

    def url(self, repo_id: str, path: str, revision: str = "main") -> str:
        return f"{self.endpoint}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _server(hub: LocalHub) -> uvicorn.Server:
    config = uvicorn.Config(
        create_hub_app(hub),
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=3,
    )
    return uvicorn.Server(config)


@contextlib.contextmanager
def running_hub(
    hub: LocalHub | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    startup_timeout: float = 10.0,
) -> Iterator[RunningHub]:
    """Serve ``hub`` (default: the sample repos) with uvicorn in a background thread.

    Two sockets are bound: the hub on ``port`` (0 picks a free one) and the LFS CDN on another
    free port, so redirects leave the hub's origin as they do on huggingface.co.
    """
    hub = LocalHub() if hub is None else hub
    sockets = [_listen(host, port), _listen(host, 0)]
    endpoint, cdn = (f"http://{host}:{s.getsockname()[1]}" for s in sockets)
    server = _server(hub)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": sockets}, name="testbed-hub", daemon=True
    )
    hub.cdn_endpoint = cdn
    hub.stopping.clear()
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("testbed hub did not start")
            time.sleep(0.01)
        httpx.get(f"{endpoint}/_testbed/health", timeout=startup_timeout).raise_for_status()
        yield RunningHub(endpoint=endpoint, cdn_endpoint=cdn, hub=hub)
    finally:
        hub.stopping.set()
        server.should_exit = True
        thread.join(timeout=15)
        if thread.is_alive():  # pragma: no cover - a response refused to finish
            server.force_exit = True
            thread.join(timeout=5)
        for sock in sockets:
            sock.close()
        hub.cdn_endpoint = None


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m testbed.hub``: serve the sample repos until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", action="append", default=[], help="token granted every repo")
    parser.add_argument(
        "--shard-mb", type=float, default=2.0, help="size of each sharded-model shard"
    )
    args = parser.parse_args(argv)
    hub = LocalHub(sample_repos(shard_bytes=int(args.shard_mb * 1024 * 1024)))
    for token in args.token:
        for repo_id in hub.repos:
            hub.grant(token, repo_id)
    sockets = [_listen(args.host, args.port), _listen(args.host, 0)]
    endpoint, hub.cdn_endpoint = (f"http://{args.host}:{s.getsockname()[1]}" for s in sockets)
    sys.stdout.write(f"testbed hub serving {', '.join(hub.repos)} at {endpoint}\n")
    sys.stdout.write(f"use it with: HF_ENDPOINT={endpoint}\n")
    sys.stdout.flush()
    _server(hub).run(sockets=sockets)


if __name__ == "__main__":
    main()
