"""Training and evaluation tasks: a WebGen-Bench-style procedural generator and loaders for real benchmarks.

Every loader returns tasks as {"id", "prompt", "checklist", "category"}; a missing file or a row in another format
fails with a message that says what was expected.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
from pathlib import Path

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


def _rows(path: str, what: str) -> list[dict]:
    """JSON Lines, or one JSON array (ArtifactsBench ships .json), or parquet (FullStack-Bench on the hub)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no file at {path!r}")
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        return pq.read_table(path).to_pylist()
    text = open(path, encoding="utf-8").read()
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: {path} is not JSON Lines, a JSON array or parquet ({e})") from None
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{what}: {path} must hold JSON objects, one per task")
    return rows


def _need(row: dict, keys: tuple[str, ...], what: str, path: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"{what}: a row of {path} lacks {missing}; expected fields {list(keys)}")


def webgen(path: str) -> list[dict]:
    """WebGen-Bench test.jsonl: `instruction`, and `ui_instruct` checks as the checklist; `Category` as category."""
    what = "WebGen-Bench (JSONL rows with 'id', 'instruction', 'ui_instruct')"
    tasks = []
    for r in _rows(path, what):
        _need(r, ("id", "instruction"), what, path)
        tasks.append({"id": str(r["id"]), "prompt": r["instruction"],
                      "checklist": [c["task"] + " Expected: " + c["expected_result"] for c in r.get("ui_instruct") or []],
                      "category": (r.get("Category") or {}).get("primary_category")})
    return tasks


def web_bench(path: str) -> list[dict]:
    """Web-Bench for training: per project, its `init` task from no files (judged by init.spec) and task-1 from
    src-init (judged by task-1.spec), each carrying its files and specs so the reward can run them
    (reward.tests_weight). Evaluation runs the benchmark's own protocol instead (launch/web_bench.py)."""
    from launch.web_bench import projects, read_files, task_prompt
    tasks = []
    for p in projects(path):
        for n, files in ((0, {}), (1, read_files(p.dir / "src-init"))):
            if n not in p.by_index:  # a task list without an init row starts at task-1
                continue
            t = p.task(n)
            tasks.append({"id": f"{p.name}/{t['id']}", "prompt": task_prompt(t["description"], files), "checklist": [],
                          "category": t.get("level"), "files": files,
                          "web_bench": {"project": str(p.dir), "task": n, "description": t["description"]}})
    return tasks


def artifactsbench(path: str) -> list[dict]:
    """ArtifactsBench: `index`, `question`, optional `checklist` (a list or one text) and `class` as category."""
    what = "ArtifactsBench (JSONL or a JSON array of rows with 'index', 'question', 'checklist')"
    tasks = []
    for r in _rows(path, what):
        _need(r, ("index", "question"), what, path)
        checks = r.get("checklist") or []
        tasks.append({"id": str(r["index"]), "prompt": r["question"],
                      "checklist": [checks] if isinstance(checks, str) else [str(c) for c in checks],
                      "category": r.get("class") or r.get("category")})
    return tasks


def fullstack(path: str) -> list[dict]:
    """FullStack-Bench (JSONL or parquet): the rows whose `labels.programming_language` is html; `content` is the
    prompt, `labels.category` the category."""
    what = "FullStack-Bench (rows with 'id', 'content', 'labels': {'programming_language', 'category'})"
    tasks = []
    for r in _rows(path, what):
        _need(r, ("id", "content", "labels"), what, path)
        labels = r["labels"] if isinstance(r["labels"], dict) else json.loads(r["labels"])
        if str(labels.get("programming_language", "")).lower() == "html":
            tasks.append({"id": str(r["id"]), "prompt": r["content"], "checklist": [], "category": labels.get("category")})
    return tasks


LOADERS = {"webgen": webgen, "web-bench": web_bench, "artifactsbench": artifactsbench, "fullstack": fullstack}
ROOT = Path(__file__).resolve().parents[1]
WHERE = {"webgen": "WebGen-Bench is not bundled (its repository has no licence file): download data/test.jsonl from "
                   "https://github.com/mnluzimu/WebGen-Bench (or the Hugging Face dataset luzimu/WebGen-Bench) and "
                   "pass data.path=PATH/test.jsonl (data/README.md)"}


def load(source: str, path: str = "", limit: int = 0) -> list[dict]:
    """Tasks of a benchmark; path "" = the copy in data/ (web-bench) or the generator's held-out split (procedural);
    relative paths are from the working directory, else the repository root."""
    if source == "procedural":
        tasks = procedural("heldout")
    elif source not in LOADERS:
        raise ValueError(f"data.source={source!r} is invalid: expected one of {['procedural', *LOADERS]}")
    elif not path and source != "web-bench":  # web-bench: "" is the copy in data/ (web_bench.BUNDLED)
        raise ValueError(f"data.path is required for data.source={source!r}: "
                         + WHERE.get(source, "point it at the benchmark's file"))
    else:
        if path and not os.path.isabs(path) and not os.path.exists(path):  # from the working directory, else the repo
            path = str(ROOT / path)
        tasks = LOADERS[source](path)
    return tasks[:limit] if limit > 0 else tasks


def batch_for_step(pool: list[dict], step: int, size: int, seed: int) -> list[dict]:
    """The tasks of one step: a deterministic function of (seed, step), so a resumed run sees the same order."""
    rng = random.Random(seed * 1_000_003 + step)
    return rng.sample(pool, min(size, len(pool)))
