"""Where the two controllers are built and started (stopped with the resources' stack).

The runtime-specific executors come from the runtime's builder
(:class:`~modelplane.runtimes.base.RuntimeParts`); this module only adds what both runtimes
share: repositories, the lease holder name, the settings, and the inference controller's feed
from the event log. Neither controller exists when ``run_controllers`` is off."""

from __future__ import annotations

import os
import socket
import uuid
from contextlib import AsyncExitStack

from controllers.downloads.reconciler import DownloadController
from controllers.downloads.running import WeightsRuntimeConfig
from controllers.inference.reconciler import InferenceController
from controllers.inference.workloads import InferenceRuntime
from controllers.runtimes.secrets import SecretStore
from integrations.addresses import OutboundPolicy
from integrations.huggingface import HubClient
from live import Broker, Recorder
from modelplane.runtimes.base import RuntimeParts
from modelplane.settings import Settings
from storage.client import Database
from storage.repositories import (
    InferenceRepository,
    LeaseRepository,
    LedgerRepository,
    ModelRepository,
    WeightsRepository,
)


def start_download_controller(
    stack: AsyncExitStack,
    settings: Settings,
    parts: RuntimeParts,
    database: Database,
    *,
    hub: HubClient,
    secrets: SecretStore,
    recorder: Recorder,
    broker: Broker,
    outbound: OutboundPolicy,
) -> DownloadController | None:
    """The download controller, started (stopped with the stack), with in-process workers or
    download Jobs per the runtime, and fed by the event log of every replica; None when this
    process runs no controllers."""
    if not settings.run_controllers:
        return None
    controller = DownloadController(
        models=ModelRepository(database),
        weights=WeightsRepository(database),
        ledgers=LedgerRepository(database),
        secrets=secrets,
        hub=hub,
        config=WeightsRuntimeConfig(
            hub_endpoint=settings.hf_endpoint,
            options=settings.download_options(),
            pvc_mount_path=settings.pvc_mount_path,
            outbound=outbound,
        ),
        executor=parts.download_executor(),
        recorder=recorder,
        leases=LeaseRepository(database),
        holder=lease_holder(),
        lease_seconds=settings.controller_lease_seconds,
    )
    controller.start()
    stack.push_async_callback(controller.stop)
    broker.listen(controller.on_event)
    broker.on_trimmed(controller.resync_soon)  # it may have missed a mutation's event
    return controller


def start_inference_controller(
    stack: AsyncExitStack,
    settings: Settings,
    parts: RuntimeParts,
    database: Database,
    inference_runtime: InferenceRuntime,
    *,
    secrets: SecretStore,
    recorder: Recorder,
    broker: Broker,
    outbound: OutboundPolicy,
) -> InferenceController | None:
    """The inference controller, started (stopped with the stack) and fed by the event log
    (what any replica's services write reaches the leader's queue through its broker), with
    Deployments or supervised processes per the runtime; None when this process runs no
    controllers."""
    if not settings.run_controllers:
        return None
    controller = InferenceController(
        inferences=InferenceRepository(database),
        models=ModelRepository(database),
        weights=WeightsRepository(database),
        secrets=secrets,
        executor=parts.inference_executor(database, secrets),
        runtime=inference_runtime,
        recorder=recorder,
        outbound=outbound,
        leases=LeaseRepository(database),
        holder=lease_holder(),
        lease_seconds=settings.controller_lease_seconds,
    )
    parts.attach(controller)
    controller.start()
    stack.push_async_callback(controller.stop)
    broker.listen(controller.on_event)
    broker.on_trimmed(controller.resync_soon)  # it may have missed events it owns
    return controller


def lease_holder() -> str:
    """This process's name on a controller lease: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
