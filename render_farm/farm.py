"""RenderFarm: a pool of Renderer actors on Ray, for the cluster.

Each RenderWorker is an async Ray actor owning one Renderer (one warm Chromium, many pages at once). Requests are
routed by a hash of the page, so a GRPO group's repeated pages land on the same worker and hit its dedup cache;
Ray restarts a worker that dies and its in-flight renders are re-run on the restarted worker.
"""
from __future__ import annotations

import hashlib

import ray

from .config import RenderConfig
from .result import RenderRequest, RenderResult


@ray.remote(max_restarts=-1, max_task_retries=2)
class RenderWorker:
    def __init__(self, cfg: RenderConfig):
        from .renderer import Renderer  # Playwright is imported where Chromium runs, not by every client
        self.renderer = Renderer(cfg)

    async def render(self, request: RenderRequest) -> RenderResult:
        return await self.renderer.render(request)

    async def stats(self) -> dict:
        return self.renderer.stats()

    def node_ip(self) -> str:
        return ray.util.get_node_ip_address()


class RenderFarm:
    """Client side of the pool: `await farm.render(html)`, `farm.render_batch([...])` (blocking)."""

    def __init__(self, cfg: RenderConfig | None = None, workers: list | None = None, placement: list[dict] | None = None):
        self.cfg = (cfg or RenderConfig()).validate()
        # Each worker reserves a CPU for its Chromium; pages in flight per worker come from cfg.concurrency.
        # placement: per-worker Ray options (a placement-group bundle), from launch/placement.py.
        self.workers = workers if workers is not None else [
            RenderWorker.options(num_cpus=1, max_concurrency=max(8, 4 * self.cfg.concurrency),
                                 **(placement[i] if placement else {})).remote(self.cfg)
            for i in range(self.cfg.workers)]

    def _worker_for(self, request: RenderRequest):
        digest = hashlib.blake2b(request.html.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        return self.workers[int.from_bytes(digest, "little") % len(self.workers)]

    def submit(self, request: RenderRequest | str) -> ray.ObjectRef:
        req = RenderRequest(request) if isinstance(request, str) else request
        return self._worker_for(req).render.remote(req)

    async def render(self, request: RenderRequest | str) -> RenderResult:
        return await self.submit(request)

    def render_batch(self, requests: list[RenderRequest | str]) -> list[RenderResult]:
        return ray.get([self.submit(r) for r in requests])

    def stats(self) -> list[dict]:
        return ray.get([w.stats.remote() for w in self.workers])
