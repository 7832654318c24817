"""Controller errors say whether trying again can help (docs/architecture.md, "Errors").

Raised at the boundaries a reconcile crosses (the hub, S3, Kubernetes, local processes) with
``raise ... from`` so the cause stays attached:

* :class:`TemporaryError` -- the same call may succeed later (a timeout, a 5xx, a 409, a
  connection refused). The reconciler keeps the phase, says in the status message what
  happened and when it retries, and the work queue requeues the key after ``delay`` (or its
  own backoff when the raiser has no better idea).
* :class:`PermanentError` -- trying again without a change by a person cannot help (a 403
  from RBAC, a 422 from validation or an admission webhook, a repo that does not exist). The
  reconciler writes FAILED with ``reason`` and the server's own words once; the work queue
  does not retry. A person's change (an update, ``retryDownload``, a new start) requeues it.

Anything else escaping a reconcile is a bug: the queue logs it with its traceback and retries
with backoff, as for a temporary error.
"""

from __future__ import annotations


class ControllerError(Exception):
    """A failure a reconcile knows how to report; ``message`` is what the user reads."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TemporaryError(ControllerError):
    """Worth retrying unchanged; ``delay`` seconds when the raiser knows (Retry-After)."""

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(ControllerError):
    """Not worth retrying until something changes; ``reason`` is a short CamelCase word
    (``Forbidden``, ``Invalid``, ``RepositoryNotFound``) written into status."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def retry_message(message: str, delay: float) -> str:
    """The status message of a temporary failure: what happened and when it is tried again."""
    return f"{message}; retrying in {delay:.0f} s" if delay >= 1 else f"{message}; retrying"
