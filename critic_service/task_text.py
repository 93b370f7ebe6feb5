"""What a task asks for, read from its text: the colours it names for the background and the components, and its
key terms. Shared by the heuristic critic and the independent judge, which judge pages by their own rules."""
from __future__ import annotations

import re

from PIL import ImageColor

_COLOR_NAMES = set(ImageColor.colormap)
_ALIASES = {"lightgoldenrod": "lightgoldenrodyellow"}  # WebGen-Bench says "light goldenrod"; CSS has no such name
_BG_WORDS = re.compile(r"background|base colou?r|layout|canvas")
_COMPONENT_WORDS = re.compile(r"component|element|\bui\b|interface|control|block|button|card|piece|accent")
_PART_NAMES = set("""navigation navbar contact form forms data table tables chart charts graph graphs call-to-action
button buttons image images gallery search footer links link""".split())
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
    """The task's most frequent content words: no stop words, no colour names, and no names of page parts ("a data
    table", "a search box"), which the elements check judges by what is shown, not by the words."""
    counts: dict[str, int] = {}
    for w in re.findall(r"[a-z][a-z-]{3,}", _without_colours((task + " " + " ".join(checklist)).lower())):
        if w in _STOP or w in _COLOR_NAMES or w in _PART_NAMES:
            continue
        counts[stem(w)] = counts.get(stem(w), 0) + 1
    return sorted(counts, key=lambda w: -counts[w])[:limit]


def _without_colours(text: str) -> str:
    """text without its colour names, spaced ones too ("alice blue", "dark slate gray"): no word of them is a term."""
    words, out, i = text.split(), [], 0
    while i < len(words):
        for n in (3, 2, 1):
            name = re.sub(r"[^a-z]", "", "".join(words[i:i + n]))
            if i + n <= len(words) and _ALIASES.get(name, name) in _COLOR_NAMES:
                i += n
                break
        else:
            out.append(words[i])
            i += 1
    return " ".join(out)


def stem(word: str) -> str:
    for suffix in ("ing", "ies", "es", "ed", "s"):
        if word.endswith(suffix) and not word.endswith("ss") and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word
