"""The storage alert's one decision, pure: a location's stored alert state and a new measurement
in, the crossing (if any) out. Table-tested in ``tests/test_storage_alert_decide.py``.

::

    CLEAR --(used/total >= threshold)--> ALERTING --(used/total < threshold - hysteresis)--> CLEAR

Hysteresis keeps a location hovering at its threshold from flapping: it raises at the
threshold and clears only once usage is ``hysteresis`` (a fraction of capacity, 0.05 by
default: five points) below it. A location with no stored state is CLEAR. A measurement with no
capacity (a PVC never measured, a quota of 0) decides nothing, and a location that disappears
(its last weights deleted) keeps its state: there is nothing to measure it by.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_THRESHOLD = 0.85
DEFAULT_HYSTERESIS = 0.05


class Crossing(enum.StrEnum):
    """A change of a location's alert state (the ALERT event's ``phase`` is the state after)."""

    RAISED = "ALERTING"
    CLEARED = "CLEAR"


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """The threshold of each location (a default and per-location overrides, keyed as
    ``weightsUsage`` names the location) and the hysteresis below it."""

    threshold: float = DEFAULT_THRESHOLD
    overrides: Mapping[str, float] = field(default_factory=dict)
    hysteresis: float = DEFAULT_HYSTERESIS

    def threshold_for(self, location: str) -> float:
        """The usage fraction at which ``location`` alerts."""
        return self.overrides.get(location, self.threshold)


def decide(
    *, alerting: bool, used: int, total: int, threshold: float, hysteresis: float
) -> Crossing | None:
    """The crossing a measurement makes from the stored state, None when it makes none."""
    if total <= 0:
        return None
    fraction = used / total
    if not alerting and fraction >= threshold:
        return Crossing.RAISED
    if alerting and fraction < max(threshold - hysteresis, 0.0):
        return Crossing.CLEARED
    return None


def describe(location: str, crossing: Crossing, *, used: int, total: int, threshold: float) -> str:
    """The one-line message of a crossing (the event's message and the webhook's text)."""
    percent = 100 * used / total if total else 0.0
    if crossing is Crossing.RAISED:
        verdict = f"is over its alert threshold of {100 * threshold:g} %"
    else:
        verdict = f"is back under its alert threshold of {100 * threshold:g} %"
    return f"Storage {location} {verdict}: {percent:.1f} % used ({_size(used)} of {_size(total)})"


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{count} B"
        value /= 1024
    return f"{count} B"  # pragma: no cover  the loop always returns
