"""The writer the kill -9 test kills: a separate process that creates, updates and deletes
REMOTE_API models through the project's own services (``open_resources``, ``ModelService``)
until it is killed. Run as ``python -m tests.security.crash_writer URI DATABASE STATE PREFIX``;
it prints ``ready`` once it writes.

Its own event recovery is held back (an hour's grace), so that only the server the test
starts afterwards recovers what the kill lost.
"""

from __future__ import annotations

import asyncio
import sys
from itertools import count
from pathlib import Path

from modelplane.app import open_resources
from modelplane.settings import load_settings
from services.models import CreateModelSpec, SourceSpec, UpdateModelSpec
from services.principals import Principal
from storage.documents import AccessMode, Role

ORGANIZATION = "org-crash"
UPSTREAM_HOST = "upstream.test"


async def write_forever(uri: str, database: str, state_dir: Path, prefix: str) -> None:
    """Create, update and delete models one after the other, forever."""
    settings = load_settings(
        mongodb_uri=uri,
        mongodb_database=database,
        state_dir=state_dir,
        secret_key="test-secret-key-that-is-long-enough-0123456789",
        log_format="console",
        run_controllers=False,
        allowed_remote_hosts=[UPSTREAM_HOST],
        event_recovery_grace_seconds=3600,
    )
    async with open_resources(settings) as resources:
        models = resources.services.models
        principal = Principal(
            subject="crash-writer", organization_id=ORGANIZATION, role=Role.EDITOR
        )
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        for number in count(1):
            spec = CreateModelSpec(
                source=SourceSpec(
                    url=f"https://{UPSTREAM_HOST}/v1", access_mode=AccessMode.REMOTE_API
                ),
                display_name=f"{prefix}-{number}",
            )
            created = await models.create(principal, spec)
            await models.update(principal, created.id, UpdateModelSpec(description="changed"))
            await models.delete(principal, created.id)


if __name__ == "__main__":
    uri, name, state, prefix = sys.argv[1:5]
    asyncio.run(write_forever(uri, name, Path(state), prefix))
