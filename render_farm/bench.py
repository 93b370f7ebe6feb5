"""`python -m render_farm bench`: the farm against the ArtifactsBench way and the warm-page floor, one run."""
from __future__ import annotations

import asyncio
import glob
import os
import time

from playwright.async_api import async_playwright

from . import chromium, sandbox
from .config import RenderConfig
from .renderer import Renderer

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "web-bench")  # the repository's data/

_SYNTHETIC = [  # pages with motion, as models write them: a clock, a CSS animation, a canvas chart drawn by rAF
    "<html><body style='font:40px sans-serif;background:#102030;color:#eee'><h1>Clock</h1><p id=c></p><script>"
    "setInterval(()=>{document.getElementById('c').textContent=new Date().toISOString()},250)</script></body></html>",
    "<html><body style='background:#fafafa'><div class=box>Loading</div><style>.box{width:120px;height:120px;"
    "background:#e33;animation:spin 1.5s linear infinite}@keyframes spin{from{transform:rotate(0)}to{transform:"
    "rotate(360deg)}}</style></body></html>",
    "<html><body><canvas id=c width=600 height=300></canvas><script>const x=document.getElementById('c')"
    ".getContext('2d');let h=0;function f(){h=Math.min(h+3,250);x.clearRect(0,0,600,300);for(let i=0;i<6;i++)"
    "{x.fillStyle='hsl('+i*60+',70%,50%)';x.fillRect(20+i*95,300-h*(i+1)/6,70,h*(i+1)/6)}requestAnimationFrame(f)}"
    "requestAnimationFrame(f)</script></body></html>",
]


def bench_pages(n: int) -> list[str]:
    real = [open(f).read() for f in sorted(glob.glob(os.path.join(DATA, "*", "src", "index.html")))]
    real += [open(f).read() for f in sorted(glob.glob(os.path.join(DATA, "calculator", "src-init", "index.html")))]
    pool = real + _SYNTHETIC
    # Distinct HTML per slot (a trailing comment), so no layer can answer a page from a cache.
    return [pool[i % len(pool)] + f"<!-- bench page {i} -->" for i in range(n)]


async def _baseline(pages: list[str], cfg: RenderConfig) -> float:
    """ArtifactsBench's way: per page a new browser, load, network idle, 3 full-page shots 1 s apart, close."""
    t = time.perf_counter()
    async with async_playwright() as pw:
        for html in pages:
            browser = await pw.chromium.launch(executable_path=chromium.find(cfg.chromium_path), chromium_sandbox=False,
                                               args=sandbox.launch_args(cfg.js_heap_mb, "baseline"))
            page = await browser.new_page(viewport={"width": cfg.viewport_width, "height": cfg.viewport_height})
            await page.set_content(html, wait_until="networkidle")
            for i in range(3):
                if i:
                    await page.wait_for_timeout(1000)
                await page.screenshot(full_page=True)
            await browser.close()
    return len(pages) / (time.perf_counter() - t)


async def _floor(pages: list[str], cfg: RenderConfig) -> float:
    """One warm page reused for every page: load, then the same three CDP captures back to back, no waiting."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium.find(cfg.chromium_path), chromium_sandbox=False,
                                           args=sandbox.launch_args(cfg.js_heap_mb, "floor"))
        page = await browser.new_page(viewport={"width": cfg.viewport_width, "height": cfg.viewport_height})
        cdp = await page.context.new_cdp_session(page)
        await page.set_content(pages[0])
        t = time.perf_counter()
        for html in pages:
            await page.set_content(html, wait_until="load")
            for _ in range(3):
                await cdp.send("Page.captureScreenshot", {"format": "png", "optimizeForSpeed": True})
        rate = len(pages) / (time.perf_counter() - t)
        await browser.close()
    return rate


async def _farm(pages: list[str], cfg: RenderConfig) -> tuple[float, float, dict]:
    async with Renderer(cfg) as r:
        await r.render(pages[0] + "<!-- warm-up -->")
        peak = 0.0
        done = asyncio.Event()

        async def sample():
            nonlocal peak
            while not done.is_set():
                peak = max(peak, await asyncio.to_thread(r.memory_mib))
                await asyncio.sleep(0.2)

        sampler = asyncio.ensure_future(sample())
        t = time.perf_counter()
        results = await r.render_many(pages)
        rate = len(pages) / (time.perf_counter() - t)
        done.set()
        await sampler
        invalid = [res.reason for res in results if not res.valid]
        if any(reason != "blank" for reason in invalid):
            raise RuntimeError(f"bench pages failed to render: {invalid}")
        return rate, peak, r.stats()


def run(pages: int = 12, concurrency: int | None = None) -> dict:
    cfg = RenderConfig(cache_mb=0)
    if concurrency:
        cfg.concurrency = concurrency
    html = bench_pages(pages)
    baseline = asyncio.run(_baseline(html, cfg))
    floor = asyncio.run(_floor(html, cfg))
    farm, peak_mib, stats = asyncio.run(_farm(html, cfg))
    shots = stats["shots_taken"] + stats["shots_reused"]
    return {
        "pages": pages, "concurrency": cfg.concurrency,
        "farm_pages_per_s": round(farm, 2), "baseline_pages_per_s": round(baseline, 3),
        "speedup": round(farm / baseline, 1),
        "floor_pages_per_s": round(floor, 2), "floor_fraction": round(farm / floor, 2),
        "farm_peak_memory_mib": round(peak_mib), "shots_reused_fraction": round(stats["shots_reused"] / shots, 2),
    }
