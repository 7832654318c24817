"""The GraphQL endpoint: strawberry's router with our context, transport and encoding.

:func:`graphql_router` mounts the schema with GraphiQL on GET and subscriptions over
``graphql-transport-ws`` only (request limits in ``modelplane/request_guard.py`` and
``schema/limits.py``). The context getter authenticates the bearer token of HTTP requests;
WebSocket connections authenticate in ``connection_init`` (:meth:`Router.on_ws_connect`) and
are re-checked by ``modelplane/sockets.py``. A subscription result shared by many subscribers is
encoded once (see ``schema/sharing.py``) and event subscriptions take the fast lane of
``modelplane/direct.py``."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from datetime import timedelta

from cross_web import HTTPException  # the HTTP error strawberry's views answer with
from starlette.requests import HTTPConnection
from strawberry.exceptions import ConnectionRejectionError
from strawberry.fastapi import GraphQLRouter
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types.unset import UnsetType

from modelplane import logs
from modelplane.auth import Authenticator, AuthError
from modelplane.direct import SocketAdapter, TransportHandler, next_message, next_prefix
from modelplane.graph import Resources
from modelplane.request_guard import BadRequestJSON, decode_request_json
from modelplane.schema_root import make_schema
from modelplane.settings import Settings
from modelplane.sockets import OpenSockets, credential_of
from resolvers.context import Context

log = logging.getLogger(__name__)

ENCODED_RESULTS = 1024  # subscription payloads whose JSON is kept for their other subscribers


class Router(GraphQLRouter[Context, None]):
    """GraphQL router that authenticates WebSocket connections in ``connection_init`` and
    encodes a subscription result shared by many subscribers once (see ``schema/sharing.py``):
    each ``next`` message is the subscriber's id spliced around the shared payload's JSON. Its
    WebSocket handler offers event subscriptions the fast lane of ``modelplane/direct.py``,
    re-checks the connection's credential and refuses malformed messages
    (``modelplane/sockets.py``); its adapter closes without waiting for a slow client."""

    verifier_getter: Callable[[], Authenticator]
    sockets_getter: Callable[[], OpenSockets]
    _encoded: dict[int, tuple[object, str]]
    graphql_transport_ws_handler_class = TransportHandler
    websocket_adapter_class = SocketAdapter

    def decode_json(self, data: str | bytes) -> object:
        # invalid UTF-8 and too-deep nesting are bad JSON too (they were HTTP 500s)
        return decode_request_json(data)

    def parse_json(self, data: str | bytes) -> object:
        try:
            return self.decode_json(data)
        except BadRequestJSON as exc:
            raise HTTPException(400, exc.reason) from None

    def encode_json(self, data: object) -> str | bytes:
        if isinstance(data, dict) and data.get("type") == "next":
            payload = data.get("payload")
            if isinstance(payload, dict) and payload.keys() == {"data"}:
                return self._encode_next(data["id"], payload)
        return super().encode_json(data)

    def _encode_next(self, operation_id: object, payload: dict[str, object]) -> str:
        shared = payload["data"]
        cache = self.__dict__.setdefault("_encoded", {})
        found = cache.get(id(shared))
        if found is None or found[0] is not shared:  # the entry holds the object: no id reuse
            found = (shared, json.dumps(payload, separators=(",", ":")))
            cache[id(shared)] = found
            if len(cache) > ENCODED_RESULTS:
                del cache[next(iter(cache))]
        return next_message(next_prefix(str(operation_id)), found[1])

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        params = context.connection_params if isinstance(context.connection_params, dict) else {}
        token = credential_of(params)
        if token is None:
            raise ConnectionRejectionError({"message": "connection_init needs `Authorization`"})
        try:
            context.principal = await self.verifier_getter().verify(token)
        except AuthError as exc:
            raise ConnectionRejectionError({"message": str(exc)}) from None
        return {"organizationId": context.principal.organization_id}


def graphql_router(current: Callable[[], Resources], settings: Settings) -> Router:
    async def get_context(connection: HTTPConnection) -> Context:
        res = current()
        principal = None
        header = connection.headers.get("authorization")
        if header and connection.scope["type"] == "http":
            try:
                principal = await res.authenticator.verify(header)
            except AuthError as exc:
                log.info("rejected bearer token: %s", exc)
        return Context(
            services=res.services,
            principal=principal,
            request_id=logs.request_id.get() or uuid.uuid4().hex,
        )

    router = Router(
        make_schema(settings.graphql_limits()),
        graphql_ide="graphiql",
        context_getter=get_context,
        subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
        connection_init_wait_timeout=timedelta(seconds=10),
    )
    router.verifier_getter = lambda: current().authenticator
    router.sockets_getter = lambda: current().sockets
    return router
