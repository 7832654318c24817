"""The autoscaler's status as modelplane reads it (pure: controllers/runtimes/kubernetes/
autoscalers.py), table-tested with the JSON the API server sends."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from controllers.runtimes.kubernetes.autoscalers import (
    AIBRIX_NO_VALUE,
    autoscaler_status,
    parse_quantity,
)
from storage.documents import AutoscalerKind, AutoscalerStatus

HPA = AutoscalerKind.HORIZONTAL_POD_AUTOSCALER
AIBRIX = AutoscalerKind.AIBRIX_POD_AUTOSCALER
AT = "2026-12-05T21:00:00Z"
WHEN = datetime(2026, 12, 5, 21, 0, tzinfo=UTC)


def _cpu(utilization: int | None, value: str | None = None) -> dict[str, Any]:
    current: dict[str, Any] = {}
    if utilization is not None:
        current["averageUtilization"] = utilization
    if value is not None:
        current["averageValue"] = value
    return {"type": "Resource", "resource": {"name": "cpu", "current": current}}


def _pods(name: str, value: str) -> dict[str, Any]:
    return {"type": "Pods", "pods": {"metric": {"name": name}, "current": {"averageValue": value}}}


def _hpa(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "m"}, "status": status}


NOT_READ = "the HorizontalPodAutoscaler has not read {} yet"


@pytest.mark.parametrize(
    ("hpa", "pod_autoscaler", "metric", "expected"),
    [
        (None, None, "cpu", None),
        # Just applied: no status written yet.
        (_hpa(), None, "cpu", AutoscalerStatus(kind=HPA, value_message=NOT_READ.format("cpu"))),
        (
            _hpa(currentReplicas=2, desiredReplicas=3, lastScaleTime=AT, currentMetrics=[_cpu(73)]),
            None,
            "cpu",
            AutoscalerStatus(
                kind=HPA, current_value=73.0,
                last_scale_time=WHEN,
            ),
        ),
        # A pod metric's average value is a quantity.
        (
            _hpa(desiredReplicas=1, currentMetrics=[_pods("num_requests_running", "12500m")]),
            None,
            "num_requests_running",
            AutoscalerStatus(
                kind=HPA, current_value=12.5
            ),
        ),
        # Another metric's entry is not this one's value.
        (
            _hpa(desiredReplicas=1, currentMetrics=[_pods("other", "3")]),
            None,
            "num_requests_running",
            AutoscalerStatus(
                kind=HPA,
                value_message=NOT_READ.format("num_requests_running"),
            ),
        ),
        # cpu without a utilisation (an AverageValue target): the average value.
        (
            _hpa(desiredReplicas=1, currentMetrics=[_cpu(None, "250m")]),
            None,
            "cpu",
            AutoscalerStatus(kind=HPA, current_value=0.25),
        ),
        # No metric: the controller's own reason.
        (
            _hpa(
                currentReplicas=1,
                desiredReplicas=1,
                conditions=[
                    {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale"},
                    {
                        "type": "ScalingActive",
                        "status": "False",
                        "reason": "FailedGetResourceMetric",
                        "message": "no metrics returned from resource metrics API",
                    },
                ],
            ),
            None,
            "cpu",
            AutoscalerStatus(
                kind=HPA,
                value_message="FailedGetResourceMetric: no metrics returned from resource "
                "metrics API",
            ),
        ),
        # AIBrix: the last scale time, never a value (its status has none).
        (
            None,
            {"status": {"actualScale": 2, "desiredScale": 4, "lastScaleTime": AT}},
            "num_requests_running",
            AutoscalerStatus(
                kind=AIBRIX, last_scale_time=WHEN,
                value_message=AIBRIX_NO_VALUE,
            ),
        ),
        (None, {}, "x", AutoscalerStatus(kind=AIBRIX, value_message=AIBRIX_NO_VALUE)),
        # Both (AIBrix installed after an HPA was applied): AIBrix's is the one applied now.
        (
            _hpa(desiredReplicas=1),
            {"status": {"actualScale": 1, "desiredScale": 1}},
            "cpu",
            AutoscalerStatus(
                kind=AIBRIX,
                value_message=AIBRIX_NO_VALUE,
            ),
        ),
    ],
)  # fmt: skip
def test_autoscaler_status(
    hpa: dict[str, Any] | None,
    pod_autoscaler: dict[str, Any] | None,
    metric: str,
    expected: AutoscalerStatus | None,
) -> None:
    assert autoscaler_status(hpa, pod_autoscaler, metric) == expected


def test_hpas_that_may_not_be_read_are_said_and_do_not_hide_what_is_seen() -> None:
    refused = "listing horizontalpodautoscalers answered 403"
    unknown = autoscaler_status(None, None, "cpu", unreadable=refused)
    assert unknown is not None
    assert unknown.current_value is None
    assert unknown.value_message is not None
    assert refused in unknown.value_message
    assert "list and watch" in unknown.value_message
    assert autoscaler_status(None, None, "cpu") is None
    # an HPA or PodAutoscaler that is seen wins over the refusal
    seen = autoscaler_status(None, {"status": {}}, "cpu", unreadable=refused)
    assert seen == AutoscalerStatus(kind=AIBRIX, value_message=AIBRIX_NO_VALUE)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("40", 40.0),
        ("12500m", 12.5),
        ("1.5k", 1500.0),
        ("2Ki", 2048.0),
        ("1Gi", float(2**30)),
        ("3M", 3e6),
        (7, 7.0),
        ("", None),
        ("abc", None),
        (None, None),
        (True, None),
    ],
)
def test_parse_quantity(text: object, value: float | None) -> None:
    assert parse_quantity(text) == value
