"""``modelplane hub-token set NAME``: store the server-wide hub token in the local runtime's
encrypted store (on the kubernetes runtime, an operator creates the Secret instead:
``kubectl create secret generic NAME --from-literal=hf-token=...``).

The token is read from standard input (never an argument: it would be in the shell's history
and the process list), encrypted with the service's secret key and written under ``NAME`` with
the key ``MODELPLANE_HUB_TOKEN_KEY``. Nothing prints or logs the value.
"""

from __future__ import annotations

from controllers.runtimes.secrets import EncryptedSecretStore, fernet_for
from modelplane.runtimes.local import generated_secret
from modelplane.settings import RuntimeKind, Settings
from storage.client import make_client, ping
from storage.errors import DatabaseUnavailable
from storage.repositories import SecretRepository


async def store_hub_token(settings: Settings, name: str, token: str) -> tuple[int, str]:
    """Store ``token`` as the entry ``name``: the exit code and the line to print."""
    if settings.runtime is not RuntimeKind.LOCAL:
        return 2, f"modelplane: on the kubernetes runtime create the Secret {name} instead"
    if settings.mongodb_uri is None:
        return 2, "modelplane: MODELPLANE_MONGODB_URI is required for `modelplane hub-token`"
    if not token:
        return 2, "modelplane: no token on standard input"
    key = (
        settings.secret_key.get_secret_value()
        if settings.secret_key is not None
        else generated_secret(settings.state_dir)
    )
    client = make_client(
        settings.mongodb_uri.get_secret_value(), timeout_seconds=settings.mongodb_timeout_seconds
    )
    try:
        database = client[settings.mongodb_database]
        await ping(database)
        store = EncryptedSecretStore(SecretRepository(database), cipher=fernet_for(key))
        await store.put_entry(ref=name, values={settings.hub_token_key: token})
    except DatabaseUnavailable:
        return 1, "modelplane: MODELPLANE_MONGODB_URI: MongoDB is not reachable"
    finally:
        await client.close()
    hint = "" if settings.hub_token_secret == name else f"; set MODELPLANE_HUB_TOKEN_SECRET={name}"
    return 0, f"modelplane: the server hub token is stored as {name}{hint}"
