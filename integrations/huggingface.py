"""Hugging Face Hub metadata through huggingface_hub, behind a small async surface.

huggingface_hub is synchronous; calls run in a worker thread. The endpoint is passed explicitly
(``HF_ENDPOINT`` is read at import time by the library, so relying on it is fragile). Tokens are
passed per call and never stored on the client or logged. Hub errors become :class:`HubError`
subclasses with a message fit for an API user.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


class HubError(Exception):
    """The hub refused or failed a request."""


class HubRepoNotFound(HubError):
    """No such repository (or it is private and the token cannot see it)."""


class HubRevisionNotFound(HubError):
    """The repository exists but not that branch, tag or commit."""


class HubAccessDenied(HubError):
    """The repository is gated and the token (or its absence) does not grant access."""


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
    files: list[HubFile] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """Sum of the known file sizes."""
        return sum(f.size or 0 for f in self.files)


class HubClient:
    """Reads model metadata from one hub endpoint."""

    def __init__(self, *, endpoint: str) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._api = HfApi(endpoint=self.endpoint, library_name="modelplane")

    async def model(self, repo_id: str, *, revision: str | None, token: str | None) -> HubModel:
        """Model info with file sizes and LFS hashes at ``revision`` (default branch if None)."""
        try:
            info = await asyncio.to_thread(
                self._api.model_info,
                repo_id,
                revision=revision,
                files_metadata=True,
                token=token or False,
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
            raise HubError(f"the hub answered {status or 'nothing'} for {repo_id}") from exc
        return _to_model(info)


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
        files=files,
    )
