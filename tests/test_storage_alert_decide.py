"""The storage alert's pure decision (``controllers/alerts/deciding.py``) and the measuring of
locations (``controllers/alerts/measuring.py``), table by table."""

from __future__ import annotations

from pathlib import Path

import pytest

from controllers.alerts.deciding import AlertPolicy, Crossing, decide, describe
from controllers.alerts.measuring import measure, normalise_s3_location
from storage.documents import (
    LocalTarget,
    PvcTarget,
    S3Target,
    TargetKind,
    VolumeUsage,
    WeightsDocument,
    WeightsFile,
    WeightsState,
)

T, H = 0.85, 0.05


@pytest.mark.parametrize(
    ("alerting", "used", "total", "expected"),
    [
        (False, 10, 100, None),  # well under
        (False, 84, 100, None),  # just under
        (False, 85, 100, Crossing.RAISED),  # at the threshold: raises
        (False, 99, 100, Crossing.RAISED),
        (False, 100, 100, Crossing.RAISED),  # full
        (True, 99, 100, None),  # still over: no repeat
        (True, 85, 100, None),  # at the threshold: still alerting
        (True, 84, 100, None),  # inside the hysteresis band: no flap
        (True, 80, 100, None),  # at threshold - hysteresis: not yet below it
        (True, 79, 100, Crossing.CLEARED),  # below the band: clears
        (True, 0, 100, Crossing.CLEARED),
        (False, 50, 0, None),  # no capacity known (a quota of 0, a PVC never measured)
        (True, 50, 0, None),  # ... decides nothing, either way
        (False, 0, 100, None),
    ],
)
def test_decide(alerting: bool, used: int, total: int, expected: Crossing | None) -> None:
    found = decide(alerting=alerting, used=used, total=total, threshold=T, hysteresis=H)
    assert found is expected


@pytest.mark.parametrize(
    ("threshold", "hysteresis", "alerting", "used", "expected"),
    [
        (1.0, 0.05, False, 99, None),  # threshold 1: only a full location alerts
        (1.0, 0.05, False, 100, Crossing.RAISED),
        (0.03, 0.05, True, 1, None),  # the band reaches below 0: floor 0, never clears at >0
        (0.03, 0.05, True, 0, None),  # 0 is not below 0
        (0.5, 0.0, True, 49, Crossing.CLEARED),  # no hysteresis: clears just under
        (0.5, 0.0, True, 50, None),
    ],
)
def test_decide_edges(
    threshold: float, hysteresis: float, alerting: bool, used: int, expected: Crossing | None
) -> None:
    found = decide(
        alerting=alerting, used=used, total=100, threshold=threshold, hysteresis=hysteresis
    )
    assert found is expected


def test_policy_overrides_per_location() -> None:
    policy = AlertPolicy(threshold=0.9, overrides={"pvc://models": 0.5})
    assert policy.threshold_for("pvc://models") == 0.5
    assert policy.threshold_for("/srv/models") == 0.9


def test_describe_says_where_how_full_and_which_way() -> None:
    up = describe(
        "pvc://models", Crossing.RAISED, used=90 * 2**30, total=100 * 2**30, threshold=0.85
    )
    assert up == (
        "Storage pvc://models is over its alert threshold of 85 %: 90.0 % used "
        "(90.0 GiB of 100.0 GiB)"
    )
    down = describe("/m", Crossing.CLEARED, used=512, total=1024, threshold=0.9)
    assert "back under its alert threshold of 90 %" in down
    assert "50.0 %" in down


def _weights(
    org: str, target: object, location: str, size: int, **extra: object
) -> WeightsDocument:
    return WeightsDocument.model_validate(
        {
            "_id": f"w-{org}-{location}",
            "organization_id": org,
            "repo_id": "org/repo",
            "commit_sha": "a" * 40,
            "target": target,
            "location": location,
            "state": WeightsState.READY,
            "files": [WeightsFile(path="model.bin", size=size, sha256="0" * 64)],
            **extra,
        }
    )


def test_measure_every_location_kind(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "a").mkdir(parents=True)
    s3 = S3Target(bucket="weights", prefix="team", access_key_id="k")
    pvc = PvcTarget(claim_name="models")
    ready = [
        _weights("org-a", LocalTarget(local_path=str(root / "a")), str(root / "a"), 100),
        _weights("org-b", LocalTarget(local_path=str(root / "b")), str(root / "b"), 7),
        _weights("org-a", s3, "s3://weights/team/org/repo/aaa", 300),
        _weights("org-b", s3, "s3://weights/team/other/repo/bbb", 200),
        _weights("org-b", s3, "s3://weights/teamster/x/y", 999),  # not under s3://weights/team
        _weights(
            "org-b",
            pvc,
            "pvc://models/x",
            40,
            volume=VolumeUsage(used=600, free=400, total=1000),
        ),
    ]
    quotas = {"s3://weights/team": 1000, "s3://empty": 10}

    def fake_disk(path: Path) -> tuple[int, int, int]:
        assert path == root
        return 1000, 900, 100

    every = measure(ready, roots=[root, tmp_path / "absent"], s3_quotas=quotas, usage=fake_disk)
    by_root = {u.root: u for u in every}
    assert set(by_root) == {str(root), "pvc://models", "s3://weights/team", "s3://empty"}
    local = by_root[str(root)]
    assert (local.kind, local.used, local.total, local.weights_bytes) == (
        TargetKind.LOCAL,
        900,
        1000,
        107,
    )
    assert local.fraction == 0.9
    bucket = by_root["s3://weights/team"]
    assert (bucket.kind, bucket.used, bucket.free, bucket.total) == (TargetKind.S3, 500, 500, 1000)
    assert by_root["s3://empty"].used == 0
    assert by_root["pvc://models"].used == 600

    # one organisation: its own weights bytes; the figures of the shared places unchanged;
    # a PVC holding none of its weights is not listed
    mine = {
        u.root: u
        for u in measure(
            ready, roots=[root], s3_quotas=quotas, organization_id="org-a", usage=fake_disk
        )
    }
    assert set(mine) == {str(root), "s3://weights/team", "s3://empty"}
    assert mine[str(root)].weights_bytes == 100
    assert (mine["s3://weights/team"].used, mine["s3://weights/team"].weights_bytes) == (500, 300)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s3://bucket", "s3://bucket"),
        ("s3://bucket/", "s3://bucket"),
        ("s3://bucket/a/b/", "s3://bucket/a/b"),
        ("https://bucket/a", None),
        ("s3:///a", None),
    ],
)
def test_s3_locations(text: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="s3://"):
            normalise_s3_location(text)
    else:
        assert normalise_s3_location(text) == expected
