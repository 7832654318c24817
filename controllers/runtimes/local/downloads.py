"""The local runtime's download workers: one supervised in-process task per downloading Weights.

An :class:`~controllers.downloads.executions.Executor` for the leading process: each task runs
:func:`~controllers.downloads.running.run_weights` and, when it ends however it ends, tells the
controller which models to look at again (the executor's watch, a backstop beside the event
log). Tasks are owned here and cancelled by :meth:`LocalExecutor.halt` and on loss of the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from controllers.downloads.executions import Credentials, Execution
from controllers.downloads.running import WeightsRuntimeConfig, run_weights
from live import Recorder
from storage.documents import ModelDocument, WeightsDocument
from storage.repositories import LedgerRepository, WeightsRepository


class LocalExecutor:
    """The local runtime's workers: one supervised in-process task per downloading Weights."""

    def __init__(
        self,
        *,
        weights: WeightsRepository,
        ledgers: LedgerRepository,
        secrets: Credentials,
        config: WeightsRuntimeConfig,
        recorder: Recorder | None = None,
    ) -> None:
        self._recorder = recorder
        self._weights = weights
        self._ledgers = ledgers
        self._secrets = secrets
        self._config = config
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._notify: Callable[[str], None] = lambda _model_id: None

    def watch(self, notify: Callable[[str], None]) -> None:
        self._notify = notify

    async def observe(self, weights: WeightsDocument) -> Execution:
        task = self._runners.get(weights.id)
        return Execution(active=task is not None and not task.done())

    async def launch(
        self, model: ModelDocument | None, weights: WeightsDocument
    ) -> Execution | None:
        if (await self.observe(weights)).active:
            return None
        self._runners[weights.id] = asyncio.create_task(
            self._run(model, weights), name=f"download:{weights.id}"
        )
        return None

    async def _run(self, model: ModelDocument | None, weights: WeightsDocument) -> None:
        secrets = await self._secrets(model, weights)
        try:
            await run_weights(
                weights.id,
                weights=self._weights,
                ledgers=self._ledgers,
                secrets=secrets,
                config=self._config,
                recorder=self._recorder,
            )
        finally:
            self._runners.pop(weights.id, None)
            current = await self._weights.get(weights.id)
            owners = current.model_ids if current is not None else weights.model_ids
            for owner in owners or [weights.id]:  # prefetched weights are their own owner
                self._notify(owner)

    async def halt(self, weights_id: str) -> None:
        task = self._runners.pop(weights_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def release_all(self) -> None:
        for weights_id in list(self._runners):
            await self.halt(weights_id)

    async def clean(self, weights: WeightsDocument, *, partials_only: bool) -> bool:
        del weights, partials_only  # this process reaches every local target: sinks do it
        return False

    async def close(self) -> None:
        await self.release_all()
