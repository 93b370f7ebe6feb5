"""`python launch/cluster.py +experiment=ablation`: the paper's ablation, measured on this machine.

Arms, from the same seed, the same task order and the same generation budget (`trainer.token_budget` generated
tokens, every attempt counted, so a multi-turn arm takes fewer steps than a single-turn one):

    base          no training
    web_rl        single-turn GRPO with the visual reward (the paper's "Web-RL": rollout.max_turns=1)
    relook        the ReLook loop: critic-driven revisions under Forced Optimization
    relook_no_fo  the same loop with every revision accepted (rollout.forced_optimization=false)

Each trained arm records its held-out first-page reward every `trainer.eval_every` steps (the plot; the first page
is what every arm produces the same way, so the curves compare). Then every arm's final policy runs the critic-free
self-edit cycle (3 rounds, every round run) on the held-out tasks and, given `trainer.ablation_webgen` (the file
is not bundled: data/README.md), on WebGen-Bench instructions, and the critic
judges the page kept after each round: round 0 is one-shot, round 3 the self-edited page; a score that falls over
the rounds is the paper's "behavioural collapse". Beside it: the share of pages a revision changed, and the
independent judge (executable checks, critic_service/probes.py) on the one-shot and the self-edited page.
Writes <output_dir>/ablation.json, ablation.md, ablation.png.
Resumable: an arm that finished (its <arm>/arm.json) is not run again.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

from actors.config import SelfEditConfig

from .config import TrainConfig

ARMS = {"base": None, "web_rl": {"max_turns": 1}, "relook": {}, "relook_no_fo": {"forced_optimization": False}}
ROUNDS = 3


def arm_config(cfg: TrainConfig, name: str, rollout_changes: dict) -> TrainConfig:
    return dataclasses.replace(
        cfg, rollout=dataclasses.replace(cfg.rollout, **rollout_changes),
        trainer=dataclasses.replace(cfg.trainer, output_dir=str(Path(cfg.trainer.output_dir) / name),
                                    resume="never", ablation=False, learning_check=True))


def final_policy(out: Path) -> str:
    """The HF weights of a trained arm's last checkpoint."""
    return str(sorted((out / "checkpoints").glob("step-*"))[-1] / "hf")


def evaluate_policy(cfg: TrainConfig, model: str, tasks: list[dict], out: Path) -> list[dict]:
    """The critic-free self-edit cycle on `tasks`, judged after every round (launch/evaluate.py's rows)."""
    from launch.evaluate import Sink, done_rows, run_local
    from launch.inference import EvalConfig

    from .config import ModelConfig
    ecfg = EvalConfig(out=str(out), ray="off", seed=cfg.trainer.seed, progress=False, model=ModelConfig(model),
                      engine=cfg.engine, critic=dataclasses.replace(cfg.critic, url=None), render=cfg.render,
                      revision=cfg.revision, concurrency=12,
                      self_edit=SelfEditConfig(rounds=ROUNDS, early_stop=False, use_critic=False, score_rounds=True,
                                               max_new_tokens=cfg.rollout.max_new_tokens,
                                               stop=list(cfg.rollout.stop),
                                               system_prompt=cfg.rollout.system_prompt,
                                               feedback_role=cfg.rollout.feedback_role))
    done = {r["id"] for r in done_rows(out / "results.jsonl")}
    asyncio.run(run_local(ecfg, [t for t in tasks if t["id"] not in done], Sink(out)))
    ids = {t["id"] for t in tasks}
    return [r for r in done_rows(out / "results.jsonl") if r["id"] in ids]


def per_round(rows: list[dict]) -> list[float]:
    """Mean judge score (0..100; an invalid page 0) of the page kept after each round."""
    return [round(sum((r["round_scores"][k] or 0.0) for r in rows) / max(len(rows), 1), 2) for k in range(ROUNDS + 1)]


def judged(cfg: TrainConfig, model: str, tasks: list[dict], out: Path, s: str) -> dict:
    """One arm on one task set: the critic's score after each self-edit round, the share of pages a revision changed,
    and the independent judge's score of the one-shot and the self-edited page."""
    from launch.evaluate import independent_figures, self_edit_figures
    rows = evaluate_policy(cfg, model, tasks, out)
    scores, cycle, other = per_round(rows), self_edit_figures(rows), independent_figures(rows, out)
    return {f"{s}_one_shot": scores[0], f"{s}_self_edit": scores[-1], f"{s}_per_round": scores,
            f"{s}_changed": cycle["per_round"][-1]["changed"], f"{s}_latency_vs_one_shot": cycle["latency_vs_one_shot"],
            f"{s}_independent_one_shot": other["independent_one_shot"],
            f"{s}_independent_self_edit": other["independent_self_edit"]}


def run(cfg: TrainConfig) -> dict:
    from launch.tasks import load
    from launch.trainer import train

    from .trainer import task_pools
    root = Path(cfg.trainer.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    sets = {"heldout": task_pools(cfg)[1]}
    if cfg.trainer.ablation_webgen:
        sets["webgen"] = load("webgen", cfg.trainer.ablation_webgen, cfg.data.limit or 8)
    table, t_all = {}, time.time()
    for name, changes in ARMS.items():
        t0, curve, steps, tokens = time.time(), [], 0, 0
        out = root / name
        if (out / "arm.json").is_file():  # finished in an earlier run of the same output_dir: resumable, like evaluate.py
            table[name] = json.loads((out / "arm.json").read_text())
            print(f"ablation: {name} already done in {out}", flush=True)
            continue
        if changes is None:
            model = cfg.model.name
        else:
            check = train(arm_config(cfg, name, changes))
            rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
            curve = [(0, check["baseline_first_reward"])] + [
                (r["step"], r["heldout_first_reward"]) for r in rows if "heldout_first_reward" in r]
            if curve[-1][0] != rows[-1]["step"]:
                curve.append((rows[-1]["step"], check["final_first_reward"]))
            steps, tokens = rows[-1]["step"], sum(r["generated_tokens"] for r in rows)
            model = final_policy(out)
        table[name] = {"steps": steps, "generated_tokens": tokens, "heldout_curve": curve}
        for s, tasks in sets.items():
            table[name].update(judged(cfg, model, tasks, out / f"eval-{s}", s))
        table[name]["minutes"] = round((time.time() - t0) / 60, 1)
        out.mkdir(parents=True, exist_ok=True)
        (out / "arm.json").write_text(json.dumps(table[name]))
        print(json.dumps({"arm": name, **table[name]}), flush=True)
    result = {"arms": table, "minutes": round((time.time() - t_all) / 60, 1), "token_budget": cfg.trainer.token_budget,
              "tasks": {s: len(t) for s, t in sets.items()}, "reward_formula": cfg.reward.formula()}
    (root / "ablation.json").write_text(json.dumps(result, indent=2))
    (root / "ablation.md").write_text(markdown(result))
    plot(table, root / "ablation.png")
    print((root / "ablation.md").read_text(), flush=True)
    return result


def markdown(result: dict) -> str:
    sets = list(result["tasks"])  # heldout, and webgen when given
    label = {"heldout": "held-out", "webgen": "WebGen"}
    head = [f"{label[s]} {k}" for s in sets for k in ("one-shot", "self-edit (3)", "per round", "changed",
                                                      "independent one-shot → self-edit")]
    rows = ["| arm | steps | generated tokens | " + " | ".join(head) + " |", "|---" * (3 + len(head)) + "|"]
    for name, a in result["arms"].items():
        cells = [c for s in sets for c in (f"{a[s + '_one_shot']:.1f}", f"{a[s + '_self_edit']:.1f}",
                                           " → ".join(f"{x:.1f}" for x in a[s + "_per_round"]),
                                           _cell(a, s, "{changed:.0%}"),
                                           _cell(a, s, "{independent_one_shot:.1f} → {independent_self_edit:.1f}"))]
        rows.append(f"| {name} | {a['steps']} | {a['generated_tokens']} | " + " | ".join(cells) + " |")
    counts = " and ".join(f"{n} {'held-out tasks' if s == 'heldout' else 'WebGen-Bench instructions'}"
                          for s, n in result["tasks"].items())
    return (f"Scores: the critic's 0-100 (an invalid page 0), mean over {counts}; changed: the share of pages a "
            f"critic-free revision replaced; independent: executable checks (critic_service/probes.py), 0-100; "
            f"{result['minutes']} minutes in all.\n\n" + "\n".join(rows) + "\n")


def _cell(a: dict, s: str, fmt: str) -> str:
    """A column an arm measured before it existed (an arm.json from an older run) reads n/a."""
    try:
        return fmt.format(**{k[len(s) + 1:]: v for k, v in a.items() if k.startswith(s + "_")})
    except (KeyError, TypeError, ValueError):
        return "n/a"


def plot(table: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, a in table.items():
        if a["heldout_curve"]:
            left.plot(*zip(*a["heldout_curve"]), marker="o", label=name)
        right.plot(range(ROUNDS + 1), a.get("webgen_per_round", a["heldout_per_round"]), marker="o", label=name)
    left.set(xlabel="step", ylabel="held-out first-page reward", title="learning")
    shown = "WebGen-Bench" if any("webgen_per_round" in a for a in table.values()) else "held-out"
    right.set(xlabel="self-edit round (critic-free)", ylabel=f"{shown} score", title="self-edit rounds")
    left.legend(), right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
