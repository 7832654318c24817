"""Where downloaded weights are written: one type per kind, each owning what is pure about it.

A download target is a LOCAL directory, a PersistentVolumeClaim (with an optional sub-path) or
an S3 prefix. :data:`DownloadTarget` is the discriminated union of the three (pydantic picks
the member by ``kind``), so code holding one either asks the target (:meth:`location`,
:meth:`describe`, :meth:`directory`, :attr:`secret_keys`, :meth:`place`) or matches on its
type where the behaviour belongs to somebody else (how a Kubernetes Job mounts a claim, how an
engine syncs a bucket: the runtimes). It replaced one model of optional fields tagged by
``kind`` and re-decided in some 36 ``if kind is ...`` branches across eight files.

The stored shape did not change: every target is written with all twelve fields of the old
model, in its order, the ones of other kinds null (:meth:`_Target._flat`), so documents
written before and after load alike and a reader of either version reads both. Validation of
what a user asks for (roots, names, endpoints) is the service's (``services/targets.py``);
these types trust what they are given.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

S3_SECRET_KEY = "s3-secret-access-key"  # noqa: S105  a key name inside the secret, not a value
"""Key of an S3 target's secret access key in the model's secret."""
DEFAULT_REGION = "us-east-1"


class TargetKind(StrEnum):
    """Where downloaded weights are written."""

    LOCAL = "LOCAL"
    PVC = "PVC"
    S3 = "S3"


_STORED: dict[str, Any] = {
    "kind": None,
    "local_path": None,
    "claim_name": None,
    "sub_path": None,
    "storage_class": None,
    "size_gi": None,
    "endpoint": None,
    "bucket": None,
    "region": None,
    "prefix": None,
    "access_key_id": None,
    "has_secret_access_key": False,
}
"""Every field a stored target has, in the stored order, with the value of an absent one."""

Place = tuple[str, str]
"""(volume, directory) of a target on a filesystem, for overlap checks."""


def object_prefix(prefix: str | None, repo_id: str, commit_sha: str) -> str:
    """``prefix/<repo>/<commit>`` without leading or doubled slashes."""
    parts = [p.strip("/") for p in (prefix or "", repo_id, commit_sha) if p and p.strip("/")]
    return "/".join(parts)


class _Target(BaseModel):
    """What every kind answers; the default is "nothing of that sort"."""

    secret_keys: ClassVar[tuple[str, ...]] = ()
    """Keys the model's secret must hold for a download to this target."""
    shared_volume: ClassVar[bool] = False
    """Whether other organisations may name the same volume (a claim in the namespace), so
    overlap checks look across organisations."""

    @model_serializer(mode="wrap")
    def _flat(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        return {key: data.get(key, empty) for key, empty in _STORED.items()}

    @property
    def has_secret(self) -> bool:
        """Whether a secret of this target is stored (only S3 has one)."""
        return False

    def without_secret(self) -> DownloadTarget:
        """The target once its stored secret is gone."""
        return self  # type: ignore[return-value]  # every subclass is a member of the union

    def directory(self, _mount_path: str, /) -> str | None:
        """The weights' directory on a filesystem (a claim mounted at the path given); None
        when the target is no filesystem."""
        return None

    def place(self) -> Place | None:
        """(volume, directory) for overlap checks; None when nothing can overlap."""
        return None

    def volume_filter(self) -> dict[str, str]:
        """Fields (under the target) that documents on the same volume share."""
        return {}

    def describe(self, location: str) -> str:
        """Where the files at ``location`` are, for messages (never a key)."""
        return location


class LocalTarget(_Target):
    """A directory inside one of the allowed roots (the organisation's area)."""

    kind: Literal[TargetKind.LOCAL] = TargetKind.LOCAL
    local_path: str
    """Absolute, resolved directory."""

    def location(self, _repo_id: str, _commit_sha: str, /) -> str:
        """Where a repo at a commit goes: the directory itself."""
        return self.local_path

    def directory(self, _mount_path: str, /) -> str | None:
        return self.local_path

    def place(self) -> Place | None:
        return "local", self.local_path

    def volume_filter(self) -> dict[str, str]:
        return {"kind": self.kind.value}


class PvcTarget(_Target):
    """A PersistentVolumeClaim, created by modelplane when it does not exist (``size_gi``, else
    the server's default size); an existing one is used as it is."""

    shared_volume: ClassVar[bool] = True

    kind: Literal[TargetKind.PVC] = TargetKind.PVC
    claim_name: str
    sub_path: str | None = None
    storage_class: str | None = None
    size_gi: int | None = None

    def location(self, _repo_id: str, _commit_sha: str, /) -> str:
        """``pvc://<claim>[/<sub-path>]``."""
        return f"pvc://{self.claim_name}" + (f"/{self.sub_path}" if self.sub_path else "")

    def directory(self, mount_path: str, /) -> str | None:
        return mount_path.rstrip("/") + (f"/{self.sub_path}" if self.sub_path else "")

    def place(self) -> Place | None:
        return f"pvc:{self.claim_name}", "/" + (self.sub_path or "")

    def volume_filter(self) -> dict[str, str]:
        return {"kind": self.kind.value, "claim_name": self.claim_name}


class S3Target(_Target):
    """A bucket prefix; the secret access key lives in the model's secret."""

    secret_keys: ClassVar[tuple[str, ...]] = (S3_SECRET_KEY,)

    kind: Literal[TargetKind.S3] = TargetKind.S3
    endpoint: str | None = None
    """None: AWS."""
    bucket: str
    region: str | None = None
    prefix: str | None = None
    access_key_id: str
    has_secret_access_key: bool = False

    @property
    def region_name(self) -> str:
        """The region to sign for (``us-east-1`` when none was given)."""
        return self.region or DEFAULT_REGION

    @property
    def has_secret(self) -> bool:
        return self.has_secret_access_key

    def without_secret(self) -> DownloadTarget:
        return self.model_copy(update={"has_secret_access_key": False})

    def location(self, repo_id: str, commit_sha: str, /) -> str:
        """``s3://<bucket>/<prefix>/<repo>/<commit>``."""
        return f"s3://{self.bucket}/{object_prefix(self.prefix, repo_id, commit_sha)}"

    def key_prefix(self, location: str) -> str:
        """The object key prefix of a location this target gave."""
        return location.removeprefix(f"s3://{self.bucket}/")

    def describe(self, location: str) -> str:
        return f"the S3 endpoint {self.endpoint or 'AWS (default)'} ({location})"


DownloadTarget = Annotated[LocalTarget | PvcTarget | S3Target, Field(discriminator="kind")]
"""A stored download target: pydantic picks the member by ``kind``."""
