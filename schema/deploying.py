"""GraphQL types of ``deployModel``: a model and its inference from an image and a command."""

from __future__ import annotations

from typing import Annotated

import strawberry

from schema.errors import ConflictError, ForbiddenError, ValidationError
from schema.inference import Inference, InferenceInput
from schema.models import Model


@strawberry.input(
    description=(
        "A model served by an engine that fetches it itself: an image and a command (a vLLM "
        "command's `--model <hub repo>`), or an Ollama model (`engine: OLLAMA`, `ollamaModel: "
        '"smollm2:135m"`). Nothing is downloaded first; the model is READY at once '
        "(accessMode ENGINE)."
    )
)
class DeployModelInput:
    """deployModel input."""

    name: str = strawberry.field(
        description=(
            "DNS-1123 label: the model's name, the name clients send as `model`, and the name a "
            "vLLM command must serve (`--served-model-name <name>`)."
        )
    )
    inference: InferenceInput = strawberry.field(
        description=(
            "What to run: `image`, `command`, `args`, `env`, `port`, `resources`... Engine "
            "default CUSTOM; any command that runs vLLM must carry `--served-model-name "
            "<name>`. Its `resources` are also the model's."
        )
    )
    display_name: str | None = strawberry.field(
        default=None, description="Human-readable name (default: `name`)."
    )
    description: str | None = strawberry.field(default=None, description="At most 4 KiB.")
    tags: list[str] | None = strawberry.field(
        default=None, description="At most 32 tags of at most 64 characters."
    )
    hub_token: str | None = strawberry.field(
        default=None,
        description=(
            "Hugging Face token for gated or private repos the command fetches. Stored as the "
            "model's Secret; the engine reads it as `HF_TOKEN` through a Secret reference; "
            "never returned (`source.hasToken` says it is there)."
        ),
    )


@strawberry.type(description="The model deployModel created, and its inference.")
class DeployPayload:
    """The new (or, for a dry run, planned) model and inference."""

    model: Model = strawberry.field(description="The model (accessMode ENGINE).")
    inference: Inference = strawberry.field(description="Its inference, PENDING at first.")
    dry_run: bool = strawberry.field(description="True when nothing was written.")
    manifests: list[str] = strawberry.field(
        description="Dry run: the objects that would be applied, one YAML document each."
    )


DeployModelResult = Annotated[
    DeployPayload | ValidationError | ConflictError | ForbiddenError,
    strawberry.union(
        "DeployModelResult",
        description=(
            "deployModel's outcome; a ValidationError's `field` names the input "
            "(`input.inference.command` for a wrong `--served-model-name`)."
        ),
    ),
]
