"""The FastAPI application factory: assembles the app from its parts.

The object graph is :func:`modelplane.graph.open_resources`; with no resources given, the app's
lifespan opens them and closes them at shutdown. Mounted here: GraphQL at ``/graphql``
(:mod:`modelplane.graphql_router`), the request id, request metrics, ``/metrics``, ``/healthz``
and ``/readyz`` (:mod:`modelplane.observability`), the OpenAI-compatible gateway at ``/v1``
(:mod:`modelplane.gateway_http`) and the operator dashboard at ``/``
(:mod:`modelplane.dashboard`). No module-level singletons: everything hangs off the app built
here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from modelplane.dashboard import install_dashboard
from modelplane.gateway_http import gateway_router
from modelplane.graph import Resources, modelplane_version, open_resources
from modelplane.graphql_router import graphql_router
from modelplane.observability import Metrics, install_health, install_observability
from modelplane.request_guard import GraphQLRequestGuard
from modelplane.settings import Settings
from modelplane.startup import StartupError

__all__ = ["Resources", "StartupError", "create_app", "open_resources"]


def create_app(settings: Settings, *, resources: Resources | None = None) -> FastAPI:
    """The ASGI app. With ``resources`` given the caller owns them; otherwise the lifespan does."""
    holder: dict[str, Resources] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if resources is not None:
            holder["resources"] = resources
            yield
            return
        async with open_resources(settings) as opened:
            holder["resources"] = opened
            yield

    def current() -> Resources:
        return holder["resources"]

    app = FastAPI(
        title="modelplane",
        version=modelplane_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    # inside the observability middleware (added after it): refusals get a request id too
    app.add_middleware(
        GraphQLRequestGuard, prefix="/graphql", max_body_bytes=settings.graphql_max_body_bytes
    )
    install_observability(app, settings, Metrics(), current)
    install_health(app, current)
    app.include_router(graphql_router(current, settings), prefix="/graphql")
    app.include_router(gateway_router(current), prefix="/v1")
    install_dashboard(app, settings.dashboard_dir)
    return app
