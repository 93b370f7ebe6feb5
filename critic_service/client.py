"""CriticClient: what rollout workers use to ask the critic service, on a pooled httpx.AsyncClient.

A transport failure or a refused request comes back as an unscorable critique with a reason, never as an exception
in the rollout and never as a score.
"""
from __future__ import annotations

import httpx

from .critique import Critique, CritiqueRequest


MARGIN_S = 30.0  # beyond the service's own deadline: its queue and the screenshots' upload
FALLBACK_S = 190.0  # a service that does not say its deadline (an older one)


class CriticClient:
    def __init__(self, base_url: str, timeout_s: float | None = None, max_connections: int = 256):
        """timeout_s: how long one critique may take; None = the service's own deadline (its /healthz deadline_s:
        every backend attempt, e.g. 4 x 60 s for ArtifactsBench's judge) plus a margin, read on first use."""
        self.timeout_s = timeout_s
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=httpx.Timeout(FALLBACK_S, connect=5.0),
                                      limits=httpx.Limits(max_connections=max_connections,
                                                          max_keepalive_connections=max_connections))

    async def _timeout(self) -> float:
        if self.timeout_s is None:
            try:
                said = (await self.http.get("/healthz", timeout=10.0)).json().get("deadline_s")
                self.timeout_s = float(said) + MARGIN_S if said else FALLBACK_S
            except (httpx.HTTPError, ValueError, TypeError, AttributeError):
                return FALLBACK_S  # asked again next time: the service may not be up yet
        return self.timeout_s

    async def critique(self, request: CritiqueRequest) -> Critique:
        try:
            timeout = httpx.Timeout(await self._timeout(), connect=5.0)
            resp = await self.http.post("/v1/critique", json=request.to_json(), timeout=timeout)
        except httpx.HTTPError as e:
            return Critique.failed("transport", "client", f"{type(e).__name__}: {e}"[:300])
        if resp.status_code != 200:
            try:
                message = resp.json().get("error", resp.text)
            except ValueError:
                message = resp.text
            return Critique.failed(f"http_{resp.status_code}", "client", message[:300])
        return Critique(**resp.json())

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> "CriticClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
