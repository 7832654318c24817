"""Structured logs carry ids and never a secret."""

from __future__ import annotations

import io
import json
import logging

import pytest

from modelplane import logs


@pytest.fixture
def captured() -> logging.Logger:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.RedactingFilter())
    logger = logging.getLogger(f"test.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.stream = stream  # type: ignore[attr-defined]
    return logger


def lines(logger: logging.Logger) -> list[dict[str, object]]:
    text = logger.stream.getvalue()  # type: ignore[attr-defined]
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize(
    "secret",
    [
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
        "hf_AbCdEfGhIjKlMnOpQrStUv",
        "mongodb://user:p4ssw0rd@db:27017/",
        'secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"',
        "token=abcdef0123456789",
    ],
)
def test_secrets_are_redacted(captured: logging.Logger, secret: str) -> None:
    captured.info("calling upstream with %s", secret)
    message = str(lines(captured)[0]["message"])
    assert "[REDACTED]" in message
    for fragment in ("c2lnbmF0dXJl", "hf_AbCd", "p4ssw0rd", "wJalrXUtnFEMI", "abcdef0123456789"):
        assert fragment not in message


def test_request_and_reconcile_ids_are_attached(captured: logging.Logger) -> None:
    token = logs.request_id.set("req123")
    try:
        captured.info("hello", extra={"model_id": "model-abc12"})
    finally:
        logs.request_id.reset(token)
    token = logs.reconcile_id.set("rec9")
    try:
        captured.warning("again")
    finally:
        logs.reconcile_id.reset(token)
    first, second = lines(captured)
    assert first["request_id"] == "req123"
    assert first["model_id"] == "model-abc12"
    assert first["level"] == "info"
    assert "reconcile_id" not in first
    assert second["reconcile_id"] == "rec9"
    assert "request_id" not in second


def _fail() -> None:
    raise RuntimeError("failed with Bearer abcdefghijklmnop")


def test_tracebacks_are_redacted_too(captured: logging.Logger) -> None:
    try:
        _fail()
    except RuntimeError:
        captured.exception("boom")
    entry = lines(captured)[0]
    assert "abcdefghijklmnop" not in str(entry["exception"])
