"""Learner: the driver's handle on N DeepSpeed ranks. Computes group advantages, splits the batch, combines metrics,
checkpoints atomically, and pushes new weights to the rollout engines."""
from __future__ import annotations

import math
import os
import shutil
import socket

import ray
import torch

from . import core_algos as algos
from .batch import shard
from .config import LearnerConfig
from .rank import LearnerRank


def _as_dict(t) -> dict:
    return t if isinstance(t, dict) else t.__dict__


class Learner:
    def __init__(self, model: str, cfg: LearnerConfig, temperature: float, trajectories_per_step: int,
                 cpus_per_rank: float = 1.0):
        self.cfg = cfg.validate()
        per_rank = math.ceil(trajectories_per_step / cfg.ranks)
        gas = cfg.micro_batches_per_step or max(1, math.ceil(per_rank / cfg.micro_batch_size))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        gpus = 1 if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else 0
        self.ranks = [LearnerRank.options(num_cpus=cpus_per_rank, num_gpus=gpus).remote(
            model, cfg, r, cfg.ranks, "127.0.0.1", port, gas, temperature) for r in range(cfg.ranks)]
        ray.get([r.ready.remote() for r in self.ranks])
        self.version = 0

    def step(self, trajectories: list) -> dict:
        """One GRPO update on a batch of groups; bumps the policy version. Returns metrics."""
        rows = [_as_dict(t) for t in trajectories]
        task_ids = {tid: i for i, tid in enumerate(dict.fromkeys(r["task_id"] for r in rows))}
        rewards = torch.tensor([r["reward"] for r in rows], dtype=torch.float32)  # [N]
        groups = torch.tensor([task_ids[r["task_id"]] for r in rows])  # [N]
        unscorable = torch.tensor([bool(r["unscorable"]) for r in rows])  # [N]
        adv, flat = algos.group_advantages(rewards, groups, unscorable, self.cfg.adv_eps)
        samples = [{"token_ids": r["token_ids"], "loss_mask": r["loss_mask"], "logprobs": r["logprobs"],
                    "advantage": float(a)} for r, a in zip(rows, adv)]
        global_tokens = int(sum(sum(s["loss_mask"]) for s in samples))
        parts = ray.get([rank.step.remote(part, global_tokens) for rank, part in zip(self.ranks, shard(samples, len(self.ranks)))])
        self.version += 1
        tokens = max(sum(p["tokens"] for p in parts), 1.0)
        return {"loss": sum(p["loss"] for p in parts) / tokens, "kl": sum(p["kl"] for p in parts) / tokens,
                "clip_fraction": sum(p["clipped"] for p in parts) / tokens,
                "entropy": sum(p["entropy"] for p in parts) / tokens, "grad_norm": parts[0]["grad_norm"],
                "adv_mean": float(adv.mean()), "adv_std": float(adv.std()) if len(adv) > 1 else 0.0,
                "adv_abs_max": float(adv.abs().max()), "flat_groups": flat, "groups": len(task_ids),
                "train_tokens": global_tokens, "policy_version": self.version}

    def logprobs(self, token_ids: list[int]) -> list[float]:
        return ray.get(self.ranks[0].logprobs.remote(token_ids))

    def state_dict(self) -> dict:
        return ray.get([r.state_dict.remote() for r in self.ranks])[0]

    def push_weights(self, engines: list, timeout_s: float | None = None) -> int:
        """Full weights to every rollout engine through one Ray object-store put; returns the new policy version.
        Engines expose `load_weights.remote(state_dict, version)`. Raises TimeoutError instead of hanging."""
        timeout_s = timeout_s or self.cfg.push_timeout_s
        (ref,) = [r for refs in ray.get([rank.put_state_dict.remote() for rank in self.ranks]) for r in refs]
        acks = [e.load_weights.remote(ref, self.version) for e in engines]
        ready, pending = ray.wait(acks, num_returns=len(acks), timeout=timeout_s)
        if pending:
            for a in pending:
                ray.cancel(a, force=False)
            raise TimeoutError(f"weight push of policy version {self.version} reached {len(ready)} of {len(acks)} "
                               f"engines within learner.push_timeout_s={timeout_s:g} s")
        ray.get(ready)
        return self.version

    def save(self, directory: str, extra_files: dict[str, str] | None = None) -> str:
        """Checkpoint into `directory` atomically: written to a temporary sibling, renamed into place."""
        tmp = directory.rstrip("/") + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        ray.get([r.save.remote(tmp) for r in self.ranks])
        for name, text in (extra_files or {}).items():
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
        shutil.rmtree(directory, ignore_errors=True)
        os.rename(tmp, directory)
        return directory

    def load(self, directory: str) -> None:
        ray.get([r.load.remote(directory) for r in self.ranks])


def prune_checkpoints(root: str, keep: int) -> None:
    """Keep the newest `keep` step-NNNNNN checkpoints under root."""
    steps = sorted(d for d in os.listdir(root) if d.startswith("step-") and not d.endswith(".tmp"))
    for d in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(root, d), ignore_errors=True)
