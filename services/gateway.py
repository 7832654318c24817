"""The OpenAI-compatible gateway's decisions, without HTTP: routes, limits and metrics.

Clients call ``/v1`` with their own modelplane credential and a ``model`` name; this module
turns (organisation, name) into a :class:`Route` — the upstream base URL, the key to inject,
the timeout — or into a :class:`~services.gateway_errors.GatewayError` that the HTTP layer
renders in OpenAI's error shape. Routing reads the live inference
(``InferenceRepository.by_model_name``) and the model (``ModelRepository.by_name``) of the
caller's organisation only, so another organisation's model is indistinguishable from a missing
one (404, never 403).

Where a request goes:

* REMOTE_API model: the model's ``source.url``, with the key stored in the model's secret
  (``hf-token``) sent as ``Authorization: Bearer``. The key goes only to that URL, never to an
  inference endpoint, and is cached here briefly (:data:`UPSTREAM_KEY_SECONDS`) so a busy model
  does not read the secret store per request.
* anything else: the inference's ``endpoint`` (a Kubernetes Service or a local engine's port),
  with no credential.

A route that resolved (RUNNING) is kept for ``route_cache_seconds`` (default 2 s, refreshed by
one request in its second half, see :mod:`services.caching`), sparing every request two
database round trips. The price is that a model stopped or moved is still routed to its old
endpoint for up to that long (the client gets the upstream's answer, or a 502). Failed
resolutions (404, 409) are never cached, so a model that just became RUNNING is reachable at once.

Limits are in memory, per process: a sliding one-minute window of request times and a count of
requests in flight, each per credential (an API key, or a token's subject). With N replicas a
caller can reach N times the configured figures; a shared store would be needed for exact
global limits, and would cost every request a round trip.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Histogram

from controllers.runtimes.secrets import HF_TOKEN_KEY, SecretStore, SecretStoreError
from services.caching import ExpiringCache
from services.gateway_errors import (
    ModelNotFound,
    ModelNotRunning,
    RateLimited,
    TooManyConcurrent,
    UpstreamUnavailable,
)
from services.principals import Principal
from services.redaction import Redactor
from storage.documents import AccessMode, InferencePhase, ModelDocument, utcnow
from storage.repositories import InferenceFilter, InferenceRepository, ModelRepository

UPSTREAM_KEY_SECONDS = 30.0
UPSTREAM_KEY_ENTRIES = 1024
ROUTE_ENTRIES = 4096
MAX_SERVED_MODELS = 1000
WINDOW_SECONDS = 60.0
IDLE_SWEEP_EVERY = 1024
UNKNOWN_MODEL = "(unknown)"
"""The metrics label of requests naming no model of the organisation (client-chosen names
would let anyone grow the metric set without bound)."""

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Endpoint(StrEnum):
    """The OpenAI operations the gateway forwards (path under ``/v1``)."""

    CHAT = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    """Deployment-wide limits; 0 disables ``requests_per_minute`` or ``concurrency``."""

    requests_per_minute: int
    concurrency: int
    max_body_bytes: int
    upstream_timeout_seconds: float


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes. ``secret`` is the upstream key (kept out of ``repr``);
    ``remote`` says the base URL is user-given (a REMOTE_API model's), so the connection goes
    through the outbound policy's guarded pool."""

    organization_id: str
    model_name: str
    base_url: str
    timeout_seconds: float
    secret: str | None = field(default=None, repr=False)
    remote: bool = False
    redactor: Redactor | None = field(default=None, repr=False, compare=False)
    """Removes ``secret`` from answers (built with the key: see :class:`UpstreamKey`)."""

    def redact(self, content: bytes) -> bytes:
        """``content`` without the upstream key (see :class:`Redactor`)."""
        return self.redactor(content) if self.redactor is not None else content

    @property
    def holdback(self) -> int:
        """Bytes of a stream to keep back when cutting it mid-event, so that a key split
        across two cuts is still seen whole."""
        return self.redactor.longest if self.redactor is not None else 0

    def url(self, endpoint: Endpoint) -> str:
        """The upstream URL of an operation."""
        return f"{self.base_url}/{endpoint.value}"

    def headers(self) -> dict[str, str]:
        """Headers for the upstream: JSON in, no compression (chunks pass as they come), and
        the upstream key when there is one. The client's own headers are never forwarded."""
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        if self.secret:
            headers["authorization"] = f"Bearer {self.secret}"
        return headers


@dataclass(frozen=True, slots=True)
class ServedModel:
    """One entry of ``GET /v1/models``."""

    name: str
    created: int
    organization_id: str


def limit_identity(principal: Principal) -> str:
    """Whose limits a request counts against: the API key, or the token's subject."""
    return f"{principal.organization_id}/{principal.subject}"


class RequestWindow:
    """Sliding one-minute window of admitted request times per identity (exact, in memory).

    Each identity keeps at most ``per_minute`` timestamps; identities idle for a whole window
    are swept out every :data:`IDLE_SWEEP_EVERY` admissions, so memory follows active callers.
    """

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_minute = per_minute
        self._clock = clock
        self._times: dict[str, deque[float]] = {}
        self._calls = 0

    def admit(self, identity: str) -> float | None:
        """Record a request and return None, or return the seconds until one would fit."""
        if self._per_minute <= 0:
            return None
        now = self._clock()
        self._calls += 1
        if self._calls % IDLE_SWEEP_EVERY == 0:
            self._sweep(now)
        times = self._times.get(identity)
        if times is None:
            times = self._times[identity] = deque()
        while times and times[0] <= now - WINDOW_SECONDS:
            times.popleft()
        if len(times) >= self._per_minute:
            return times[0] + WINDOW_SECONDS - now
        times.append(now)
        return None

    def _sweep(self, now: float) -> None:
        cutoff = now - WINDOW_SECONDS
        idle = [key for key, times in self._times.items() if not times or times[-1] <= cutoff]
        for key in idle:
            del self._times[key]


class InFlight:
    """Requests in flight per identity (the cap is checked by :meth:`Gateway.admit`)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def acquire(self, identity: str) -> None:
        """Take a slot."""
        self._counts[identity] = self._counts.get(identity, 0) + 1

    def release(self, identity: str) -> None:
        """Give a slot back."""
        current = self._counts.get(identity, 0) - 1
        if current > 0:
            self._counts[identity] = current
        else:
            self._counts.pop(identity, None)

    def count(self, identity: str) -> int:
        """Requests of the identity in flight now."""
        return self._counts.get(identity, 0)

    def total(self) -> int:
        """Requests in flight now, of every identity."""
        return sum(self._counts.values())


class Admission:
    """A request's concurrency slot; :meth:`release` is idempotent, so whichever part of the
    request finishes last (the handler, or the streamed body) can call it safely."""

    def __init__(self, in_flight: InFlight, identity: str) -> None:
        self._in_flight = in_flight
        self._identity = identity
        self._held = True

    def release(self) -> None:
        """Give the slot back (once)."""
        if self._held:
            self._held = False
            self._in_flight.release(self._identity)


class GatewayMetrics:
    """Per-model figures in their own registry, exposed with the app's at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["organization", "model", "endpoint"]
        self.requests = Counter(
            "modelplane_gateway_requests",
            "Gateway requests answered, by model, operation and HTTP status sent to the client.",
            [*labels, "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "modelplane_gateway_request_duration_seconds",
            "Time from a gateway request's arrival to the end of its response (whole stream).",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_byte = Histogram(
            "modelplane_gateway_upstream_first_byte_seconds",
            "Time from a request's arrival to the upstream's first body bytes (first token).",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "modelplane_gateway_tokens",
            "Tokens the upstream reported in `usage`, by direction (input = prompt).",
            ["organization", "model", "direction"],
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "modelplane_gateway_upstream_errors",
            "Upstream failures: connect, timeout, status (an HTTP error passed through), "
            "broken (the stream ended early).",
            ["organization", "model", "kind"],
            registry=self.registry,
        )

    def observe(
        self,
        *,
        organization: str,
        model: str,
        endpoint: Endpoint,
        status: int,
        seconds: float,
        usage: Usage | None = None,
    ) -> None:
        """Count one answered request."""
        self.requests.labels(organization, model, endpoint.value, str(status)).inc()
        self.duration.labels(organization, model, endpoint.value).observe(seconds)
        if usage is not None:
            if usage.input_tokens:
                self.tokens.labels(organization, model, "input").inc(usage.input_tokens)
            if usage.output_tokens:
                self.tokens.labels(organization, model, "output").inc(usage.output_tokens)

    def upstream_error(self, *, organization: str, model: str, kind: str) -> None:
        """Count one upstream failure."""
        self.upstream_errors.labels(organization, model, kind).inc()


@dataclass(slots=True)
class Usage:
    """Token counts from an OpenAI ``usage`` object."""

    input_tokens: int = 0
    output_tokens: int = 0

    @classmethod
    def parse(cls, usage: object) -> Usage | None:
        """Read ``prompt_tokens`` / ``completion_tokens`` (or ``input_`` / ``output_tokens``)."""
        if not isinstance(usage, dict):
            return None
        found = cls(
            input_tokens=_count(usage.get("prompt_tokens", usage.get("input_tokens"))),
            output_tokens=_count(usage.get("completion_tokens", usage.get("output_tokens"))),
        )
        return found if found.input_tokens or found.output_tokens else None


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(frozen=True, slots=True)
class UpstreamKey:
    """A REMOTE_API key and its :class:`Redactor` (whose pattern takes 20 ms to compile for a
    50-character key, 0.5 s for 1,024: built in a worker thread, once per key read)."""

    secret: str = field(repr=False)
    redactor: Redactor = field(repr=False)

    @classmethod
    async def of(cls, secret: str) -> UpstreamKey:
        """The key with its redactor, compiled off the event loop."""
        return cls(secret=secret, redactor=await asyncio.to_thread(Redactor, secret))


class UpstreamKeys:
    """REMOTE_API keys read from the secret store, kept for a few seconds (bounded)."""

    def __init__(self, store: SecretStore, *, ttl_seconds: float = UPSTREAM_KEY_SECONDS) -> None:
        self._store = store
        self._cache: ExpiringCache[tuple[str, str], UpstreamKey | None] = ExpiringCache(
            ttl=ttl_seconds, size=UPSTREAM_KEY_ENTRIES
        )

    async def key_for(self, model: ModelDocument) -> UpstreamKey | None:
        """The model's upstream key, or None when it has none."""
        ref = model.secret_ref
        if ref is None or not model.source.has_token:
            return None

        async def read() -> UpstreamKey | None:
            try:
                values = await self._store.get(ref)
            except SecretStoreError:
                raise UpstreamUnavailable(
                    f"the credentials of model {model.name!r} cannot be read right now"
                ) from None
            secret = values.get(HF_TOKEN_KEY)
            return await UpstreamKey.of(secret) if secret else None

        return await self._cache.get((model.id, ref), read)

    async def close(self) -> None:
        """Stop background refreshes."""
        await self._cache.close()


class Gateway:
    """Routing and admission for ``/v1``; one per process, built in the app's lifespan."""

    def __init__(
        self,
        *,
        inferences: InferenceRepository,
        models: ModelRepository,
        secrets: SecretStore,
        limits: GatewayLimits,
        metrics: GatewayMetrics | None = None,
        route_cache_seconds: float = 2.0,
    ) -> None:
        self.limits = limits
        self._routes: ExpiringCache[tuple[str, str], Route] = ExpiringCache(
            ttl=route_cache_seconds, size=ROUTE_ENTRIES
        )
        self.metrics = metrics or GatewayMetrics()
        self._inferences = inferences
        self._models = models
        self._keys = UpstreamKeys(secrets)
        self._window = RequestWindow(limits.requests_per_minute)
        self._in_flight = InFlight()

    def admit(self, principal: Principal) -> Admission:
        """Count the request against its credential's limits, or raise :class:`RateLimited`."""
        identity = limit_identity(principal)
        if self.limits.concurrency > 0 and self._in_flight.count(identity) >= (
            self.limits.concurrency
        ):
            raise TooManyConcurrent(
                f"at most {self.limits.concurrency} requests of one credential may be in "
                "flight at once",
                retry_after=1,
            )
        wait = self._window.admit(identity)
        if wait is not None:
            raise RateLimited(
                f"at most {self.limits.requests_per_minute} requests per minute per credential",
                retry_after=max(1, math.ceil(wait)),
            )
        self._in_flight.acquire(identity)
        return Admission(self._in_flight, identity)

    async def close(self) -> None:
        """Stop the caches' background refreshes (at shutdown)."""
        await self._routes.close()
        await self._keys.close()

    def requests_in_flight(self) -> int:
        """Gateway requests (streams included) not finished yet, in this process."""
        return self._in_flight.total()

    async def route(self, principal: Principal, model_name: str) -> Route:
        """Where a request for ``model_name`` goes, or why it cannot go anywhere."""
        organization = principal.organization_id
        return await self._routes.get(
            (organization, model_name), lambda: self._resolve(organization, model_name)
        )

    async def _resolve(self, organization: str, model_name: str) -> Route:
        inference, model = await asyncio.gather(
            self._inferences.by_model_name(organization_id=organization, name=model_name),
            self._models.by_name(organization_id=organization, name=model_name),
        )
        if inference is None and model is not None:
            raise ModelNotRunning(
                f"The model `{model_name}` is not running (no inference: start it)",
                param="model",
                extra={"phase": None, "reason": "NoInference", "detail": None},
            )
        if inference is None or (inference.model_id is not None and model is None):
            raise ModelNotFound(f"The model `{model_name}` does not exist", param="model")
        if inference.phase is not InferencePhase.RUNNING or not inference.enabled:
            phase = inference.phase.value if inference.enabled else InferencePhase.STOPPED.value
            detail = inference.message or inference.reason
            raise ModelNotRunning(
                f"The model `{model_name}` is not running (phase {phase}"
                + (f": {detail})" if detail else ")"),
                param="model",
                extra={"phase": phase, "reason": inference.reason, "detail": inference.message},
            )
        timeout = inference.spec.upstream_timeout_seconds or self.limits.upstream_timeout_seconds
        remote = (
            model is not None
            and model.id == inference.model_id
            and model.source.access_mode is AccessMode.REMOTE_API
        )
        if remote and model is not None:
            key = await self._keys.key_for(model)
            return Route(
                organization_id=organization,
                model_name=model_name,
                base_url=model.source.url.rstrip("/"),
                timeout_seconds=timeout,
                secret=key.secret if key else None,
                redactor=key.redactor if key else None,
                remote=True,
            )
        if not inference.endpoint:
            raise ModelNotRunning(
                f"The model `{model_name}` has no endpoint yet",
                param="model",
                extra={"phase": inference.phase.value, "reason": "NoEndpoint", "detail": None},
            )
        return Route(
            organization_id=organization,
            model_name=model_name,
            base_url=inference.endpoint.rstrip("/"),
            timeout_seconds=timeout,
        )

    async def served_models(self, principal: Principal) -> list[ServedModel]:
        """The organisation's models whose inference is RUNNING and enabled, by name."""
        where = {
            **InferenceRepository.where(
                principal.organization_id, InferenceFilter(phase=InferencePhase.RUNNING)
            ),
            "enabled": True,
        }
        page = await self._inferences.find(
            where=where, limit=MAX_SERVED_MODELS, sort=(("model_name", 1), ("_id", 1))
        )
        return [
            ServedModel(
                name=inference.model_name,
                created=int((inference.created_at or utcnow()).timestamp()),
                organization_id=inference.organization_id,
            )
            for inference in page.items
        ]
