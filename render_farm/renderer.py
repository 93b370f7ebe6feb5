"""One warm headless Chromium rendering many model-written pages at once.

A render: open a fresh page (its own renderer process) in a recycled browser context, load the HTML with
set_content, take the screenshots at the scheduled times by advancing the page's virtual clock (page_clock.js; no
wall-clock waiting), summarise the DOM, decide validity. The page's deadline counts from its page being opened and
is raced against the page's crash event and the browser's disconnection, so a hostile page costs at most its deadline; the wait for a slot
before that is the farm's and bounded on its own (render.queue_timeout_s: past it the render is "busy", unscorable),
so a healthy page queued behind hostile ones is never judged invalid for their time.
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import mimetypes
import time
from dataclasses import dataclass, field
from importlib import resources

from playwright.async_api import BrowserContext, Page, async_playwright

from common.cache import LRU

from . import chromium, images, sandbox
from .config import RenderConfig
from .result import RenderRequest, RenderResult

_CLOCK_JS = resources.files(__package__).joinpath("page_clock.js").read_text()
_DOM_JS = resources.files(__package__).joinpath("dom_summary.js").read_text()
_MAX_MESSAGES = 50
_SITE_LOAD_S = 3.0  # a multi-file page's load (readyState complete), awaited at most this long
_SITES = itertools.count()  # multi-file pages get origins page0.relook.invalid, page1...
# Loaded = readyState "complete" (set, with its readystatechange, just before the load event in the same task). Not the
# load event alone: when a navigation starts while the page parses (a download link clicked by a script; the route
# answers it 204) Chromium completes the document but skips its load event, measured on 6 of 60 renders of the
# sandbox test's hostile page, which then waited out its whole deadline.
_LOADED_JS = ("() => document.readyState === 'complete' || new Promise(done => document.addEventListener("
              "'readystatechange', () => document.readyState === 'complete' && done(true)))")
_ADVANCE_JS = ("async ms => { const r = window.__relook; if (!r) return true; "
               "if (ms !== null) await r.advance(ms); return r.changed(); }")


@dataclass
class _Slot:
    """One render slot: a browser context holding one page (one renderer process), reused page after page."""
    context: BrowserContext
    page: Page
    cdp: object
    uses: int = 0
    crashed: asyncio.Event = field(default_factory=asyncio.Event)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    blocked: int = 0
    navigated_to: str | None = None  # the page tried to leave its document
    site: dict[str, str] | None = None  # a multi-file page being rendered: {url: text}, served from memory
    entry: str | None = None  # its index.html's URL, until the page has loaded it
    phase: str = "opening"  # what the render is doing now: a timeout's detail names where a page got stuck

    def reset(self) -> None:
        self.crashed = asyncio.Event()
        self.console_errors, self.page_errors, self.blocked, self.navigated_to = [], [], 0, None
        self.site = self.entry = None
        self.phase = "opening"


async def _evaluate(page: Page, expression: str, arg=None):
    """page.evaluate, retried when a cancelled navigation (e.g. a clicked download link) reset the execution
    context but left the document in place; a real navigation away is caught by the framenavigated watch."""
    for attempt in range(3):
        try:
            return await page.evaluate(expression, arg)
        except Exception as e:
            if "Execution context was destroyed" not in str(e) or attempt == 2:
                raise
            await asyncio.sleep(0.02)


class Renderer:
    """Use as `async with Renderer(cfg) as r: result = await r.render(html)`; also the body of a farm worker."""

    def __init__(self, cfg: RenderConfig | None = None):
        self.cfg = (cfg or RenderConfig()).validate()
        self.cache: LRU[RenderResult] = LRU(self.cfg.cache_mb << 20, lambda r: r.nbytes)
        self.counters = {"pages": 0, "invalid": 0, "relaunches": 0, "shots_taken": 0, "shots_reused": 0}
        self._slots = asyncio.Semaphore(self.cfg.concurrency)
        self._lock = asyncio.Lock()
        self._pw = None
        self._browser = None
        self._gone: asyncio.Event | None = None  # set when the current browser disconnects
        self._idle: list[_Slot] = []  # slots waiting for their next page
        self._by_page: dict[Page, _Slot] = {}
        self._closing: set[asyncio.Future] = set()  # contexts of failed slots being closed
        self._marker = sandbox.new_marker()
        self._init_script = _CLOCK_JS.replace("__RELOOK_VIRTUAL__", str(self.cfg.clock == "virtual").lower())

    async def __aenter__(self) -> "Renderer":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def start(self) -> None:
        async with self._lock:
            await self._ensure_browser()

    async def close(self) -> None:
        if self._closing:
            await asyncio.wait(self._closing, timeout=5)
        if self._browser is not None:
            await self._browser.close()
            self._browser = None
        if self._pw is not None:
            await self._pw.stop()
            self._pw = None

    @property
    def browser_pid(self) -> int | None:
        return sandbox.browser_pid(self._marker) if self._browser is not None else None

    def memory_mib(self) -> float:
        return sandbox.tree_memory_mib(self.browser_pid)

    def stats(self) -> dict:
        return {**self.counters, "cache_hits": self.cache.hits, "cache_entries": len(self.cache),
                "cache_mb": round(self.cache.size / 2**20, 1), "memory_mib": round(self.memory_mib(), 1)}

    async def render(self, request: RenderRequest | str) -> RenderResult:
        req = RenderRequest(request) if isinstance(request, str) else request
        cfg = self.cfg
        viewport = tuple(req.viewport or (cfg.viewport_width, cfg.viewport_height))
        times = tuple(req.shot_times if req.shot_times is not None else cfg.shot_times)
        t0 = time.perf_counter()
        if req.nbytes > cfg.max_html_bytes:
            return self._count(RenderResult(False, "too_large", shot_times=list(times),
                                            detail=f"html is over render.max_html_bytes={cfg.max_html_bytes}"))
        key = req.key(viewport, times, cfg.clock) if cfg.cache_mb else None
        if key and (hit := self.cache.get(key)) is not None:
            return RenderResult(**{**hit.__dict__, "cached": True})
        deadline_s = req.deadline_s or cfg.deadline_s
        try:  # waiting for a slot is the farm's time, not the page's: bounded on its own, never out of the deadline
            await asyncio.wait_for(self._slots.acquire(), cfg.queue_timeout_s)
        except asyncio.TimeoutError:
            return self._count(RenderResult(False, "busy", shot_times=list(times), timings_ms={
                "queue": round((time.perf_counter() - t0) * 1e3, 1)}, detail=f"no render slot came free within "
                f"render.queue_timeout_s={cfg.queue_timeout_s:g} s ({cfg.concurrency} pages were rendering)"))
        try:
            result = await self._render_once(req.html, viewport, times, deadline_s, req.files, t0)
        finally:
            self._slots.release()
        result.timings_ms["total"] = round((time.perf_counter() - t0) * 1e3, 1)
        if key and result.reason in (None, "blank"):  # timeouts and crashes may be load-dependent: never cached
            self.cache.put(key, result)
        return self._count(result)

    async def render_many(self, requests: list[RenderRequest | str]) -> list[RenderResult]:
        return list(await asyncio.gather(*(self.render(r) for r in requests)))

    # -- one page -------------------------------------------------------------------------------------------------

    async def _render_once(self, html: str, viewport, times, deadline_s: float, files, t_queued: float) -> RenderResult:
        """One page: opening a slot (a context and a page cost real browser time on a loaded machine) is the farm's
        time, bounded with the wait for a slot by render.queue_timeout_s ("busy"); the page's own deadline counts
        from then and covers loading, the screenshots and the DOM summary."""
        async with self._lock:
            await self._ensure_browser()
            gone = self._gone
        out = RenderResult(False, None, shot_times=list(times))
        slot, healthy = None, False
        try:
            opening = asyncio.ensure_future(self._acquire_slot())
            left = max(self.cfg.queue_timeout_s - (time.perf_counter() - t_queued), 0.05)
            if not (await asyncio.wait([opening], timeout=left))[0]:
                opening.add_done_callback(self._discard_slot)  # closed once it exists; this page is over
                out.reason = "busy"
                out.detail = f"no page could be opened within render.queue_timeout_s={self.cfg.queue_timeout_s:g} s"
                out.timings_ms["queue"] = round((time.perf_counter() - t_queued) * 1e3, 1)
                return out
            slot = opening.result()
            t_start = time.perf_counter()
            out.timings_ms["queue"] = round((t_start - t_queued) * 1e3, 1)
            work = asyncio.ensure_future(self._load_and_shoot(slot, html, viewport, times, out, files))
            waiters = [work, asyncio.ensure_future(slot.crashed.wait()), asyncio.ensure_future(gone.wait())]
            left = max(deadline_s - (time.perf_counter() - t_start), 0.0)
            done, _ = await asyncio.wait(waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            if slot.crashed.is_set() or gone.is_set():
                out.reason, out.detail = "crash", "the page's renderer crashed" if slot.crashed.is_set() else "chromium died"
            elif slot.navigated_to:
                out.reason, out.detail = "load_error", f"the page navigated away to {slot.navigated_to[:200]}"
            elif work not in done:
                out.reason = "timeout"
                out.detail = f"not loaded and shot within {deadline_s:.1f} s (stuck {slot.phase})"
            elif work.exception() is not None:
                out.reason, out.detail = "load_error", f"{type(work.exception()).__name__}: {work.exception()}"[:500]
            else:
                healthy = True
            out.console_errors, out.page_errors, out.blocked_requests = slot.console_errors, slot.page_errors, slot.blocked
        except Exception as e:  # the browser went away between steps
            out.reason, out.detail = ("crash" if gone.is_set() else "load_error"), f"{type(e).__name__}: {e}"[:500]
        finally:
            if slot is not None:  # a bad slot closes in the background: its page's result must not wait for that
                if healthy and not gone.is_set():
                    await self._release_slot(slot, True)
                else:
                    self._discard_slot(slot)
        if out.reason is None:
            fractions = await asyncio.to_thread(self._blank_fractions, out.screenshots)
            out.blank_fraction = fractions
            if max(fractions) <= self.cfg.blank_threshold:
                out.reason, out.detail = "blank", "nothing visible in any screenshot (one uniform colour)"
        out.valid = out.reason is None
        return out

    def _discard_slot(self, slot) -> None:
        """Close a slot (or the future of one being opened) in the background; close() waits for these."""
        if isinstance(slot, asyncio.Future):
            if slot.cancelled() or slot.exception() is not None:
                return
            slot = slot.result()
        closing = asyncio.ensure_future(self._release_slot(slot, False))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _load_and_shoot(self, slot: _Slot, html: str, viewport, times, out: RenderResult, files=None) -> None:
        page, cdp = slot.page, slot.cdp
        slot.phase = "sizing the viewport"
        if page.viewport_size != {"width": viewport[0], "height": viewport[1]}:
            await page.set_viewport_size({"width": viewport[0], "height": viewport[1]})
        virtual = self.cfg.clock == "virtual"
        t = time.perf_counter()
        slot.phase = "clearing the previous page"
        if slot.uses:  # a fresh document: new Window and JS realm, the previous page's timers and state gone
            await page.goto("about:blank")
        # Commit, then wait for the document ourselves, in one round trip: a page that navigates while parsing can
        # hang Playwright's "load" forever (the deadline bounds this wait).
        slot.phase = "committing the document"
        if files is None:
            await page.set_content(html, wait_until="commit")
        else:  # a file set: its own origin, new for every render (no storage shared with an earlier page)
            origin = f"http://page{next(_SITES)}.relook.invalid"
            slot.site = {f"{origin}/{name.lstrip('/')}": text for name, text in {**files, "index.html": html}.items()}
            slot.entry = f"{origin}/index.html"
            await page.goto(slot.entry, wait_until="commit")
        slot.phase = "waiting for the page to load"
        try:
            await asyncio.wait_for(_evaluate(page, _LOADED_JS), None if files is None else _SITE_LOAD_S)
        except asyncio.TimeoutError:  # a served page that navigates while loading stops its own load: shoot it as is
            pass
        loaded = time.perf_counter()
        out.timings_ms["load"] = round((loaded - t) * 1e3, 1)
        elapsed = 0.0
        for i, target in enumerate(times):
            if not virtual:
                await asyncio.sleep(max(0.0, loaded + target - time.perf_counter()))
            # Virtual clock: page time moves only here (timers due by `target` run now, in order); then whether
            # anything may have painted since the last shot - one round trip.
            slot.phase = f"advancing the clock to {target:g} s"
            changed = await _evaluate(page, _ADVANCE_JS, (target - elapsed) * 1000 if virtual else None)
            elapsed = target
            if i > 0 and self.cfg.skip_static_shots and not changed:
                out.screenshots.append(out.screenshots[-1])
                self.counters["shots_reused"] += 1
                continue
            slot.phase = f"taking screenshot {i + 1} of {len(times)}"
            shot = await cdp.send("Page.captureScreenshot", {"format": "png", "optimizeForSpeed": True})
            out.screenshots.append(base64.b64decode(shot["data"]))
            self.counters["shots_taken"] += 1
        out.timings_ms["shots"] = round((time.perf_counter() - loaded) * 1e3, 1)
        slot.phase = "summarising the DOM"
        out.dom = await _evaluate(page, _DOM_JS, self.cfg.max_text_chars)

    def _watch(self, slot: _Slot) -> None:
        page = slot.page

        def console(msg):
            if msg.type == "error" and len(slot.console_errors) < _MAX_MESSAGES:
                slot.console_errors.append(msg.text[:500])

        def page_error(err):
            if len(slot.page_errors) < _MAX_MESSAGES:
                slot.page_errors.append(str(err)[:500])

        def websocket(_):
            slot.blocked += 1

        def navigated(frame):
            if frame == page.main_frame and frame.url not in ("about:blank", slot.entry):
                slot.navigated_to = slot.navigated_to or frame.url

        page.on("console", console)
        page.on("pageerror", page_error)
        page.on("websocket", websocket)
        page.on("crash", lambda _: slot.crashed.set())
        page.on("framenavigated", navigated)
        page.on("popup", lambda p: asyncio.ensure_future(p.close()))
        page.on("dialog", lambda d: asyncio.ensure_future(d.dismiss()))

    async def _block(self, route) -> None:
        """Every request a page makes is refused locally (the dead proxy stops what never reaches here), except a
        multi-file page's requests for its own files, answered from memory."""
        try:
            slot = self._by_page.get(route.request.frame.page)
        except Exception:  # worker requests have no frame
            slot = None
        url = route.request.url.split("#")[0].split("?")[0]
        if slot is not None and slot.site is not None and url.startswith(slot.entry.rsplit("/", 1)[0] + "/"):
            if route.request.is_navigation_request() and url != slot.entry:
                slot.blocked += 1  # the one document it may load is its index.html
                await route.fulfill(status=204)
                return
            text = slot.site.get(url if not url.endswith("/") else url + "index.html")
            kind = mimetypes.guess_type(url)[0] or "application/octet-stream"
            await route.fulfill(status=200 if text is not None else 404, body=text or "",
                                content_type=f"{kind}; charset=utf-8" if text is not None else "text/plain")
            return
        if slot is not None:
            slot.blocked += 1
        if route.request.is_navigation_request():
            # 204 No Content tells the browser to stay on the current document: a meta refresh, location change,
            # form submit or download click leaves the page as it was (an abort would show Chrome's error page).
            await route.fulfill(status=204)
        else:
            await route.abort("blockedbyclient")

    def _blank_fractions(self, shots: list[bytes]) -> list[float]:
        memo: dict[int, float] = {}
        return [memo.setdefault(id(s), images.non_dominant_fraction(s)) for s in shots]

    def _count(self, result: RenderResult) -> RenderResult:
        self.counters["pages"] += 1
        self.counters["invalid"] += not result.valid
        return result

    # -- browser and contexts -------------------------------------------------------------------------------------

    async def _ensure_browser(self) -> None:
        if self._browser is not None and not self._gone.is_set():
            return
        if self._browser is not None:
            self.counters["relaunches"] += 1
            self._idle.clear()
            self._by_page.clear()
        if self._pw is None:
            self._pw = await async_playwright().start()
        self._browser = await self._pw.chromium.launch(
            executable_path=chromium.find(self.cfg.chromium_path), headless=True, chromium_sandbox=False,
            args=sandbox.launch_args(self.cfg.js_heap_mb, self._marker))
        gone = self._gone = asyncio.Event()
        self._browser.on("disconnected", lambda _: gone.set())

    async def _acquire_slot(self) -> _Slot:
        if self._idle:
            slot = self._idle.pop()
            slot.reset()
            return slot
        context = await self._browser.new_context(
            viewport={"width": self.cfg.viewport_width, "height": self.cfg.viewport_height},
            device_scale_factor=1, accept_downloads=False, service_workers="block",
            locale="en-US", timezone_id="UTC", color_scheme="light")
        await context.add_init_script(self._init_script)
        await context.route("**/*", self._block)
        page = await context.new_page()
        slot = _Slot(context, page, await context.new_cdp_session(page))
        self._by_page[page] = slot
        self._watch(slot)
        return slot

    async def _release_slot(self, slot: _Slot, healthy: bool) -> None:
        # Why reuse: a new context costs ~200 ms and a new page (process) ~100 ms of browser CPU, more than the
        # render. Safe because each slot's context holds exactly one page (so concurrent pages never share a
        # process), set_content documents have opaque origins (no cookies, storage or caches to inherit), and every
        # render starts from a fresh document. A slot that timed out, crashed or failed is thrown away.
        slot.uses += 1
        if healthy and slot.uses < self.cfg.pages_per_context:
            self._idle.append(slot)
            return
        self._by_page.pop(slot.page, None)
        try:
            await asyncio.wait_for(slot.context.close(), 5)
        except Exception:
            pass
