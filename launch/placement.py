"""Where each actor of a run goes: one Ray placement group with a bundle per learner rank, rollout engine and
render worker (`cluster.placement`), so a run starts only once all of it fits, and its parts land together (PACK)
or apart (SPREAD). With `cluster.colocate`, learner rank i and rollout engine i share bundle i and its GPU, and
weight pushes go by CUDA IPC. The critic is not placed here: a local process, or an endpoint (critic.url).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from .config import ClusterConfig


@dataclass
class Plan:
    bundles: list[dict]  # one Ray resource dict per bundle
    learner: list[int]  # bundle index of each learner rank
    rollout: list[int]  # ... of each rollout worker
    render: list[int]  # ... of each render worker
    learner_gpus: float  # GPUs each learner rank asks for (a share of its bundle's)
    rollout_gpus: float  # GPUs each rollout worker asks for
    strategy: str = "PACK"
    group: object = field(default=None, repr=False)


def plan(cfg: ClusterConfig, learner_ranks: int, rollout_workers: int, render_workers: int, cluster_gpus: float,
         engine_gpus: int = 1) -> Plan:
    """The bundles for a run (pure: no Ray calls). GPU counts of -1 mean 1 where the cluster has GPUs, else 0, and
    engine_gpus for an engine that spans several (vLLM's engine.tensor_parallel_size); colocated, a learner rank and
    an engine share one GPU (half each unless set; ClusterConfig.validate has checked that ranks and engines pair up)."""
    gpu = 1.0 if cluster_gpus > 0 else 0.0
    lg = gpu / (2 if cfg.colocate else 1) if cfg.learner_gpus < 0 else cfg.learner_gpus
    rg = gpu * engine_gpus / (2 if cfg.colocate else 1) if cfg.rollout_gpus < 0 else cfg.rollout_gpus

    def bundle(cpus: float, gpus: float) -> dict:
        return {"CPU": cpus, **({"GPU": gpus} if gpus > 0 else {})}  # Ray rejects zero-sized resources

    if cfg.colocate:
        bundles = [bundle(cfg.learner_cpus + cfg.rollout_cpus, lg + rg) for _ in range(learner_ranks)]
        learner = rollout = list(range(learner_ranks))
    else:
        bundles = [bundle(cfg.learner_cpus, lg) for _ in range(learner_ranks)]
        bundles += [bundle(cfg.rollout_cpus, rg) for _ in range(rollout_workers)]
        learner = list(range(learner_ranks))
        rollout = list(range(learner_ranks, learner_ranks + rollout_workers))
    render = list(range(len(bundles), len(bundles) + render_workers))
    bundles += [bundle(1, 0) for _ in range(render_workers)]  # a render worker reserves one CPU
    return Plan(bundles, learner, rollout, render, lg, rg, cfg.placement.upper())


def reserve(p: Plan, timeout_s: float) -> Plan:
    """Create the placement group and wait for it; a cluster that cannot hold it fails here, saying why."""
    if p.strategy == "NONE":
        return p
    p.group = placement_group(p.bundles, strategy=p.strategy, name="relook")
    if not p.group.wait(timeout_seconds=timeout_s):
        need = {k: sum(b.get(k, 0) for b in p.bundles) for k in ("CPU", "GPU")}
        remove_placement_group(p.group)
        raise RuntimeError(f"the run's placement group ({len(p.bundles)} bundles, {need['CPU']:g} CPU, {need['GPU']:g} "
                           f"GPU, {p.strategy}) did not fit in {timeout_s:g} s; the cluster has {ray.cluster_resources()}. "
                           f"Lower rollout.workers / render.workers / learner.ranks, set cluster.colocate=true (one GPU "
                           f"per learner rank and engine pair), or cluster.placement=none")
    return p


def options(p: Plan, bundle: int) -> dict:
    """Ray actor options that put an actor in one bundle of the run's placement group ({} without one)."""
    if p.group is None:
        return {}
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(p.group, placement_group_bundle_index=bundle)}


def release(p: Plan) -> None:
    if p.group is not None:
        remove_placement_group(p.group)
        p.group = None
