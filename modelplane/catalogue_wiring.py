"""Where the catalogue is built: its syncer and service, and the leader's pull schedule.

The schedule is one owned task per process, woken by a :class:`Leadership` on the
``catalogue`` lease: only the leading replica pulls on the period
(``MODELPLANE_CATALOGUE_SYNC_SECONDS``), the others would fetch the same commits for nothing.
The lease's resync callback only wakes the task, so a slow remote never delays the lease's
renewal. ``refreshCatalog`` and ``configureCatalog`` sync at once on whichever replica
receives them (``services/catalogue/syncing.py`` says why that is safe).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AsyncExitStack

from controllers.leading import Leadership
from controllers.runtimes.secrets import SecretStore
from integrations.addresses import OutboundPolicy
from modelplane.controller_wiring import lease_holder
from modelplane.settings import Settings
from services.catalogue.service import CatalogueService
from services.catalogue.syncing import SyncConfig, Syncer
from services.cluster import ClusterService
from services.inference import InferenceService
from services.models import ModelService
from storage.cancellation import raise_if_cancelled
from storage.catalogues import CatalogueRepository
from storage.client import Database
from storage.repositories import LeaseRepository

log = logging.getLogger(__name__)


class CatalogueSchedule:
    """Pulls every catalogue while this replica leads the ``catalogue`` lease."""

    def __init__(self, syncer: Syncer, leases: LeaseRepository, *, settings: Settings) -> None:
        self._syncer = syncer
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._leadership = Leadership(
            leases,
            name="catalogue",
            holder=lease_holder(),
            seconds=settings.controller_lease_seconds,
            resync=self._kick,
            resync_seconds=settings.catalogue_sync_seconds,
            on_loss=self._lost,
        )

    async def _kick(self) -> None:
        self._wake.set()

    async def _lost(self) -> None:
        """A pull in progress finishes (its writes are compare-and-set); none starts."""

    def start(self) -> None:
        self._leadership.start()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="catalogue-schedule")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._leadership.leading:
                continue
            try:
                await self._syncer.sync_all()
            except Exception:  # a bug or the database: logged, tried again next period
                log.exception("the scheduled catalogue pull failed")
            raise_if_cancelled()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._leadership.stop()


def build_catalogue(
    stack: AsyncExitStack,
    settings: Settings,
    database: Database,
    *,
    secrets: SecretStore,
    models: ModelService,
    inference: InferenceService,
    cluster: ClusterService,
    outbound: OutboundPolicy,
) -> CatalogueService:
    """The catalogue service, and the pull schedule when this process runs controllers and
    the period is not 0 (stopped with the stack)."""
    catalogues = CatalogueRepository(database)
    syncer = Syncer(
        catalogues=catalogues,
        secrets=secrets,
        config=SyncConfig(
            cache_dir=(settings.catalogue_cache_dir or settings.state_dir / "catalogues").resolve(),
            git_timeout_seconds=settings.catalogue_git_timeout_seconds,
            hub_endpoint=settings.hf_endpoint,
            author=(settings.catalogue_author_name, settings.catalogue_author_email),
        ),
    )
    if settings.run_controllers and settings.catalogue_sync_seconds > 0:
        schedule = CatalogueSchedule(syncer, LeaseRepository(database), settings=settings)
        schedule.start()
        stack.push_async_callback(schedule.stop)
    return CatalogueService(
        catalogues=catalogues,
        syncer=syncer,
        secrets=secrets,
        models=models,
        inference=inference,
        cluster=cluster,
        outbound=outbound,
    )
