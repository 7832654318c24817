"""``downloadTarget`` of ``createModel``: one request type per kind, each validating itself.

A request is checked against the deployment's :class:`TargetRules` into the stored target of
its kind (``storage/targets.py``), with the path of the offending input field in every error
(``downloadTarget.pvc.claimName``); its secret values go to the secret store, never into the
document. Nothing is written here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from controllers.runtimes.base import Runtime
from integrations.addresses import OutboundPolicy
from services import validation as v
from services.errors import InvalidInput
from storage.targets import S3_SECRET_KEY, DownloadTarget, LocalTarget, PvcTarget, S3Target

PREFIX = "downloadTarget"
MAX_SIZE_GI = 65536


@dataclass(frozen=True, slots=True)
class TargetRules:
    """What the deployment allows a target to be."""

    runtime_kind: str
    local_roots: tuple[Path, ...]
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy)


@dataclass(frozen=True, slots=True)
class LocalTargetSpec:
    """A directory inside the organisation's area of an allowed root."""

    local_path: str | None = None

    async def checked(self, rules: TargetRules, organization_id: str, /) -> LocalTarget:
        """The stored target, or :class:`InvalidInput`."""
        path = v.check_weights_directory(
            f"{PREFIX}.local.localPath",
            self.local_path or "",
            roots=rules.local_roots,
            organization_id=organization_id,
        )
        return LocalTarget(local_path=path)

    def secret_values(self) -> dict[str, str]:
        """What goes to the secret store: nothing."""
        return {}


@dataclass(frozen=True, slots=True)
class PvcTargetSpec:
    """A claim (created when absent: ``size_gi`` or the server's default) and a directory in it."""

    claim_name: str | None = None
    sub_path: str | None = None
    storage_class: str | None = None
    size_gi: int | None = None

    async def checked(self, rules: TargetRules, _organization_id: str, /) -> PvcTarget:
        """The stored target, or :class:`InvalidInput`."""
        where = f"{PREFIX}.pvc"
        if rules.runtime_kind != "kubernetes":
            raise InvalidInput(where, "PVC targets need the kubernetes runtime")
        claim = v.require_text(f"{where}.claimName", self.claim_name, limit=253)
        if not v.DNS_SUBDOMAIN.match(claim):
            raise InvalidInput(f"{where}.claimName", f"{claim!r} is not a valid claim name")
        storage_class = v.check_text(f"{where}.storageClass", self.storage_class, limit=253)
        if storage_class is not None and not v.DNS_SUBDOMAIN.match(storage_class):
            raise InvalidInput(f"{where}.storageClass", "not a valid storage class name")
        if self.size_gi is not None and not 1 <= self.size_gi <= MAX_SIZE_GI:
            raise InvalidInput(f"{where}.sizeGi", f"sizeGi must be between 1 and {MAX_SIZE_GI}")
        return PvcTarget(
            claim_name=claim,
            sub_path=v.check_relative_path(f"{where}.subPath", self.sub_path),
            storage_class=storage_class,
            size_gi=self.size_gi,
        )

    def secret_values(self) -> dict[str, str]:
        """What goes to the secret store: nothing."""
        return {}


@dataclass(frozen=True, slots=True)
class S3TargetSpec:
    """A bucket prefix, with the key pair that writes it."""

    endpoint: str | None = None
    bucket: str | None = None
    region: str | None = None
    prefix: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None

    async def checked(self, rules: TargetRules, _organization_id: str, /) -> S3Target:
        """The stored target, or :class:`InvalidInput` (the endpoint must resolve to an
        address the outbound policy allows)."""
        where = f"{PREFIX}.s3"
        endpoint = v.check_endpoint(f"{where}.endpoint", self.endpoint, outbound=rules.outbound)
        target = S3Target(
            endpoint=endpoint,
            bucket=v.check_bucket(f"{where}.bucket", self.bucket),
            region=v.check_region(f"{where}.region", self.region),
            prefix=v.check_relative_path(f"{where}.prefix", self.prefix),
            access_key_id=v.require_text(f"{where}.accessKeyId", self.access_key_id, limit=128),
            has_secret_access_key=v.check_secret_value(
                f"{where}.secretAccessKey", self.secret_access_key, required=True
            )
            is not None,
        )
        if endpoint is not None:
            await v.check_resolved(f"{where}.endpoint", endpoint, outbound=rules.outbound)
        return target

    def secret_values(self) -> dict[str, str]:
        """The secret access key, for the secret store."""
        if not self.secret_access_key:
            return {}
        return {S3_SECRET_KEY: self.secret_access_key.strip()}


TargetSpec = LocalTargetSpec | PvcTargetSpec | S3TargetSpec
"""``downloadTarget`` as asked for: exactly one kind."""


async def check_storage_class(runtime: Runtime, target: DownloadTarget) -> None:
    """Refuse a PVC target naming a StorageClass the cluster does not have: its claim would
    never be bound and the download would wait for ever (the organisation API checks storage
    classes before deploying). Only a definite "no" refuses; a cluster that cannot tell
    (no permission, no answer) is not held against the request."""
    if not isinstance(target, PvcTarget) or not target.storage_class:
        return
    if await runtime.storage_class_known(target.storage_class) is False:
        raise InvalidInput(
            f"{PREFIX}.pvc.storageClass",
            f"the cluster has no StorageClass {target.storage_class!r}; name one it has, or "
            "leave storageClass null for the cluster's default",
        )
