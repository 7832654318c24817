"""A Slack-compatible webhook: each message POSTed as ``{"text": ..., "blocks": [...]}``, with
retries, never blocking whoever hands it a message.

:class:`WebhookNotifier` owns one task that delivers its queue in order. Each attempt has its
own timeout (a receiver that hangs costs ``timeout`` and is tried again); a failed attempt (a
timeout, a dropped connection, any answer but 2xx) is retried after an exponential backoff
(``base * 2**n``, capped at ``cap``), up to ``attempts`` in all, then given up with one logged
error. ``submit`` only queues. ``stop`` cancels the task and the attempt in flight.

The URL is a secret (a Slack webhook URL is its own credential): it is never logged, and the
errors logged name only the attempt, the status or the exception's type. Delivery is at least
once: a process killed after the receiver took a message but before ``delivered`` ran sends it
again from the next leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

import httpx

log = logging.getLogger(__name__)

Done = Callable[[Hashable, bool], Awaitable[None]]
"""Called after each message with its key and whether the receiver took it (False: given up)."""


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    """How hard to try one message."""

    attempts: int = 5
    timeout: float = 10.0
    """Seconds one attempt (connect, send, answer) may take."""
    backoff_base: float = 1.0
    backoff_cap: float = 60.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed attempts."""
        return float(min(self.backoff_cap, self.backoff_base * 2 ** (failures - 1)))


def slack_message(text: str) -> dict[str, object]:
    """The JSON body Slack's incoming webhooks (and Mattermost, Rocket.Chat...) accept."""
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


class WebhookNotifier:
    """Delivers messages to one webhook URL from one owned task."""

    def __init__(self, url: str, *, policy: WebhookPolicy, delivered: Done) -> None:
        self._url = url
        self._policy = policy
        self._delivered = delivered
        self._queue: asyncio.Queue[tuple[Hashable, str]] = asyncio.Queue()
        self._pending: set[Hashable] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the delivering task (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="webhook-notifier")

    def submit(self, key: Hashable, text: str) -> bool:
        """Queue ``text`` under ``key`` unless that key is queued or in flight; never waits.
        True when queued now."""
        if key in self._pending:
            return False
        self._pending.add(key)
        self._queue.put_nowait((key, text))
        return True

    def drop_queued(self) -> None:
        """Forget the messages not yet started (this replica stopped leading: the new leader
        sends what is still owed)."""
        while not self._queue.empty():
            key, _ = self._queue.get_nowait()
            self._pending.discard(key)

    async def stop(self) -> None:
        """Cancel the task and the attempt in flight; idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=self._policy.timeout) as client:
            while True:
                key, text = await self._queue.get()
                try:
                    ok = await self._deliver(client, text)
                    await self._delivered(key, ok)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug or the database: logged, the message stays owed
                    log.exception("webhook message not settled")
                finally:
                    self._pending.discard(key)
                _raise_if_cancelled()  # PyMongo may have swallowed a stop during ``delivered``

    async def _deliver(self, client: httpx.AsyncClient, text: str) -> bool:
        """Try the message up to ``attempts`` times; True once a 2xx answers."""
        policy = self._policy
        body = slack_message(text)
        for attempt in range(1, policy.attempts + 1):
            failure = await self._attempt(client, body)
            if failure is None:
                log.info("webhook message delivered", extra={"attempt": attempt})
                return True
            if attempt == policy.attempts:
                log.error(
                    "webhook message given up",
                    extra={"attempts": attempt, "failure": failure},
                )
                return False
            delay = policy.delay(attempt)
            log.warning(
                "webhook attempt failed; retrying",
                extra={"attempt": attempt, "failure": failure, "retry_in": delay},
            )
            await asyncio.sleep(delay)
        return False  # pragma: no cover  attempts >= 1

    async def _attempt(self, client: httpx.AsyncClient, body: dict[str, object]) -> str | None:
        """None when the receiver answered 2xx, else what went wrong (never the URL)."""
        try:
            async with asyncio.timeout(self._policy.timeout):
                response = await client.post(self._url, json=body)
        except TimeoutError:
            return "timeout"
        except httpx.HTTPError as exc:
            return type(exc).__name__
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"


def _raise_if_cancelled() -> None:
    """As ``storage/cancellation.py`` (which this layer does not import): a cancellation a
    library swallowed while ``delivered`` wrote to the database ends the task all the same."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
