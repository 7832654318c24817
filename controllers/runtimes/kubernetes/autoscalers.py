"""An inference's autoscaler status from what Kubernetes reports (pure, table-tested).

The organisation API's deployment status showed an autoscaled model's replicas and its metric;
modelplane showed the bounds and the Deployment's replicas, and ``currentValue`` was always
null. The autoscaler's own status says more, and the executor's informers cache it
(:mod:`controllers.runtimes.kubernetes.inference`), so reading it costs no request:

* an autoscaling/v2 **HorizontalPodAutoscaler** reports ``lastScaleTime`` and
  ``currentMetrics``, the metric as last read. The value is taken from the entry of the metric
  the inference scales on: ``averageUtilization`` for cpu/memory (a percent, the unit
  ``targetValue`` is given in), else ``averageValue`` (a quantity: ``12500m`` is 12.5). Until
  the HPA controller has read the metric -- no metrics server, no custom metrics adapter for a
  pod metric -- ``currentMetrics`` is empty and the ``ScalingActive`` condition is False with
  the controller's reason, which becomes the message saying why the value is unknown;
* an **AIBrix PodAutoscaler** (``autoscaling.aibrix.ai/v1alpha1``) reports ``actualScale``,
  ``desiredScale``, ``lastScaleTime`` and conditions, but no metric value (AIBrix keeps its
  metric windows in memory): the value stays None, with that said.

Both also report replica counts (``currentReplicas``/``desiredReplicas``, ``actualScale``/
``desiredScale``); they are not read. The autoscaler writes what it wants into the Deployment's
``spec.replicas`` at once, but refreshes its own copy only at its next sync (15 s): on the
testbed's full control plane an HPA still said 0/0 while its Deployment was 1/1 and RUNNING.
So ``Inference.autoscaling``'s replicas stay the Deployment's, fresh and the same as
``Inference.deployment``'s. Fields the autoscaler has not written are None, never 0.

Writing the result is the reconciler's, only when it changed: the HPA controller rewrites its
status at most once per sync period (15 s by default) and only on a change, so an autoscaled
inference under a varying load costs at most one document write per sync period.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from storage.documents import AutoscalerKind, AutoscalerStatus

Obj = dict[str, Any]

AIBRIX_NO_VALUE = (
    "AIBrix's PodAutoscaler status carries no metric value (AIBrix keeps its metric windows "
    "in memory)"
)
_SUFFIXES = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}


def parse_quantity(text: object) -> float | None:
    """A Kubernetes quantity (``12500m``, ``1.5k``, ``2Gi``, ``40``) as a number; None when
    it is not one."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    if not isinstance(text, str) or not text:
        return None
    number, factor = text, Decimal(1)
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix):
            number, factor = text[: -len(suffix)], _SUFFIXES[suffix]
            break
    try:
        return float(Decimal(number) * factor)
    except InvalidOperation:
        return None


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _metric_value(entry: Obj, metric: str) -> float | None:
    """The current value in one ``currentMetrics`` entry, if it is ``metric``'s."""
    kind = str(entry.get("type") or "")
    source = entry.get(kind[:1].lower() + kind[1:]) if kind else None
    if not isinstance(source, dict):
        return None
    name = source.get("name") or (source.get("metric") or {}).get("name")
    if name != metric:
        return None
    current = source.get("current") or {}
    if metric in {"cpu", "memory"} and current.get("averageUtilization") is not None:
        return parse_quantity(current["averageUtilization"])
    for key in ("averageValue", "value"):
        value = parse_quantity(current.get(key))
        if value is not None:
            return value
    return None


def _why_unknown(status: Obj, metric: str) -> str:
    for wanted in ("ScalingActive", "AbleToScale"):
        for condition in status.get("conditions") or []:
            if condition.get("type") == wanted and condition.get("status") == "False":
                reason = condition.get("reason") or wanted
                message = condition.get("message")
                return f"{reason}: {message}" if message else str(reason)
    return f"the HorizontalPodAutoscaler has not read {metric} yet"


def hpa_status(hpa: Obj, metric: str) -> AutoscalerStatus:
    """An autoscaling/v2 HorizontalPodAutoscaler's status, for an inference scaling on
    ``metric`` (``cpu``, ``memory`` or a pod metric's name)."""
    status = hpa.get("status") or {}
    value = None
    for entry in status.get("currentMetrics") or []:
        value = _metric_value(entry, metric)
        if value is not None:
            break
    return AutoscalerStatus(
        kind=AutoscalerKind.HORIZONTAL_POD_AUTOSCALER,
        current_value=value,
        value_message=None if value is not None else _why_unknown(status, metric),
        last_scale_time=_time(status.get("lastScaleTime")),
    )


def pod_autoscaler_status(autoscaler: Obj) -> AutoscalerStatus:
    """An AIBrix PodAutoscaler's status (its last scale time; it has no metric value)."""
    status = autoscaler.get("status") or {}
    return AutoscalerStatus(
        kind=AutoscalerKind.AIBRIX_POD_AUTOSCALER,
        current_value=None,
        value_message=AIBRIX_NO_VALUE,
        last_scale_time=_time(status.get("lastScaleTime")),
    )


def autoscaler_status(
    hpa: Obj | None, pod_autoscaler: Obj | None, metric: str, *, unreadable: str | None = None
) -> AutoscalerStatus | None:
    """The status of whichever autoscaler the inference has (AIBrix's when both exist: it is
    the one applied when AIBrix is installed); None when neither was observed, unless the HPAs
    may not be read (``unreadable``: why), which the status then says."""
    if pod_autoscaler is not None:
        return pod_autoscaler_status(pod_autoscaler)
    if hpa is not None:
        return hpa_status(hpa, metric)
    if unreadable is not None:
        return AutoscalerStatus(
            kind=AutoscalerKind.HORIZONTAL_POD_AUTOSCALER,
            value_message=f"modelplane may not watch HorizontalPodAutoscalers ({unreadable}); "
            "grant get, list and watch on them (the Helm chart's Role does)",
        )
    return None
