"""Arguments several fields take alike: what a model-or-hub-repo question is asked about
(``gpuFit``, ``vllmCompatibility``), described once."""

from __future__ import annotations

from typing import Annotated

import strawberry

ModelIdArgument = Annotated[
    strawberry.ID | None,
    strawberry.argument(description="A catalogue model (give this or `repoId`)."),
]
RepoIdArgument = Annotated[
    str | None,
    strawberry.argument(description="A hub repo, `org/name` or URL (give this or `modelId`)."),
]
RevisionArgument = Annotated[
    str | None,
    strawberry.argument(description="Branch, tag or commit of `repoId`; default branch."),
]
