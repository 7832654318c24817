"""A refused request to the Kubernetes API server, as a typed controller error.

Classified where it happens, with the server's own words: 400, 403 (RBAC), 422 (validation)
and an admission webhook's or ValidatingAdmissionPolicy's denial are
:class:`~controllers.errors.PermanentError` (trying again unchanged cannot help); 409, 429,
5xx, timeouts and dropped connections are :class:`~controllers.errors.TemporaryError` (with the
server's Retry-After when it sent one).

Used by every Kubernetes request a controller makes: download Jobs
(:mod:`~controllers.runtimes.kubernetes.jobs`) and inference objects
(:mod:`~controllers.runtimes.kubernetes.inference`).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from controllers.errors import ControllerError, PermanentError, TemporaryError


def server_message(exc: ApiException) -> str:
    """The API server's own words: the Status object's ``message``, else the HTTP reason."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        body = json.loads(exc.body or b"")
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    return str(exc.reason or f"HTTP {exc.status}")


def refused(exc: Exception, what: str, *, verb: str = "apply") -> ControllerError:
    """A failed request to the API server as a typed controller error (module docstring);
    ``verb`` and ``what`` say which request (``apply``, ``Deployment inf-1``)."""
    if not isinstance(exc, ApiException):
        return TemporaryError(
            f"could not {verb} {what}: the API server did not answer ({type(exc).__name__})"
        )
    message = server_message(exc)
    said = f"the API server refused to {verb} {what} ({exc.status}): {message}"
    if exc.status in {400, 403, 422}:
        if "admission webhook" in message or "ValidatingAdmissionPolicy" in message:
            return PermanentError("AdmissionDenied", said)
        reason = {400: "BadRequest", 403: "Forbidden", 422: "Invalid"}[exc.status]
        return PermanentError(reason, said)
    delay: float | None = None
    headers: Any = exc.headers or {}
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        delay = float(headers.get("Retry-After"))
    return TemporaryError(
        f"the API server answered {exc.status} to {verb} {what}: {message}", delay=delay
    )
