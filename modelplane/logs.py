"""Structured logging: one JSON object per line, with the request or reconcile id attached.

Ids travel in context variables, so any log call made while serving a request (or running a
reconcile) carries them without threading them through every signature. A redaction filter
scrubs anything shaped like a bearer token, a Hugging Face token, a modelplane API key or an
AWS secret from the message and its arguments before a handler sees it: secrets must never
reach a log line (docs/architecture.md decision 6), even by accident.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from controllers.ids import reconcile_id

__all__ = ["configure_logging", "reconcile_id", "redact", "request_id"]

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_SECRET_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\bhf_[A-Za-z0-9]{8,}"),
    re.compile(r"\bmp_[A-Za-z0-9_-]{16,}"),  # modelplane API keys (services/api_keys.py)
    re.compile(
        r"(?i)([\w-]*(?:secret|token|password|passwd|api[_-]?key)[\w-]*[\"']?\s*[:=]\s*[\"']?)"
        r"[^\s\"',}]+"
    ),
    re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
    re.compile(r"(mongodb(?:\+srv)?://[^:/@\s]+:)[^@\s]+(@)"),
    # incoming-webhook URLs are their own credential (MODELPLANE_STORAGE_ALERT_WEBHOOK_URL)
    re.compile(r"(https?://hooks\.slack\.com/)[^\s\"']+"),
    re.compile(r"(https?://[^/\s]+/api/webhooks/)[^\s\"']+"),
]
REDACTED = "[REDACTED]"


def redact(text: str) -> str:
    """Replace every secret-looking substring of ``text`` with ``[REDACTED]``."""
    for pattern in _SECRET_PATTERNS:
        if pattern.groups >= 2:
            text = pattern.sub(lambda m: f"{m.group(1)}{REDACTED}{m.group(2)}", text)
        elif pattern.groups == 1:
            text = pattern.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
        else:
            text = pattern.sub(REDACTED, text)
    return text


class RedactingFilter(logging.Filter):
    """Renders the message once and scrubs secrets from it (and from any traceback text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, ids, and ``extra`` fields."""

    _RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {
        "message",
        "asctime",
        "taskName",
    }

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (rid := request_id.get()) is not None:
            entry["request_id"] = rid
        if (cid := reconcile_id.get()) is not None:
            entry["reconcile_id"] = cid
        for key, value in vars(record).items():
            if key not in self._RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class ConsoleFormatter(logging.Formatter):
    """Human-readable lines for a terminal, ids in brackets."""

    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(
            f"{name}={value}"
            for name, value in (("req", request_id.get()), ("rec", reconcile_id.get()))
            if value is not None
        )
        line = f"{record.levelname.lower():<7} {record.name}: {record.getMessage()}"
        if ids:
            line = f"{line} [{ids}]"
        if record.exc_info:
            line = f"{line}\n{redact(self.formatException(record.exc_info))}"
        return line


def configure_logging(*, level: str = "INFO", fmt: str = "json") -> None:
    """Route every logger (ours, uvicorn's, the drivers') through one redacting handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    quiet_wire_loggers()


WIRE_LOGGERS = (
    "kubernetes_asyncio",
    "pymongo",
    "botocore",
    "aiobotocore",
    "httpx",
    "httpx2",
    "httpcore",
    "httpcore2",
    "huggingface_hub",
    "urllib3",
)


def quiet_wire_loggers() -> None:
    """Cap client libraries at WARNING, whatever the root level: at DEBUG they log request
    and response bodies (a Kubernetes Secret's data, Authorization headers) verbatim."""
    for name in WIRE_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
