"""Training and evaluation tasks: a WebGen-Bench-style procedural generator, and the WebGen-Bench loader."""
from __future__ import annotations

import hashlib
import itertools
import json
import random

KINDS = ["landing page for a bakery", "portfolio site for a photographer", "sales dashboard", "todo list app",
         "pricing page for a software product", "blog home page", "restaurant menu page", "event registration page",
         "weather dashboard", "recipe page", "hotel booking page", "music player page"]
COLOURS = [("white", "navy"), ("ivory", "forest green"), ("ghost white", "slate gray"), ("lavender", "indigo"),
           ("mint cream", "teal"), ("azure", "midnight blue"), ("linen", "maroon"), ("honeydew", "dark olive green"),
           ("alice blue", "steel blue"), ("seashell", "crimson")]
ELEMENTS = ["a navigation bar", "a contact form", "a data table", "a bar chart", "a call-to-action button",
            "an image gallery", "a search box", "a footer with links"]


def procedural(split: str) -> list[dict]:
    """Every (kind, colours, two elements) combination, split deterministically: 1 in 10 is held out."""
    tasks = []
    for kind, (bg, comp), (e1, e2) in itertools.product(KINDS, COLOURS, itertools.combinations(ELEMENTS, 2)):
        prompt = f"Write a {kind} with {e1} and {e2}. Use {bg} for the background and {comp} for components."
        tid = hashlib.sha1(prompt.encode()).hexdigest()[:10]
        heldout = int(tid, 16) % 10 == 0
        if heldout == (split == "heldout"):
            tasks.append({"id": tid, "prompt": prompt,
                          "checklist": [f"The page has {e1}.", f"The page has {e2}.",
                                        f"The background is {bg}.", f"Components use {comp}."]})
    return tasks


def webgen(path: str) -> list[dict]:
    """WebGen-Bench rows (instruction, ui_instruct) as tasks; a missing file fails with what was expected."""
    try:
        rows = [json.loads(line) for line in open(path) if line.strip()]
    except FileNotFoundError:
        raise FileNotFoundError(f"WebGen-Bench file not found: {path} (expected JSONL rows with 'id', "
                                f"'instruction', 'ui_instruct')") from None
    return [{"id": str(r["id"]), "prompt": r["instruction"],
             "checklist": [c["task"] + " Expected: " + c["expected_result"] for c in r.get("ui_instruct", [])],
             "category": (r.get("Category") or {}).get("primary_category")} for r in rows]


def batch_for_step(pool: list[dict], step: int, size: int, seed: int) -> list[dict]:
    """The tasks of one step: a deterministic function of (seed, step), so a resumed run sees the same order."""
    rng = random.Random(seed * 1_000_003 + step)
    return rng.sample(pool, min(size, len(pool)))
