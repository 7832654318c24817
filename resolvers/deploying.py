"""Resolver of ``deployModel``: a model and its inference in one call."""

from __future__ import annotations

from typing import Annotated

import strawberry
import yaml

from resolvers.context import Info
from resolvers.errors import answers
from resolvers.inference import request_from_input
from schema.deploying import DeployModelInput, DeployModelResult, DeployPayload
from schema.inference import Inference
from schema.models import Model
from services.deploying import DeploySpec


@answers
async def deploy_model(
    info: Info,
    input: Annotated[DeployModelInput, strawberry.argument(description="The model and engine.")],
    dry_run: Annotated[
        bool,
        strawberry.argument(description="Validate and render the objects; create nothing."),
    ] = False,
) -> DeployModelResult:
    """Create a model and start its inference from an image and a command."""
    principal = info.context.require_principal()
    spec = DeploySpec(
        name=input.name,
        inference=request_from_input(input.inference),
        display_name=input.display_name,
        description=input.description,
        tags=input.tags,
        hub_token=input.hub_token,
    )
    outcome = await info.context.services.deploy.deploy(principal, spec, dry_run=dry_run)
    return DeployPayload(
        model=Model.from_document(outcome.model),
        inference=Inference.from_document(outcome.inference),
        dry_run=outcome.dry_run,
        manifests=[yaml.safe_dump(obj, sort_keys=False) for obj in outcome.manifests],
    )
