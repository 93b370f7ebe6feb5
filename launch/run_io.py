"""What a training run writes and shows, beside the recipe (launch/trainer.py): the output folder (config.yaml,
metrics.jsonl, samples/, checkpoints/, critic.log), the step's metrics, the console/Ray dashboard/wandb figures, and
what changed in the config since the checkpoint a run resumes from."""
from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from pathlib import Path

import ray

from omegaconf import OmegaConf

# Keys that may change between a checkpoint and its resumed run without changing what is trained.
RESUME_FREE = ("trainer.max_steps", "trainer.resume", "trainer.progress", "trainer.wandb", "trainer.eval_every",
               "trainer.eval_max_turns", "trainer.eval_temperature", "trainer.token_budget",
               "trainer.output_dir", "cluster.", "critic.url", "critic.port", "learner.push_timeout_s")


def flat(cfg, prefix: str = "") -> dict:
    """A config (dataclass or DictConfig) as {dotted key: value}."""
    tree = cfg if isinstance(cfg, dict) else OmegaConf.to_container(OmegaConf.structured(cfg))
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(saved: dict, now: dict) -> list[str]:
    """`key: old -> new` for every setting that differs, the resume-free ones left out (torchtune's resume check)."""
    keys = sorted(set(saved) | set(now))
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys
            if saved.get(k) != now.get(k) and not k.startswith(RESUME_FREE)]


def checkpoints(root: Path) -> list[Path]:
    """The complete step-NNNNNN checkpoints of a run folder, oldest first (a `.tmp` one was cut off while written)."""
    return sorted(p for p in (root / "checkpoints").glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))


def changes_since(root: Path, now: dict) -> list[str] | None:
    """What differs between `now` (flat) and the settings root's latest checkpoint trained with; None: nothing to
    resume there."""
    done = checkpoints(root)
    if not done or not (done[-1] / "config.yaml").is_file():
        return None
    return config_changes(flat(OmegaConf.to_container(OmegaConf.load(done[-1] / "config.yaml"))), now)


def run_folder(root: str, now: dict) -> tuple[Path, list[str]]:
    """trainer.resume=auto: the folder a run trains in. `root` itself, unless its latest checkpoint was trained with
    other settings: a changed setting means a new run, so the first of root-2, root-3, ... that holds no checkpoint
    or one with these settings (the same command again resumes there). -> (folder, what changed against root)."""
    base = Path(root).resolve()
    changed = changes_since(base, now)
    if not changed:
        return base, []
    for n in range(2, 10_000):
        there = changes_since(base.with_name(f"{base.name}-{n}"), now)
        if not there:  # None (a fresh folder) or [] (this run, interrupted or finished)
            return base.with_name(f"{base.name}-{n}"), changed
    raise RuntimeError(f"no free run folder beside {base}")


class RunFiles:
    """The run's folder. Everything a step writes goes through here, so a resumed run can cut back to its checkpoint."""

    def __init__(self, root: str):
        self.root = Path(root).resolve()  # learner ranks write here too, from their own working folders
        (self.root / "samples").mkdir(parents=True, exist_ok=True)
        (self.root / "checkpoints").mkdir(exist_ok=True)

    @property
    def critic_log(self) -> str:
        return str(self.root / "critic.log")

    def write_config(self, cfg) -> str:
        text = OmegaConf.to_yaml(OmegaConf.structured(cfg))
        (self.root / "config.yaml").write_text(text)
        return text

    def check_shared(self, learner) -> None:
        """Learner rank 0 writes the checkpoints: on a cluster this folder must be storage its node sees too."""
        marker = self.root / f".shared-{uuid.uuid4().hex[:12]}"
        marker.write_text("written by the driver; learner rank 0 must see it\n")
        try:
            if not ray.get(learner.ranks[0].sees.remote(str(marker))):
                raise RuntimeError(f"trainer.output_dir={str(self.root)!r} is not visible from learner rank 0 on "
                                   f"{learner.hosts[0]}: it writes the checkpoints there. On a multi-node cluster put "
                                   f"trainer.output_dir on storage every node mounts (NFS, a shared volume)")
        finally:
            marker.unlink()

    def write_hosts(self, hosts: dict) -> None:
        """hosts.json: the node IP of every actor of the run (learner ranks, rollout workers, render workers)."""
        (self.root / "hosts.json").write_text(json.dumps(hosts, indent=1))
        print("hosts: " + "; ".join(f"{k} {v}" for k, v in hosts.items()), flush=True)

    def checkpoint(self, resume: str) -> Path | None:
        """The checkpoint to resume from: "auto" = the latest in this run's folder, "never", or a path."""
        if resume == "never":
            return None
        if resume != "auto":
            return Path(resume)
        steps = self._checkpoints()
        return steps[-1] if steps else None

    def _checkpoints(self) -> list[Path]:
        return checkpoints(self.root)

    def checkpoint_dir(self, step: int) -> str:
        return str(self.root / "checkpoints" / f"step-{step:06d}")

    def prune(self, keep: int) -> None:
        """Keep the newest `keep` step-NNNNNN checkpoints."""
        steps = self._checkpoints()
        for p in steps[:-keep] if keep > 0 else []:
            shutil.rmtree(p, ignore_errors=True)

    def truncate_to(self, step: int) -> None:
        """A driver killed after writing step k's metrics but before its checkpoint: drop what the resumed run redoes."""
        path = self.root / "metrics.jsonl"
        if path.is_file():
            rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
            path.write_text("".join(r + "\n" for r in rows))
        for f in [*(self.root / "samples").glob("step-*.jsonl"), *(self.root / "samples").glob("heldout-0*.jsonl")]:
            if int(f.stem.split("-")[1]) > step:
                f.unlink()

    def write_samples(self, name: str, trajectories: list) -> None:
        """samples/<name>.jsonl: one trajectory record a line (a step's rollout, or a held-out evaluation's pages)."""
        with open(self.root / "samples" / f"{name}.jsonl", "w") as f:
            for t in trajectories:
                f.write(json.dumps(t.to_json()) + "\n")

    def write_step(self, metrics: dict, trajectories: list) -> None:
        self.write_samples(f"step-{metrics['step']:06d}", trajectories)
        with open(self.root / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")


def quality(trajs: list) -> dict:
    """What a set of trajectories achieved: mean reward, final valid rate, accepted revisions per trajectory, and the
    critic's sub-scores (checks, 0..1) averaged over the final pages it scored - conditional on validity, so a gain
    there is better pages, not only more pages that render."""
    n = max(len(trajs), 1)
    scored = [t.final_checks for t in trajs if t.final_checks]
    names = sorted({k for c in scored for k in c})
    return {"reward": sum(t.reward for t in trajs) / n, "first_reward": sum(t.first_reward for t in trajs) / n,
            "valid_rate": sum(t.final_valid for t in trajs) / n,
            "accepted_revisions_per_trajectory": sum(a.accepted and a.turn > 0 for t in trajs for a in t.attempts) / n,
            "checks": {k: round(sum(c.get(k, 0.0) for c in scored if k in c) / sum(k in c for c in scored), 4)
                       for k in names}}


def task_checks_gain(before: dict, after: dict) -> float | None:
    """Mean change of the task-specific checks (the critic's content and style checks: terms, elements, colours,
    motion) between two `quality(...)["checks"]`; None when the critic reports none (an MLLM critic)."""
    from critic_service.heuristic import CONTENT_CHECKS, STYLE_CHECKS
    names = [k for k in (*CONTENT_CHECKS, *STYLE_CHECKS) if k in before and k in after]
    return round(sum(after[k] - before[k] for k in names) / len(names), 4) if names else None


def step_metrics(step: int, trajs: list, learn: dict, rollout_s: float, learn_s: float, push_s: float) -> dict:
    n = max(len(trajs), 1)
    attempts = [a for t in trajs for a in t.attempts]
    busy = {k: sum(t.timings_s[k] for t in trajs) for k in ("generate", "render", "critic")}
    generated = sum(a.tokens for a in attempts)
    return {
        "step": step, "reward_mean": sum(t.reward for t in trajs) / n,
        "valid_render_rate": sum(a.valid for a in attempts) / max(len(attempts), 1),
        "final_valid_rate": sum(t.final_valid for t in trajs) / n, "unscorable_rate": sum(t.unscorable for t in trajs) / n,
        "accepted_revisions": sum(a.accepted and a.turn > 0 for a in attempts), "attempts": len(attempts),
        "policy_version": learn["policy_version"], "loss": learn["loss"], "kl": learn["kl"],
        "logprob_diff_mean": learn["logprob_diff_mean"], "logprob_diff_max": learn["logprob_diff_max"],
        "ratio_mean": learn["ratio_mean"],
        "clip_fraction": learn["clip_fraction"], "entropy": learn["entropy"], "grad_norm": learn["grad_norm"],
        "flat_groups": learn["flat_groups"], "optimizer_steps": learn["optimizer_steps"],
        "rollout_s": rollout_s, "learn_s": learn_s, "push_s": push_s,
        "generate_busy_s": busy["generate"], "render_busy_s": busy["render"], "critic_busy_s": busy["critic"],
        "overlap_ratio": rollout_s / max(max(busy.values()), 1e-9),
        "renders_per_s": sum(a.reason != "no_html" for a in attempts) / max(rollout_s, 1e-9),
        # seconds a render waited for a slot and a page (the farm's time, not the page's deadline), per render
        "render_queue_s": sum(t.timings_s["render_queue"] for t in trajs) / max(
            sum(a.reason != "no_html" for a in attempts), 1),
        "render_busy": sum(a.reason == "busy" for a in attempts),  # renders the farm could not start in time
        "tokens_per_s": generated / max(rollout_s, 1e-9), "generated_tokens": generated, "trajectories": len(trajs),
        "critic_latency_s": busy["critic"] / max(sum(a.valid for a in attempts), 1),
        "accepted_revisions_per_trajectory": sum(a.accepted and a.turn > 0 for a in attempts) / n,
        "context_full": sum(t.stopped == "context_full" for t in trajs),
        **{f"check_{k}": v for k, v in quality(trajs)["checks"].items()},
    }


class Dashboard:
    """The run's own figures: a console progress bar, the Ray dashboard (ray.util.metrics) and wandb (offline unless
    configured) with sample screenshots."""

    GAUGES = ("reward_mean", "renders_per_s", "critic_latency_s", "policy_version", "tokens_per_s")

    def __init__(self, cfg, out: Path, first_step: int):
        from ray.util import metrics as m
        self.gauges = {k: m.Gauge(f"relook_{k}", description=k) for k in self.GAUGES}
        self.wandb = self.bar = None
        if cfg.trainer.wandb != "disabled":
            import wandb
            self.wandb = wandb.init(project=cfg.trainer.wandb_project, mode=cfg.trainer.wandb, dir=str(out),
                                    config=flat(cfg), reinit="finish_previous")
        if cfg.trainer.progress:
            from tqdm import tqdm
            self.bar = tqdm(total=cfg.trainer.max_steps, initial=first_step, desc="relook", dynamic_ncols=True)

    def log(self, metrics: dict, trajs: list) -> None:
        for k, g in self.gauges.items():
            g.set(float(metrics[k]))
        if self.bar is not None:
            self.bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", valid=f"{metrics['valid_render_rate']:.2f}",
                                 v=metrics["policy_version"], tok_s=f"{metrics['tokens_per_s']:.0f}")
            self.bar.update(1)
        if self.wandb is not None:
            import wandb
            from PIL import Image
            table = wandb.Table(columns=["task", "score", "reward", "feedback", "screenshot"])
            for t in trajs[:8]:
                shot = wandb.Image(Image.open(io.BytesIO(t.final_screenshot))) if t.final_screenshot else None
                best = max((a for a in t.attempts if a.accepted), key=lambda a: a.turn)
                table.add_data(t.prompt[:120], t.final_score, t.reward, best.feedback[:300], shot)
            self.wandb.log({**metrics, "samples": table}, step=metrics["step"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()


def hydra_job_dir(user_dir: str, user_set: bool) -> str:
    """trainer.output_dir of one job of a hydra sweep (-m): hydra's own job folder, or <user's dir>/<job number> when
    the user set one, so no two jobs share a folder (and none resumes from another's checkpoint)."""
    from hydra.core.hydra_config import HydraConfig
    hc = HydraConfig.get()
    return os.path.join(user_dir, str(hc.job.num)) if user_set else hc.runtime.output_dir


def throughput_line(mode: str, rows: list[dict]) -> dict:
    """One mode of +experiment=throughput from its metrics rows: rates over the steps' wall time (elapsed_s, from the
    first step's start), the engines' batching, mean stage times, and overlap = (rollout + learn + push) / wall (1: the
    stages ran in turn; above 1: they overlapped)."""
    wall = max(rows[-1]["elapsed_s"], 1e-9)
    calls = sum(r["engine_calls"] for r in rows) or 1
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    return {"mode": mode, "steps": len(rows), "tokens_per_s": round(sum(r["generated_tokens"] for r in rows) / wall, 2),
            "trajectories_per_s": round(sum(r["trajectories"] for r in rows) / wall, 4),
            "engine_batch_mean": round(sum(r["engine_batch_mean"] * r["engine_calls"] for r in rows) / calls, 3),
            "engine_ready_mean": round(sum(r["engine_ready_mean"] * r["engine_calls"] for r in rows) / calls, 3),
            "step_s": round(wall / len(rows), 2), "rollout_s": round(mean("rollout_s"), 2),
            "learn_s": round(mean("learn_s") + mean("push_s"), 2),
            "overlap": round(sum(r["rollout_s"] + r["learn_s"] + r["push_s"] for r in rows) / wall, 3),
            "staleness_max": max(r["staleness_max"] for r in rows), "dropped_stale": sum(r["dropped_stale"] for r in rows)}
