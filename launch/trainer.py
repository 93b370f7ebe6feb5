"""The RL loop behind `python launch/cluster.py`: rollouts stream through the workers while rendering and critique run
concurrently -> GRPO update -> weight push -> next step. Metrics, samples and checkpoints under trainer.output_dir."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import ray
from omegaconf import OmegaConf
from ray.exceptions import ActorUnavailableError, RayActorError

from actors.dispatcher import stream_groups
from actors.worker import RolloutWorker
from critic_service.process import answers, start_local
from learner.learner import Learner, PushInterrupted, prune_checkpoints
from render_farm.farm import RenderFarm

from . import placement
from . import tasks as task_sources
from .config import TrainConfig



def _ray_init(cfg: TrainConfig) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if cfg.cluster.address not in ("auto", "local"):
        ray.init(address=cfg.cluster.address)
        return
    if cfg.cluster.address == "auto":
        try:  # a running cluster (ray start --head ...) is joined; otherwise a local one starts
            ray.init(address="auto", log_to_driver=False)
            return
        except (ConnectionError, RuntimeError):
            pass
    ray.init(num_cpus=cfg.cluster.num_cpus or max(8, os.cpu_count() or 1), include_dashboard=True,
             log_to_driver=False)


def _latest_checkpoint(out: Path) -> Path | None:
    root = out / "checkpoints"
    steps = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")) if root.is_dir() else []
    return steps[-1] if steps else None


def _task_pools(cfg: TrainConfig) -> tuple[list[dict], list[dict]]:
    if cfg.data.source != "procedural":
        rows = task_sources.load(cfg.data.source, cfg.data.path, cfg.data.limit)
        return rows[cfg.data.heldout_tasks:], rows[:cfg.data.heldout_tasks]
    return task_sources.procedural("train"), task_sources.procedural("heldout")[:cfg.data.heldout_tasks]


def rollout(workers: list, tasks: list[dict], in_flight: int, stats: dict | None = None) -> list:
    return [t for _, group in stream_groups(workers, tasks, max_in_flight=in_flight, stats=stats) for t in group]


def push(learner: Learner, workers: list, attempts: int = 8) -> None:
    """Push the weights to every worker; a worker that died (Ray restarts it with the base weights) gets them once
    its constructor has run, so no step samples from a restarted worker's stale policy for long. A broadcast cut
    by a death can leave the others waiting out the group's timeout: one timeout is retried (a new group forms)."""
    timeouts = 0
    for attempt in range(attempts):
        try:
            learner.push_weights(workers)
            return
        except (RayActorError, ActorUnavailableError, PushInterrupted, TimeoutError) as e:
            timeouts += isinstance(e, TimeoutError)
            if attempt == attempts - 1 or timeouts > 1:
                raise
            print(f"weight push: a rollout worker is restarting ({type(e).__name__}); retrying", flush=True)
            time.sleep(min(2 ** attempt, 10))


def _reseed(workers: list, seed: int, step: int) -> None:
    """Sampling seeds as a function of (trainer.seed, step, worker), so a resumed step samples as the first run did."""
    for i, w in enumerate(workers):
        try:
            ray.get(w.reseed.remote(seed * 1_000_003 + step * 1_009 + i), timeout=60)
        except (RayActorError, ActorUnavailableError, ray.exceptions.GetTimeoutError):
            pass  # a worker being restarted: the dispatcher resubmits its groups; its constructor seeds it


def _truncate_to(out: Path, step: int) -> None:
    """A driver killed after writing step k's metrics but before its checkpoint: drop what the resumed run redoes."""
    path = out / "metrics.jsonl"
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(r + "\n" for r in rows))
    for f in (out / "samples").glob("step-*.jsonl"):
        if int(f.stem.split("-")[1]) > step:
            f.unlink()


def evaluate(workers: list, heldout: list[dict], in_flight: int) -> float:
    trajs = rollout(workers, heldout, in_flight)
    return sum(t.reward for t in trajs) / max(len(trajs), 1)


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
        "clip_fraction": learn["clip_fraction"], "entropy": learn["entropy"], "grad_norm": learn["grad_norm"],
        "flat_groups": learn["flat_groups"], "rollout_s": rollout_s, "learn_s": learn_s, "push_s": push_s,
        "generate_busy_s": busy["generate"], "render_busy_s": busy["render"], "critic_busy_s": busy["critic"],
        "overlap_ratio": rollout_s / max(max(busy.values()), 1e-9),
        "renders_per_s": sum(a.reason != "no_html" for a in attempts) / max(rollout_s, 1e-9),
        "tokens_per_s": generated / max(rollout_s, 1e-9),
        "critic_latency_s": busy["critic"] / max(sum(a.valid for a in attempts), 1),
    }


class _Dashboard:
    """The run's own figures on the Ray dashboard (ray.util.metrics) and in wandb (offline unless configured)."""

    def __init__(self, cfg: TrainConfig, out: Path):
        from ray.util import metrics as m
        self.gauges = {k: m.Gauge(f"relook_{k}", description=k) for k in
                       ("reward_mean", "renders_per_s", "critic_latency_s", "policy_version", "tokens_per_s")}
        self.wandb = None
        if cfg.trainer.wandb != "disabled":
            import wandb
            self.wandb = wandb.init(project=cfg.trainer.wandb_project, mode=cfg.trainer.wandb, dir=str(out),
                                    config=OmegaConf.to_container(OmegaConf.structured(cfg)), reinit="finish_previous")

    def log(self, metrics: dict, trajs: list) -> None:
        for k, g in self.gauges.items():
            g.set(float(metrics[k]))
        if self.wandb is not None:
            import io

            import wandb
            from PIL import Image
            table = wandb.Table(columns=["task", "score", "reward", "feedback", "screenshot"])
            for t in trajs[:8]:
                shot = wandb.Image(Image.open(io.BytesIO(t.final_screenshot))) if t.final_screenshot else None
                best = max((a for a in t.attempts if a.accepted), key=lambda a: a.turn)
                table.add_data(t.prompt[:120], t.final_score, t.reward, best.feedback[:300], shot)
            self.wandb.log({**metrics, "samples": table}, step=metrics["step"])

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def train(cfg: TrainConfig) -> dict:
    out = Path(cfg.trainer.output_dir)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    (out / "checkpoints").mkdir(exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    _ray_init(cfg)
    critic_proc, layout = None, None
    try:
        if cfg.critic.url:
            url = cfg.critic.url
            if not answers(url):
                raise ValueError(f"critic.url={url!r} does not answer GET /healthz")
        else:
            url, critic_proc = start_local(cfg.critic)
        print(f"critic service: {url}", flush=True)
        cfg.render.workers = cfg.cluster.render_workers
        layout = placement.plan(cfg.cluster, cfg.learner.ranks, cfg.rollout.workers, ray.cluster_resources().get("GPU", 0))
        placement.reserve(layout, cfg.cluster.placement_timeout_s)
        farm = RenderFarm(cfg.render, placement=[placement.options(layout, b) for b in layout.render])
        workers = [RolloutWorker.options(num_cpus=cfg.cluster.rollout_cpus, num_gpus=layout.rollout_gpus,
                                         **placement.options(layout, b)).remote(
                       cfg.model.name, cfg.rollout, farm.workers, url, seed=cfg.trainer.seed + i, engine=cfg.engine.kind)
                   for i, b in enumerate(layout.rollout)]
        print(f"{len(workers)} rollout worker(s), {cfg.render.workers} render worker(s), placement {layout.strategy} "
              f"({len(layout.bundles)} bundles{', colocated' if cfg.cluster.colocate else ''}); starting the learner", flush=True)
        per_step = cfg.data.tasks_per_step * cfg.rollout.group_size
        cfg.learner.seed = cfg.trainer.seed
        learner = Learner(cfg.model.name, cfg.learner, cfg.rollout.temperature, per_step, cfg.cluster.learner_cpus,
                          layout.learner_gpus, [placement.options(layout, b) for b in layout.learner])
        start = 0
        ckpt = (_latest_checkpoint(out) if cfg.trainer.resume == "auto" else
                None if cfg.trainer.resume == "never" else Path(cfg.trainer.resume))
        if ckpt is not None:
            learner.load(str(ckpt))
            state = json.loads((ckpt / "trainer_state.json").read_text())
            start, learner.version = state["step"], state["policy_version"]
            _truncate_to(out, start)
            push(learner, workers)
            print(f"resumed from {ckpt} (step {start}, policy version {learner.version})", flush=True)
        print(f"learner ready ({cfg.learner.ranks} rank(s), ZeRO-{cfg.learner.zero_stage})", flush=True)
        train_pool, heldout = _task_pools(cfg)
        in_flight = cfg.rollout.max_groups_in_flight
        result = {}
        if cfg.trainer.learning_check:
            t_start = time.time()
            result["baseline_reward"] = evaluate(workers, heldout, in_flight)
        dash = _Dashboard(cfg, out)
        bar = None
        if cfg.trainer.progress:
            from tqdm import tqdm
            bar = tqdm(total=cfg.trainer.max_steps, initial=start, desc="relook", dynamic_ncols=True)
        for step in range(start + 1, cfg.trainer.max_steps + 1):
            batch = task_sources.batch_for_step(train_pool, step, cfg.data.tasks_per_step, cfg.data.seed)
            _reseed(workers, cfg.trainer.seed, step)
            t0, stats = time.perf_counter(), {}
            trajs = rollout(workers, batch, in_flight, stats)
            t1 = time.perf_counter()
            version = learner.version
            learn = learner.step(trajs)
            t2 = time.perf_counter()
            push(learner, workers)
            metrics = step_metrics(step, trajs, learn, t1 - t0, t2 - t1, time.perf_counter() - t2)
            metrics["weight_sync"] = learner.last_transport
            metrics["resubmitted_groups"] = stats.get("resubmitted", 0)  # groups re-run after a worker died
            metrics["stale_trajectories"] = sum(t.policy_version != version for t in trajs)  # from a restarted worker
            if cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0:
                metrics["heldout_reward"] = evaluate(workers, heldout, in_flight)
            with open(out / "samples" / f"step-{step:06d}.jsonl", "w") as f:
                for t in trajs:
                    f.write(json.dumps(t.to_json()) + "\n")
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            if step % cfg.trainer.save_every == 0 or step == cfg.trainer.max_steps:
                state = {"step": step, "policy_version": learner.version, "data_seed": cfg.data.seed}
                learner.save(str(out / "checkpoints" / f"step-{step:06d}"), {"trainer_state.json": json.dumps(state)})
                prune_checkpoints(str(out / "checkpoints"), cfg.learner.keep_checkpoints)
            dash.log(metrics, trajs)
            if metrics["unscorable_rate"] == 1.0:
                print(f"step {step}: every sample was unscorable - is the critic backend up? ({url})", flush=True)
            if bar is not None:
                bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", valid=f"{metrics['valid_render_rate']:.2f}",
                                v=metrics["policy_version"], tok_s=f"{metrics['tokens_per_s']:.0f}")
                bar.update(1)
            result = {**result, **metrics}
        if bar is not None:
            bar.close()
        dash.close()
        if cfg.trainer.learning_check:
            final = evaluate(workers, heldout, in_flight)
            line = {"baseline_reward": result["baseline_reward"], "final_reward": final,
                    "minutes": round((time.time() - t_start) / 60, 2)}
            print(json.dumps(line), flush=True)
            result.update(line)
        return result
    finally:
        if critic_proc is not None:
            critic_proc.terminate()
        if layout is not None:
            placement.release(layout)  # on a shared cluster the group would outlive the driver otherwise
        ray.shutdown()
