"""Learner: the driver's handle on N DeepSpeed ranks (Ray actors in one torch.distributed group). It turns a batch
of trajectories into group advantages (core_algos.py), splits it across the ranks, combines their metrics,
checkpoints atomically, and pushes new weights to the rollout engines (weight_sync.py)."""
from __future__ import annotations

import math
import os
import shutil

import ray
import torch

from . import core_algos as algos
from . import weight_sync as ws
from .config import LearnerConfig
from .rank import LearnerRank


def shard(samples: list[dict], ranks: int) -> list[list[dict]]:
    """Split a batch across ranks with roughly equal token counts (longest first, to the lightest rank), each rank
    holding at most ceil(N / ranks) samples: the gradient accumulation count is sized from sample counts at start-up,
    and balancing tokens alone piles short samples on one rank (lengths [900, 300 x3, 280, 260, 250, 240] on 2 ranks:
    3 and 5 samples against a capacity of 4)."""
    out, load = [[] for _ in range(ranks)], [0] * ranks
    room = -(-len(samples) // max(ranks, 1))
    for s in sorted(samples, key=lambda s: -len(s["token_ids"])):
        r = min((r for r in range(ranks) if len(out[r]) < room), key=lambda r: load[r])
        out[r].append(s)
        load[r] += len(s["token_ids"])
    return out


def split(samples: list[dict], count: int) -> list[list[dict]]:
    """`count` mini-batches of consecutive samples (task order, so a group stays together where sizes allow),
    as even as possible; fewer when there are fewer samples."""
    count = max(1, min(count, len(samples)))
    size, extra = divmod(len(samples), count)
    bounds = [i * size + min(i, extra) for i in range(count + 1)]
    return [samples[a:b] for a, b in zip(bounds, bounds[1:])]


def _as_dict(t) -> dict:
    return t if isinstance(t, dict) else t.__dict__


class Learner:
    def __init__(self, model: str, cfg: LearnerConfig, temperature: float, trajectories_per_step: int,
                 cpus_per_rank: float = 1.0, gpus_per_rank: float | None = None, placement: list[dict] | None = None):
        """gpus_per_rank: None = 1 where the learner trains on CUDA; placement: per-rank Ray options (a bundle of the
        run's placement group, launch/placement.py)."""
        self.cfg = cfg.validate()
        per_rank = math.ceil(math.ceil(trajectories_per_step / cfg.mini_batches) / cfg.ranks)  # one optimiser step's share
        gas = cfg.micro_batches_per_step or max(1, math.ceil(per_rank / cfg.micro_batch_size))
        gpus = gpus_per_rank if gpus_per_rank is not None else (
            1 if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else 0)
        self.ranks = [LearnerRank.options(num_cpus=cpus_per_rank, num_gpus=gpus, **(placement[r] if placement else {}))
                      .remote(model, cfg, r, cfg.ranks, gas, temperature) for r in range(cfg.ranks)]
        # Rank 0's node IP and a port free on that node: an address every rank can reach, wherever it runs.
        master, port = ray.get(self.ranks[0].address.remote())
        self.hosts = ray.get([r.node_ip.remote() for r in self.ranks])
        joins = [r.join.remote(master, port) for r in self.ranks]
        ready, _ = ray.wait(joins, num_returns=len(joins), timeout=cfg.rendezvous_timeout_s)
        if len(ready) < len(joins):
            for r in self.ranks:
                ray.kill(r)
            raise TimeoutError(f"the DeepSpeed group did not form at {master}:{port} (learner rank 0's node) within "
                               f"learner.rendezvous_timeout_s={cfg.rendezvous_timeout_s:g} s: {len(ready)} of "
                               f"{len(joins)} ranks joined; ranks on {self.hosts}")
        ray.get(ready)  # a rank that failed to join raises here
        self._all("build")
        self.version, self._saving = 0, None  # _saving: a checkpoint being written (save(wait=False))
        self.pusher = ws.Pusher(self.ranks, cfg.weight_sync, cfg.bucket_mb, cfg.push_timeout_s)

    def _all(self, method: str, *args) -> list:
        """Call `method` on every rank together (collectives need all of them) and wait for their answers."""
        return ray.get([getattr(r, method).remote(*args) for r in self.ranks])

    def step(self, trajectories: list) -> dict:
        """One GRPO update on a batch of groups; bumps the policy version. Returns metrics."""
        rows = [_as_dict(t) for t in trajectories]
        task_ids = {tid: i for i, tid in enumerate(dict.fromkeys(r["task_id"] for r in rows))}
        rewards = torch.tensor([r["reward"] for r in rows], dtype=torch.float32)  # [N]
        groups = torch.tensor([task_ids[r["task_id"]] for r in rows])  # [N]
        unscorable = torch.tensor([bool(r["unscorable"]) for r in rows])  # [N]
        adv, flat = algos.group_advantages(rewards, groups, unscorable, self.cfg.adv_eps)  # [N]
        samples = [{"token_ids": r["token_ids"], "loss_mask": r["loss_mask"], "logprobs": r["logprobs"],
                    "advantage": float(a), "on_policy": r.get("policy_version", self.version) == self.version}
                   for r, a in zip(rows, adv)]
        if self.cfg.credit == "turn":  # the first reply's own one-shot advantage joins its tokens' credit
            first = torch.tensor([r.get("first_reward", r["reward"]) for r in rows], dtype=torch.float32)  # [N]
            first_unscorable = torch.tensor([_as_dict(r["attempts"][0])["score"] is None if r.get("attempts")
                                             else bool(r["unscorable"]) for r in rows])  # [N]
            first_adv, _ = algos.group_advantages(first, groups, first_unscorable, self.cfg.adv_eps)  # [N]
            for s, r, a in zip(samples, rows, first_adv):
                s["first_advantage"], s["first_end"] = float(a), r.get("first_end", len(r["token_ids"]))
        minis = split(samples, self.cfg.mini_batches)  # in task order, one optimiser step each
        mini_tokens = [int(sum(sum(s["loss_mask"]) for s in mini)) for mini in minis]  # each its own token mean
        if self.cfg.loss == "decoupled" and self.cfg.epochs * len(minis) > 1:
            self._proximal(samples)  # the trust region of every update of this step: the policy before the first
        parts, first = [], []
        for epoch in range(self.cfg.epochs):  # PPO epochs
            for m, (mini, global_tokens) in enumerate(zip(minis, mini_tokens)):
                got = self._each("step", shard(mini, len(self.ranks)), global_tokens, epoch == 0 and m == 0)
                parts, first = parts + got, first or got
        self.version += 1
        tokens = max(sum(p["tokens"] for p in parts), 1.0)
        gap_tokens = sum(p["gap_tokens"] for p in first)  # on-policy tokens of the first update
        return {"logprob_diff_mean": sum(p["gap_abs"] for p in first) / max(gap_tokens, 1.0),
                "logprob_diff_max": max(p["gap_max"] for p in first),
                "ratio_mean": sum(p["gap_ratio"] for p in first) / gap_tokens if gap_tokens else 1.0,
                "loss": sum(p["loss"] for p in parts) / tokens, "kl": sum(p["kl"] for p in parts) / tokens,
                "clip_fraction": sum(p["clipped"] for p in parts) / tokens,
                "entropy": sum(p["entropy"] for p in parts) / tokens, "grad_norm": parts[-len(self.ranks)]["grad_norm"],
                "adv_mean": float(adv.mean()), "adv_std": float(adv.std()) if len(adv) > 1 else 0.0,
                "adv_abs_max": float(adv.abs().max()), "flat_groups": flat, "groups": len(task_ids),
                "train_tokens": sum(mini_tokens), "optimizer_steps": self.cfg.epochs * len(minis),
                "policy_version": self.version}

    def _proximal(self, samples: list[dict]) -> None:
        """Each sample's log-probs under the current weights, as its prox_logprobs (rank.proximal; every rank runs
        as many forwards)."""
        shards = shard(samples, len(self.ranks))
        count = max(1, max(-(-len(p) // self.cfg.micro_batch_size) for p in shards))
        for part, got in zip(shards, self._each("proximal", shards, count)):
            for s, lp in zip(part, got):
                s["prox_logprobs"] = lp

    def _each(self, method: str, per_rank: list, *args) -> list:
        """Call `method` on every rank together, rank i with per_rank[i] first."""
        return ray.get([getattr(r, method).remote(part, *args) for r, part in zip(self.ranks, per_rank)])

    def skip(self) -> dict:
        """A step with nothing to train on (every sample too stale): the weights stay, the version moves on."""
        self.version += 1
        return {"logprob_diff_mean": 0.0, "logprob_diff_max": 0.0, "ratio_mean": 1.0, "loss": 0.0, "kl": 0.0,
                "clip_fraction": 0.0, "entropy": 0.0, "grad_norm": 0.0, "adv_mean": 0.0,
                "adv_std": 0.0, "adv_abs_max": 0.0, "flat_groups": 0, "groups": 0, "train_tokens": 0,
                "optimizer_steps": 0, "policy_version": self.version}

    def logprobs(self, token_ids: list[int]) -> list[float]:
        """Every rank runs the forward (under ZeRO-3 each holds a slice of the weights); rank 0's answer."""
        return self._all("logprobs", token_ids)[0]

    def state_dict(self) -> dict:
        return self._all("state_dict")[0]

    def push_weights(self, engines: list, timeout_s: float | None = None, transport: str | None = None) -> int:
        """Full weights to every rollout engine (weight_sync.WeightReceiver); returns the policy version they now hold."""
        self.pusher.push(engines, self.version, transport, timeout_s)
        return self.version

    @property
    def last_transport(self) -> str | None:
        return self.pusher.last_transport

    def save(self, directory: str, extra_files: dict[str, str] | None = None, wait: bool = True) -> str:
        """Checkpoint into `directory` atomically: written to a temporary sibling, renamed into place by `saved()`.
        wait=False: the ranks write in the background while the driver goes on (the next rollout, an evaluation);
        a later call on a rank runs after its save anyway (a Ray actor runs its calls in order)."""
        self.saved()  # one save at a time: they share the temporary folder
        tmp = directory.rstrip("/") + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        self._saving = ([r.save.remote(tmp) for r in self.ranks], tmp, directory, extra_files or {})
        return self.saved() if wait else directory

    def saved(self) -> str | None:
        """Wait for the save in progress and put its checkpoint in place; its directory, or None if none was."""
        if self._saving is None:
            return None
        refs, tmp, directory, extra_files = self._saving
        self._saving = None
        ray.get(refs)
        for name, text in extra_files.items():
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
        shutil.rmtree(directory, ignore_errors=True)
        os.rename(tmp, directory)
        return directory

    def load(self, directory: str) -> None:
        self._all("load", directory)

