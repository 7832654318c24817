"""The download controller: moves LOCAL models PENDING -> PULLING -> READY (or FAILED).

Level-triggered (docs/architecture.md decision 4). A work queue keyed by model id (and by
:func:`~controllers.downloads.plan.weights_key` for work on a weights document alone) is fed by
the event log (:meth:`DownloadController.on_event`, wired to every replica's broker: a mutation
taken by a replica that does not lead reaches the leader within the log's polling delay), by
the executor's watch (a worker ended) and by a periodic resync, the backstop. Services never
call it: they write the document, append its event and return; ``cancelDownload`` writes
CANCELLED and this controller halts the worker and discards its partials; ``deleteWeights``
marks the weights and this controller halts, removes the files, detaches the models and
deletes the record, or writes why the target refused.

Each reconcile re-reads, decides with the pure functions of :mod:`controllers.downloads.plan`,
applies idempotently and writes status only on change. Failures at the boundaries are typed
(:mod:`controllers.errors`): a hub 5xx keeps the model PENDING and says when it retries; a 404
fails it once. Events of this controller's own writes are not acted on again: it already did,
and re-queueing its key at once would skip the backoff of a failing reconcile.
"""

from __future__ import annotations

import contextlib
import logging

from controllers.downloads.executions import Execution, Executor
from controllers.downloads.plan import (
    DOWNLOADING,
    STOPPED_BY_DELETE,
    Action,
    WeightsAction,
    drives_itself,
    hub_failure,
    model_status,
    plan,
    plan_weights,
    restarts_on_attach,
    weights_id_of,
    weights_key,
)
from controllers.downloads.removing import Cleaner
from controllers.downloads.running import (
    WeightsRuntimeConfig,
    finish,
    weights_location,
    write_if,
)
from controllers.errors import PermanentError, TemporaryError, retry_message
from controllers.looping import ControllerLoop, OwnWrites
from controllers.runtimes.local.downloads import LocalExecutor
from controllers.runtimes.secrets import HF_TOKEN_KEY, SecretStore, SecretStoreError, secret_name
from integrations.huggingface import HubClient, HubError
from live import Event, EventType, Recorder, ResourceKind, event_key
from storage.documents import (
    AccessMode,
    ModelDocument,
    ModelPhase,
    WeightsDocument,
    WeightsFile,
    WeightsState,
    new_id,
)
from storage.errors import DuplicateKey, NotFound
from storage.repositories import (
    LeaseRepository,
    LedgerRepository,
    ModelRepository,
    WeightsRepository,
)

log = logging.getLogger(__name__)

RESYNC_SECONDS = 15.0
WEIGHTS_ID_PREFIX = "weights-"
"""Weights ids start so (``new_id("weights")``); model ids do not."""
LEASE_SECONDS = 15.0
LEASE_NAME = "download-controller"


def event_keys(event: Event) -> list[str]:
    """The queue keys an event of the log asks to look at (pure): a model's creation, phase
    change (``retryDownload``) or deletion, and a download's state changes (for the weights
    themselves and for each model listing them). Progress is not a change of anything this
    controller decides on, nor is a model's UPDATED (catalogue fields, resources, or its
    inference's phase mirrored onto it): reconciling on those read every serving model's Job
    from the API server at each phase change of its inference (``bench/controllers.py``: 181
    Job lists while 100 inferences started)."""
    if event.type is EventType.PROGRESS:
        return []
    if event.resource_kind is ResourceKind.MODEL:
        return [] if event.type is EventType.UPDATED else [event.resource_id]
    if event.resource_kind is ResourceKind.WEIGHTS:
        return [weights_key(event.resource_id), *event.model_ids]
    return []


class DownloadController:
    """Owns the work queue, the resync loop and the leadership loop; workers run through an
    :class:`~controllers.downloads.executions.Executor` (in-process tasks or Jobs)."""

    def __init__(
        self,
        *,
        models: ModelRepository,
        weights: WeightsRepository,
        ledgers: LedgerRepository,
        secrets: SecretStore,
        hub: HubClient,
        config: WeightsRuntimeConfig,
        executor: Executor | None = None,
        recorder: Recorder | None = None,
        leases: LeaseRepository | None = None,
        holder: str = "",
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self._models = models
        self._weights = weights
        self._secrets = secrets
        self._hub = hub
        self._record = recorder or Recorder(None)
        self._executor: Executor = executor or LocalExecutor(
            weights=weights,
            ledgers=ledgers,
            secrets=self._secret_values,
            config=config,
            recorder=self._record,
        )
        self._cleaner = Cleaner(
            models=models,
            weights=weights,
            ledgers=ledgers,
            executor=self._executor,
            secrets=self._secret_values,
            config=config,
            recorder=self._record,
            forget_credentials=self._forget_own_secret,
        )
        self._own = OwnWrites()
        self._loop = ControllerLoop(
            self.reconcile,
            name="downloads",
            workers=2,
            leases=leases,
            lease_name=LEASE_NAME,
            holder=holder or f"controller-{id(self):x}",
            lease_seconds=lease_seconds,
            resync=self.resync,
            resync_seconds=RESYNC_SECONDS,
            on_loss=self._executor.release_all,
        )
        self._queue = self._loop.queue

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start workers, the watch, the resync loop and (with leases) the leadership loop."""
        self._executor.watch(self.notify)
        self._loop.start()

    @property
    def leading(self) -> bool:
        """True while this replica holds the controllers' lease (or runs without leases)."""
        return self._loop.leading

    async def stop(self) -> None:
        """Cancel everything this controller started; downloads resume on the next start."""
        await self._loop.stop()
        await self._executor.close()

    def on_event(self, event: Event) -> None:
        """An event of the log (any replica's write): queue what it asks to look at. Cheap,
        never raises (a broker listener); a replica that does not lead drops the keys."""
        if not self.leading or event.key in self._own:
            return
        for key in event_keys(event):
            self._queue.add(key)

    def resync_soon(self) -> None:
        """The log lost events before this replica read them: look at everything now."""
        self._loop.resync_soon()

    def notify(self, owner_id: str) -> None:
        """A worker changed (the executor's watch): look at its owner soon, a model or, for
        prefetched weights no model uses, the weights themselves."""
        prefetched = owner_id.startswith(WEIGHTS_ID_PREFIX)
        self._queue.add(weights_key(owner_id) if prefetched else owner_id)

    async def wait_idle(self) -> None:
        """For tests: until the queue has drained."""
        await self._queue.wait_idle()

    async def running(self, weights: WeightsDocument) -> bool:
        """True while a worker downloads these weights."""
        return (await self._executor.observe(weights)).active

    # -- reconcile ----------------------------------------------------------------------

    async def reconcile(self, key: str) -> float | None:
        """Re-read, plan, apply. Returns when to look again, if ever."""
        if not self.leading:
            return None  # the leader's resync picks the model up
        weights_id = weights_id_of(key)
        if weights_id is not None:
            await self._reconcile_weights(weights_id)
            return None
        await self._reconcile_model(key)
        return None

    async def _reconcile_weights(self, weights_id: str) -> None:
        """A removal, or the download of prefetched weights that no model uses."""
        current = await self._weights.get(weights_id)
        if current is None:
            return
        alone = drives_itself(current)
        execution = await self._executor.observe(current) if alone else None
        action = plan_weights(current, execution)
        if action is WeightsAction.REMOVE:
            await self._cleaner.remove(current, written=self._mine)
            return
        if isinstance(action, Action) and execution is not None:
            await self._apply(action, None, current, execution)

    async def _forget_own_secret(self, weights: WeightsDocument) -> None:
        """Removed weights take the credentials stored for them (prefetched) along."""
        if weights.secret_ref is None or weights.secret_ref != secret_name(weights.id):
            return
        try:
            await self._secrets.delete(weights.secret_ref)
        except SecretStoreError:
            log.warning(
                "the weights' credentials could not be removed", extra={"weights_id": weights.id}
            )

    async def _reconcile_model(self, model_id: str) -> None:
        model = await self._models.get(model_id)
        weights = await self._weights_of(model)
        execution = await self._executor.observe(weights) if weights is not None else Execution()
        action = plan(model, weights, execution)
        if action in (Action.RELEASE, Action.STOP) and model is not None and weights is not None:
            await self._release(model, weights, stop=action is Action.STOP)
            return
        if action in (Action.NOTHING, Action.FORGET) or model is None:
            return
        if action is Action.CREATE_WEIGHTS:
            model, weights = await self._attach_weights(model)
            execution = await self._executor.observe(weights)
            action = plan(model, weights, execution)
            if action in (Action.RELEASE, Action.STOP):  # deleted while being attached
                await self._release(model, weights, stop=action is Action.STOP)
                return
            if action in (Action.NOTHING, Action.FORGET):
                return
        assert weights is not None  # noqa: S101  every remaining action has weights
        try:
            current = await self._apply(action, model, weights, execution)
        except TemporaryError:
            current = await self._weights.get(weights.id)  # its message says when it retries
            if current is not None:
                await self._mirror(model, current)
            raise
        if current is not None:
            await self._mirror(model, current)

    async def _weights_of(self, model: ModelDocument | None) -> WeightsDocument | None:
        """The weights the model points at; for a deleted model pointing at none, weights
        that still list it (it was deleted between being listed and pointed at them)."""
        if model is None:
            return None
        if model.weights_id:
            return await self._weights.get(model.weights_id)
        if model.is_deleted:
            return await self._weights.find_one(where={"model_ids": model.id})
        return None

    async def _apply(
        self,
        action: Action,
        model: ModelDocument | None,
        weights: WeightsDocument,
        execution: Execution,
    ) -> WeightsDocument | None:
        """Carry out START, FAIL, CANCEL, HALT or MIRROR for a model's download (``model``
        None: prefetched weights on their own); the weights as they are afterwards."""
        if action is Action.START:
            weights = await self._pulling(weights)
            refused = await self._launch(model, weights)
            if refused is None or refused.failure is None:
                return weights
            action, execution = Action.FAIL, refused
        if action is Action.FAIL:
            await self._executor.halt(weights.id)
            log.warning(
                "download failed in the runtime",
                extra={"weights_id": weights.id, "reason": execution.failure},
            )
            return await finish(
                self._weights,
                weights.id,
                weights.attempt,
                WeightsState.FAILED,
                execution.failure,
                recorder=self._record,
            )
        if action in (Action.HALT, Action.CANCEL):
            await self._executor.halt(weights.id)
            if action is Action.CANCEL:
                log.info("download cancelled", extra={"weights_id": weights.id})
                await self._cleaner.discard_partials_quietly(weights)
        elif execution.active and execution.note != weights.message:
            return await self._note(weights, execution.note)
        return weights

    async def _launch(
        self, model: ModelDocument | None, weights: WeightsDocument
    ) -> Execution | None:
        """Start the worker. The runtime's refusal for good (RBAC, validation, admission) is a
        failure to record once, with the server's words; a temporary one keeps the download
        PULLING, says so in its message and is retried after the queue's backoff."""
        try:
            return await self._executor.launch(model, weights)
        except PermanentError as exc:
            return Execution(active=False, failure=exc.message)
        except TemporaryError as exc:
            key = model.id if model is not None else weights_key(weights.id)
            delay = exc.delay if exc.delay is not None else self._queue.next_delay(key)
            await self._note(weights, retry_message(exc.message, delay))
            raise TemporaryError(exc.message, delay=delay) from exc

    async def _pulling(self, weights: WeightsDocument) -> WeightsDocument:
        """PENDING -> PULLING before a worker is launched (a no-op when it is already)."""
        if weights.state is WeightsState.PULLING:
            return weights
        weights = await self._weights.update(
            weights.id,
            expected_revision=weights.revision,
            changes={"state": WeightsState.PULLING, "message": None},
            event=EventType.PHASE_CHANGED,
            current=weights,
        )
        await self._record.weights(weights, EventType.PHASE_CHANGED)
        return weights

    async def _note(self, weights: WeightsDocument, note: str | None) -> WeightsDocument:
        """Show why a running worker waits (unschedulable, OOMKilled and retrying)."""

        def change(current: WeightsDocument) -> dict[str, object] | None:
            if current.attempt != weights.attempt or current.message == note:
                return None
            return {"message": note}

        noted = await write_if(self._weights, weights, change, event=EventType.UPDATED)
        if noted is None:
            return weights
        await self._mine(noted, EventType.UPDATED)
        return noted

    async def _attach_weights(self, model: ModelDocument) -> tuple[ModelDocument, WeightsDocument]:
        """Find or create the weights of the model's repo, commit, file selection and target,
        list the model in them and point the model at them (unless it was deleted meanwhile:
        the caller then releases it). Returns both as written: the reconcile goes on with the
        model this write returned (its copy from before would conflict with itself)."""
        target = model.download_target
        assert target is not None  # noqa: S101  plan() only creates weights for LOCAL targets
        assert model.hub is not None  # noqa: S101  LOCAL models carry hub facts
        commit = model.hub.commit_sha or ""
        selection = model.source.selection
        location = weights_location(target, model.source.url, commit, selection)
        found = await self._weights.for_location(
            organization_id=model.organization_id,
            location=location,
            commit_sha=commit,
            selection=selection,
        )
        if found is None:
            found = await self._create_weights(model, location, commit)
        elif model.id not in found.model_ids:
            found = await self._list_model(found, model)

        def point(current: ModelDocument) -> dict[str, object] | None:
            return None if current.is_deleted else {"weights_id": found.id}

        attached = await self._models.modify(model.id, point, current=model)
        return attached, found

    async def _create_weights(
        self, model: ModelDocument, location: str, commit: str
    ) -> WeightsDocument:
        """The weights of a model's first reconcile, from the hub's file list. A hub failure
        is typed at this boundary: temporary keeps the model PENDING with a retry message,
        permanent fails it with the hub's words."""
        assert model.download_target is not None  # noqa: S101  checked by the caller
        token = (await self._secret_values(model, None)).get(HF_TOKEN_KEY)
        try:
            info = await self._hub.model(model.source.url, revision=commit, token=token)
        except HubError as exc:
            phase, message, error = hub_failure(exc, next_delay=self._queue.next_delay(model.id))
            await self._set_model(model, phase, message)
            raise error from exc
        found = WeightsDocument(
            id=new_id("weights"),
            organization_id=model.organization_id,
            repo_id=model.source.url,
            requested_revision=model.source.revision,
            commit_sha=info.sha,
            target=model.download_target,
            location=location,
            files=[
                WeightsFile(path=f.path, size=f.size or 0, sha256=f.sha256, blob_id=f.blob_id)
                for f in info.files
                if model.source.selection.takes(f.path)
            ],
            selection=model.source.selection,
            model_ids=[model.id],
            secret_ref=model.secret_ref,
        )
        with contextlib.suppress(DuplicateKey):
            await self._weights.insert(found)
        return found

    async def _list_model(self, found: WeightsDocument, model: ModelDocument) -> WeightsDocument:
        """List a model in existing weights; stopped weights no model used restart."""
        restart = restarts_on_attach(found)
        changes: dict[str, object] = {"model_ids": [*found.model_ids, model.id]}
        if restart:
            changes |= {"state": WeightsState.PENDING, "message": None}
            changes["attempt"] = found.attempt + 1
        type_ = EventType.PHASE_CHANGED if restart else EventType.UPDATED
        found = await self._weights.update(
            found.id, expected_revision=found.revision, changes=changes, event=type_, current=found
        )
        await self._mine(found, type_)
        return found

    async def _secret_values(
        self, model: ModelDocument | None, weights: WeightsDocument | None
    ) -> dict[str, str]:
        """The credentials of a download: the model's, else those stored with the weights;
        without a hub token among them, the server-wide one (if set)."""
        ref = model.secret_ref if model is not None else None
        if ref is None and weights is not None:
            ref = weights.secret_ref
        values: dict[str, str] = {}
        if ref is not None:
            try:
                values = await self._secrets.get(ref)
            except SecretStoreError:
                log.warning("download credentials could not be read", extra={"ref": ref})
        if not values.get(HF_TOKEN_KEY):
            server = await self._hub.fallback_token()  # the server-wide token, if set
            if server is not None:
                values = {**values, HF_TOKEN_KEY: server}
        return values

    async def _mirror(self, model: ModelDocument, weights: WeightsDocument) -> None:
        phase, message = model_status(weights)
        if (phase, message) != (model.phase, model.message):
            await self._set_model(model, phase, message)

    async def _set_model(
        self, model: ModelDocument, phase: ModelPhase, message: str | None
    ) -> None:
        """Write a model's phase and message (on the copy read, or a fresh one whose weights
        are still the same); nothing when it already says so."""

        def change(current: ModelDocument) -> dict[str, object] | None:
            if current.weights_id != model.weights_id or current.is_deleted:
                return None  # attached, detached or deleted meanwhile: its own event follows
            if (current.phase, current.message) == (phase, message):
                return None
            return {"phase": phase, "message": message}

        try:
            updated = await write_if(self._models, model, change, event=EventType.PHASE_CHANGED)
        except NotFound:
            return
        if updated is not None:
            await self._mine(updated, EventType.PHASE_CHANGED)

    async def _mine(self, document: ModelDocument | WeightsDocument, type_: EventType) -> None:
        """Record the event of this controller's own write, remembering its key first (the
        broker may hand it back before the append returns) so that :meth:`on_event` skips it."""
        kind = ResourceKind.MODEL if isinstance(document, ModelDocument) else ResourceKind.WEIGHTS
        self._own.remember(event_key(kind, document.id, document.revision, type_))
        if isinstance(document, ModelDocument):
            await self._record.model(document, type_)
        else:
            await self._record.weights(document, type_)

    async def _release(self, model: ModelDocument, weights: WeightsDocument, *, stop: bool) -> None:
        """RELEASE: drop the model from the weights' list. STOP: also cancel the download (one
        compare-and-set with the bumped attempt, so the worker's last write is a no-op), halt
        the worker and discard in-flight parts; verified files stay, as after cancelDownload:
        deleteWeights removes them, a new model and retryDownload resume from them.
        Idempotent; when the download started or ended meanwhile, it looks again."""
        stopping = stop and weights.state in DOWNLOADING
        stale = False

        def change(current: WeightsDocument) -> dict[str, object] | None:
            nonlocal stale
            stale = stop and (current.state in DOWNLOADING) != stopping
            if stale:
                return None
            changes: dict[str, object] = {
                "model_ids": [owner for owner in current.model_ids if owner != model.id]
            }
            if stopping:
                changes |= {
                    "state": WeightsState.CANCELLED,
                    "message": STOPPED_BY_DELETE,
                    "attempt": current.attempt + 1,
                }
            return None if changes == {"model_ids": current.model_ids} else changes

        type_ = EventType.PHASE_CHANGED if stopping else EventType.UPDATED
        written = await write_if(self._weights, weights, change, event=type_)
        if stale:
            self._queue.add(model.id)
            return
        if written is not None:
            await self._mine(written, type_)
            weights = written
            if drives_itself(written):
                self._queue.add(weights_key(written.id))  # its own reconcile takes over
        if stop:
            await self._executor.halt(weights.id)
        if stopping:
            log.info("download stopped: its model was deleted", extra={"weights_id": weights.id})
            await self._cleaner.discard_partials_quietly(weights)

    async def resync(self) -> None:
        """Enqueue every LOCAL model that is not settled, every model pointing at a download
        in progress (a deleted model whose deletion this replica never heard of still has its
        download to stop), and every weights marked for removal."""
        page = await self._models.find(
            where={
                "is_deleted": False,
                "source.access_mode": AccessMode.LOCAL.value,
                "phase": {"$in": [ModelPhase.PENDING.value, ModelPhase.PULLING.value]},
            },
            limit=10_000,
        )
        downloading = await self._weights.find(
            where={"state": {"$in": [state.value for state in DOWNLOADING]}}, limit=10_000
        )
        removing = await self._weights.find(
            where={"deletion.request": {"$ne": None}, "deletion.refused": None}, limit=10_000
        )
        for model in page.items:
            self._queue.add(model.id)
        for weights in [*removing.items, *filter(drives_itself, downloading.items)]:
            self._queue.add(weights_key(weights.id))
        if downloading.items:
            users = await self._models.find(
                where={"weights_id": {"$in": [w.id for w in downloading.items]}}, limit=10_000
            )
            for model in users.items:
                self._queue.add(model.id)
