"""The gateway's failures, each answered in OpenAI's error shape (``{"error": {...}}``) with its
HTTP status by :mod:`modelplane.gateway_http`. A message never contains a credential."""

from __future__ import annotations


class GatewayError(Exception):
    """A failure answered in OpenAI's error shape. ``message`` never contains a credential."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        extra: dict[str, str | None] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.extra = extra or {}
        self.retry_after = retry_after

    def body(self) -> dict[str, object]:
        """``{"error": {"message", "type", "param", "code", ...}}``."""
        error: dict[str, object] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        error.update(self.extra)
        return {"error": error}


class BadRequest(GatewayError):
    """The body is not a JSON object with a string ``model``."""

    code = "invalid_body"


class Unauthenticated(GatewayError):
    """No credential, or one that is invalid, expired or revoked."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFound(GatewayError):
    """No live inference of that name in the caller's organisation."""

    status = 404
    code = "model_not_found"


class ModelNotRunning(GatewayError):
    """The inference is not RUNNING (or is disabled), or the model has none (phase null,
    reason ``NoInference``); ``extra`` has its phase."""

    status = 409
    code = "model_not_running"


class BodyTooLarge(GatewayError):
    """The request body is over ``max_body_bytes``."""

    status = 413
    code = "request_too_large"


class RateLimited(GatewayError):
    """Too many requests in the last minute, or too many in flight; see ``retry_after``."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class TooManyConcurrent(RateLimited):
    """The credential already has ``concurrency`` requests in flight."""

    code = "concurrency_limit_exceeded"


class UpstreamUnavailable(GatewayError):
    """The upstream could not be reached, or its credentials could not be read."""

    status = 502
    type = "upstream_error"
    code = "upstream_unavailable"


class UpstreamTimeout(GatewayError):
    """The upstream sent no response (or no next chunk) within the timeout."""

    status = 504
    type = "upstream_error"
    code = "upstream_timeout"
