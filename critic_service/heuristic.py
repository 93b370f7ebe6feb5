"""A deterministic critic for machines with no MLLM (this box, CI, laptops).

It is a stand-in for the MLLM critic, not an MLLM: it cannot read a layout the way a vision model does. But it is a
real judge of the render: every check reads the screenshots or the rendered DOM, and every failed check becomes one
feedback sentence saying what is wrong and how to fix it. Pure computation, ~10-20 ms a critique.

It judges what a person sees, so that the reward cannot be gamed by what a person does not: text and elements
count only when visible (the render farm's DOM summary checks each text node's box, opacity and contrast), and the
score is earned by the task's own content. The task checks (background the page chose, component colour, task
terms, element kinds, motion) make the score; the generic checks (layout, no JavaScript errors) only scale it:
score = 100 x (0.7 x content + 0.3 x style) x (0.6 + 0.4 x hygiene), where content is the task's terms in the visible
text and the element kinds it asks for, style the background the page chose, the component colour and motion, and
hygiene the layout and a clean console. An empty page on the asked-for white, or a page with no script and so no
errors, earns next to nothing; another task's page earns only what it shares with this task.
"""
from __future__ import annotations

import io
import re
from html.parser import HTMLParser

import numpy as np
from PIL import Image, ImageColor

from .critique import Critique, CritiqueRequest

NAME = "heuristic"
_COLOR_NAMES = set(ImageColor.colormap)
_ALIASES = {"lightgoldenrod": "lightgoldenrodyellow"}  # WebGen-Bench says "light goldenrod"; CSS has no such name
_BG_WORDS = re.compile(r"background|base colou?r|layout|canvas")
_COMPONENT_WORDS = re.compile(r"component|element|\bui\b|interface|control|block|button|card|piece|accent")
_STOP = set("""a an the and or of to in on for with by from as at be is are was were this that these those it its
their they them you your users user should must can will would able allow allows provide provides include includes
including implement website web site page pages application app platform system functionality function functions
feature features please set use using make sure each all any also other such more most well based within into via
support supports supporting need needs like etc new different various specific related corresponding relevant
color colour colors background component components elements element style styled styling assign apply define
verify test check ensure displayed display displays correctly successfully without able properly shown show shows
enter entered select selected click navigate access view views option options information data item items
build create design dark light medium pale deep gray grey white black write landing have has where when what which
who whom there here then than them into onto about after before while where very just only so some many much""".split())

# kind -> (what in the task asks for it, how the page shows it, how to fix it)
_KINDS = {
    "inputs": (r"\b(search|input|enter|form|login|log in|sign.?up|register|fill|upload|comment|filter|booking)",
               lambda c: c.get("inputs", 0) > 0, "add the <input>/<textarea>/<select> fields it needs"),
    "buttons": (r"\b(button|click|submit|generate|book|buy|order|save|create|add to)",
                lambda c: c.get("buttons", 0) > 0, "add real <button> elements for its actions"),
    "tables": (r"\b(table|tabular|leaderboard|ranking|schedule|list of|history)",
               lambda c: c.get("tables", 0) + c.get("lists", 0) > 0, "present the records in a <table> or a list"),
    "charts": (r"\b(chart|graph|visuali[sz]|plot|dashboard|trend|statistic|analytic)",
               lambda c: c.get("canvas", 0) + c.get("svg", 0) > 0, "draw the charts with <canvas> or inline <svg>"),
    "navigation": (r"\b(navigat|menu|navbar|sections|tabs)",
                   lambda c: c.get("nav", 0) > 0 or c.get("links", 0) >= 3, "add a <nav> bar with links to the sections"),
    "images": (r"\b(image|photo|picture|gallery|avatar|thumbnail)",
               lambda c: c.get("images", 0) + c.get("svg", 0) > 0, "add <img> or inline <svg> illustrations"),
}
_MOTION = re.compile(r"\b(animat|carousel|slideshow|slider|countdown|timer|clock|real.?time|transition|marquee|ticker)")
TERMS_FOR_FULL = 0.5  # share of the task's key terms that earns the full terms check
CONTENT_CHECKS = {"terms": 2.0, "elements": 1.0}  # check -> weight: what the page is about
STYLE_CHECKS = {"background": 1.0, "components": 1.0, "motion": 1.0}  # how it looks, as the task asks
GENERIC_CHECKS = {"layout": 2.0, "errors": 1.0}  # any page's hygiene
CONTENT_SHARE, GENERIC_SHARE = 0.7, 0.4  # content's share of the task score (style has the rest); how much hygiene can take away


def task_colors(text: str) -> dict[str, tuple[int, int, int]]:
    """The background and component colours a task names ("Use ivory for the background and forest green for
    components"): CSS names (spaces allowed) or hex codes, read clause by clause from the sentences that name
    colours. A clause's own words say its role ("background", "layout" / "components", "buttons", "UI"); colours
    whose clause says neither take the roles left, background first (WebGen-Bench's order)."""
    found: dict[str, tuple[int, int, int]] = {}
    for sentence in re.split(r"(?<=[.!?])\s+", text.lower()):
        unassigned = []
        for clause in re.split(r"\band\b|[;,]", sentence):
            colors = _colors_in(clause)
            if len(colors) != 1:
                unassigned += colors
                continue
            role = ("background" if _BG_WORDS.search(clause) else
                    "components" if _COMPONENT_WORDS.search(clause) else None)
            if role and role not in found:
                found[role] = colors[0]
            else:
                unassigned += colors
        if found or (unassigned and (_BG_WORDS.search(sentence) or _COMPONENT_WORDS.search(sentence))):
            for role in ("background", "components"):
                if role not in found and unassigned:
                    found[role] = unassigned.pop(0)
        if len(found) == 2:
            break
    return found


def _colors_in(clause: str) -> list[tuple[int, int, int]]:
    out = [ImageColor.getrgb(m.group()) for m in re.finditer(r"#[0-9a-f]{6}\b|#[0-9a-f]{3}\b", clause)]
    words = re.findall(r"[a-z]+", clause)
    i = 0
    while i < len(words):
        for n in (3, 2, 1):  # longest name first: "dark slate gray" before "slate gray" before "gray"
            name = "".join(words[i:i + n])
            name = _ALIASES.get(name, name)
            if i + n <= len(words) and name in _COLOR_NAMES:
                out.append(ImageColor.getrgb(name))
                i += n
                break
        else:
            i += 1
    return out


def key_terms(task: str, checklist: list[str], limit: int = 12) -> list[str]:
    """The task's most frequent content words (no stop words, no colour names)."""
    counts: dict[str, int] = {}
    for w in re.findall(r"[a-z][a-z-]{3,}", (task + " " + " ".join(checklist)).lower()):
        if w in _STOP or w in _COLOR_NAMES:
            continue
        counts[_stem(w)] = counts.get(_stem(w), 0) + 1
    return sorted(counts, key=lambda w: -counts[w])[:limit]


def _stem(word: str) -> str:
    for suffix in ("ing", "ies", "es", "ed", "s"):
        if word.endswith(suffix) and not word.endswith("ss") and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def _rgb_distance(pixels: np.ndarray, rgb) -> np.ndarray:
    """'Redmean' colour distance, a cheap perceptual approximation: 0 (same) .. ~765. pixels [N, 3]."""
    p = pixels.astype(np.int32)
    r_mean = (p[:, 0] + rgb[0]) // 2
    d = p - np.array(rgb, np.int32)
    return np.sqrt(((512 + r_mean) * d[:, 0] ** 2 >> 8) + 4 * d[:, 1] ** 2 + ((767 - r_mean) * d[:, 2] ** 2 >> 8))


def _pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        rgb = np.asarray(im.convert("RGB"))
    return rgb[::2, ::2]  # [H/2, W/2, 3]: enough for colour and coverage statistics


class _TextAndCounts(HTMLParser):
    """A DOM summary from HTML alone, for requests that come without the render farm's."""

    def __init__(self):
        super().__init__()
        self.text, self.counts, self._skip = [], {}, 0

    def handle_starttag(self, tag, attrs):
        kind = {"button": "buttons", "input": "inputs", "textarea": "inputs", "select": "inputs", "form": "forms",
                "table": "tables", "canvas": "canvas", "svg": "svg", "img": "images", "a": "links", "nav": "nav",
                "ul": "lists", "ol": "lists"}.get(tag)
        if kind:
            self.counts[kind] = self.counts.get(kind, 0) + 1
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        self._skip -= tag in ("script", "style") and self._skip > 0

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def _dom(req: CritiqueRequest) -> dict:
    if req.dom:
        return req.dom
    parser = _TextAndCounts()
    parser.feed(req.html)
    text = re.sub(r"\s+", " ", " ".join(parser.text)).strip()
    return {"text": text, "text_chars": len(text), "counts": parser.counts,
            "colors": {"bg_set": bool(re.search(r"background", req.html, re.I))}}


def _layout(content: np.ndarray, dom: dict, text: str) -> tuple[float, list[str]]:
    """content [H, W] bool (pixels that are not the background) -> (layout score 0..1, feedback sentences)."""
    notes = []
    coverage = float(content.mean())
    ys, xs = np.nonzero(content)
    spread = ((ys.max() - ys.min()) * (xs.max() - xs.min()) / content.size) if len(ys) else 0.0
    scroll = dom.get("scroll", {})
    overflow = scroll.get("width", 0) > scroll.get("viewport", [10**9])[0] + 1
    layout = [coverage >= 0.03, spread >= 0.25, dom.get("text_chars", len(text)) >= 150, not overflow]
    if coverage < 0.03:
        notes.append(f"The first screen is nearly empty ({coverage:.1%} of it carries content): put the main "
                     f"sections above the fold.")
    if spread < 0.25:
        notes.append("The content sits in a small corner of the viewport: use a full-width layout with a centred "
                     "container (max-width around 1200px).")
    if dom.get("text_chars", len(text)) < 150:
        notes.append("The page has very little text: add headings and descriptive copy for each feature.")
    if overflow:
        notes.append(f"The page overflows horizontally ({scroll['width']}px wide in a {scroll['viewport'][0]}px "
                     f"viewport): constrain widths (max-width: 100%, flex-wrap) so nothing sticks out.")
    return sum(layout) / len(layout), notes


def critique(req: CritiqueRequest) -> Critique:
    if not req.screenshots:
        return Critique.failed("no_screenshots", NAME, "the heuristic critic judges renders: send the screenshots")
    dom = _dom(req)
    counts = dom.get("counts", {})
    text = dom.get("text", "").lower()  # visible text only: not the title, not hidden nodes
    shots = [_pixels(png) for png in dict.fromkeys(req.screenshots)]  # distinct shots only, in order
    last = shots[-1]
    flat = last.reshape(-1, 3)
    packed = (flat[:, 0].astype(np.int32) << 16) | (flat[:, 1].astype(np.int32) << 8) | flat[:, 2]
    values, freq = np.unique(packed, return_counts=True)
    dominant = int(values[np.argmax(freq)])
    dominant_rgb = ((dominant >> 16) & 255, (dominant >> 8) & 255, dominant & 255)
    content = packed != dominant  # [N] pixels that are not the page background
    earned, notes = {}, []

    wanted = task_colors(req.task + " " + " ".join(req.checklist))
    if "background" in wanted:
        target = wanted["background"]
        d = float(_rgb_distance(np.array([dominant_rgb]), target)[0])
        # A browser's default canvas is not a choice: on a page that sets no background it earns nothing.
        chosen = dom.get("colors", {}).get("bg_set", True)
        earned["background"] = float(np.clip((150 - d) / 110, 0, 1)) if chosen else 0.0
        if not chosen:
            notes.append(f"The page never sets a background: set `body {{ background-color: {_hex(target)}; }}`.")
        elif earned["background"] < 1:
            notes.append(f"The page background is {_hex(dominant_rgb)} but the task asks for {_hex(target)}: "
                         f"set `body {{ background-color: {_hex(target)}; }}` and keep sections transparent or on it.")
    if "components" in wanted:
        target = wanted["components"]
        near = _rgb_distance(flat, target) < 60
        share = float(near.mean()) if target != wanted.get("background") else float((near & content).mean())
        earned["components"] = float(np.clip(share / 0.02, 0, 1))
        if earned["components"] < 1:
            notes.append(f"Hardly any of the page uses the component colour {_hex(target)} ({share:.1%} of pixels): "
                         f"style the header, buttons, cards and links with it (background-color or color).")

    terms = key_terms(req.task, req.checklist)
    if terms:
        missing = [t for t in terms if t not in text]
        # A page that shows half of the task's key terms covers it: the list is the task's most frequent words, and
        # a good page need not repeat every one of them.
        earned["terms"] = min(1.0, (len(terms) - len(missing)) / max(1.0, TERMS_FOR_FULL * len(terms)))
        if missing:
            notes.append(f"The page never mentions {', '.join(missing[:6])}: add headings, labels and content "
                         f"for these parts of the task.")

    asked = [k for k, (pattern, _, _) in _KINDS.items() if re.search(pattern, req.task.lower())]
    if asked:
        absent = [k for k in asked if not _KINDS[k][1](counts)]
        earned["elements"] = 1 - len(absent) / len(asked)
        for k in absent:
            notes.append(f"The task needs {k} but the page has none: {_KINDS[k][2]}.")

    earned["layout"], layout_notes = _layout(content.reshape(last.shape[:2]), dom, text)
    notes += layout_notes

    earned["errors"] = 0.0 if req.errors else 1.0
    if req.errors:
        notes.append(f"The page raises {len(req.errors)} JavaScript error(s), first: {req.errors[0][:160]!r} - fix it.")

    if _MOTION.search(req.task.lower()):
        moved = max((float(np.mean(np.any(a != b, axis=-1))) for a, b in zip(shots, shots[1:])), default=0.0)
        earned["motion"] = float(np.clip(moved / 0.002, 0, 1))
        if earned["motion"] < 1:
            notes.append(f"The task asks for motion but the screenshots from {req.times()[0]:g} s to "
                         f"{req.times()[-1]:g} s are {'identical' if moved == 0 else 'almost identical'}: animate "
                         f"with CSS @keyframes or a setInterval that updates the page.")

    score = round(100 * float(combine(earned)), 1)
    feedback = " ".join(notes) or "The page passes every check of the heuristic critic (colours, content, elements, layout)."
    return Critique(score, feedback, backend=NAME, checks={k: round(v, 4) for k, v in earned.items()})


def combine(earned: dict[str, float]) -> float:
    """Sub-scores (0..1) -> score (0..1): the task's checks (content, then style) make the score; hygiene only scales
    it, so a clean console and a tidy layout are worth nothing on a page that does none of the task."""
    def mean(weights):
        present = {k: w for k, w in weights.items() if k in earned}
        return sum(w * earned[k] for k, w in present.items()) / sum(present.values()) if present else 1.0
    task = CONTENT_SHARE * mean(CONTENT_CHECKS) + (1 - CONTENT_SHARE) * mean(STYLE_CHECKS)
    return task * (1 - GENERIC_SHARE + GENERIC_SHARE * mean(GENERIC_CHECKS))


def _hex(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)
