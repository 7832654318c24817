"""Hugging Face Hub metadata through huggingface_hub, behind a small async surface.

huggingface_hub is synchronous; calls run in a worker thread. The endpoint is passed explicitly
(``HF_ENDPOINT`` is read at import time by the library, so relying on it is fragile). Tokens are
passed per call and never stored on the client or logged. Hub errors become :class:`HubError`
subclasses with a message fit for an API user, and say as data whether asking again can help
(:attr:`HubError.temporary`: no answer, a timeout, 429 or a 5xx) or not (404, 401/403, gated, no
such revision) and why (:attr:`HubError.reason`); the controllers turn that into their own
temporary or permanent errors where they call the hub.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import httpx
import httpx2
from huggingface_hub import HfApi
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


class HubError(Exception):
    """The hub refused or failed a request. ``status`` is the HTTP status when the hub
    answered (None: no answer); ``temporary`` says whether the same request may succeed
    later; ``reason`` is a short CamelCase word for status fields."""

    reason = "HubError"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def temporary(self) -> bool:
        """No answer, a timeout, too many requests or a server error: worth asking again."""
        return temporary_status(self.status)


def temporary_status(status: int | None) -> bool:
    """Whether a hub answer (None: none at all) may change by itself: 408, 429 and 5xx."""
    return status is None or status in (408, 429) or status >= 500


class HubRepoNotFound(HubError):
    """No such repository (or it is private and the token cannot see it)."""

    reason = "RepositoryNotFound"

    @property
    def temporary(self) -> bool:
        return False


class HubRevisionNotFound(HubError):
    """The repository exists but not that branch, tag or commit."""

    reason = "RevisionNotFound"

    @property
    def temporary(self) -> bool:
        return False


class HubAccessDenied(HubError):
    """The repository is gated and the token (or its absence) does not grant access."""

    reason = "AccessDenied"

    @property
    def temporary(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class HubFile:
    """One file of a repository at a commit."""

    path: str
    size: int | None
    sha256: str | None
    """LFS sha256 when the file is stored in LFS; None for small git files."""
    blob_id: str | None


@dataclass(frozen=True, slots=True)
class HubModel:
    """What modelplane needs to know about a model repository at one commit."""

    repo_id: str
    sha: str
    author: str | None
    gated: bool
    private: bool
    pipeline_tag: str | None
    library_name: str | None
    tags: list[str]
    license: str | None
    parameters: int | None
    architectures: list[str]
    parameters_by_dtype: dict[str, int] = field(default_factory=dict)
    """The hub's safetensors summary: dtype (``BF16``) -> parameters stored in it."""
    card_tags: list[str] = field(default_factory=list)
    files: list[HubFile] = field(default_factory=list)
    summary: str | None = None
    """First paragraph of the model card's text, when it was fetched."""
    avatar_url: str | None = None

    @property
    def total_bytes(self) -> int:
        """Sum of the known file sizes."""
        return sum(f.size or 0 for f in self.files)


_T = TypeVar("_T")


async def _hub_call(call: Callable[[], _T], *, what: str) -> _T:
    """Run a blocking huggingface_hub call (a GET) in a thread. A connection that fails
    without an answer is tried once more: huggingface_hub pools keep-alive connections, and
    one the hub closed just as it was reused ends this way ("Server disconnected without
    sending a response", seen under load against the test hub, which closes idle ones after
    5 s). A second failure is a :class:`HubError` naming the cause, not an unexpected error."""
    try:
        return await asyncio.to_thread(call)
    except httpx2.TransportError:
        pass
    try:
        return await asyncio.to_thread(call)
    except httpx2.TransportError as exc:
        raise HubError(f"the hub could not be reached for {what} ({type(exc).__name__})") from exc


class HubClient:
    """Reads model metadata from one hub endpoint."""

    def __init__(
        self, *, endpoint: str, default_token: Callable[[], Awaitable[str | None]] | None = None
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._api = HfApi(endpoint=self.endpoint, library_name="modelplane")
        self._default_token = default_token

    async def fallback_token(self) -> str | None:
        """The server-wide token used when a call gives none (None: there is none)."""
        return await self._default_token() if self._default_token is not None else None

    async def _token(self, token: str | None) -> str | None:
        return token or await self.fallback_token()

    async def model(self, repo_id: str, *, revision: str | None, token: str | None) -> HubModel:
        """Model info with file sizes and LFS hashes at ``revision`` (default branch if None);
        without ``token``, the server-wide one (if any), as for every call of this client."""
        token = await self._token(token)
        try:
            info = await _hub_call(
                lambda: self._api.model_info(
                    repo_id, revision=revision, files_metadata=True, token=token or False
                ),
                what=repo_id,
            )
        except GatedRepoError as exc:
            raise HubAccessDenied(
                f"{repo_id} is gated: the token does not grant access to it"
            ) from exc
        except RevisionNotFoundError as exc:
            raise HubRevisionNotFound(f"{repo_id} has no revision {revision!r}") from exc
        except RepositoryNotFoundError as exc:
            raise HubRepoNotFound(f"{repo_id} was not found on the hub") from exc
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status in (401, 403):
                raise HubAccessDenied(
                    f"the hub refused the token for {repo_id} (HTTP {status})"
                ) from exc
            raise HubError(
                f"the hub answered {status or 'nothing'} for {repo_id}", status=status
            ) from exc
        return _to_model(info)

    async def describe(
        self, repo_id: str, *, revision: str | None, token: str | None, files: bool = True
    ) -> HubModel:
        """:meth:`model` plus the card summary and the author's avatar, for catalogue entries.
        With ``files`` (a model about to be downloaded), a gated or private repo's files must be
        readable with ``token`` (:meth:`check_file_access`); a preview (``files=False``) shows
        the metadata the hub serves to anyone."""
        token = await self._token(token)
        model = await self.model(repo_id, revision=revision, token=token)
        if files and (model.gated or model.private) and model.files:
            await self.check_file_access(
                repo_id, sha=model.sha, path=model.files[0].path, token=token
            )
        summary = await self._card_summary(repo_id, model.sha, token)
        avatar = await self._avatar(model.author) if model.author else None
        return replace(model, summary=summary, avatar_url=avatar)

    async def check_file_access(
        self, repo_id: str, *, sha: str, path: str, token: str | None
    ) -> None:
        """Raise :class:`HubAccessDenied` unless ``token`` may download ``path``.

        Gated repositories show their metadata to anyone; only file downloads need a grant,
        so this asks for one file's headers the way a download would start.
        """
        token = await self._token(token)
        url = f"{self.endpoint}/{repo_id}/resolve/{sha}/{path}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with httpx.AsyncClient(timeout=10, follow_redirects=False) as http:
                response = await http.head(url, headers=headers)
        except httpx.HTTPError as exc:
            raise HubError(f"the hub could not be reached: {type(exc).__name__}") from exc
        if response.status_code in (401, 403):
            reason = "without a token" if not token else "with this token"
            raise HubAccessDenied(
                f"{repo_id} is gated: the hub refused access {reason} "
                f"(HTTP {response.status_code}); request access on the hub and pass a token "
                "that has it"
            )
        if response.status_code >= 400:
            raise HubError(
                f"the hub answered {response.status_code} for {repo_id}/{path}",
                status=response.status_code,
            )

    async def search(self, query: str, *, limit: int, token: str | None) -> list[HubModel]:
        """Models whose id matches ``query`` (metadata and the config summary with its
        ``architectures``, no file list), in one request."""
        token = await self._token(token)
        try:
            found = await _hub_call(
                lambda: list(
                    self._api.list_models(
                        search=query,
                        limit=limit,
                        full=True,
                        fetch_config=True,
                        token=token or False,
                    )
                ),
                what="a search",
            )
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            raise HubError(
                f"the hub answered {status or 'nothing'} to a search", status=status
            ) from exc
        return [_to_model(info) for info in found]

    async def json_file(
        self, repo_id: str, *, sha: str, path: str, token: str | None
    ) -> dict[str, Any] | None:
        """A small JSON file of the repo at ``sha`` (``config.json``); None when it is absent,
        unreadable with this token, or not a JSON object. Read over HTTP, not through
        ``hf_hub_download``, so nothing is written to the local hub cache."""
        token = await self._token(token)
        url = f"{self.endpoint}/{repo_id}/resolve/{sha}/{path}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with httpx.AsyncClient(timeout=10, follow_redirects=True) as http:
                response = await http.get(url, headers=headers)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        try:
            data = response.json()
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    async def _card_summary(self, repo_id: str, sha: str, token: str | None) -> str | None:
        url = f"{self.endpoint}/{repo_id}/resolve/{sha}/README.md"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with httpx.AsyncClient(timeout=10, follow_redirects=True) as http:
                response = await http.get(url, headers=headers)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        return card_summary(response.text)

    async def _avatar(self, author: str) -> str | None:
        async with httpx.AsyncClient(timeout=5) as http:
            for kind in ("organizations", "users"):
                try:
                    response = await http.get(f"{self.endpoint}/api/{kind}/{author}/avatar")
                except httpx.HTTPError:
                    return None
                if response.status_code == 200:
                    value = response.json().get("avatarUrl")
                    return value if isinstance(value, str) else None
        return None


def card_summary(readme: str, *, limit: int = 1000) -> str | None:
    """The first prose paragraph of a model card (front matter, headings, badges skipped)."""
    text = readme
    if text.startswith("---"):
        end = text.find("\n---", 3)
        text = text[end + 4 :] if end != -1 else ""
    for block in text.split("\n\n"):
        paragraph = " ".join(line.strip() for line in block.strip().splitlines())
        if not paragraph or paragraph.startswith(("#", "<", "![", "[![", "|", "```")):
            continue
        return paragraph[:limit]
    return None


def _to_model(info: Any) -> HubModel:
    card: dict[str, Any] = info.card_data.to_dict() if info.card_data is not None else {}
    config: dict[str, Any] = info.config or {}
    files = [
        HubFile(
            path=s.rfilename,
            size=s.size,
            sha256=s.lfs.sha256 if s.lfs is not None else None,
            blob_id=s.blob_id,
        )
        for s in info.siblings or []
    ]
    license_value = card.get("license")
    return HubModel(
        repo_id=info.id,
        sha=info.sha or "",
        author=info.author,
        gated=bool(info.gated),
        private=bool(info.private),
        pipeline_tag=info.pipeline_tag,
        library_name=info.library_name,
        tags=list(info.tags or []),
        license=license_value if isinstance(license_value, str) else None,
        parameters=info.safetensors.total if info.safetensors is not None else None,
        architectures=list(config.get("architectures") or []),
        parameters_by_dtype=dict(info.safetensors.parameters or {})
        if info.safetensors is not None
        else {},
        card_tags=[t for t in card.get("tags") or [] if isinstance(t, str)],
        files=files,
    )
