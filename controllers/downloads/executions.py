"""Where a download's worker runs, behind one protocol (docs/architecture.md decisions 3 and 7).

The download controller decides *what* should happen to a Weights; an :class:`Executor` makes
it happen in a runtime: an in-process task (``local``) or a Job (``kubernetes``). Each answers
:meth:`Executor.observe` with an :class:`Execution`, the runtime's account of the worker, which
the controller's pure plan reads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from storage.documents import ModelDocument, WeightsDocument

Credentials = Callable[[ModelDocument | None, WeightsDocument], Awaitable[dict[str, str]]]
"""The credentials of a download: the asking model's, else those stored with the weights."""


@dataclass(frozen=True, slots=True)
class Execution:
    """What the runtime says about the worker of one download attempt."""

    active: bool = False
    """A worker exists and has not ended."""
    failure: str | None = None
    """The worker ended, or cannot start, without recording an outcome: the reason."""
    note: str | None = None
    """The worker waits or retries for a reason worth showing (unschedulable, OOMKilled)."""
    stale: bool = False
    """A worker of an older attempt lingers (a Job left by a cancel, which bumps the attempt)."""


class Executor(Protocol):
    """Runs download workers for the controller."""

    def watch(self, notify: Callable[[str], None]) -> None:
        """Start reporting worker changes as owner ids to look at (a model's, or the weights'
        own for prefetched weights no model uses)."""

    async def close(self) -> None:
        """Stop everything started here (in-process workers stop; Jobs keep running)."""

    async def observe(self, weights: WeightsDocument) -> Execution:
        """The worker of the current attempt, as the runtime sees it."""

    async def launch(
        self, model: ModelDocument | None, weights: WeightsDocument
    ) -> Execution | None:
        """Start the worker of the current attempt (``model``: the one whose reconcile asks,
        None for prefetched weights on their own); idempotent. A returned Execution carries
        a failure that prevents it from starting."""

    async def halt(self, weights_id: str) -> None:
        """Stop every worker of this download and wait for it; idempotent."""

    async def release_all(self) -> None:
        """This replica stopped leading: stop workers that would otherwise run twice."""

    async def clean(self, weights: WeightsDocument, *, partials_only: bool) -> bool:
        """Remove a download's partials (or everything) where this process cannot reach the
        target itself; False when the caller should do it through the sink."""
