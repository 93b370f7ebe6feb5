"""Reading the policy's replies, and the one revision format training and inference share.

A revision is asked for with `revision_message(report, format)` - the critic's score and feedback in training, the
render farm's report at critic-free inference, always followed by the same request - and the reply is turned into
a page by `revise`: SEARCH/REPLACE edits applied to the current page ("edits") or a whole page ("page"). What the
policy practises in training is exactly what it does at inference.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from common.checks import check

FORMATS = ("page", "edits")
ASK = {
    "page": "Re-read your code against the request and reply with the whole revised page in one ```html block "
            "(or NO CHANGES if the page is already right).",
    "edits": "Re-read your code against the request. If the page is right, reply NO CHANGES. Otherwise fix it with "
             "SEARCH/REPLACE blocks:\n<<<<<<< SEARCH\nexact lines of the current page\n=======\nthe lines that "
             "replace them\n>>>>>>> REPLACE",
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


def critic_report(score: float, feedback: str) -> str:
    """The critic's verdict as the policy reads it."""
    return f"Score: {score:g}/100.\n{feedback}"


def revision_message(report: str, fmt: str) -> str:
    """What the policy reads before every revision, in training and at inference: a report (the critic's, or the
    render farm's when there is no critic) and the request in the run's revision format."""
    return f"{report}\n{ASK[fmt]}"


def revise(html: str | None, text: str, finished: bool, keep_truncated: bool) -> tuple[str | None, str]:
    """The page a reply asks for, and how: (edits applied to html, "k/n edits applied"), (a whole page, "page"), or
    (None, why: edits_not_found, no_change, truncated). keep_truncated=False: a page cut off by the token budget never
    replaces a whole one (without a critic nothing would see what it lost)."""
    edits = parse_edits(text)
    if edits and html is not None:
        new, applied = apply_edits(html, edits)
        return (new, f"{applied}/{len(edits)} edits applied") if applied else (None, "edits_not_found")
    page = extract_html(text)
    if page is None:
        return None, "no_change"
    if not finished and html is not None and not keep_truncated:
        return None, "truncated"
    return page, "page"
