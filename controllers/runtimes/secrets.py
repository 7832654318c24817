"""Where credentials rest (docs/architecture.md decision 6): never in plain text, never returned.

Two stores behind one protocol, chosen with the runtime:

* :class:`KubernetesSecretStore` writes one Secret per model (``<name>-credentials``-style name
  derived from the model id), labelled as ours and written with server-side apply, so Jobs and
  Deployments can mount it and nothing else holds the values;
* :class:`EncryptedSecretStore` (local runtime) encrypts the values with Fernet under a key
  derived from ``MODELPLANE_SECRET_KEY`` and stores the ciphertext in MongoDB.

Values are dictionaries of short strings (``hf-token``, ``s3-secret-access-key``). Nothing here
logs a value, and errors never include one.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Protocol

from cryptography.fernet import Fernet, InvalidToken
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from controllers.runtimes.kubernetes.labels import FIELD_MANAGER, owned_labels
from storage.documents import EncryptedSecretDocument
from storage.repositories import SecretRepository
from storage.targets import S3_SECRET_KEY as S3_SECRET_KEY  # noqa: PLC0414  re-exported

HF_TOKEN_KEY = "hf-token"  # noqa: S105  a key name inside the Secret, not a value
API_KEY = "api-key"


class SecretStoreError(Exception):
    """The store refused a write or read; the message never contains a value."""


class SecretStore(Protocol):
    """Write, read and delete the credentials of one owner (a model)."""

    kind: str

    async def put(self, *, organization_id: str, owner_id: str, values: dict[str, str]) -> str:
        """Store ``values`` for the owner; returns the reference kept on the document."""

    async def get(self, ref: str) -> dict[str, str]:
        """The stored values (empty when nothing is stored)."""

    async def delete(self, ref: str) -> bool:
        """Remove them; False when there was nothing to remove."""


def secret_name(owner_id: str) -> str:
    """The Kubernetes Secret name for an owner: DNS-1123, stable, prefixed as ours."""
    return f"{owner_id}-credentials"


class KubernetesSecretStore:
    """One labelled Secret per owner in the managed namespace."""

    kind = "Secret"

    def __init__(self, api: k8s.ApiClient, *, namespace: str) -> None:
        self._core = k8s.CoreV1Api(api)
        self._namespace = namespace

    async def put(self, *, organization_id: str, owner_id: str, values: dict[str, str]) -> str:
        name = secret_name(owner_id)
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": self._namespace,
                "labels": owned_labels(owner_id, organization_id, component="credentials"),
            },
            "type": "Opaque",
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
        }
        try:
            await self._core.patch_namespaced_secret(  # type: ignore[call-arg]  # stubs lack _content_type
                name,
                self._namespace,
                body,
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type="application/apply-patch+yaml",
            )
        except ApiException as exc:
            raise SecretStoreError(
                f"could not write Secret {self._namespace}/{name}: HTTP {exc.status} {exc.reason}"
            ) from None
        return name

    async def get(self, ref: str) -> dict[str, str]:
        try:
            secret = await self._core.read_namespaced_secret(ref, self._namespace)
        except ApiException as exc:
            if exc.status == 404:
                return {}
            raise SecretStoreError(f"could not read Secret {ref}: HTTP {exc.status}") from None
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    async def delete(self, ref: str) -> bool:
        try:
            await self._core.delete_namespaced_secret(ref, self._namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise SecretStoreError(f"could not delete Secret {ref}: HTTP {exc.status}") from None
        return True


def fernet_for(secret_key: str) -> Fernet:
    """A Fernet cipher keyed from the service secret (domain-separated from token signing)."""
    digest = hashlib.sha256(b"modelplane-secrets-at-rest\x00" + secret_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


class EncryptedSecretStore:
    """Fernet-encrypted documents in MongoDB (local runtime)."""

    kind = "EncryptedSecret"

    def __init__(self, repository: SecretRepository, *, cipher: Fernet) -> None:
        self._repository = repository
        self._cipher = cipher

    async def put(self, *, organization_id: str, owner_id: str, values: dict[str, str]) -> str:
        ref = secret_name(owner_id)
        ciphertext = self._cipher.encrypt(json.dumps(values, sort_keys=True).encode())
        await self._repository.put(
            EncryptedSecretDocument(
                id=ref, organization_id=organization_id, owner_id=owner_id, ciphertext=ciphertext
            )
        )
        return ref

    async def put_entry(self, *, ref: str, values: dict[str, str]) -> str:
        """Store ``values`` under a name of the operator's (the server-wide hub token's
        entry, ``MODELPLANE_HUB_TOKEN_SECRET``), owned by no organisation."""
        ciphertext = self._cipher.encrypt(json.dumps(values, sort_keys=True).encode())
        await self._repository.put(
            EncryptedSecretDocument(id=ref, organization_id="", owner_id=ref, ciphertext=ciphertext)
        )
        return ref

    async def get(self, ref: str) -> dict[str, str]:
        document = await self._repository.get(ref)
        if document is None:
            return {}
        try:
            values: dict[str, str] = json.loads(self._cipher.decrypt(document.ciphertext))
        except InvalidToken:
            raise SecretStoreError(
                f"secret {ref} cannot be decrypted: was MODELPLANE_SECRET_KEY changed?"
            ) from None
        return values

    async def delete(self, ref: str) -> bool:
        return await self._repository.delete(ref)
