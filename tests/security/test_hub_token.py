"""The server-wide hub token is never echoed: not by ``modelplane hub-token set`` (it reads the
token from standard input and prints only the entry's name), not by the object that reads it,
and it is stored encrypted."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from controllers.runtimes.hub_token import ServerHubToken
from controllers.runtimes.secrets import EncryptedSecretStore, fernet_for
from modelplane import cli
from storage.client import Client
from storage.repositories import SecretRepository
from tests.conftest import make_settings

TOKEN = "hf_servertokenneverechoed0001"


async def test_hub_token_set_stores_it_encrypted_and_says_only_the_name(
    tmp_path: Path,
    mongo_uri: str,
    mongo_client: Client,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(tmp_path, mongo_uri)
    for name, value in (
        ("MODELPLANE_MONGODB_URI", mongo_uri),
        ("MODELPLANE_MONGODB_DATABASE", settings.mongodb_database),
        ("MODELPLANE_SECRET_KEY", settings.secret_key.get_secret_value()),  # type: ignore[union-attr]
        ("MODELPLANE_STATE_DIR", str(tmp_path / "state")),
    ):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("sys.stdin", io.StringIO(TOKEN + "\n"))
    try:
        code = await _in_thread(["hub-token", "set", "hub-token"])
        assert code == 0
        out = capsys.readouterr()
        assert "hub-token" in out.err
        assert TOKEN not in out.out + out.err
        database = mongo_client[settings.mongodb_database]
        raw = await database["secrets"].find_one({"_id": "hub-token"})
        assert raw is not None
        assert TOKEN.encode() not in bytes(raw["ciphertext"])
        store = EncryptedSecretStore(
            SecretRepository(database),
            cipher=fernet_for(settings.secret_key.get_secret_value()),  # type: ignore[union-attr]
        )
        reader = ServerHubToken(store, ref="hub-token", key="hf-token")
        assert await reader.value() == TOKEN
        assert TOKEN not in repr(reader)
    finally:
        await mongo_client.drop_database(settings.mongodb_database)


async def _in_thread(argv: list[str]) -> int:
    """The command runs its own event loop (asyncio.run): give it a thread."""
    import asyncio

    return await asyncio.to_thread(cli.main, argv)
