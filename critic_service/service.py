"""The critic as an async HTTP service (aiohttp).

POST /v1/critique  {task, checklist?, html, screenshots: [base64 PNG], shot_times?, dom?, errors?}
                -> {score, feedback, unscorable, reason, backend, cached, latency_ms}
GET  /healthz, GET /metrics (Prometheus text).
Bad input gets a 4xx naming the field; a backend that fails gives `unscorable` with a reason, never a score of 0.
"""
from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from common.cache import LRU

from . import heuristic
from .config import CriticConfig
from .critique import BadRequest, Critique, CritiqueRequest


class HeuristicBackend:
    name = heuristic.NAME

    async def critique(self, req: CritiqueRequest) -> Critique:
        return await asyncio.to_thread(heuristic.critique, req)  # numpy/PIL work off the event loop

    async def aclose(self) -> None:
        pass


def make_backend(cfg: CriticConfig):
    if cfg.backend == "openai":
        from .openai_backend import OpenAIBackend
        return OpenAIBackend(cfg)
    return HeuristicBackend()


class CriticService:
    def __init__(self, cfg: CriticConfig, backend=None):
        self.cfg = cfg.validate()
        self.backend = backend or make_backend(cfg)
        self.sem = asyncio.Semaphore(cfg.max_concurrency)
        self.cache: LRU[Critique] = LRU(cfg.cache_entries)  # bounded by entries
        self.pending: dict[str, asyncio.Future] = {}  # identical requests in flight share one backend call
        r = self.registry = CollectorRegistry()
        self.m_requests = Counter("critic_requests", "critique requests by HTTP status", ["status"], registry=r)
        self.m_latency = Histogram("critic_latency_seconds", "critique latency", registry=r,
                                   buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120))
        self.m_inflight = Gauge("critic_in_flight", "critiques being computed", registry=r)
        self.m_cache = Counter("critic_cache_hits", "critiques served from the cache or a shared call", registry=r)
        self.m_unscorable = Counter("critic_unscorable", "unscorable critiques by reason", ["reason"], registry=r)
        self.m_backend_errors = Counter("critic_backend_errors", "backend call failures by kind", ["kind"], registry=r)

    @property
    def max_body(self) -> int:
        return int(self.cfg.max_body_mb * 2**20)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body)
        app.router.add_post("/v1/critique", self.handle_critique)
        app.router.add_get("/healthz", self.handle_health)
        app.router.add_get("/metrics", self.handle_metrics)
        app.on_cleanup.append(lambda _: self.backend.aclose())
        return app

    async def critique(self, req: CritiqueRequest) -> Critique:
        t = time.perf_counter()
        key = req.key()
        if (hit := self.cache.get(key)) is not None:
            self.m_cache.inc()
            return Critique(**{**hit.__dict__, "cached": True, "latency_ms": round((time.perf_counter() - t) * 1e3, 2)})
        if key in self.pending:
            self.m_cache.inc()
            shared = await asyncio.shield(self.pending[key])
            return Critique(**{**shared.__dict__, "cached": True, "latency_ms": round((time.perf_counter() - t) * 1e3, 2)})
        fut = self.pending[key] = asyncio.get_running_loop().create_future()
        try:
            async with self.sem:
                self.m_inflight.inc()
                try:
                    result = await self.backend.critique(req)
                except Exception as e:  # a backend bug must not become a reward
                    result = Critique.failed("backend_exception", self.backend.name, f"{type(e).__name__}: {e}"[:300])
                finally:
                    self.m_inflight.dec()
            fut.set_result(result)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved
            raise
        finally:
            self.pending.pop(key, None)
        if result.unscorable:
            self.m_unscorable.labels(result.reason).inc()
        else:
            self.cache.put(key, result)
        result.latency_ms = round((time.perf_counter() - t) * 1e3, 2)
        return result

    async def handle_critique(self, request: web.Request) -> web.Response:
        t = time.perf_counter()
        try:
            if request.content_length is not None and request.content_length > self.max_body:
                return self._error(413, f"the body is over the {self.cfg.max_body_mb:g} MB limit")
            try:
                raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return self._error(413, f"the body is over the {self.cfg.max_body_mb:g} MB limit")
            try:
                body = json.loads(raw)
            except ValueError as e:
                return self._error(400, f"malformed JSON: {e}")
            req = CritiqueRequest.from_json(body)
        except BadRequest as e:
            return self._error(400, str(e))
        result = await self.critique(req)
        self._sync_backend_errors()
        self.m_requests.labels("200").inc()
        self.m_latency.observe(time.perf_counter() - t)
        return web.json_response(result.to_json())

    async def handle_health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "backend": self.backend.name, "deadline_s": self.cfg.deadline_s()})

    async def handle_metrics(self, request: web.Request) -> web.Response:
        self._sync_backend_errors()
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _error(self, status: int, message: str) -> web.Response:
        self.m_requests.labels(str(status)).inc()
        return web.json_response({"error": message}, status=status)

    def _sync_backend_errors(self) -> None:
        for kind, n in getattr(self.backend, "errors", {}).items():
            counter = self.m_backend_errors.labels(kind)
            counter.inc(n - counter._value.get())


async def start(cfg: CriticConfig, backend=None) -> tuple[web.AppRunner, str]:
    """Start the service in the running event loop; returns the runner (call .cleanup()) and its base URL."""
    service = CriticService(cfg, backend)
    runner = web.AppRunner(service.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://{cfg.host}:{port}"
