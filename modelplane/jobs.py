"""``modelplane download``: what a download Job's pod (or a test's subprocess) runs.

Kept light: imported only by that command, it needs neither FastAPI nor strawberry. The hub
token and S3 key come from the Job's ``secretKeyRef`` environment variables, or, outside a
cluster, from the encrypted secret store when the secret key is set. Every refusal is one line
and an exit code (2: the command was asked something impossible; 1: it could not finish)."""

from __future__ import annotations

import os

from controllers.downloads.running import WeightsRuntimeConfig, run_weights
from controllers.runtimes.kubernetes.job_specs import SERVER_HF_TOKEN
from controllers.runtimes.secrets import (
    HF_TOKEN_KEY,
    S3_SECRET_KEY,
    EncryptedSecretStore,
    SecretStoreError,
    fernet_for,
)
from live import Recorder
from modelplane.settings import Settings
from modelplane.wiring import event_log_for
from storage.client import Database, make_client, ping
from storage.documents import WeightsDocument, WeightsState
from storage.errors import DatabaseUnavailable
from storage.repositories import LedgerRepository, SecretRepository, WeightsRepository

SECRET_VARIABLES = (("HF_TOKEN", HF_TOKEN_KEY), ("S3_SECRET_ACCESS_KEY", S3_SECRET_KEY))
"""Environment variables a Job pod gets from the download Secret, and the keys they fill."""


class Refused(Exception):
    """The download cannot run: the exit code and the line to print."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def run_download(settings: Settings, weights_id: str) -> tuple[int, str]:
    """Run one download to completion: the exit code and the line to print."""
    if settings.mongodb_uri is None:
        return 2, "modelplane: MODELPLANE_MONGODB_URI is required for `modelplane download`"
    client = make_client(
        settings.mongodb_uri.get_secret_value(), timeout_seconds=settings.mongodb_timeout_seconds
    )
    try:
        outcome = await _download(settings, client[settings.mongodb_database], weights_id)
    except Refused as exc:
        return exc.code, exc.message
    finally:
        await client.close()
    if outcome is None or outcome.state is not WeightsState.READY:
        reason = outcome.message if outcome else "deleted"
        return 1, f"modelplane: download {weights_id} did not finish: {reason}"
    return 0, f"modelplane: {weights_id} is READY at {outcome.location}"


async def _download(
    settings: Settings, database: Database, weights_id: str
) -> WeightsDocument | None:
    try:
        await ping(database)
    except DatabaseUnavailable:
        raise Refused(1, "modelplane: MODELPLANE_MONGODB_URI: MongoDB is not reachable") from None
    weights = WeightsRepository(database)
    doc = await weights.get(weights_id)
    if doc is None:
        raise Refused(2, f"modelplane: no weights {weights_id}")
    secrets = await _secrets(settings, database, doc)
    event_log = event_log_for(settings, database)
    await event_log.ensure()
    return await run_weights(
        weights_id,
        recorder=Recorder(event_log),
        weights=weights,
        ledgers=LedgerRepository(database),
        secrets=secrets,
        config=WeightsRuntimeConfig(
            hub_endpoint=settings.hf_endpoint,
            options=settings.download_options(),
            pvc_mount_path=settings.pvc_mount_path,
            outbound=settings.outbound_policy(),
        ),
    )


async def _secrets(settings: Settings, database: Database, doc: WeightsDocument) -> dict[str, str]:
    """The download's secrets: from the store when the secret key is set, overridden by the
    Job's environment variables (in a Job pod the values come from the Secret)."""
    secrets: dict[str, str] = {}
    if doc.secret_ref is not None and settings.secret_key is not None:
        store = EncryptedSecretStore(
            SecretRepository(database), cipher=fernet_for(settings.secret_key.get_secret_value())
        )
        try:
            secrets = await store.get(doc.secret_ref)
        except SecretStoreError as exc:
            raise Refused(1, f"modelplane: {exc}") from None
    for variable, key in SECRET_VARIABLES:
        if os.environ.get(variable):
            secrets[key] = os.environ[variable]
    if not secrets.get(HF_TOKEN_KEY) and os.environ.get(SERVER_HF_TOKEN):
        secrets[HF_TOKEN_KEY] = os.environ[SERVER_HF_TOKEN]  # the server-wide token
    return secrets
