"""Web-Bench, scored the way its authors score it.

    python launch/web_bench.py check --project DIR --files DIR --task N [--fast] [--training-timeouts] [--workers K]
prints one JSON line {"project", "task", "passed", "failed", "total", "failures": [...]} for the project's specs
init ... task-N run on the files in DIR (the official @playwright/test runner unless --fast).

`python launch/evaluate.py data=web-bench` runs `evaluate(cfg)` below, the benchmark's protocol: each project starts
from `src-init/` (the init task done) and goes through task-1 ... task-N in order. For each task the model reads the
task and the current files and answers with the files it changes; the project's own specs (init.spec ... the task's)
judge the result with the official runner and the project's playwright.config.js. A failed task gets one more
attempt with the failing assertions as context (pass@2); a task failed twice ends the project, as upstream does.
Per project and overall, over all N tasks of every project (a task never reached counts as failed):
  pass@1  = tasks passed at the first attempt / tasks
  pass@2  = tasks passed within two attempts / tasks
  error@1 = tasks whose first attempt could not be judged as a page (no file in the reply, or the page does not
            render) / tasks attempted
The critic's score of each attempt's page is reported beside them. Results are resumable (results.jsonl).
"""
from __future__ import annotations

import argparse
import asyncio
import html as html_lib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere

from actors.revision import ASK, entry_page as entry  # noqa: E402
from actors.reward import RewardConfig  # noqa: E402
from critic_service.specs import Project, SpecServer, official_check  # noqa: E402

LANG = {".js": "js", ".mjs": "js", ".css": "css", ".html": "html", ".json": "json", ".svg": "svg"}


BUNDLED = Path(__file__).resolve().parents[1] / "data" / "web-bench"


def projects(path: str = "", limit: int = 0) -> list[Project]:
    """The Web-Bench projects under `path` (a folder of projects, one project, or a file in one; "" = the bundled
    twelve in data/web-bench)."""
    root = Path(path) if path else BUNDLED
    root = root if root.is_dir() else root.parent
    folders = [root] if (root / "playwright.config.js").is_file() else sorted(
        p.parent for p in root.glob("*/playwright.config.js"))
    if not folders:
        raise FileNotFoundError(f"Web-Bench: no project (a folder with playwright.config.js and test/) at or under {str(root)!r}")
    found = [Project(f) for f in folders]
    return found[:limit] if limit > 0 else found


def read_files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text(encoding="utf-8", errors="replace")
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_files(files: dict[str, str], folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def task_prompt(description: str, files: dict[str, str], failures: str = "") -> str:
    """What the model reads for one task: the current files, the task, and (second attempt) what failed."""
    shown = "\n\n".join(f"{name}\n```{LANG.get(Path(name).suffix, '')} {name}\n{text.rstrip()}\n```"
                        for name, text in files.items())
    again = f"\n\nYour previous attempt failed the tests:\n{failures}\nFix it." if failures else ""
    return (f"A web project's files:\n\n{shown or '(no files yet)'}\n\nTask: {description}{again}\n\n{ASK['files']}")


# -- the protocol -------------------------------------------------------------------------------------------------

class Judges:
    """Generation, the page's render and critique, and the specs, for one evaluation run (in this process)."""

    def __init__(self, cfg, stack):
        self.cfg, self.stack = cfg, stack

    async def answer(self, prompt: str) -> tuple[str, int]:
        from actors.engine import Sampling
        se = self.cfg.self_edit
        ids = self.stack.conv.prompt_ids(prompt)
        (c,) = await self.stack.generate(ids, Sampling(se.temperature, se.top_p, se.max_new_tokens, tuple(se.stop)), 1)
        return c.text, len(c.token_ids)

    async def look(self, description: str, files: dict[str, str]):
        """The page's render and the critic's score (None without a critic or without an index.html)."""
        from critic_service.critique import CritiqueRequest
        from render_farm.result import RenderRequest
        rest = dict(files)
        if entry(files) is None:
            return None, None
        html = rest.pop(entry(files))
        page = await self.stack.renderer.render(RenderRequest(html, files=rest))
        score = None
        if page.valid and self.stack.critic is not None:
            verdict = await self.stack.critic.critique(CritiqueRequest(
                description, html, [], page.screenshots, page.shot_times, page.dom,
                page.console_errors + page.page_errors))
            score = verdict.score
        return page, score


async def run_project(project: Project, judges: Judges, out: Path, done: list[dict], max_tasks: int, sink) -> None:
    """Tasks task-1 ... task-N of one project from src-init (or from where an earlier run stopped)."""
    from actors.revision import extract_files
    files = read_files(project.dir / "src-init")
    last = max(done, key=lambda r: r["task"]) if done else None
    if last is not None:
        if not last["pass2"]:
            return  # this project already stopped
        files = read_files(out / last["files"])
    first = (last["task"] + 1) if last else 1
    for n in range(first, min(project.last_task, max_tasks) + 1):
        task = project.task(n)
        row = {"id": f"{project.name}/{task['id']}", "project": project.name, "task": n, "attempts": []}
        failures = ""
        for k in (1, 2):
            t0 = time.perf_counter()
            reply, tokens = await judges.answer(task_prompt(task["description"], files, failures))
            changed = extract_files(reply)
            new = {**files, **changed}
            rel = Path("projects") / project.name / f"task-{n}" / f"attempt-{k}"
            write_files(new, out / rel / "files")
            (out / rel / "reply.md").write_text(reply, encoding="utf-8")
            page, score = await judges.look(task["description"], new)
            report = await asyncio.to_thread(official_check, project, out / rel / "files", n, True,
                                             workers=judges.cfg.spec_workers)
            shots = []
            for i, png in enumerate(page.screenshots if page is not None else []):
                (out / rel / f"shot{i}.png").write_bytes(png)
                shots.append(str(rel / f"shot{i}.png"))
            error = not changed or page is None or not page.valid
            row["attempts"].append({"passed": report.passed, "failed": report.failed, "total": report.total,
                                    "ok": report.ok, "runner_error": report.error, "failures": report.failures[:8],
                                    "changed": sorted(changed), "error": error, "score": score,
                                    "render": None if page is None else page.reason, "shots": shots,
                                    "tokens": tokens, "spec_s": report.seconds, "s": round(time.perf_counter() - t0, 1),
                                    "files": str(rel / "files")})
            if report.ok:
                files = new
                break
            failures = report.feedback()
        a = row["attempts"]
        row.update(pass1=a[0]["ok"], pass2=a[-1]["ok"], error1=a[0]["error"], files=a[-1]["files"],
                   score=a[-1]["score"])
        sink(row)
        if not row["pass2"]:
            return  # failed twice: the project stops here, as upstream


def summarize(projects: list[Project], rows: list[dict], max_tasks: int) -> dict:
    per = {}
    for p in projects:
        mine = [r for r in rows if r["project"] == p.name]
        n = min(p.last_task, max_tasks)
        scores = [a["score"] for r in mine for a in r["attempts"] if a["score"] is not None]
        per[p.name] = {"tasks": n, "attempted": len(mine), "pass@1": sum(r["pass1"] for r in mine) / n,
                       "pass@2": sum(r["pass2"] for r in mine) / n,
                       "error@1": sum(r["error1"] for r in mine) / max(len(mine), 1),
                       "critic_score": round(sum(scores) / len(scores), 1) if scores else None}
    total = sum(v["tasks"] for v in per.values()) or 1
    attempted = sum(v["attempted"] for v in per.values()) or 1
    overall = {"projects": len(per), "tasks": total,
               "pass@1": round(sum(v["pass@1"] * v["tasks"] for v in per.values()) / total, 4),
               "pass@2": round(sum(v["pass@2"] * v["tasks"] for v in per.values()) / total, 4),
               "error@1": round(sum(v["error@1"] * v["attempted"] for v in per.values()) / attempted, 4)}
    return {"overall": overall, "per_project": {k: {m: (round(x, 4) if isinstance(x, float) else x)
                                                    for m, x in v.items()} for k, v in per.items()}}


def report_html(rows: list[dict], summary: dict) -> str:
    e = html_lib.escape
    out = [f"<h1>Web-Bench</h1><pre>{e(json.dumps(summary['overall']))}</pre><table border=1 cellpadding=4>"
           "<tr><th>project</th><th>tasks</th><th>attempted</th><th>pass@1</th><th>pass@2</th><th>error@1</th>"
           "<th>critic</th></tr>"]
    out += [f"<tr><td>{e(k)}</td>" + "".join(f"<td>{e(str(v[m]))}</td>" for m in
            ("tasks", "attempted", "pass@1", "pass@2", "error@1", "critic_score")) + "</tr>"
            for k, v in summary["per_project"].items()]
    out.append("</table>")
    for r in rows:
        out.append(f"<h2>{e(r['id'])} — pass@1 {r['pass1']} pass@2 {r['pass2']}</h2>")
        for k, a in enumerate(r["attempts"], 1):
            shots = "".join(f'<img src="{e(s)}" width=300>' for s in a["shots"]) or f"no render ({e(str(a['render']))})"
            fails = "".join(f"<li><b>{e(f['title'])}</b><pre>{e(f['error'][:600])}</pre></li>" for f in a["failures"])
            out.append(f"<h3>attempt {k}: {a['passed']}/{a['total']} tests, critic {a['score']}, changed "
                       f"{e(', '.join(a['changed']) or 'nothing')} · <a href=\"{e(a['files'])}\">files</a></h3>"
                       f"<div>{shots}</div><ul>{fails}</ul>{e(a['runner_error'] or '')}")
    return "<!doctype html><meta charset=utf-8><title>Web-Bench</title><body style='font:14px sans-serif'>" + \
        "".join(out) + "</body>"


def evaluate(cfg, max_tasks: int = 20) -> dict:
    """The protocol on every project under data.path (data.limit: the first N projects); writes results.jsonl,
    summary.json and report.html under cfg.out and returns the summary."""
    from launch.inference import Stack, done_rows
    found = projects(cfg.data.path, cfg.data.limit)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = done_rows(out / "results.jsonl")

    def sink(row):
        rows.append(row)
        with open(out / "results.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(f"web-bench: {row['id']} pass@1 {row['pass1']} pass@2 {row['pass2']}", flush=True)

    async def run():
        import torch
        torch.manual_seed(cfg.seed)
        async with Stack(cfg) as stack:
            judges = Judges(cfg, stack)
            for p in found:
                await run_project(p, judges, out, [r for r in rows if r["project"] == p.name], max_tasks, sink)

    asyncio.run(run())
    summary = summarize(found, rows, max_tasks)
    summary.update(model=cfg.model.name, critic=cfg.critic.backend, spec_workers=cfg.spec_workers,
                   protocol="web-bench: sequential tasks from src-init, official @playwright/test specs "
                   "(IS_EVAL_PRODUCTION), 2 attempts, stop on a task failed twice")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.html").write_text(report_html(rows, summary), encoding="utf-8")
    return summary


# -- the scoring command and the cost benchmark ---------------------------------------------------------------------

async def bench(projects: list[Project], repeats: int, lanes: list[int], wait_ms: int) -> dict:
    """A training spec check (the task-1 spec on the spec server, training timeouts capped at wait_ms) against a
    render of the same page (the render farm, cache off), side by side, on each project's starting and reference
    files; one spec server per lane count in `lanes` (tests run that many at once), so their costs compare in one run."""
    import contextlib
    import statistics

    from render_farm.config import RenderConfig
    from render_farm.renderer import Renderer
    from render_farm.result import RenderRequest
    rows = []
    async with contextlib.AsyncExitStack() as stack:
        renderer = await stack.enter_async_context(Renderer(RenderConfig(cache_mb=0)))
        servers = {n: await stack.enter_async_context(SpecServer(n, wait_ms)) for n in lanes}
        for p in projects:
            for folder in ("src-init", "src"):
                files = read_files(p.dir / folder)
                rest = {k: v for k, v in files.items() if k != entry(files)}
                render_s, check_s, passed = [], {n: [] for n in lanes}, {}
                for _ in range(repeats):
                    t = time.perf_counter()
                    await renderer.render(RenderRequest(files[entry(files)], files=rest))
                    render_s.append(time.perf_counter() - t)
                    for n, server in servers.items():
                        t = time.perf_counter()
                        report = await server.check(p, files, [p.spec(1)], 1)
                        check_s[n].append(time.perf_counter() - t)
                        passed[n] = f"{report.passed}/{report.total}"
                r = statistics.median(render_s)
                row = {"project": p.name, "files": folder, "render_ms": round(r * 1e3)}
                for n in lanes:
                    c = statistics.median(check_s[n])
                    row[f"lanes{n}"] = {"check_ms": round(c * 1e3), "ratio": round(c / r, 2), "passed": passed[n]}
                rows.append(row)
    med = statistics.median
    out = {"pages": len(rows), "repeats": repeats, "wait_ms": wait_ms, "render_ms_median": med(r["render_ms"] for r in rows)}
    for n in lanes:
        checks = [r[f"lanes{n}"]["check_ms"] for r in rows]
        out[f"lanes{n}"] = {"check_ms_median": med(checks), "ratio_median": med(r[f"lanes{n}"]["ratio"] for r in rows),
                            "ratio_of_medians": round(med(checks) / out["render_ms_median"], 2),
                            "same_verdicts_as_lanes1": all(r[f"lanes{n}"]["passed"] == r[f"lanes{lanes[0]}"]["passed"]
                                                           for r in rows)}
    return {**out, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="launch/web_bench.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="run a project's specs init ... task-N on a folder of files; one JSON line")
    c.add_argument("--project", required=True, help="a Web-Bench project folder (playwright.config.js, test/)")
    c.add_argument("--files", required=True, help="the folder to serve as the project's src/")
    c.add_argument("--task", required=True, help="N: specs init, task-1 ... task-N (0 or 'init': init only)")
    c.add_argument("--fast", action="store_true", help="the training spec server instead of the official runner")
    c.add_argument("--workers", type=int, default=0,
                   help="the official runner's test workers (MAX_TEST_WORKERS; 0 = the project's default)")
    c.add_argument("--training-timeouts", action="store_true",
                   help="training's timeouts: the config's short (non-production) ones; with --fast also training's "
                        "reward.spec_wait_ms cap and reward.spec_lanes")
    b = sub.add_parser("bench", help="cost of a training spec check against a render of the same page; JSON")
    b.add_argument("--data", default="", help="a Web-Bench folder (default: the bundled projects)")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--lanes", default=f"1,{RewardConfig.spec_lanes}",
                   help="lane counts to compare (tests of a spec run at once), e.g. 1,2,4")
    b.add_argument("--wait-ms", type=int, default=RewardConfig.spec_wait_ms,
                   help="cap on an assertion's wait (training's reward.spec_wait_ms; 0 = the config's)")
    args = ap.parse_args(argv)
    if args.cmd == "bench":
        print(json.dumps(asyncio.run(bench(projects(args.data), args.repeats, [int(n) for n in args.lanes.split(",")],
                                          args.wait_ms))))
        return 0
    try:
        project = Project(args.project)
        if not re.fullmatch(r"init|(task-)?[0-9]+", args.task):
            raise ValueError(f"--task {args.task!r} is invalid: expected N, task-N or init")
        task = 0 if args.task == "init" else int(args.task.removeprefix("task-"))
        project.task(task)  # a task the project's list does not hold is a clear error
        if not Path(args.files).is_dir():
            raise FileNotFoundError(f"--files {args.files!r} is not a folder")
        if args.workers < 0:
            raise ValueError(f"--workers {args.workers} is invalid: expected an integer >= 0 (0 = the project's default)")
    except (FileNotFoundError, ValueError) as e:
        print(f"web_bench: {e}", file=sys.stderr)
        return 2
    production = not args.training_timeouts
    if args.fast:
        async def fast():
            lanes, wait = (RewardConfig.spec_lanes, RewardConfig.spec_wait_ms) if not production else (1, 0)
            async with SpecServer(lanes, wait) as server:
                return await server.check(project, args.files, project.specs_up_to(task), task, production)
        report = asyncio.run(fast())
    else:
        report = official_check(project, args.files, task, production, workers=args.workers)
    d = report.to_json()
    print(json.dumps({k: d[k] for k in ("project", "task", "passed", "failed", "total", "failures", "skipped",
                                        "seconds", "error")}))
    return 0 if report.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
