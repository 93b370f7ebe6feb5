"""A deterministic critic for machines with no MLLM (this box, CI, laptops).

It is a stand-in for the MLLM critic, not an MLLM. But it is a real judge of the render, and one that a salad of
keywords cannot buy: every check reads the screenshots or what the render farm measured on the rendered page
(render_farm/dom_summary.js: visible text by role, and the best visible instance of each kind of part).
- Each part the task asks for is judged as shown (`_KINDS`): a form is visible inputs a person can tell apart and a
  button to send it; a table rows and columns of filled cells; a chart several marks of different sizes; a
  navigation bar several links side by side near the top; a gallery several real-size images side by side; a footer
  links at the bottom. Three heavy parts the task never asked for (a bit of everything) cost points.
- The task's key terms count once each, from headings, labels and copy, in a page's worth of readable text; a block
  that is a bare keyword list counts nothing; another task's vocabulary (`_TOPICS`, past one kind) and repetition
  cost points.
- The background is the colour of most of the viewport; the component colour counts on components (elements that
  hold text or controls), not on empty decorative bands; motion is 1 % of the screen changing.

score = 100 x content x (0.7 + 0.3 x style) x (0.6 + 0.4 x hygiene) (`combine`): content (terms, parts) is the score,
style and hygiene (layout, a clean console) only take from it, and a group the task does not ask for is left out, never
a free 1. The feedback says what is wrong in a person's words, never CSS or text to paste. ~30 ms a critique.
"""
from __future__ import annotations

import io
import math
import re
from html.parser import HTMLParser

import numpy as np
from PIL import Image

from common.colours import css_rgb
from common.colours import name as _name

from .critique import Critique, CritiqueRequest
from .task_text import key_terms, stem, task_colors

NAME = "heuristic"
NAME = "heuristic"
# Function words: copy a person reads is full of them, a bare keyword list has hardly any.
_FUNCTION = set("""a an the and or of to in on for with by from as at is are was be our your we you it its this that
my their all each every more than into over under about per not no can will here there how what when who""".split())
# kind -> (what in the task asks for it, how well the page shows it 0..1 from the render's structure, what is wrong)
_KINDS = {
    "form": (r"\b(form|log ?in|sign.?up|register|registration|booking|book a|reserv|contact|subscribe|checkout|"
             r"fill (in|out)|comment|feedback|upload)",
             lambda s: min(s["form"]["inputs"], 3) / 6 + 0.25 * min(1, s["form"]["labelled"] / max(s["form"]["inputs"], 2))
             + 0.25 * s["form"]["submit"], "a form needs several fields a person can tell apart and a button to send it"),
    "search": (r"\b(search|look up)", lambda s: 1.0 if s["search"] else 0.3 * (s["form"]["inputs"] > 0),
               "there is no search box a person would recognise as one"),
    "buttons": (r"\b(button|call.to.action|cta|click|submit|buy|add to cart)",
                lambda s: min(1.0, s["buttons"]["count"] / 2) * (1.0 if s["buttons"]["first_screen"] else 0.6),
                "the actions the task names have no visible buttons (and none on the first screen)"),
    "table": (r"\b(table|tabular|leaderboard|ranking|schedule|timetable|spreadsheet)",
              lambda s: min(1, s["table"]["rows"] / 4) * min(1, s["table"]["cols"] / 2) * s["table"]["filled"],
              "the table needs a header and several rows of filled-in columns"),
    "chart": (r"\b(chart|graph|visuali[sz]|plot|trend|statistic|analytic)",
              lambda s: min(1, s["chart"]["sizes"] / 3) * min(1, s["chart"]["marks"] / 4),
              "the chart needs several marks (bars, points, slices) whose sizes show the values"),
    "navigation": (r"\b(navigat|navbar|nav bar|menu bar|tabs\b|sections)", lambda s: min(1, s["nav"]["links"] / 3),
                   "there is no navigation bar with several links at the top of the page"),
    "images": (r"\b(image|photo|picture|gallery|avatar|thumbnail|portfolio)",
               lambda s: min(1, s["images"]["count"] / 3) * (1.0 if s["images"]["per_row"] >= 2 else 0.6),
               "the images are missing, too small, or not laid out side by side as a gallery"),
    "footer": (r"\bfooter", lambda s: 0.5 * s["footer"]["present"] + 0.5 * min(1, s["footer"]["links"] / 2),
               "there is no footer with links at the bottom of the page"),
}
_MOTION = re.compile(r"\b(animat|carousel|slideshow|slider|countdown|timer|clock|real.?time|transition|marquee|ticker)")
_HEAVY = ("form", "table", "chart", "images")  # kinds a page does not grow by accident: three unasked ones cost points
# Site kinds a task can be about, by the words that name them. The words of kinds the task never mentions, shown by
# a page, are another task's vocabulary: one such kind is a page's own business, each one past it costs points.
_TOPICS = {k: set(v.split()) for k, v in {
    "bakery": "bakery bread breads cake cakes pastry pastries croissant sourdough", "photography": "photographer photography photoshoot",
    "sales": "sales revenue quarterly", "todo": "todo to-do todos", "pricing": "pricing subscription tiers",
    "blog": "blog blogger", "restaurant": "restaurant dishes chef cuisine", "event": "event events speakers agenda",
    "weather": "weather forecast humidity rainfall", "recipe": "recipe recipes ingredients", "hotel": "hotel hotels suites",
    "music": "music song songs playlist album albums", "finance": "stock stocks trading investment", "fitness": "fitness workout gym",
    "education": "students lesson lessons tuition", "travel": "travel trip flights destinations", "shop": "shop cart checkout",
    "medical": "clinic doctor patient patients", "real estate": "property properties apartment rent", "jobs": "job jobs career hiring",
    "games": "gaming arcade", "news": "news headlines journalism", "library": "library books borrow",
    "pets": "pet pets adoption veterinary", "cars": "car cars vehicle dealership", "movies": "movie movies cinema film",
}.items()}
WORDS_FOR_FULL = 40  # readable words (not keyword lists) a page needs for its terms to count in full
TERMS_FOR_FULL = 0.5  # share of the task's key terms, shown in context, that earns the full terms check
CONTENT_CHECKS = {"terms": 2.0, "elements": 1.0}  # check -> weight: what the page is about
STYLE_CHECKS = {"background": 1.0, "components": 1.0, "motion": 1.0}  # how it looks, as the task asks
GENERIC_CHECKS = {"layout": 2.0, "errors": 1.0}  # any page's hygiene
STYLE_SHARE, GENERIC_SHARE = 0.3, 0.4  # how much style, then hygiene, can take away from the content's score


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
    return float(sum(layout) / len(layout)), notes


def _structure(dom: dict) -> dict:
    """The render farm's measured structure; from HTML alone (no render farm), a cautious guess from element counts."""
    if "structure" in dom:
        return dom["structure"]
    c = dom.get("counts", {})
    n = lambda k: c.get(k, 0)
    return {"form": {"inputs": n("inputs"), "labelled": 0, "submit": n("buttons") > 0}, "search": False,
            "table": {"rows": 2 * n("tables"), "cols": 2 * n("tables"), "filled": 0.5}, "chart": {"marks": 0, "sizes": 0},
            "nav": {"links": min(n("links"), 2)}, "images": {"count": n("images"), "per_row": 1},
            "footer": {"present": False, "links": 0}, "buttons": {"count": n("buttons"), "first_screen": 0},
            "blocks": [{"role": "copy", "text": dom.get("text", "")}]}


_WORD = re.compile(r"[a-z][a-z-]+")


def _terms(task: str, checklist: list[str], blocks: list[dict]) -> tuple[float | None, list[str]]:
    """Key terms shown in context: each counts once, from a heading, a label or copy; a block that is a bare keyword
    list (many words, hardly a function word) counts nothing; another task's vocabulary and repetition cost points."""
    terms = key_terms(task, checklist)
    if not terms:
        return None, []
    notes, shown, listed, words, read = [], set(), 0, [], 0
    for b in blocks:
        ws = _WORD.findall(b["text"].lower())
        words += ws
        if len(ws) >= 6 and sum(w in _FUNCTION for w in ws) < 0.12 * len(ws):
            listed += 1  # "Bakery Weather Hotel Booking Pricing ...": not something a person reads
            continue
        shown |= {stem(w) for w in ws}
        read += len(ws)
    found = [t for t in terms if t in shown]
    needed = max(1, math.ceil(TERMS_FOR_FULL * len(terms)))
    # the terms in a page's worth of text: a lone heading naming the task is a label, not the page
    earned = min(1.0, len(found) / needed) * min(1.0, read / WORDS_FOR_FULL)
    if read < WORDS_FOR_FULL:
        notes.append("The page has hardly any text a person can read: give each part of the task its heading and a few "
                     "sentences.")
    if len(found) < needed:
        notes.append(f"The page leaves out much of what the task is about ({len(terms) - len(found)} of its "
                     f"{len(terms)} main topics appear in no heading, label or text): cover each part of the task.")
    if listed:
        notes.append("Some of the text is a bare list of keywords, which nobody can read as content: write headings, "
                     "labels and sentences instead.")
    asked = set(_WORD.findall((task + " " + " ".join(checklist)).lower()))
    seen = set(words)
    foreign = sorted(k for k, vocab in _TOPICS.items() if vocab & seen and not vocab & asked)
    if len(foreign) > 1:
        earned *= max(0.0, 1 - 0.25 * (len(foreign) - 1))
        notes.append(f"The page talks about things this task never asks for ({', '.join(foreign[:4])}): keep to the "
                     f"task's own subject.")
    content = [w for w in words if w not in _FUNCTION]
    if len(content) >= 30:
        top = max(content.count(w) for w in set(content)) / len(content)
        if top > 0.12 or len(set(content)) < 0.3 * len(content):
            earned *= 0.5
            notes.append("The same words repeat over and over: say each thing once, where it belongs.")
    return earned, notes


def _components(used: list[dict], target, page_bg) -> tuple[float, str | None]:
    """Component colour on the components (elements that hold text or controls), not on empty decorative bands."""
    def near(c):
        rgb = css_rgb(c)
        return rgb is not None and float(_rgb_distance(np.array([rgb]), target)[0]) < 60
    parts = [c for c in used if c.get("content")]
    hits = [c for c in parts if near(c.get("bg")) or near(c.get("border")) or
            (c["tag"] in ("a", "button", "h1", "h2", "h3") and near(c.get("fg")))]
    if page_bg is not None and float(_rgb_distance(np.array([page_bg]), target)[0]) < 60:
        hits = [c for c in hits if not near(c.get("bg")) or c.get("border") or c["tag"] in ("button", "a")]
    share = len(hits) / max(len(parts), 1)
    earned = min(1.0, share / 0.25) * (1.0 if len(hits) >= 2 else 0.5 * len(hits))
    note = None if earned >= 1 else (f"Few of the page's components (header, buttons, cards, links) are in the "
                                     f"{_name(target)} the task asks for: {len(hits)} of {len(parts)}.")
    return earned, note


def critique(req: CritiqueRequest) -> Critique:
    if not req.screenshots:
        return Critique.failed("no_screenshots", NAME, "the heuristic critic judges renders: send the screenshots")
    dom = _dom(req)
    structure = _structure(dom)
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
        covered = float((_rgb_distance(flat, target) < 40).mean())  # the colour of most of the viewport
        # A browser's default canvas is not a choice: on a page that sets no background it earns nothing.
        chosen = dom.get("colors", {}).get("bg_set", True)
        earned["background"] = float(np.clip((150 - d) / 110, 0, 1)) * min(1.0, covered / 0.4) if chosen else 0.0
        if earned["background"] < 1:
            notes.append(f"The page's background is {_name(dominant_rgb)} over most of the screen, but the task asks "
                         f"for {_name(target)}." if chosen else f"The page never chooses a background; the task "
                         f"asks for {_name(target)}.")
    if "components" in wanted:
        earned["components"], note = _components(dom.get("colors", {}).get("used", []), wanted["components"],
                                                 dominant_rgb if "background" in wanted else None)
        notes += [note] if note else []

    terms, term_notes = _terms(req.task, req.checklist, structure.get("blocks", []))
    if terms is not None:
        earned["terms"] = terms
        notes += term_notes

    task_text = (req.task + " " + " ".join(req.checklist)).lower()
    asked = [k for k, (pattern, _, _) in _KINDS.items() if re.search(pattern, task_text)]
    shown = {k: float(np.clip(check(structure), 0, 1)) for k, (_, check, _) in _KINDS.items()}
    if asked:
        earned["elements"] = sum(shown[k] for k in asked) / len(asked)
        extra = [k for k in _HEAVY if k not in asked and shown[k] >= 0.5]
        if len(extra) >= 3:  # a page that has a bit of everything is a template, not this task's page
            earned["elements"] *= max(0.0, 1 - 0.2 * (len(extra) - 2))
            notes.append(f"The page piles on parts the task never asks for ({', '.join(extra)}).")
        notes += [f"The task asks for {k}, but {_KINDS[k][2]}." for k in asked if shown[k] < 0.75]
        earned.update({f"kind_{k}": round(shown[k], 4) for k in asked})

    earned["layout"], layout_notes = _layout(content.reshape(last.shape[:2]), dom, text)
    notes += layout_notes

    earned["errors"] = 0.0 if req.errors else 1.0
    if req.errors:
        notes.append(f"The page raises {len(req.errors)} JavaScript error(s), first: {req.errors[0][:160]!r} - fix it.")

    if _MOTION.search(req.task.lower()):
        moved = max((float(np.mean(np.any(a != b, axis=-1))) for a, b in zip(shots, shots[1:])), default=0.0)
        earned["motion"] = float(np.clip(moved / 0.01, 0, 1))  # 1 % of the screen changing: something visibly moves
        if earned["motion"] < 1:
            notes.append(f"The task asks for motion but the page {'does not move' if moved == 0 else 'hardly moves'} "
                         f"between {req.times()[0]:g} s and {req.times()[-1]:g} s.")

    score = round(100 * float(combine(earned)), 1)
    feedback = " ".join(notes) or "The page passes every check of the heuristic critic (colours, content, elements, layout)."
    return Critique(score, feedback, backend=NAME, checks={k: round(v, 4) for k, v in earned.items()})


def combine(earned: dict[str, float]) -> float:
    """Sub-scores (0..1) -> score (0..1). The content (the task's terms and elements) is the score; style (colours,
    motion) and hygiene (layout, console) only take away from it, so right colours or a clean console on a page that
    does none of the task are worth nothing. A group the task does not ask for is left out, never a free 1."""
    def mean(weights):
        present = {k: w for k, w in weights.items() if k in earned}
        return sum(w * earned[k] for k, w in present.items()) / sum(present.values()) if present else None
    content, style, hygiene = mean(CONTENT_CHECKS), mean(STYLE_CHECKS), mean(GENERIC_CHECKS)
    task = (content if content is not None else 0.0) * (1 if style is None else 1 - STYLE_SHARE + STYLE_SHARE * style)
    return task * (1 - GENERIC_SHARE + GENERIC_SHARE * hygiene)
