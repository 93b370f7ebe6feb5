"""The recipe behind `python launch/cluster.py`: setup -> step (rollout -> GRPO update -> weight push) x N -> close.

One RL step, as data: tasks -> rollout workers (actors/worker.py; each trajectory's prompt -> tokens -> HTML ->
screenshots -> score in actors/rollout.py) -> trajectories -> the learner (learner/learner.py: group advantages and
the loss in learner/core_algos.py, the gradient step in learner/rank.py) -> new weights pushed to every engine
(learner/weight_sync.py). What the run writes and shows is in launch/run_io.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import signal
import threading
import time
from pathlib import Path

import ray
from omegaconf import OmegaConf
from ray.exceptions import ActorUnavailableError, RayActorError

from actors.worker import rollout_worker, stream_groups
from critic_service.process import answers, endpoint
from learner.learner import Learner
from learner.weight_sync import PushInterrupted
from render_farm.farm import RenderFarm

from . import independent, nodes, placement
from . import tasks as task_sources
from .config import TrainConfig
from .run_io import (Dashboard, RunFiles, checkpoints, config_changes, flat, quality, run_folder, step_metrics,
                     task_checks_gain)


stopped_by: str | None = None  # the signal that stopped the run ("SIGTERM"), for the driver's last line


def _stop(signum, frame):
    """SIGTERM (a scheduler's preemption, `kill`) unwinds the driver like Ctrl-C does."""
    global stopped_by
    stopped_by = signal.Signals(signum).name
    raise KeyboardInterrupt(stopped_by)  # inside a Ray wait, Ray raises a KeyboardInterrupt of its own instead


def ray_init(cfg: TrainConfig) -> None:
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


def task_pools(cfg: TrainConfig) -> tuple[list[dict], list[dict]]:
    """(training tasks, held-out tasks)."""
    if cfg.data.source != "procedural":
        rows = task_sources.load(cfg.data.source, cfg.data.path, cfg.data.limit)
        return rows[cfg.data.heldout_tasks:], rows[:cfg.data.heldout_tasks]
    return task_sources.procedural("train"), task_sources.procedural("heldout")[:cfg.data.heldout_tasks]


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg, self.files = cfg, RunFiles(cfg.trainer.output_dir)
        self.start_step, self.layout, self.dash, self.pushed_version, self.learner = 0, None, None, 0, None
        self.loop_t0 = time.perf_counter()
        self._resources = contextlib.ExitStack()  # the critic service, the placement group, Ray: released by close()

    # -- setup ----------------------------------------------------------------------------------------------------

    def setup(self) -> "Trainer":
        cfg = self.cfg
        if cfg.trainer.resume == "auto":  # a changed setting is a new run; the same settings continue
            folder, changed = run_folder(cfg.trainer.output_dir, flat(cfg))
            if changed:
                print(f"{cfg.trainer.output_dir} was trained with other settings ({'; '.join(changed)}): this run "
                      f"trains in {folder}; trainer.resume={checkpoints(Path(cfg.trainer.output_dir))[-1]} would "
                      f"continue that run with these settings instead", flush=True)
                self.cfg = cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, output_dir=str(folder)))
                self.files = RunFiles(str(folder))
        ckpt = self.files.checkpoint(cfg.trainer.resume)
        if cfg.trainer.resume != "auto" and ckpt is not None and (ckpt / "config.yaml").is_file():
            # trainer.resume=PATH: continued as asked, with what changed since said (torchtune's check)
            changed = config_changes(flat(OmegaConf.to_container(OmegaConf.load(ckpt / "config.yaml"))), flat(cfg))
            if changed:
                print(f"resuming from {ckpt} with changed settings: " + "; ".join(changed), flush=True)
        if cfg.critic.url and not answers(cfg.critic.url):  # before Ray starts or the config is written
            raise ValueError(f"critic.url={cfg.critic.url!r} does not answer GET /healthz")
        self.config_yaml = self.files.write_config(cfg)
        ray_init(cfg)
        self._resources.callback(ray.shutdown)
        checked = nodes.check(cfg.render.chromium_path, need_runner=cfg.data.source == "web-bench")
        if checked > 1:
            print(f"{checked} nodes run the same project, environment and Chromium", flush=True)
        if threading.current_thread() is threading.main_thread():
            # Ray's SIGTERM handler aborts the driver, so no finally runs: unwind instead, so that the checkpoint
            # being written completes and the critic service, wandb and the local Ray session close (close()).
            self._resources.callback(signal.signal, signal.SIGTERM, signal.signal(signal.SIGTERM, _stop))
        # A critic started here listens on the driver's node IP ("auto"): rollout workers on any node reach it.
        critic = cfg.critic if cfg.critic.host != "auto" else \
            dataclasses.replace(cfg.critic, host=ray.util.get_node_ip_address())
        self.critic_url = self._resources.enter_context(endpoint(critic, self.files.critic_log))
        print(f"critic service: {self.critic_url}; {cfg.reward.formula()}; revisions: {cfg.revision.format}", flush=True)
        self.layout = placement.plan(cfg.cluster, cfg.learner.ranks, cfg.rollout.workers, cfg.render.workers,
                                     ray.cluster_resources().get("GPU", 0),
                                     cfg.engine.tensor_parallel_size if cfg.engine.kind == "vllm" else 1)
        placement.reserve(self.layout, cfg.cluster.placement_timeout_s)
        self._resources.callback(placement.release, self.layout)  # on a shared cluster it would outlive the driver
        # Held for the whole run: Ray restarts a dead actor only while its creator still holds a handle to it.
        self.farm = RenderFarm(cfg.render, placement=[placement.options(self.layout, b) for b in self.layout.render])
        Worker = rollout_worker(cfg.engine.kind)
        self.workers = [Worker.options(num_cpus=cfg.cluster.rollout_cpus, num_gpus=self.layout.rollout_gpus,
                                       **placement.options(self.layout, b)).remote(
                            cfg.model.name, cfg.resolved_rollout(), self.farm.workers, self.critic_url,
                            seed=cfg.trainer.seed + i,
                            revision=cfg.revision, reward=cfg.reward, engine=cfg.engine)
                        for i, b in enumerate(self.layout.rollout)]
        print(f"{len(self.workers)} rollout worker(s), {cfg.render.workers} render worker(s), placement "
              f"{self.layout.strategy} ({len(self.layout.bundles)} bundles{', colocated' if cfg.cluster.colocate else ''}); "
              f"starting the learner", flush=True)
        self.learner = Learner(cfg.model.name, cfg.resolved_learner(),
                               cfg.rollout.temperature, cfg.data.tasks_per_step * cfg.rollout.group_size,
                               cfg.cluster.learner_cpus, self.layout.learner_gpus,
                               [placement.options(self.layout, b) for b in self.layout.learner])
        self.files.check_shared(self.learner)
        if ckpt is not None:
            self.learner.load(str(ckpt))
            state = json.loads((ckpt / "trainer_state.json").read_text())
            self.start_step, self.learner.version = state["step"], state["policy_version"]
            self.files.truncate_to(self.start_step)
            self.push()
            self.pushed_version = self.learner.version
            print(f"resumed from {ckpt} (step {self.start_step}, policy version {self.learner.version})", flush=True)
        print(f"learner ready ({cfg.learner.ranks} rank(s), ZeRO-{cfg.learner.zero_stage})", flush=True)
        self.files.write_hosts({"learner": self.learner.hosts,
                                "rollout": ray.get([w.node_ip.remote() for w in self.workers]),
                                "render": ray.get([w.node_ip.remote() for w in self.farm.workers])})
        self.train_pool, self.heldout = task_pools(cfg)
        self.independent = independent.pool(cfg) if cfg.trainer.learning_check else []
        self.dash = Dashboard(cfg, self.files.root, self.start_step)
        return self

    # -- one RL step ----------------------------------------------------------------------------------------------

    def rollout(self, tasks: list[dict], seed: int, stats: dict | None = None, overrides: dict | None = None) -> list:
        """The trajectories of `tasks`, in task order (not finishing order), sampled from streams of `seed`."""
        got = stream_groups(self.workers, tasks, self.cfg.rollout.max_groups_in_flight, stats=stats,
                            overrides=overrides, seed=seed)
        position = {id(task): i for i, task in enumerate(tasks)}
        return [t for _, group in sorted(got, key=lambda tg: position[id(tg[0])]) for t in group]

    def collect(self, step: int) -> dict:
        """The rollout of one step: its tasks (a function of data.seed and step), the trajectories, how long it took
        and what the engines did meanwhile."""
        cfg = self.cfg
        batch = task_sources.batch_for_step(self.train_pool, step, cfg.data.tasks_per_step, cfg.data.seed)
        t0, stats = time.perf_counter(), {}
        trajs = self.rollout(batch, cfg.trainer.seed * 1_000_003 + step, stats)  # a resumed step samples the same
        return {"step": step, "trajs": trajs, "rollout_s": time.perf_counter() - t0,
                "resubmitted": stats.get("resubmitted", 0), "engine": self.engine_stats()}

    def learn(self, got: dict) -> dict:
        """The update of one step on a collected rollout: GRPO step, weight push, metrics, samples, checkpoint."""
        cfg, step, k = self.cfg, got["step"], self.cfg.trainer.max_staleness
        version = self.learner.version  # the policy being updated; a sample from version v is version - v stale
        trajs = got["trajs"]
        if k:  # asynchronous: a sample older than the bound is never trained on
            trajs = [t for t in trajs if version - t.policy_version <= k]
        self.saved()  # the last step's checkpoint, written while this step's rollout ran
        t1 = time.perf_counter()
        learn = self.learner.step(trajs) if trajs else self.learner.skip()
        t2 = time.perf_counter()
        self.push()
        self.pushed_version = self.learner.version  # what the engines hold now
        metrics = step_metrics(step, trajs, learn, got["rollout_s"], t2 - t1, time.perf_counter() - t2)
        staleness = [version - t.policy_version for t in trajs] or [0]
        metrics.update(weight_sync=self.learner.last_transport, resubmitted_groups=got["resubmitted"],
                       stale_trajectories=sum(s != 0 for s in staleness),  # k = 0: from a restarted worker
                       staleness_mean=sum(staleness) / len(staleness), staleness_max=max(staleness),
                       dropped_stale=len(got["trajs"]) - len(trajs), max_staleness=k, **got["engine"],
                       elapsed_s=time.perf_counter() - self.loop_t0)
        if cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0:
            held = self.evaluate(f"heldout-{step:06d}")
            metrics["heldout_reward"], metrics["heldout_first_reward"] = held["reward"], held["first_reward"]
            metrics.update({f"heldout_check_{name}": v for name, v in held["checks"].items()})
        self.files.write_step(metrics, trajs)
        if step % cfg.trainer.save_every == 0 or step == cfg.trainer.max_steps:
            self.save(step, wait=False)  # in the background: the next rollout (or the final evaluation) goes on
        self.dash.log(metrics, trajs)
        if metrics["logprob_diff_mean"] > cfg.engine.logprob_tolerance:  # the on-policy check (DESIGN.md)
            print(f"WARNING step {step}: the learner's log-probs of the sampled tokens differ from the engine's by "
                  f"{metrics['logprob_diff_mean']:.2e} on average (max {metrics['logprob_diff_max']:.2e}, ratio "
                  f"{metrics['ratio_mean']:.4f}) before the update, over engine.logprob_tolerance="
                  f"{cfg.engine.logprob_tolerance:g}: the learner is not scoring what the engine sampled (temperature, "
                  f"processors, stop tokens, dtype), so every importance ratio is biased", flush=True)
        if metrics["unscorable_rate"] == 1.0:
            print(f"step {step}: every sample was unscorable - is the critic backend up? ({self.critic_url})", flush=True)
        return metrics

    def step(self, step: int) -> dict:
        """One on-policy step: rollout, update, push, in turn."""
        return self.learn(self.collect(step))

    def run_async(self, on_step) -> None:
        """trainer.max_staleness = k >= 1: a thread collects the rollouts of the next steps while this one updates and
        pushes. The rollout of step s starts once the weights of version s - 1 - k have reached the engines, so every
        sample trained at step s comes from a policy at most k versions older than the one being updated (a
        straggler from a restarted worker is dropped and counted). A weight push lands between two engine calls."""
        k, ready = self.cfg.trainer.max_staleness, queue.Queue()
        pushed, stop = threading.Condition(), threading.Event()

        def produce():
            try:
                for step in range(self.start_step + 1, self.cfg.trainer.max_steps + 1):
                    with pushed:
                        pushed.wait_for(lambda: self.pushed_version >= step - 1 - k or stop.is_set())
                    if stop.is_set():
                        return
                    ready.put(self.collect(step))
            except BaseException as e:  # handed to the update loop, which raises it
                ready.put(e)

        thread = threading.Thread(target=produce, name="rollouts", daemon=True)
        thread.start()
        try:
            for _ in range(self.start_step + 1, self.cfg.trainer.max_steps + 1):
                got = ready.get()
                if isinstance(got, BaseException):
                    raise got
                on_step(self.learn(got))  # the version moves only once its weights are on the engines
                with pushed:
                    pushed.notify_all()
        finally:
            stop.set()
            with pushed:
                pushed.notify_all()

    def engine_stats(self) -> dict:
        """engine_calls, engine_batch_mean (requests per call), engine_batch_max, engine_ready_mean (requests waiting
        as a call began) over every worker since the last call."""
        got = []
        for w in self.workers:
            try:
                got.append(ray.get(w.engine_stats.remote(), timeout=60))
            except (RayActorError, ActorUnavailableError, ray.exceptions.GetTimeoutError):
                pass  # a worker being restarted counts from zero
        calls = sum(g["calls"] for g in got)
        return {"engine_calls": calls, "engine_batch_mean": sum(g["requests"] for g in got) / max(calls, 1),
                "engine_batch_max": max((g["max"] for g in got), default=0),
                "engine_ready_mean": sum(g["ready"] for g in got) / max(calls, 1)}

    def push(self, attempts: int = 8) -> None:
        """Push the weights to every worker; a worker that died (Ray restarts it with the base weights) gets them once
        its constructor has run, so no step samples from a restarted worker's stale policy for long. A broadcast cut
        by a death can leave the others waiting out the group's timeout: one timeout is retried (a new group forms)."""
        timeouts = 0
        for attempt in range(attempts):
            try:
                self.learner.push_weights(self.workers)
                return
            except (RayActorError, ActorUnavailableError, PushInterrupted, TimeoutError) as e:
                timeouts += isinstance(e, TimeoutError)
                if attempt == attempts - 1 or timeouts > 1:
                    raise
                print(f"weight push: a rollout worker is restarting ({type(e).__name__}); retrying", flush=True)
                time.sleep(min(2 ** attempt, 10))

    def evaluate(self, name: str) -> dict:
        """The held-out tasks under the current policy (run_io.quality): with trainer.eval_max_turns=1 (the default)
        the first page alone, without a critic; 0 = through the training loop. trainer.eval_temperature: the rollout's
        by default, or inference's (self_edit.temperature, 0.2) to judge the policy as deployed. Every evaluation draws
        from the same streams (common random numbers): before and after differ by the policy only.
        Its pages are kept in samples/<name>.jsonl (heldout-baseline, heldout-NNNNNN, heldout-final)."""
        t = self.cfg.trainer
        overrides = {**({"max_turns": t.eval_max_turns} if t.eval_max_turns else {}),
                     "temperature": self.cfg.resolved_eval_temperature()}
        # the learning check's before and after also sample the independent tasks, in the same engine calls
        other = self.independent if name in ("heldout-baseline", "heldout-final") else []
        trajs = self.rollout(self.heldout + other, t.seed * 1_000_003 - 1, overrides=overrides)
        ids = {task["id"] for task in other}
        trajs, others = [x for x in trajs if x.task_id not in ids], [x for x in trajs if x.task_id in ids]
        self.files.write_samples(name, trajs)
        held = quality(trajs)
        if other:  # judged by executable checks the policy never trained against
            held["independent"] = independent.judge(other, others)
            self.files.write_samples(name.replace("heldout", "independent"), others)
        return held

    def save(self, step: int, wait: bool = True) -> None:
        state = {"step": step, "policy_version": self.learner.version, "data_seed": self.cfg.data.seed}
        self.learner.save(self.files.checkpoint_dir(step), {"trainer_state.json": json.dumps(state),
                                                             "config.yaml": self.config_yaml}, wait=False)
        if wait:
            self.saved()

    def saved(self) -> None:
        """The checkpoint being written (save(wait=False)) complete and in place; the oldest beyond
        learner.keep_checkpoints removed."""
        if self.learner is not None and self.learner.saved() is not None:
            self.files.prune(self.cfg.learner.keep_checkpoints)

    # -- teardown -------------------------------------------------------------------------------------------------

    def close(self) -> None:
        try:  # a checkpoint still being written is finished: a failure elsewhere need not lose it
            self.saved()
        except Exception as e:  # noqa: BLE001 - the run is ending on another error, or the learner died with it
            print(f"the last checkpoint was not completed: {type(e).__name__}: {e}", flush=True)
        if self.dash is not None:
            self.dash.close()
        self._resources.close()

    def train(self) -> dict:
        """setup, every step from the checkpoint on, close; with trainer.learning_check the held-out reward before
        and after, printed as one JSON line."""
        try:
            self.setup()
            result, t_start, accepted = {}, time.time(), []
            if self.cfg.trainer.learning_check:
                baseline = self.evaluate("heldout-baseline")
            def on_step(metrics: dict) -> None:
                result.update(metrics)
                accepted.append(metrics["accepted_revisions_per_trajectory"])
                result["generated_tokens_total"] = result.get("generated_tokens_total", 0) + metrics["generated_tokens"]

            self.loop_t0 = time.perf_counter()
            if self.cfg.trainer.max_staleness:
                self.run_async(on_step)
            else:
                budget = self.cfg.trainer.token_budget
                for step in range(self.start_step + 1, self.cfg.trainer.max_steps + 1):
                    on_step(self.step(step))
                    if budget and result["generated_tokens_total"] >= budget and step < self.cfg.trainer.max_steps:
                        print(f"step {step}: generation budget spent ({result['generated_tokens_total']} >= "
                              f"trainer.token_budget={budget} tokens); stopping", flush=True)
                        self.save(step)
                        break
            if self.cfg.trainer.learning_check:
                final = self.evaluate("heldout-final")
                line = {"baseline_reward": baseline["reward"], "final_reward": final["reward"],
                        "minutes": round((time.time() - t_start) / 60, 2), "max_turns": self.cfg.rollout.max_turns,
                        "eval_temperature": self.cfg.resolved_eval_temperature(),
                        "revision_format": self.cfg.revision.format, "max_staleness": self.cfg.trainer.max_staleness,
                        "credit": self.cfg.learner.credit,
                        "accepted_revisions_per_trajectory": round(sum(accepted) / max(len(accepted), 1), 4),
                        "baseline_checks": baseline["checks"], "final_checks": final["checks"],
                        "task_checks_gain": task_checks_gain(baseline["checks"], final["checks"]),
                        "baseline_valid_rate": baseline["valid_rate"], "final_valid_rate": final["valid_rate"],
                        "baseline_first_reward": baseline["first_reward"], "final_first_reward": final["first_reward"],
                        **learning_figures(baseline, final), "reward_formula": self.cfg.reward.formula()}
                print(json.dumps(line), flush=True)
                result.update(line)
            self.saved()
            return result
        finally:
            self.close()


def learning_figures(baseline: dict, final: dict) -> dict:
    """The learning check's two judges side by side: heldout_* by the training critic (the one-shot reward on the
    procedural held-out tasks), independent_* by executable checks on tasks from another distribution (0..100)."""
    out = {"heldout_baseline": round(baseline["first_reward"], 4), "heldout_final": round(final["first_reward"], 4),
           "heldout_gain": round(final["first_reward"] - baseline["first_reward"], 4)}
    if "independent" in baseline:
        b, f = baseline["independent"], final["independent"]
        out.update({"independent_baseline": b["score"], "independent_final": f["score"],
                    "independent_gain": round(f["score"] - b["score"], 2), "independent_pages": len(b["verdicts"]),
                    "independent_checks_baseline": b["checks"], "independent_checks_final": f["checks"],
                    "independent_valid_baseline": b["valid_rate"], "independent_valid_final": f["valid_rate"]})
    return out


def train(cfg: TrainConfig) -> dict:
    return Trainer(cfg).train()
