"""Output object types shared across the API."""

from __future__ import annotations

from datetime import datetime

import strawberry

from schema.enums import RoleEnum


@strawberry.type(description="Facts about this modelplane deployment.")
class ServerInfo:
    """Version and runtime of the server answering."""

    version: str = strawberry.field(description="modelplane version (PEP 440).")
    runtime: str = strawberry.field(
        description="Execution engine: `local` (processes on this host) or `kubernetes`."
    )
    namespace: str | None = strawberry.field(
        description="Kubernetes namespace modelplane manages; null for the local runtime."
    )
    kubernetes_version: str | None = strawberry.field(
        description="Version reported by the Kubernetes API server; null for the local runtime."
    )
    hub_endpoint: str = strawberry.field(
        description="Hugging Face Hub endpoint used for metadata and downloads."
    )
    started_at: datetime = strawberry.field(description="When this process started (UTC).")
    local_roots: list[str] | None = strawberry.field(
        description=(
            "The caller's organisation's area under each allowed root, in order of preference: "
            "a LOCAL download target's `localPath` must resolve to a directory strictly inside "
            "one of them (clients default a new model's path to `<first area>/<repo id>`); "
            "null without a valid token, so anonymous callers learn no server paths."
        )
    )


@strawberry.type(description="The authenticated caller.")
class Viewer:
    """Who the bearer token says is calling."""

    subject: str = strawberry.field(description="The token's subject (`sub` claim).")
    organization_id: str = strawberry.field(
        description="Organisation every query and mutation is scoped to."
    )
    role: RoleEnum = strawberry.field(description="What the caller may do in the organisation.")
    expires_at: datetime | None = strawberry.field(description="When the token expires (UTC).")


@strawberry.type(description="A periodic beat on a subscription, proving the stream is alive.")
class Heartbeat:
    """Sent every `intervalSeconds` by the `heartbeat` subscription."""

    sequence: int = strawberry.field(description="1 for the first beat, then counting up.")
    server_time: datetime = strawberry.field(description="Server clock when the beat was sent.")
