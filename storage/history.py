"""Stored history: the phase changes of models and weights and every download attempt.

The capped event log forgets; these do not (within their bounds). Each is written in the same
compare-and-set as the change it records, by :meth:`storage.collection.Repository.update`
asking the repository for the fields a change implies (:func:`model_history`,
:func:`weights_history`), so whoever writes a phase (a service, the download controller, a
worker in a Job's pod) records it, and the history can never disagree with the document.

Download attempts live on the weights document, not in a collection of their own: an attempt
starts when the weights enter PULLING and ends when they leave it (READY, FAILED, CANCELLED),
both in the one write that changes the state, and goes away with the weights; a bounded array
(:data:`ATTEMPTS_LIMIT`) keeps the document's size fixed. An attempt's bytes are those of its
last progress record (done less what was already stored when it began), so a resumed attempt
shows what it fetched itself; a runner that takes over the same attempt (its leader was
killed) counts from where the attempt began (``progress_baseline``), not from where it resumed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from storage.documents import (
    DownloadAttempt,
    ModelDocument,
    ModelPhase,
    ModelPhaseEntry,
    WeightsDocument,
    WeightsState,
    WeightsStateEntry,
)

HISTORY_LIMIT = 50
"""Phase (state) entries kept per model and per weights, like an inference's history."""
ATTEMPTS_LIMIT = 20
"""Download attempts kept per weights (the oldest are dropped)."""
CANCELLED_REASON = "cancelled"
"""The reason of a cancelled attempt whose write gave none (``cancelDownload``)."""


def model_history(
    current: ModelDocument, changes: Mapping[str, Any], at: datetime
) -> dict[str, Any]:
    """The ``phase_history`` a change of ``current`` implies (nothing when the phase stays)."""
    if "phase" not in changes:
        return {}
    phase = ModelPhase(changes["phase"])
    if phase is current.phase and current.phase_history:
        return {}
    entry = ModelPhaseEntry(phase=phase, entered_at=at, reason=changes.get("message"))
    history = [*current.phase_history, entry][-HISTORY_LIMIT:]
    return {"phase_history": [item.model_dump() for item in history]}


def weights_history(
    current: WeightsDocument, changes: Mapping[str, Any], at: datetime
) -> dict[str, Any]:
    """The ``state_history`` and ``attempts`` a change of ``current`` implies: entering
    PULLING opens an attempt, leaving it closes the open one with its outcome and bytes."""
    if "state" not in changes:
        return {}
    state = WeightsState(changes["state"])
    if state is current.state and current.state_history:
        return {}
    reason = changes.get("message")
    entry = WeightsStateEntry(state=state, entered_at=at, reason=reason)
    history = [*current.state_history, entry][-HISTORY_LIMIT:]
    attempts = list(current.attempts)
    if state is not WeightsState.PULLING and attempts and attempts[-1].ended_at is None:
        attempts[-1] = closed(attempts[-1], current, state, reason, at)
    if state is WeightsState.PULLING and current.state is not WeightsState.PULLING:
        number = int(changes.get("attempt", current.attempt))
        attempts.append(DownloadAttempt(attempt=number, started_at=at))
    return {
        "state_history": [item.model_dump() for item in history],
        "attempts": [item.model_dump() for item in attempts[-ATTEMPTS_LIMIT:]],
    }


def closed(
    attempt: DownloadAttempt,
    weights: WeightsDocument,
    outcome: WeightsState,
    reason: str | None,
    at: datetime,
) -> DownloadAttempt:
    """The open ``attempt`` ended at ``at`` with ``outcome``, its bytes from the progress."""
    if reason is None and outcome is WeightsState.CANCELLED:
        reason = CANCELLED_REASON
    return with_bytes(attempt, weights).model_copy(
        update={"ended_at": at, "outcome": outcome, "reason": reason}
    )


def with_bytes(attempt: DownloadAttempt, weights: WeightsDocument) -> DownloadAttempt:
    """``attempt`` with the bytes of the weights' progress, when this attempt wrote it."""
    progress = weights.progress
    if progress is None or weights.progress_attempt != attempt.attempt:
        return attempt
    resumed = progress.bytes_resumed
    if weights.progress_baseline is not None:
        resumed = min(resumed, weights.progress_baseline)
    return attempt.model_copy(
        update={
            "bytes_fetched": max(0, progress.bytes_done - resumed),
            "bytes_resumed": resumed,
        }
    )


def attempts_now(weights: WeightsDocument) -> list[DownloadAttempt]:
    """The attempts as they stand: the one in progress with its live bytes."""
    attempts = list(weights.attempts)
    if attempts and attempts[-1].ended_at is None:
        attempts[-1] = with_bytes(attempts[-1], weights)
    return attempts
