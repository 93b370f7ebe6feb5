"""CriticClient: what rollout workers use to ask the critic service, on a pooled httpx.AsyncClient.

A transport failure or a refused request comes back as an unscorable critique with a reason, never as an exception
in the rollout and never as a score.
"""
from __future__ import annotations

import httpx

from .critique import Critique, CritiqueRequest


class CriticClient:
    def __init__(self, base_url: str, timeout_s: float = 190.0, max_connections: int = 256):
        # timeout_s should exceed the service's own bound, (retries + 1) x backend timeout.
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=httpx.Timeout(timeout_s, connect=5.0),
                                      limits=httpx.Limits(max_connections=max_connections,
                                                          max_keepalive_connections=max_connections))

    async def critique(self, request: CritiqueRequest) -> Critique:
        try:
            resp = await self.http.post("/v1/critique", json=request.to_json())
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
