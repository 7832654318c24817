"""Removing what a download left: in-flight partials after a cancel, everything after a delete.

Done by the leading replica only, which runs the workers: it halts the worker first, so no
write races the removal. Targets this process reaches (local paths, S3) are cleaned through
their sink; the executor cleans the ones it alone reaches (a PVC or a node path on the
kubernetes runtime, with a short Job).

``deleteWeights`` marks the weights (:class:`~storage.documents.WeightsDeletion`) and waits for
the outcome; :meth:`Cleaner.remove` carries it out: files first, and only once they are gone
the models are detached and the record deleted (its DELETED event kept in the outbox first).
When the target refuses, everything is kept and the refusal is written into the mark for the
waiting call to report. A crash midway leaves the mark, and the next leader does it again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from controllers.downloads.executions import Credentials, Executor
from controllers.downloads.running import WeightsRuntimeConfig, make_sink, options_for, write_if
from controllers.errors import ControllerError, PermanentError
from controllers.transfer.sinks import DownloadError, Sink
from live import EventType, Recorder
from storage.documents import (
    ModelDocument,
    ModelPhase,
    WeightsDeletion,
    WeightsDocument,
)
from storage.errors import NotFound
from storage.repositories import LedgerRepository, ModelRepository, WeightsRepository

log = logging.getLogger(__name__)

DETACHED = "weights deleted; recreate the model to fetch them again"
Written = Callable[[ModelDocument | WeightsDocument, EventType], Awaitable[None]]
"""Records the event of one of the controller's own writes."""


def where(weights: WeightsDocument) -> str:
    """Where a download's files are, for messages: the S3 endpoint too (never a key)."""
    return weights.target.describe(weights.location)


class Cleaner:
    """Discards partials and removes weights, through the executor or the target's sink."""

    def __init__(
        self,
        *,
        models: ModelRepository,
        weights: WeightsRepository,
        ledgers: LedgerRepository,
        executor: Executor,
        secrets: Credentials,
        config: WeightsRuntimeConfig,
        recorder: Recorder,
        forget_credentials: Callable[[WeightsDocument], Awaitable[None]] | None = None,
    ) -> None:
        self._forget_credentials = forget_credentials
        self._models = models
        self._weights = weights
        self._ledgers = ledgers
        self._executor = executor
        self._secrets = secrets
        self._config = config
        self._record = recorder

    async def discard_partials_quietly(self, weights: WeightsDocument) -> None:
        """Remove in-flight parts (partial files, or S3 multipart uploads) of a stopped
        download. A target that cannot be reached keeps its parts and the ledgers that name
        them (a retry resumes or aborts them): the stop itself stands."""
        try:
            await self.discard_partials(weights)
        except (DownloadError, ControllerError) as exc:
            log.warning(
                "partial downloads could not be discarded",
                extra={"weights_id": weights.id, "reason": str(exc)},
            )

    async def discard_partials(self, weights: WeightsDocument) -> None:
        """Remove in-flight parts and forget the ledgers of a download."""
        stored = await self._ledgers.find(where={"weights_id": weights.id}, limit=10_000)
        if not await self._executor.clean(weights, partials_only=True):
            sink = await self._sink_for(weights)
            if sink is not None:
                await sink.discard_partials(stored.items)
        await self._ledgers.forget(weights.id)

    async def remove(self, weights: WeightsDocument, *, written: Written) -> None:
        """Carry out a removal ``deleteWeights`` asked for (module docstring)."""
        await self._executor.halt(weights.id)
        try:
            await self._remove_files(weights)
        except DownloadError as exc:
            await self._refuse(weights, f"{where(weights)}: {exc}", written)
            return
        except PermanentError as exc:
            await self._refuse(weights, exc.message, written)
            return
        for model_id in weights.model_ids:
            await self._detach(model_id, weights.id, written)
        if self._forget_credentials is not None:
            await self._forget_credentials(weights)  # before the record: the caller's answer
        await self._record.before_removal(weights)  # its DELETED event survives a crash
        await self._weights.delete(weights.id)
        await self._ledgers.forget(weights.id)
        await self._record.weights(weights, EventType.DELETED)
        log.info("weights removed", extra={"weights_id": weights.id})

    async def _remove_files(self, weights: WeightsDocument) -> None:
        """Delete a download's files (directory or S3 prefix)."""
        if await self._executor.clean(weights, partials_only=False):
            return
        sink = await self._sink_for(weights)
        if sink is not None:
            await sink.remove_all()

    async def _refuse(self, weights: WeightsDocument, reason: str, written: Written) -> None:
        """The target refused: keep everything, and say why in the mark (for the caller)."""
        log.warning("weights files could not be removed", extra={"weights_id": weights.id})
        request = weights.deletion.request if weights.deletion else ""
        refused = WeightsDeletion(request=request, refused=reason).model_dump(mode="python")

        def change(current: WeightsDocument) -> dict[str, object] | None:
            return {"deletion": refused} if current.deletion == weights.deletion else None

        try:
            kept = await write_if(self._weights, weights, change, event=EventType.UPDATED)
        except NotFound:
            return
        if kept is not None:
            await written(kept, EventType.UPDATED)

    async def _detach(self, model_id: str, weights_id: str, written: Written) -> None:
        """A model of removed weights: FAILED, pointing at nothing, asking to be recreated."""
        model = await self._models.get(model_id)
        if model is None or model.is_deleted:
            return

        def change(current: ModelDocument) -> dict[str, object] | None:
            if current.weights_id != weights_id or current.is_deleted:
                return None
            return {"weights_id": None, "phase": ModelPhase.FAILED, "message": DETACHED}

        try:
            detached = await write_if(self._models, model, change, event=EventType.PHASE_CHANGED)
        except NotFound:
            return
        if detached is not None:
            await written(detached, EventType.PHASE_CHANGED)

    async def _sink_for(self, weights: WeightsDocument) -> Sink | None:
        """The sink of a download, with credentials from its first model (None if unusable)."""
        model = await self._models.get(weights.model_ids[0]) if weights.model_ids else None
        secrets = await self._secrets(model, weights)
        try:
            return make_sink(
                weights,
                secrets=secrets,
                ledgers=self._ledgers,
                chunk_size=options_for(weights.target, self._config.options).chunk_size,
                pvc_mount_path=self._config.pvc_mount_path,
                outbound=self._config.outbound,
            )
        except (DownloadError, ValueError):
            return None
