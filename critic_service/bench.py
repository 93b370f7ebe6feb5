"""`python -m critic_service bench`: service overhead, requests held in flight, heuristic throughput. One JSON object."""
from __future__ import annotations

import asyncio
import glob
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from . import heuristic
from .client import CriticClient
from .config import CriticConfig
from .critique import CritiqueRequest
from .fake_openai import FakeOpenAI
from .openai_backend import OpenAIBackend
from .service import start

DATA = os.path.join(os.path.dirname(__file__), "..", "data")  # the repository's data/


async def _real_render() -> tuple[str, list[bytes], dict, list[str]]:
    from render_farm.renderer import Renderer
    html = open(os.path.join(DATA, "web-bench", "calculator", "src", "index.html")).read()
    async with Renderer() as r:
        res = await r.render(html)
    tasks = [json.loads(line)["description"] for p in sorted(glob.glob(os.path.join(DATA, "web-bench", "*", "tasks.jsonl")))
             for line in open(p) if line.strip()]  # varied task texts: every bundled Web-Bench task
    return html, res.screenshots, res.dom, tasks


async def _overhead(html, shots, n: int) -> float:
    fake = FakeOpenAI()
    base = await fake.start()
    cfg = CriticConfig(backend="openai", openai_base_url=base, port=0, cache_entries=0, max_concurrency=512)
    direct = OpenAIBackend(cfg)
    runner, url = await start(cfg)
    via, straight = [], []
    async with CriticClient(url) as client:
        for i in range(n + 20):  # interleaved, so machine noise hits both sides alike; 20 warm-up rounds
            req = CritiqueRequest(f"task {i}", html, [], shots)
            t = time.perf_counter()
            assert not (await direct.critique(req)).unscorable
            t1 = time.perf_counter()
            assert not (await client.critique(req)).unscorable
            t2 = time.perf_counter()
            if i >= 20:
                straight.append(t1 - t)
                via.append(t2 - t1)
    await runner.cleanup()
    await direct.aclose()
    await fake.stop()
    return (statistics.median(via) - statistics.median(straight)) * 1e3


async def _in_flight(levels=(64, 128, 256, 512)) -> int:
    best = 0
    for n in levels:
        fake = FakeOpenAI([(200, '{"score": 70, "feedback": "ok"}', 0.5)])  # a slow MLLM: everything waits at once
        base = await fake.start()
        cfg = CriticConfig(backend="openai", openai_base_url=base, port=0, cache_entries=0, max_concurrency=n)
        runner, url = await start(cfg)
        async with CriticClient(url, max_connections=n) as client:
            results = await asyncio.gather(*(client.critique(CritiqueRequest(f"t{i}", "<p>x</p>")) for i in range(n)))
        await runner.cleanup()
        await fake.stop()
        if any(r.unscorable for r in results):
            break
        best = n
    return best


def _heuristic_rate(shots, dom, tasks, n: int = 200, threads: int = 2) -> float:
    reqs = [CritiqueRequest(tasks[i % len(tasks)], "", [], shots, [0, 1, 2], dom) for i in range(n)]
    heuristic.critique(reqs[0])
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(heuristic.critique, reqs))
    return n / (time.perf_counter() - t)


def run(n: int = 300) -> dict:
    html, shots, dom, tasks = asyncio.run(_real_render())
    return {
        "overhead_ms_p50": round(asyncio.run(_overhead(html, shots, n)), 2),
        "max_in_flight_zero_errors": asyncio.run(_in_flight()),
        "heuristic_critiques_per_s": round(_heuristic_rate(shots, dom, tasks), 1),
        "requests": n, "screenshots_per_request": len(shots),
    }
