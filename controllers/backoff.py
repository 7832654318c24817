"""The one backoff policy: exponential from ``base``, capped at ``cap``, spread by jitter.

Used by the work queue (failed reconciles), the informers (watch reconnects), the local
process supervisor (engine restarts) and the downloader (chunk retries), so "how long until
the next try" has one answer and one table test.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """``delay(n)`` for the n-th consecutive failure (1-based): ``base * 2**(n-1)`` capped at
    ``cap``, multiplied by a factor in ``[1 - spread, 1 + spread)`` and never above ``cap``."""

    base: float
    cap: float
    spread: float = 0.25

    def delay(self, failures: int, *, jitter: float | None = None) -> float:
        """Seconds to wait; ``jitter`` in [0, 1) for a reproducible answer (tests), else random."""
        if failures < 1:
            return 0.0
        raw = min(self.cap, self.base * 2.0 ** min(failures - 1, 62))
        draw = random.random() if jitter is None else jitter  # noqa: S311  jitter, not secrecy
        return min(self.cap, raw * (1 - self.spread + 2 * self.spread * draw))
