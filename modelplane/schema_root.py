"""Wires the resolvers' root types into the schema; also used to export the SDL."""

from __future__ import annotations

import strawberry

from resolvers.history import TIMELINE_TYPES
from resolvers.root import Mutation, Query, Subscription
from schema.building import build_schema
from schema.limits import GraphQLLimits


def make_schema(limits: GraphQLLimits | None = None) -> strawberry.Schema:
    """The executable schema of this version of modelplane, refusing operations over
    ``limits`` (the settings' ``graphql_*``; defaults when None)."""
    return build_schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        types=TIMELINE_TYPES,
        limits=limits,
    )


def export_sdl() -> str:
    """The schema in SDL, as committed in ``graphql/schema.graphql``."""
    return make_schema().as_str() + "\n"
