"""What each weights location holds and how full it is: the figures of ``weightsUsage``, of the
storage alerts and of the storage gauges, computed once here for all three.

A location is an allowed local root (``shutil.disk_usage`` now), a PVC (the filesystem figures
its last download pod measured and wrote on the weights: the API cannot mount the claim) or an
S3 bucket prefix. A bucket has no capacity, so an S3 prefix is a location only when the
operator gives it a quota (``MODELPLANE_STORAGE_ALERT_S3_QUOTAS``): its use is then the bytes of
the READY weights stored under it as their documents record them (no listing of the bucket,
which would need each model's own credential), its capacity the quota. A prefix without a quota
has nothing to be full against: it is not listed and never alerts.

``organization_id`` scopes ``weights_bytes`` (an organisation sees only its own weights); the
filesystem figures are the location's own, the same for everyone, and the alert watcher measures
with no organisation (every organisation's weights). A PVC's alert events go only to the
organisations holding weights on it (:func:`claim_holders`): another organisation must not learn
the claim's name.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from storage.documents import PvcTarget, S3Target, TargetKind, WeightsDocument

DiskUsage = Callable[[Path], tuple[int, int, int]]
"""``(total, used, free)`` bytes of the filesystem holding a directory (``shutil.disk_usage``
in production; a test gives figures of its own to cross a threshold without filling a disk)."""


def disk_usage(path: Path) -> tuple[int, int, int]:
    """The filesystem's ``(total, used, free)`` bytes."""
    usage = shutil.disk_usage(path)
    return usage.total, usage.used, usage.free


@dataclass(frozen=True, slots=True)
class RootUsage:
    """Usage of one location and how much of it is weights."""

    root: str
    used: int
    free: int
    total: int
    weights_bytes: int
    kind: TargetKind = TargetKind.LOCAL
    measured_at: datetime | None = None
    """None: measured now (local roots, S3 quotas); else when a download pod last measured a
    PVC."""

    @property
    def fraction(self) -> float | None:
        """used / total, None when the size is unknown (0)."""
        return self.used / self.total if self.total > 0 else None


@dataclass(frozen=True, slots=True)
class LocationStatus:
    """One location's figures, its threshold and its alert state (as stored by the leader)."""

    usage: RootUsage
    threshold: float
    alerting: bool


def _size(weights: WeightsDocument) -> int:
    return sum(f.size for f in weights.files)


def _inside(location: str, root: str) -> bool:
    return location == root or location.startswith(root.rstrip("/") + "/")


def measure(
    ready: Iterable[WeightsDocument],
    *,
    roots: Iterable[Path],
    s3_quotas: Mapping[str, int],
    organization_id: str | None = None,
    usage: DiskUsage = disk_usage,
) -> list[RootUsage]:
    """Every location's figures: local roots (existing ones), PVCs holding READY weights, S3
    prefixes with a quota. ``ready`` are READY weights of every organisation; with
    ``organization_id`` only that organisation's count in ``weights_bytes``."""
    ready = list(ready)
    mine = [w for w in ready if organization_id is None or w.organization_id == organization_id]
    result = []
    for root in roots:
        if not root.exists():
            continue
        total, used, free = usage(root)
        inside = sum(_size(w) for w in mine if _inside(w.location, str(root)))
        result.append(RootUsage(str(root), used, free, total, inside))
    claims = _claims(mine)
    if organization_id is None:
        every = claims
    else:  # the claim's figures may come from another organisation's newer download
        every = {u.root: u for u in _claims(ready).values() if u.root in claims}
        every = {k: replace(v, weights_bytes=claims[k].weights_bytes) for k, v in every.items()}
    result += sorted(every.values(), key=lambda u: u.root)
    result += _buckets(ready, mine, s3_quotas)
    return result


def claim_root(target: PvcTarget) -> str:
    """A PVC's location as ``weightsUsage``, the alerts and the gauges name it."""
    return f"pvc://{target.claim_name}"


def _claims(ready: list[WeightsDocument]) -> dict[str, RootUsage]:
    """One entry per PVC holding READY weights: the newest measurement and their bytes."""
    claims: dict[str, RootUsage] = {}
    for weights in ready:
        if not isinstance(weights.target, PvcTarget) or weights.volume is None:
            continue
        root = claim_root(weights.target)
        seen = claims.get(root)
        volume = weights.volume
        if seen is None or (seen.measured_at is not None and volume.measured_at > seen.measured_at):
            claims[root] = RootUsage(
                root=root,
                used=volume.used,
                free=volume.free,
                total=volume.total,
                weights_bytes=_size(weights) + (seen.weights_bytes if seen else 0),
                kind=TargetKind.PVC,
                measured_at=volume.measured_at,
            )
        else:
            claims[root] = replace(seen, weights_bytes=seen.weights_bytes + _size(weights))
    return claims


def _buckets(
    ready: list[WeightsDocument], mine: list[WeightsDocument], quotas: Mapping[str, int]
) -> list[RootUsage]:
    """One entry per S3 prefix with a quota: the READY weights under it against the quota."""
    result = []
    for root, quota in sorted(quotas.items()):
        used = sum(_size(w) for w in ready if _in_bucket(w, root))
        own = sum(_size(w) for w in mine if _in_bucket(w, root))
        free = max(quota - used, 0)
        result.append(RootUsage(root, used, free, quota, own, kind=TargetKind.S3))
    return result


def claim_holders(ready: Iterable[WeightsDocument]) -> dict[str, frozenset[str]]:
    """The organisations holding READY weights on each PVC (``pvc://<claim>``). A claim's name
    is its organisation's choice, so its alerts go to those organisations only; local roots and
    S3 quota prefixes are the operator's, listed to everyone, and alert server-wide."""
    holders: dict[str, set[str]] = {}
    for weights in ready:
        if isinstance(weights.target, PvcTarget):
            holders.setdefault(claim_root(weights.target), set()).add(weights.organization_id)
    return {root: frozenset(orgs) for root, orgs in holders.items()}


def _in_bucket(weights: WeightsDocument, root: str) -> bool:
    return isinstance(weights.target, S3Target) and _inside(weights.location, root)


def normalise_s3_location(text: str) -> str:
    """``s3://bucket/prefix`` without a trailing slash; ValueError when it is not one."""
    if not text.startswith("s3://"):
        raise ValueError(f"{text!r} is not an s3://<bucket>/<prefix> location")
    bucket, _, prefix = text.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"{text!r} names no bucket")
    return f"s3://{bucket}" + (f"/{prefix.strip('/')}" if prefix.strip("/") else "")
