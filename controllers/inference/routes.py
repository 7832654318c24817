"""The probe of a REMOTE_API model's route: RUNNING once the remote ``/models`` answers.

A REMOTE_API model's inference has no workload: the gateway forwards to the remote API with
the stored key. The probe goes through the outbound policy's guarded pool
(:mod:`integrations.addresses`): the address it connects to is checked, whatever the URL's
name resolves to now. It is a read of the inference's facts (:mod:`controllers.inference.deciding`).
"""

from __future__ import annotations

import aiohttp

from controllers.inference.deciding import ROUTE_RECHECK_SECONDS
from controllers.inference.workloads import Observed
from controllers.runtimes.secrets import HF_TOKEN_KEY, SecretStore, SecretStoreError
from integrations.addresses import AddressRefused, GuardedConnector, OutboundPolicy
from storage.documents import InferencePhase, ModelDocument


class RouteProber:
    """Asks a remote OpenAI-compatible API whether it takes the stored key."""

    def __init__(self, *, secrets: SecretStore, outbound: OutboundPolicy | None = None) -> None:
        self._secrets = secrets
        self._outbound = outbound or OutboundPolicy()
        self._http: aiohttp.ClientSession | None = None

    def start(self) -> None:
        """Open the guarded connection pool."""
        self._http = aiohttp.ClientSession(
            connector=GuardedConnector(self._outbound),
            timeout=aiohttp.ClientTimeout(total=5.0),
            trust_env=False,
        )

    async def close(self) -> None:
        """Close the pool; idempotent."""
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

    async def probe(self, model: ModelDocument) -> Observed:
        """The route's status from the remote ``/models`` answer."""
        assert self._http is not None  # noqa: S101  started
        headers = {}
        if model.secret_ref:
            try:
                stored = await self._secrets.get(model.secret_ref)
            except SecretStoreError:
                stored = {}
            if stored.get(HF_TOKEN_KEY):
                headers["Authorization"] = f"Bearer {stored[HF_TOKEN_KEY]}"
        url = model.source.url.rstrip("/") + "/models"
        try:
            async with self._http.get(url, headers=headers, allow_redirects=False) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _unreachable(url, exc)
        if status in {401, 403}:
            return Observed(
                InferencePhase.FAILED,
                "RemoteRefusedKey",
                f"{url} answered {status}: the stored API key is refused",
            )
        if 200 <= status < 300:
            return Observed(InferencePhase.RUNNING, None, f"routing to {model.source.url}", 1, 1)
        return Observed(
            InferencePhase.PENDING,
            "RemoteError",
            f"{url} answered {status}; checking again in {ROUTE_RECHECK_SECONDS:.0f} s",
        )


def _unreachable(url: str, exc: BaseException) -> Observed:
    """PENDING for a probe that got no answer; the outbound policy's refusal says so."""
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, AddressRefused):
        return Observed(
            InferencePhase.PENDING,
            "AddressRefused",
            f"{url} {exc.os_error}: the outbound address policy refuses it; "
            f"checking again in {ROUTE_RECHECK_SECONDS:.0f} s",
        )
    return Observed(
        InferencePhase.PENDING,
        "RemoteUnreachable",
        f"{url} did not answer ({type(exc).__name__}); "
        f"checking again in {ROUTE_RECHECK_SECONDS:.0f} s",
    )
