"""`python launch/evaluate.py [data=procedural|webgen|web-bench|artifactsbench|fullstack] [data.path=...] [data.limit=N] model=...
critic=... [self_edit.rounds=...] out=DIR`

For each task: generate (one-shot with self_edit.rounds=0, else the self-edit cycle), render, critique. Writes
DIR/results.jsonl (one row per task, appended as tasks finish), DIR/summary.json, DIR/report.html (a gallery), the
pages under DIR/pages/ and their screenshots under DIR/shots/. Re-running skips tasks already in results.jsonl.
Generation runs on rollout workers when a Ray cluster is up (`ray=auto`), otherwise in this process.
"""
from __future__ import annotations

import asyncio
import contextlib
import html as html_lib
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere

import hydra  # noqa: E402
from hydra.core.config_store import ConfigStore  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from launch.inference import EvalConfig, done_rows, resolve, write_page  # noqa: E402

ConfigStore.instance().store(name="eval_config", node=EvalConfig)


class Sink:
    """Writes one task's page, screenshots and results row as soon as it finishes."""

    def __init__(self, out: Path, bar=None):
        self.out, self.bar = out, bar

    def __call__(self, task: dict, res) -> dict:
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", task["id"])[:80]
        shots = write_page(res, self.out / "pages" / f"{name}.html", self.out / "shots", f"{name}-")
        shots = [str(p.relative_to(self.out)) for p in shots]
        if res.first_html is not None:  # round 0's page, for one-shot against self-edit
            (self.out / "pages" / f"{name}-first.html").write_text(res.first_html, encoding="utf-8")
        r = res.to_json()
        row = {"id": task["id"], "category": task.get("category"), "prompt": task["prompt"], "score": r["score"],
               "valid": r["valid"], "reason": r["reason"], "unscorable": r["valid"] and r["score"] is None,
               "rounds": r["rounds"], "stop": r["stop"], "latency_s": r["latency_s"], "tokens": r["tokens"],
               "feedback": res.feedback, "page": f"pages/{name}.html", "screenshots": shots, "history": r["history"],
               "round_scores": r["round_scores"], "one_shot_s": r["one_shot_s"],
               "checklist": list(task.get("checklist") or []),
               "first_page": f"pages/{name}-first.html" if res.first_html is not None else None}
        with open(self.out / "results.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.bar is not None:
            self.bar.update(1)
        return row


async def run_local(cfg: EvalConfig, tasks: list[dict], sink: Sink) -> None:
    import torch

    from launch.inference import Stack
    torch.manual_seed(cfg.seed)
    sem = asyncio.Semaphore(cfg.concurrency)
    async with Stack(cfg) as stack:
        async def one(task):
            async with sem:
                sink(task, await stack.run(task))
        await asyncio.gather(*(one(t) for t in tasks))


def run_ray(cfg: EvalConfig, tasks: list[dict], sink: Sink) -> None:
    """On a running Ray cluster: rollout workers generate (their engines batch concurrent tasks); the render farm
    pool renders; a critic service is started unless critic.url names one."""
    import ray

    from actors.config import RolloutConfig
    from actors.worker import rollout_worker
    from critic_service.process import endpoint
    from render_farm.farm import RenderFarm
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    critic = endpoint(cfg.critic, str(Path(cfg.out) / "critic.log")) if cfg.critic.backend != "none" \
        else contextlib.nullcontext(None)
    with critic as url:
        farm = RenderFarm(cfg.render)
        Worker = rollout_worker(cfg.engine.kind)
        # an engine on GPUs where the cluster has them: vLLM spans engine.tensor_parallel_size, the HF engine one
        gpus = (cfg.engine.tensor_parallel_size if cfg.engine.kind == "vllm" else 1) \
            if ray.cluster_resources().get("GPU", 0) else 0
        workers = [Worker.options(num_cpus=1, num_gpus=gpus).remote(
                       cfg.model.name, RolloutConfig(), farm.workers, url, seed=cfg.seed + i, revision=cfg.revision,
                       engine=cfg.engine) for i in range(cfg.workers)]
        print(f"evaluate: generating on {len(workers)} rollout worker(s) of the Ray cluster", flush=True)
        queue, pending = list(tasks), {}
        while queue or pending:
            while queue and len(pending) < cfg.concurrency * len(workers):
                task = queue.pop(0)
                pending[workers[len(pending) % len(workers)].self_edit.remote(task, cfg.self_edit)] = task
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            sink(pending.pop(ref), ray.get(ref))


def summarize(rows: list[dict], cfg: EvalConfig) -> dict:
    n = max(len(rows), 1)
    scored = [r for r in rows if r["score"] is not None]
    mean = lambda xs: round(sum(xs) / len(xs), 3) if xs else None  # noqa: E731
    cats: dict[str, list] = {}
    for r in scored:
        if r.get("category"):
            cats.setdefault(str(r["category"]), []).append(r["score"])
    return {"tasks": len(rows), "mean_score": mean([r["score"] for r in scored]),
            "valid_render_rate": round(sum(r["valid"] for r in rows) / n, 3),
            "unscorable_rate": round(sum(r["unscorable"] for r in rows) / n, 3),
            "mean_latency_s": mean([r["latency_s"] for r in rows]), "mean_rounds": mean([r["rounds"] for r in rows]),
            "per_category": {c: {"tasks": len(v), "mean_score": mean(v)} for c, v in sorted(cats.items())},
            "data": cfg.data.source, "model": cfg.model.name, "engine": cfg.engine.kind, "critic": cfg.critic.backend,
            "self_edit_rounds": cfg.self_edit.rounds, "revision_format": cfg.revision.format,
            "critic_in_loop": cfg.self_edit.use_critic and cfg.critic.backend != "none", **self_edit_figures(rows)}


def self_edit_figures(rows: list[dict]) -> dict:
    """The self-edit cycle, round by round (with self_edit.score_rounds): the share of pages changed by an accepted
    revision so far, the share with a revision accepted in that round, and the judge's mean score of the kept page
    (invalid 0); and the cycle's latency against one-shot decoding (medians of latency_s / one_shot_s)."""
    import statistics
    rounds = max((len(r.get("round_scores") or []) for r in rows), default=0)
    if not rows or not rounds:
        return {}
    n = len(rows)
    accepted = lambda r, k: any(h["round"] == k and h["accepted"] for h in r["history"])  # noqa: E731
    table = [{"round": k, "changed": round(sum(any(accepted(r, j) for j in range(1, k + 1)) for r in rows) / n, 3),
              "accepted": round(sum(accepted(r, k) for r in rows) / n, 3) if k else None,
              "score": round(sum((r["round_scores"][k] if k < len(r["round_scores"]) else 0) or 0 for r in rows) / n, 2)}
             for k in range(rounds)]
    firsts = [r["one_shot_s"] for r in rows if r.get("one_shot_s")]
    ratio = round(statistics.median(r["latency_s"] for r in rows) / statistics.median(firsts), 3) if firsts else None
    return {"per_round": table, "latency_vs_one_shot": ratio}


def independent_figures(rows: list[dict], out: Path) -> dict:
    """The independent judge (critic_service/probes.py) on each task's one-shot and final page: mean scores 0..100."""
    from critic_service.probes import judge_all
    read = lambda rel: (out / rel).read_text(encoding="utf-8") if rel and (out / rel).is_file() else None  # noqa: E731
    firsts = asyncio.run(judge_all([(r["prompt"], r.get("checklist", []),
                                     read(r.get("first_page")) if r["history"][0].get("valid") else None) for r in rows]))
    finals = asyncio.run(judge_all([(r["prompt"], r.get("checklist", []), read(r["page"]) if r["valid"] else None)
                                    for r in rows]))
    mean = lambda vs: round(sum(v["score"] for v in vs) / max(len(vs), 1), 2)  # noqa: E731
    return {"independent_one_shot": mean(firsts), "independent_self_edit": mean(finals)}


def report(rows: list[dict], summary: dict) -> str:
    """A self-contained gallery: one card per task with its screenshots, score, feedback and a link to the page."""
    e = html_lib.escape
    cards = []
    for r in rows:
        shots = "".join(f'<a href="{e(s)}"><img src="{e(s)}" loading="lazy"></a>' for s in r["screenshots"]) \
            or f'<div class="none">no render: {e(str(r["reason"]))}</div>'
        score = "n/a" if r["score"] is None else f'{r["score"]:g}'
        cards.append(f'''<section><h2>{e(r["id"])} <small>{e(str(r.get("category") or ""))}</small>
<span class="score">{score}</span></h2><p class="task">{e(r["prompt"])}</p><div class="shots">{shots}</div>
<p><b>valid</b> {r["valid"]} {e(str(r["reason"] or ""))} &middot; <b>rounds</b> {r["rounds"]} ({e(r["stop"])})
&middot; <b>latency</b> {r["latency_s"]:.1f} s &middot; <a href="{e(r["page"])}">open the page</a></p>
<pre>{e(r["feedback"] or "")}</pre></section>''')
    head = " &middot; ".join(f"<b>{e(k)}</b> {e(str(v))}" for k, v in summary.items() if k != "per_category")
    return f'''<!doctype html><html><head><meta charset="utf-8"><title>ReLook evaluation</title><style>
body{{font:14px system-ui,sans-serif;margin:24px;background:#fafafa}} section{{background:#fff;border:1px solid #ddd;
padding:12px;margin:12px 0}} .shots img{{width:32%;margin-right:1%;border:1px solid #ccc}} .score{{float:right;
font-size:22px}} pre{{white-space:pre-wrap;background:#f3f3f3;padding:8px}} .task{{color:#333}} .none{{color:#a00}}
</style></head><body><h1>ReLook evaluation</h1><p>{head}</p>{"".join(cards)}</body></html>'''


def _ray_up(cfg: EvalConfig) -> bool:
    if cfg.ray == "off":
        return False
    import ray
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        ray.init(address="auto", log_to_driver=False)
        return True
    except (ConnectionError, RuntimeError):
        return False


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    cfg, _ = resolve(dcfg)
    from launch.tasks import load
    if cfg.data.source == "web-bench":  # the benchmark's own protocol: sequential tasks judged by its specs
        from launch.web_bench import evaluate
        try:
            summary = evaluate(cfg)
        except (FileNotFoundError, ValueError) as e:
            print(f"evaluate: {e}", file=sys.stderr)
            sys.exit(2)
        print(json.dumps(summary["overall"]), flush=True)
        return
    try:
        tasks = load(cfg.data.source, cfg.data.path, cfg.data.limit)
    except (FileNotFoundError, ValueError) as e:
        print(f"evaluate: {e}", file=sys.stderr)
        sys.exit(2)
    out = Path(cfg.out)
    done = {r["id"] for r in done_rows(out / "results.jsonl")}
    todo = [t for t in tasks if t["id"] not in done]
    print(f"evaluate: {len(tasks)} task(s) from {cfg.data.source}, {len(tasks) - len(todo)} already done", flush=True)
    bar = None
    if cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc="evaluate", dynamic_ncols=True)
    sink = Sink(out, bar)
    if todo:
        if _ray_up(cfg):
            import ray
            try:
                run_ray(cfg, todo, sink)
            finally:
                ray.shutdown()
        else:
            asyncio.run(run_local(cfg, todo, sink))
    if bar is not None:
        bar.close()
    ids = {t["id"] for t in tasks}
    rows = [r for r in done_rows(out / "results.jsonl") if r["id"] in ids]
    summary = summarize(rows, cfg)
    if cfg.independent:
        summary.update(independent_figures(rows, out))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.html").write_text(report(rows, summary), encoding="utf-8")
    print(json.dumps({k: v for k, v in summary.items() if k != "per_category"}), flush=True)


if __name__ == "__main__":
    main()
