"""Reading the policy's replies, and the one revision context training and inference share.

A revision is asked for with `revision_message(render_report(page), format, critic)`: what the render farm saw of
the page (valid or not and why, console errors, visible text, element counts, colours of the largest areas, how much
of the first screen it fills), then, in training only, the critic's verdict in the same form, then the same request.
A policy trained with the critic meets at inference a subset of the context it trained in (ReLook decouples the
critic so). The reply becomes a page by `revise`: SEARCH/REPLACE edits applied to the current page ("edits") or a
whole page ("page"), with the same rule for a page cut off by the token budget in both (it is judged like any other).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from common.checks import check
from common.colours import css_rgb, name

FORMATS = ("page", "edits")
ASK = {
    # no "NO CHANGES" way out: a revision is always written, and whether it is kept is the acceptance rule's call
    # (Forced Optimization in training, the render farm's no-worse rule at inference)
    "page": "Re-read your code against the request and what the page shows, and reply with the whole improved page "
            "in one ```html block.",
    "edits": "Re-read your code against the request and what the page shows, and improve it with SEARCH/REPLACE "
             "blocks:\n<<<<<<< SEARCH\nexact lines of the current page\n=======\nthe lines that replace them\n"
             ">>>>>>> REPLACE",
    # multi-file tasks (Web-Bench): not a choice of revision.format, the only way to change a file set
    "files": "Reply with every file you change or add, each in its own fenced block whose first line names the "
             "language and the path, e.g. ```js index.js. Files you leave out stay as they are.",
}


@dataclass
class RevisionConfig:
    format: str = "page"  # how every revision is written, in training and at inference: "page" (the whole page again) or "edits" (SEARCH/REPLACE blocks)
    edit_max_new_tokens: int = 128  # budget of one edit reply (a whole page gets the page budget)

    def validate(self) -> "RevisionConfig":
        return check("revision", self, [("format", self.format in FORMATS, f"one of {list(FORMATS)}"),
                                        ("edit_max_new_tokens", self.edit_max_new_tokens >= 1, "an integer >= 1")])


_FENCED = re.compile(r"```[ \t]*html[^\n]*\n(.*?)(?:```|\Z)", re.S | re.I)
_DOCUMENT = re.compile(r"<html[\s>].*?</html\s*>", re.S | re.I)
_SVG = re.compile(r"<svg[\s>].*?</svg\s*>", re.S | re.I)
_EDIT = re.compile(r"<{5,9}[ \t]*SEARCH[^\n]*\n(.*?)\n?={5,9}[^\n]*\n(.*?)\n?>{5,9}[ \t]*REPLACE", re.S)


def extract_html(text: str) -> str | None:
    """The page in a model reply: the last fenced html block, else the last <html>...</html>, else the last
    <svg>...</svg>. None when there is none (an invalid sample: reward 0)."""
    blocks = [b for b in _FENCED.findall(text) if b.strip()]
    if blocks:
        return blocks[-1].strip()
    for pattern in (_DOCUMENT, _SVG):
        found = pattern.findall(text)
        if found:
            return found[-1]
    return None


_BLOCK = re.compile(r"```[ \t]*([^\n`]*)\n(.*?)(?:```|\Z)", re.S)
_PATH = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w.-]+\.(?:html?|css|m?js|json|svg|txt|md))\b", re.I)


def entry_page(files: dict[str, str]) -> str | None:
    """The page to open of a file set: index.html, else its first top-level .html file (Web-Bench's survey starts
    at design.html); None when it has no page."""
    pages = sorted(n for n in files if n.endswith(".html") and "/" not in n)
    return "index.html" if "index.html" in files else (pages[0] if pages else None)


def extract_files(text: str, default: str = "index.html") -> dict[str, str]:
    """A multi-file answer: every fenced block that names its path (```js index.js, or a line just above the fence
    such as `index.js:` or `**common/util.js**`) -> {path: text}. An unnamed ```html block, or with no named file
    the page extract_html finds, is `default`. Paths are
    relative to the site's root (a leading ./ or src/ is dropped); one that leaves it (.., /) is ignored."""
    files = {}
    for m in _BLOCK.finditer(text):
        info, body = m.group(1).strip(), m.group(2)
        named = _PATH.findall(info)
        if not named:
            above = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            named = _PATH.findall(above) if len(above) < 160 else []
        name = named[-1] if named else (default if info.lower() in ("html", "") and "<" in body else None)
        if name is None:
            continue
        name = re.sub(r"^(\./|src/)+", "", name)
        if name.startswith(("/", "..")) or "/../" in name:
            continue
        files[name] = body.strip("\n") + "\n"
    if not files and (page := extract_html(text)) is not None:  # a one-page answer, however it was fenced
        files[default] = page.strip("\n") + "\n"
    return files


def parse_edits(text: str) -> list[tuple[str, str]]:
    """The complete SEARCH/REPLACE blocks of a reply, in order (a block cut off by the token budget is dropped)."""
    return [(s, r) for s, r in _EDIT.findall(text) if s.strip()]


def apply_edits(html: str, edits: list[tuple[str, str]]) -> tuple[str, int]:
    """Apply each edit to its first match: exact text, else the same lines ignoring indentation.
    Returns (new html, edits applied); an edit whose SEARCH text is not in the page is skipped."""
    applied = 0
    for search, replace in edits:
        if search in html:
            html, applied = html.replace(search, replace, 1), applied + 1
            continue
        lines, want = html.split("\n"), [s.strip() for s in search.strip("\n").split("\n")]
        for i in range(len(lines) - len(want) + 1):
            if [s.strip() for s in lines[i:i + len(want)]] == want:
                lines[i:i + len(want)] = replace.split("\n")
                html, applied = "\n".join(lines), applied + 1
                break
    return html, applied


_COUNTED = (("headings", "heading"), ("buttons", "button"), ("inputs", "form field"), ("tables", "table"),
            ("images", "image"), ("svg", "graphic"), ("canvas", "canvas"), ("links", "link"), ("lists", "list"))


def render_report(page) -> str:
    """What the render farm can say of a page without a critic, in plain words (page: a RenderResult, or None when
    the reply held no page). The same text in training and at inference."""
    if page is None:
        return "Your reply held no ```html block, so nothing was rendered."
    if not page.valid:
        return f"The page did not render ({page.reason}): {page.detail or 'no detail'}."
    errors = page.console_errors + page.page_errors
    lines = ["The page rendered."]
    lines += [f"{len(errors)} error(s) in the browser console:"] + [f"- {e[:200]}" for e in errors[:3]] if errors \
        else ["No errors in the browser console."]
    dom = page.dom or {}
    text = dom.get("text", "").strip()
    words = len(text.split())
    lines.append(f"It shows {words} words of text, beginning: \"{text[:100]}\"." if words else "It shows no text.")
    counts = dom.get("counts", {})
    shown = [f"{counts[k]} {what}{'s' if counts[k] != 1 else ''}" for k, what in _COUNTED if counts.get(k)]
    lines.append("Visible elements: " + (", ".join(shown) if shown else "none besides text") + ".")
    colours = dom.get("colors", {})
    areas = [c for c in colours.get("components", []) if css_rgb(c.get("bg"))][:3]
    bg = css_rgb(colours.get("body_bg"))
    lines.append((f"The background is {name(bg)}" if bg else "The background is the browser's default")
                 + ("; the largest coloured areas: " + ", ".join(f"{name(css_rgb(c['bg']))} ({c['tag']})" for c in areas)
                    if areas else "") + ".")
    if page.blank_fraction:
        lines.append(f"Content covers {page.blank_fraction[0]:.0%} of the first screen"
                     + ("; it changes between the screenshots." if len(set(page.screenshots)) > 1 else "."))
    return "\n".join(lines)


def critic_report(score: float, feedback: str) -> str:
    """The critic's verdict as the policy reads it (training, and inference with a critic in the loop)."""
    return f"A reviewer scored it {score:g}/100: {feedback}"


def revision_message(report: str, fmt: str, critic: str | None = None) -> str:
    """What the policy reads before every revision: the render report, the critic's verdict when there is one (in
    training), and the request in the run's revision format."""
    return "\n".join([report, *([critic] if critic else []), ASK[fmt]])


def revise(html: str | None, text: str, finished: bool) -> tuple[str | None, str]:
    """The page a reply asks for, and how: (edits applied to html, "k/n edits applied"), (a whole page, "page" or
    "truncated page" when the token budget cut it off), or (None, why: edits_not_found, no_change). A cut-off page is
    judged like any other, in training and at inference alike: the acceptance rule sees what it lost."""
    edits = parse_edits(text)
    if edits and html is not None:
        new, applied = apply_edits(html, edits)
        return (new, f"{applied}/{len(edits)} edits applied") if applied else (None, "edits_not_found")
    page = extract_html(text)
    if page is None:
        return None, "no_change"
    return page, "page" if finished else "truncated page"
