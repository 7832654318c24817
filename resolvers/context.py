"""The typed request context, built once per request from resources made in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from strawberry.fastapi import BaseContext
from strawberry.types import Info as StrawberryInfo

from controllers.runtimes.base import Runtime
from integrations.huggingface import HubClient
from live import Broker
from schema.building import NotAuthenticated
from schema.events import EventViews
from services.api_keys import ApiKeyService
from services.catalogue.service import CatalogueService
from services.cluster import ClusterService
from services.deploying import DeployService
from services.history import HistoryService
from services.inference import InferenceService
from services.models import ModelService
from services.prefetching import PrefetchService
from services.principals import Principal
from services.vllm import VllmService
from services.weights import WeightsService
from storage.client import Database
from storage.documents import InferenceDocument, WeightsDocument


@dataclass(frozen=True, slots=True)
class Services:
    """Long-lived resources shared by every request (built in the app lifespan)."""

    database: Database
    runtime: Runtime
    hub: HubClient
    models: ModelService
    weights: WeightsService
    cluster: ClusterService
    inference: InferenceService
    deploy: DeployService
    broker: Broker
    api_keys: ApiKeyService
    vllm: VllmService
    version: str
    started_at: datetime
    catalogue: CatalogueService
    history: HistoryService
    prefetch: PrefetchService
    local_roots: tuple[Path, ...] = ()
    """Directories LOCAL download targets must resolve inside (from the settings)."""
    event_views: EventViews = field(default_factory=EventViews)
    """Shared API views of recent events (one per event for all its subscribers)."""


class Context(BaseContext):
    """What every resolver receives as ``info.context``."""

    def __init__(self, *, services: Services, principal: Principal | None, request_id: str) -> None:
        super().__init__()
        self.services = services
        self.principal = principal
        self.request_id = request_id

    async def load_weights(self, weights_id: str) -> WeightsDocument | None:
        """A weights entry in the caller's organisation (None without a caller)."""
        if self.principal is None:
            return None
        return await self.services.weights.get(self.principal, weights_id)

    async def load_model_inference(self, model_id: str) -> InferenceDocument | None:
        """The live inference of a model in the caller's organisation (None without a caller)."""
        if self.principal is None:
            return None
        return await self.services.inference.for_model(self.principal, model_id)

    def require_principal(self) -> Principal:
        """The caller, or :class:`NotAuthenticated` if the request carried no valid token."""
        if self.principal is None:
            raise NotAuthenticated("authentication required: send `Authorization: Bearer <token>`")
        return self.principal


Info = StrawberryInfo[Context, None]
