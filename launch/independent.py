"""The independent judge's part in a learning figure: pages of tasks from another distribution than training's,
scored by executable checks (critic_service/probes.py) the policy never trained against.

The training critic scores the procedural held-out tasks (`heldout_*` in the learning check); this scores the final
pages of `data.independent_path` (default: data/independent/tasks.jsonl, instructions in WebGen-Bench's format written
for this project on site kinds the generator never makes; WebGen-Bench's own test.jsonl works as well) as
`independent_*`. An invalid page scores 0 without being probed, as in training.
"""
from __future__ import annotations

import asyncio

from actors.revision import extract_html
from critic_service.probes import judge_all

from . import tasks as task_sources


def pool(cfg) -> list[dict]:
    """The independent tasks of a run (data.independent_tasks of them; 0 = none)."""
    if cfg.data.independent_tasks <= 0:
        return []
    return task_sources.load("webgen", cfg.data.independent_path, cfg.data.independent_tasks)


def final_page(traj) -> str | None:
    """The html of a trajectory's final accepted page; None when it did not render."""
    if not traj.final_valid:
        return None
    accepted = [a for a in traj.attempts if a.accepted]
    return extract_html(accepted[-1].text) if accepted else None


def judge(tasks: list[dict], trajs: list) -> dict:
    """Trajectories of `tasks` (in task order, rollout.group_size each) -> the judge's mean score (0..100), the pass
    rate of each probe, and each page's verdict (in trajectory order)."""
    by_id = {t["id"]: t for t in tasks}
    rows = [(by_id[t.task_id]["prompt"], list(by_id[t.task_id].get("checklist") or []), final_page(t)) for t in trajs]
    verdicts = asyncio.run(judge_all(rows))
    names = sorted({k for v in verdicts for k in v["checks"]})
    rate = {k: round(sum(v["checks"][k] for v in verdicts if k in v["checks"]) /
                     max(sum(k in v["checks"] for v in verdicts), 1), 4) for k in names}
    n = max(len(verdicts), 1)
    return {"score": round(sum(v["score"] for v in verdicts) / n, 2), "checks": rate, "verdicts": verdicts,
            "valid_rate": round(sum(t.final_valid for t in trajs) / n, 4)}
