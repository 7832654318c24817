"""GraphQL types of weights fetched without a model (``downloadWeights``)."""

from __future__ import annotations

from typing import Annotated

import strawberry

from schema.errors import ConflictError, ForbiddenError, NotFoundError, ValidationError
from schema.models import DownloadTargetInput
from schema.weights import Weights


@strawberry.input(
    description="Weights to download on their own, to attach to models later (createModel "
    "with `weightsId`). The same repo, commit, patterns and place asked for again answers the "
    "weights that exist."
)
class DownloadWeightsInput:
    """downloadWeights input."""

    repo: str = strawberry.field(
        description="Hugging Face repo id (`Qwen/Qwen2.5-7B-Instruct`) or hub URL."
    )
    download_target: DownloadTargetInput = strawberry.field(description="Where the files go.")
    revision: str | None = strawberry.field(
        default=None, description="Branch, tag or commit; the default branch when null."
    )
    token: str | None = strawberry.field(
        default=None,
        description="Hub token for gated or private repos (else the server's hub token, if "
        "one is set). Stored as a secret with the weights; never returned.",
    )
    allow_patterns: list[str] | None = strawberry.field(
        default=None,
        description="Download only files matching one of these globs (as createModel's "
        "`source.allowPatterns`); null or empty: every file.",
    )
    ignore_patterns: list[str] | None = strawberry.field(
        default=None, description="Do not download files matching one of these globs."
    )


DownloadWeightsResult = Annotated[
    Weights | ValidationError | ConflictError | ForbiddenError | NotFoundError,
    strawberry.union(
        "DownloadWeightsResult",
        description="The weights (new and PENDING, or the ones that exist), or why not.",
    ),
]
