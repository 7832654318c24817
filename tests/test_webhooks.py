"""The Slack-compatible webhook (``integrations/webhooks.py``) against a real HTTP receiver on
loopback (aiohttp, in the test's loop): receipt and its JSON body, a receiver answering 500
twice before 200 (retried, delivered once), one that hangs (each attempt times out, retried,
given up after N attempts with a logged error; no task left behind)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from integrations.webhooks import WebhookNotifier, WebhookPolicy, slack_message

Handler = Callable[["Receiver", web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Receiver:
    """A webhook receiver on a loopback port: the bodies of every request it received."""

    url: str = ""
    bodies: list[Any] = field(default_factory=list)
    received: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the receiver closes: a handler that hangs waits for it (no task outlives
    the test)."""


@asynccontextmanager
async def receiver(handle: Handler) -> AsyncIterator[Receiver]:
    state = Receiver()

    async def endpoint(request: web.Request) -> web.StreamResponse:
        state.bodies.append(json.loads(await request.read()))
        state.received.set()
        return await handle(state, request)

    app = web.Application()
    app.router.add_post("/services/T0/B0/secret-path", endpoint)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}/services/T0/B0/secret-path"
    try:
        yield state
    finally:
        state.release.set()
        await runner.cleanup()


async def ok(_state: Receiver, _request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok")


class Outcomes:
    """What the notifier reported per message."""

    def __init__(self) -> None:
        self.done: dict[Hashable, bool] = {}
        self.settled = asyncio.Event()

    async def __call__(self, key: Hashable, delivered: bool) -> None:
        self.done[key] = delivered
        self.settled.set()


FAST = WebhookPolicy(attempts=3, timeout=2.0, backoff_base=0.05, backoff_cap=0.2)


async def test_a_message_is_posted_as_slack_json() -> None:
    outcomes = Outcomes()
    async with receiver(ok) as hook:
        notifier = WebhookNotifier(hook.url, policy=FAST, delivered=outcomes)
        notifier.start()
        try:
            assert notifier.submit(("pvc://m", 1), "Storage pvc://m is over")
            assert not notifier.submit(("pvc://m", 1), "again")  # queued already: once
            await asyncio.wait_for(outcomes.settled.wait(), 10)
        finally:
            await notifier.stop()
    assert outcomes.done == {("pvc://m", 1): True}
    assert hook.bodies == [slack_message("Storage pvc://m is over")]
    (body,) = hook.bodies
    assert body["text"] == "Storage pvc://m is over"
    assert body["blocks"][0]["text"]["text"] == "Storage pvc://m is over"


async def test_a_receiver_failing_twice_gets_the_message_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def flaky(state: Receiver, _request: web.Request) -> web.StreamResponse:
        return web.Response(status=500 if len(state.bodies) <= 2 else 200)

    outcomes = Outcomes()
    caplog.set_level(logging.INFO, logger="integrations.webhooks")
    async with receiver(flaky) as hook:
        notifier = WebhookNotifier(hook.url, policy=FAST, delivered=outcomes)
        notifier.start()
        try:
            notifier.submit("k", "hello")
            await asyncio.wait_for(outcomes.settled.wait(), 10)
        finally:
            await notifier.stop()
    assert outcomes.done == {"k": True}
    assert len(hook.bodies) == 3  # two 500s, then the 200: delivered once
    retries = [r for r in caplog.records if r.getMessage().startswith("webhook attempt failed")]
    assert [r.failure for r in retries] == ["HTTP 500", "HTTP 500"]  # type: ignore[attr-defined]
    assert all(hook.url not in r.getMessage() for r in caplog.records)
    assert all("secret-path" not in str(r.__dict__) for r in caplog.records)


async def test_a_hanging_receiver_is_given_up_after_the_attempts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def hang(state: Receiver, _request: web.Request) -> web.StreamResponse:
        await state.release.wait()
        return web.Response()

    policy = WebhookPolicy(attempts=3, timeout=0.3, backoff_base=0.05, backoff_cap=0.1)
    outcomes = Outcomes()
    caplog.set_level(logging.INFO, logger="integrations.webhooks")
    async with receiver(hang) as hook:
        notifier = WebhookNotifier(hook.url, policy=policy, delivered=outcomes)
        notifier.start()
        started = time.monotonic()
        try:
            notifier.submit("k", "hello")
            await asyncio.wait_for(outcomes.settled.wait(), 30)
        finally:
            await notifier.stop()
        took = time.monotonic() - started
    print(f"three hanging attempts of 0.3 s given up after {took:.2f} s")  # noqa: T201  the measured figure
    assert outcomes.done == {"k": False}
    assert len(hook.bodies) == 3
    assert took < 20
    (given_up,) = [r for r in caplog.records if r.getMessage() == "webhook message given up"]
    assert given_up.levelno == logging.ERROR
    assert given_up.attempts == 3  # type: ignore[attr-defined]
    assert given_up.failure == "timeout"  # type: ignore[attr-defined]


async def test_stop_cancels_a_delivery_in_flight() -> None:
    async def hang(state: Receiver, _request: web.Request) -> web.StreamResponse:
        await state.release.wait()
        return web.Response()

    outcomes = Outcomes()
    async with receiver(hang) as hook:
        notifier = WebhookNotifier(hook.url, policy=WebhookPolicy(timeout=60), delivered=outcomes)
        notifier.start()
        notifier.submit("k", "hello")
        await asyncio.wait_for(hook.received.wait(), 10)
        await notifier.stop()  # the attempt in flight is cancelled, nothing settled
        await notifier.stop()  # idempotent
    assert outcomes.done == {}


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = WebhookPolicy(backoff_base=1.0, backoff_cap=5.0)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_webhook_urls_are_redacted_from_logs() -> None:
    from modelplane.logs import redact

    line = "posting to https://hooks.slack.com/services/T000/B000/XXXXsecret now"
    assert "XXXXsecret" not in redact(line)
    assert "abcsecret" not in redact("to https://discord.com/api/webhooks/123/abcsecret")
