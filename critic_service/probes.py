"""An independent judge: executable checks on the live page, for learning figures the policy never trained against.

The training critic (heuristic.py) scores what the render farm measured; this judge drives the page itself in its
own Chromium with Playwright and a real clock: it types into the form and presses its button, types into the search
box and presses Enter, clicks the first navigation link and the call to action, counts the table's visible cells,
screenshots a canvas chart, samples the background under six points of the viewport, and asks whether the header,
buttons and cards carry the component colour. Each checklist item a task implies becomes one pass/fail probe;
the score is the share passed, 0..100. Its own rules and thresholds, not the critic's, so that a policy that learned
to please the critic does not score here by construction.

    async with ProbeJudge() as judge:
        verdict = await judge(task_text, checklist, html)   # {"score", "checks": {probe: 0/1}, "seconds"}
"""
from __future__ import annotations

import asyncio
import io
import re
import time

from render_farm import sandbox
from render_farm.chromium import find as find_chromium

from .task_text import task_colors

# probe -> what in a task (its text or one checklist item) asks for it
ITEMS = {
    "form": r"\b(form|log ?in|sign.?up|regist|booking|book a|reserv|contact|subscribe|checkout|enter (your|the)|fill)",
    "search": r"\b(search|look up)",
    "table": r"\b(table|tabular|leaderboard|ranking|schedule|timetable)",
    "chart": r"\b(chart|graph|visuali[sz]|plot|trend)",
    "navigation": r"\b(navigat|navbar|nav bar|menu bar|tabs\b)",
    "call_to_action": r"\b(call.to.action|cta\b|button)",
    "gallery": r"\b(gallery|photos|images|pictures|thumbnails)",
    "footer": r"\bfooter",
    "motion": r"\b(animat|carousel|slideshow|slider|countdown|ticker)",
}
_STOP = set("""image images gallery data table chart navigation contact form search footer links call action
button write with that this from have page website site landing application should must will your their
about into each also using used user users show shows allow allows include includes provide provides support
color colour background component components interface""".split())

# One evaluation for every measurement (no interaction); `wanted` names the component colour as [r, g, b] or null.
_MEASURE_JS = """(target) => {
  const W = innerWidth, H = innerHeight, docW = Math.max(document.documentElement.scrollWidth, W);
  // shown: rendered and opaque, on the page, and not clipped away by an ancestor that hides its overflow
  const vis = (el) => { const r = el.getBoundingClientRect();
    if (r.width < 2 || r.height < 2 || r.right <= 0 || r.left >= docW || r.bottom + scrollY <= 0) return false;
    if (!el.checkVisibility({ opacityProperty: true, visibilityProperty: true })) return false;
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      const s = getComputedStyle(a); if (s.overflow === 'visible' && s.clipPath === 'none') continue;
      const b = a.getBoundingClientRect(); if (b.width < 2 || b.height < 2 || r.right <= b.left || r.left >= b.right
        || r.bottom <= b.top || r.top >= b.bottom) return false; }
    return true; };
  // what the interactions may touch: shown fields, buttons and top links, tagged for Playwright's locators
  const tag = (el, what) => el.setAttribute('data-relook-probe', ((el.getAttribute('data-relook-probe') || '') + ' ' + what).trim());
  for (const el of document.querySelectorAll('input, textarea, [role=searchbox]')) if (vis(el)) {
    if (!/^(hidden|checkbox|radio|submit|button|range|color|file|reset|image)$/.test(el.type || '')) tag(el, 'field');
    if (el.type === 'search' || /search/i.test([el.placeholder, el.name, el.id, el.getAttribute('aria-label')].join(' '))) tag(el, 'search'); }
  for (const el of document.querySelectorAll('button, input[type=submit], input[type=button], [role=button], a[class*=btn], a[class*=button]'))
    if (vis(el) && (el.innerText || el.value || '').trim()) tag(el, el.closest('form') ? 'button send' : 'button');
  const top = [...document.querySelectorAll('a')].filter((a) => vis(a) && a.innerText.trim() && a.getBoundingClientRect().top + scrollY < 250);
  const rows = new Map(); for (const a of top) { const k = Math.round(a.getBoundingClientRect().top / 30); rows.set(k, (rows.get(k) || []).concat([a])); }
  const bar = [...rows.values()].sort((a, b) => b.length - a.length)[0] || [];
  if (bar.length >= 3) bar.forEach((a) => tag(a, 'nav'));
  const rgb = (c) => { const m = (c || '').match(/[\\d.]+/g); return m && (m.length < 4 || Number(m[3]) > 0.5) ? m.slice(0, 3).map(Number) : null; };
  const bgAt = (x, y) => { for (let el = document.elementFromPoint(x, y); el; el = el.parentElement) {
    const c = rgb(getComputedStyle(el).backgroundColor); if (c) return c; } return [255, 255, 255]; };
  const docH = document.documentElement.scrollHeight;
  const points = [];  // a 6 x 4 grid over the first screen
  for (let i = 0; i < 6; i++) for (let j = 0; j < 4; j++) points.push(bgAt((i + 0.5) * W / 6, (j + 0.5) * H / 4));
  const cells = [...document.querySelectorAll('td, th')].filter((c) => vis(c) && c.innerText.trim());
  const cellRows = new Set(cells.map((c) => c.parentElement));
  const shapes = [];
  for (const svg of document.querySelectorAll('svg')) { const b = svg.getBoundingClientRect(); if (!vis(svg) || b.width < 100 || b.height < 60) continue;
    const ms = [...svg.querySelectorAll('rect, circle, path, polyline, polygon, ellipse, line')].map((m) => m.getBoundingClientRect())
      .filter((r) => r.width + r.height >= 6 && r.width * r.height < 0.8 * b.width * b.height);
    shapes.push(new Set(ms.map((r) => `${Math.round(r.width / 6)}x${Math.round(r.height / 6)}`)).size >= 2 ? ms.length : 0); }
  for (const box of document.querySelectorAll('div, ul, section')) { const kids = [...box.children].filter((k) => vis(k) && rgb(getComputedStyle(k).backgroundColor));
    if (kids.length >= 3 && kids.length <= 30 && new Set(kids.map((k) => Math.round(k.getBoundingClientRect().height / 6))).size >= 2
        && kids.every((k) => k.innerText.trim().length <= 12)) shapes.push(kids.length); }
  const canvases = [...document.querySelectorAll('canvas')].filter((c) => vis(c) && c.getBoundingClientRect().width >= 100).length;
  const pics = [...document.querySelectorAll('img, svg, picture, video, [style*=background-image]')].filter((p) => {
    const r = p.getBoundingClientRect(); return vis(p) && r.width >= 80 && r.height >= 80 && (p.tagName !== 'IMG' || p.naturalWidth > 0); });
  const foot = [...document.querySelectorAll('footer, [role=contentinfo]')].filter((f) => vis(f) &&
    f.getBoundingClientRect().top + scrollY >= 0.5 * docH - 1);
  const near = (c) => c && target && Math.abs(c[0] - target[0]) + Math.abs(c[1] - target[1]) + Math.abs(c[2] - target[2]) < 90;
  const parts = [...document.querySelectorAll('header, nav, footer, button, th, a, h1, h2, [class*=card], [class*=btn]')].filter(vis);
  const coloured = parts.filter((el) => { const s = getComputedStyle(el);
    return near(rgb(s.backgroundColor)) || (parseFloat(s.borderTopWidth) >= 1 && near(rgb(s.borderTopColor))) || near(rgb(s.color)); });
  // what the page says it is: its title, headings and first lines
  const heads = [...document.querySelectorAll('title, h1, h2')].map((h) => h.textContent).join(' ') + ' ' +
    (document.body ? document.body.innerText : '').split(/\\s+/).slice(0, 60).join(' ');
  return { points, cells: cells.length, rows: cellRows.size, marks: Math.max(0, ...shapes), canvases, pics: pics.length,
           footer: foot.length > 0, footer_links: foot.reduce((n, f) => n + f.querySelectorAll('a').length, 0),
           coloured: coloured.length, heads, words: (document.body ? document.body.innerText : '').split(/\\s+/).filter(Boolean).length };
}"""


def wanted_probes(task: str, checklist: list[str]) -> list[str]:
    """The probes a task implies: one per kind its text or checklist asks for, plus the page's subject (always) and
    its colours (when the task names them)."""
    text = (task + " " + " ".join(checklist)).lower()
    probes = ["subject"] + [k for k, pattern in ITEMS.items() if re.search(pattern, text)]
    colours = task_colors(task + " " + " ".join(checklist))
    return probes + [f"{role}_colour" for role in ("background", "components") if role in colours]


def subject_words(task: str) -> set[str]:
    """The task's own nouns, roughly: words of 4+ letters in its first sentence that are not boilerplate."""
    first = re.split(r"(?<=[.!?])\s", task.strip(), maxsplit=1)[0].lower()
    return {w.rstrip("s") for w in re.findall(r"[a-z]{4,}", first) if w not in _STOP}


class ProbeJudge:
    """One Chromium (the render farm's sandbox flags: no network, capped heap) and a fresh context per page."""

    def __init__(self, timeout_s: float = 15.0, viewport: tuple[int, int] = (1280, 720)):
        self.timeout_s, self.viewport = timeout_s, viewport
        self._pw = self._browser = None

    async def __aenter__(self) -> "ProbeJudge":
        from playwright.async_api import async_playwright
        self._pw = await async_playwright().start()
        self._browser = await self._pw.chromium.launch(executable_path=find_chromium(), headless=True,
                                                       args=sandbox.launch_args(512, sandbox.new_marker()))
        return self

    async def __aexit__(self, *exc) -> None:
        if self._browser is not None:
            await self._browser.close()
        if self._pw is not None:
            await self._pw.stop()

    async def __call__(self, task: str, checklist: list[str], html: str | None) -> dict:
        t0 = time.perf_counter()
        probes = wanted_probes(task, checklist)
        checks = dict.fromkeys(probes, 0)
        if html:
            context = await self._browser.new_context(viewport=dict(zip(("width", "height"), self.viewport)),
                                                      accept_downloads=False, service_workers="block")
            await context.route("**/*", _offline)
            try:
                page = await context.new_page()  # dialogs are dismissed by Playwright when nobody listens
                checks.update(await asyncio.wait_for(self._probe(page, task, checklist, html, probes), self.timeout_s))
            except Exception:  # noqa: BLE001 - a page that hangs or breaks the browser passes what it passed before
                pass
            finally:
                await context.close()
        return {"score": round(100 * sum(checks.values()) / len(checks), 1), "checks": checks,
                "seconds": round(time.perf_counter() - t0, 3)}

    async def _probe(self, page, task: str, checklist: list[str], html: str, probes: list[str]) -> dict[str, int]:
        colours = task_colors(task + " " + " ".join(checklist))
        out: dict[str, int] = {}
        await page.set_content(html, wait_until="load", timeout=self.timeout_s * 1000)
        await page.wait_for_timeout(300)  # first timers and transitions
        shot0 = await page.screenshot() if "motion" in probes else None
        m = await page.evaluate(_MEASURE_JS, list(colours.get("components", ())) or None)
        out["subject"] = int(bool(subject_words(task) & {w.rstrip("s") for w in re.findall(r"[a-z]{4,}", m["heads"].lower())})
                             and m["words"] >= 30)
        if "table" in probes:
            out["table"] = int(m["cells"] >= 6 and m["rows"] >= 3)
        if "chart" in probes:
            out["chart"] = int(m["marks"] >= 3 or await _canvas_has_marks(page))
        if "gallery" in probes:
            out["gallery"] = int(m["pics"] >= 3)
        if "footer" in probes:
            out["footer"] = int(m["footer"] and m["footer_links"] >= 1)
        if "background_colour" in probes:
            target = colours["background"]
            near = sum(sum(abs(a - b) for a, b in zip(p, target)) < 90 for p in m["points"])
            out["background_colour"] = int(near >= 0.4 * len(m["points"]))  # at least 10 of the 24 points
        if "components_colour" in probes:
            out["components_colour"] = int(m["coloured"] >= 2)
        if "motion" in probes:
            await page.wait_for_timeout(900)
            out["motion"] = int(await page.screenshot() != shot0)
        # interactions last, each on a fresh load of the page: a submit may navigate away
        for name, act in (("search", _type_and_enter), ("form", _fill_and_submit), ("navigation", _click_links),
                          ("call_to_action", _click_cta)):
            if name in probes:
                if name != probes[-1] or len(out) > 1:
                    await page.set_content(html, wait_until="load", timeout=self.timeout_s * 1000)
                    await page.evaluate(_MEASURE_JS, None)  # tags the fields, buttons and links again
                out[name] = int(await act(page))
        return out


async def _offline(route) -> None:
    """No network: a page's requests are refused (the launch flags' dead proxy catches the rest)."""
    await (route.continue_() if route.request.url.startswith(("data:", "about:")) else route.abort())


async def _alive(page) -> bool:
    try:
        return await page.evaluate("document.body !== null")
    except Exception:  # noqa: BLE001 - navigated to a document that is gone, or the page crashed
        return False


async def _fill_and_submit(page) -> bool:
    """Two or more shown fields take typed text, and a shown button sends it without breaking the page."""
    fields = page.locator("[data-relook-probe~=field]")
    filled = 0
    for i in range(min(await fields.count(), 4)):
        field = fields.nth(i)
        try:
            kind = await field.get_attribute("type") or "text"
            value = {"email": "probe@example.org", "number": "3", "date": "2026-12-03", "tel": "5550100"}.get(kind, "Probe")
            await field.fill(value, timeout=1000)
            filled += (await field.input_value(timeout=500)) != ""
        except Exception:  # noqa: BLE001 - a field that refuses typing does not count
            continue
    return filled >= 2 and await _click(page, "[data-relook-probe~=send], [data-relook-probe~=button]")


async def _type_and_enter(page) -> bool:
    try:
        box = page.locator("[data-relook-probe~=search]").first
        await box.fill("bread", timeout=1000)
        await box.press("Enter", timeout=1000)
    except Exception:  # noqa: BLE001
        return False
    return await _alive(page)


async def _click_links(page) -> bool:
    """Three or more shown links in one row near the top, and the first clicks without breaking the page."""
    return await _click(page, "[data-relook-probe~=nav]")


async def _click_cta(page) -> bool:
    """A shown button outside any form (a call to action) clicks without breaking the page."""
    return await _click(page, "[data-relook-probe~=button]:not([data-relook-probe~=send])")


async def _click(page, selector: str) -> bool:
    try:
        await page.locator(selector).first.click(timeout=1000, no_wait_after=True)
        await page.wait_for_timeout(100)
    except Exception:  # noqa: BLE001 - nothing to click, or the click never landed
        return False
    return await _alive(page)


async def _canvas_has_marks(page) -> bool:
    """A canvas whose own screenshot holds three or more colours of some size (bars, lines, labels)."""
    from PIL import Image
    for canvas in (await page.locator("canvas:visible").all())[:3]:
        png = await canvas.screenshot(timeout=1000)
        with Image.open(io.BytesIO(png)) as im:
            colours = im.convert("RGB").quantize(8).getcolors() or []
        total = sum(n for n, _ in colours)
        if sum(n >= 0.02 * total for n, _ in colours) >= 3:
            return True
    return False


async def judge_all(rows: list[tuple[str, list[str], str | None]]) -> list[dict]:
    """[(task, checklist, html or None)] -> verdicts, one browser for all of them."""
    async with ProbeJudge() as judge:
        return [await judge(task, checklist, html) for task, checklist, html in rows]
