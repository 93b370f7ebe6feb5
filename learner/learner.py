"""Learner: the driver's handle on N DeepSpeed ranks. Computes group advantages, splits the batch, combines metrics,
checkpoints atomically, and pushes new weights to the rollout engines."""
from __future__ import annotations

import math
import os
import shutil
import time
import uuid

import ray
import torch

from . import core_algos as algos
from . import weight_sync as ws
from .batch import shard
from .config import LearnerConfig
from .rank import LearnerRank


class PushInterrupted(RuntimeError):
    """A broadcast push broke off (a member died mid-collective); the next push forms a new group."""


def _as_dict(t) -> dict:
    return t if isinstance(t, dict) else t.__dict__


class Learner:
    def __init__(self, model: str, cfg: LearnerConfig, temperature: float, trajectories_per_step: int,
                 cpus_per_rank: float = 1.0, gpus_per_rank: float | None = None, placement: list[dict] | None = None):
        """gpus_per_rank: None = 1 where the learner trains on CUDA; placement: per-rank Ray options (a bundle of the
        run's placement group, launch/placement.py)."""
        self.cfg = cfg.validate()
        per_rank = math.ceil(trajectories_per_step / cfg.ranks)
        gas = cfg.micro_batches_per_step or max(1, math.ceil(per_rank / cfg.micro_batch_size))
        port = ws.free_port("127.0.0.1")
        gpus = gpus_per_rank if gpus_per_rank is not None else (
            1 if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else 0)
        self.ranks = [LearnerRank.options(num_cpus=cpus_per_rank, num_gpus=gpus, **(placement[r] if placement else {}))
                      .remote(model, cfg, r, cfg.ranks, "127.0.0.1", port, gas, temperature) for r in range(cfg.ranks)]
        ray.get([r.ready.remote() for r in self.ranks])
        self.version = 0
        self._bucket_plan, self._group, self._group_size, self.last_transport = None, None, 0, None

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
        """Every rank runs the forward (under ZeRO-3 each holds a slice of the weights); rank 0's answer."""
        return ray.get([r.logprobs.remote(token_ids) for r in self.ranks])[0]

    def state_dict(self) -> dict:
        return ray.get([r.state_dict.remote() for r in self.ranks])[0]

    def push_weights(self, engines: list, timeout_s: float | None = None, transport: str | None = None) -> int:
        """Full weights to every rollout engine (learner/weight_sync.py); returns the new policy version. Engines
        expose `load_weights`, `weight_info`, `join_weight_group` and `receive_weights`. Raises TimeoutError
        instead of hanging."""
        timeout_s = timeout_s or self.cfg.push_timeout_s
        transport = transport or self.cfg.weight_sync
        if transport == "auto":
            transport = self.pick_transport(engines)
        if transport == "object_store":
            (ref,) = [r for refs in ray.get([rank.put_state_dict.remote() for rank in self.ranks]) for r in refs]
            self._wait([e.load_weights.remote(ref, self.version) for e in engines], len(engines), timeout_s)
        elif transport == "broadcast":
            self._join_weight_group(engines, timeout_s)
            sends = [rank.send_weights.remote("broadcast", self._buckets()) for rank in self.ranks]
            acks = [e.receive_weights.remote("broadcast", self._buckets(), self.version) for e in engines]
            try:
                self._wait(acks + sends, len(engines), timeout_s)
            except ray.exceptions.RayTaskError as e:  # e.g. gloo's "connection reset": a member died mid-collective
                self._group = None
                raise PushInterrupted(f"weight broadcast of policy version {self.version} broke off: {e}") from e
            except Exception:
                self._group = None  # members may be stuck mid-collective: the next push forms a new group
                raise
        elif transport == "cuda_ipc":
            handles = [h for h in ray.get([r.send_weights.remote("cuda_ipc", self._buckets()) for r in self.ranks]) if h][0]
            try:
                self._wait([e.receive_weights.remote("cuda_ipc", self._buckets(), self.version, handles)
                            for e in engines], len(engines), timeout_s)
            finally:
                ray.get(self.ranks[0].free_shared.remote())
        else:
            raise ValueError(f"learner.weight_sync={transport!r} is invalid: expected one of {list(ws.TRANSPORTS)}")
        self.last_transport = transport
        return self.version

    def pick_transport(self, engines: list) -> str:
        """auto: CUDA IPC when every engine shares rank 0's GPU, a broadcast when they are all on other GPUs, the
        object store on CPU: a gloo broadcast is faster there (1.1 s against 1.9 s for SmolLM2, `python -m learner
        bench`), but one cut by a dying engine holds the learner until the group's timeout, for ~1 s of a ~60 s step."""
        me = ray.get(self.ranks[0].weight_info.remote())
        if me["device"] != "cuda":
            return "object_store"
        gpus = [i["gpu_uuid"] for i in ray.get([e.weight_info.remote() for e in engines])]
        if all(g == me["gpu_uuid"] for g in gpus):
            return "cuda_ipc"
        if all(g is not None and g != me["gpu_uuid"] for g in gpus):
            return "broadcast"
        return "object_store"

    def _buckets(self) -> list:
        if self._bucket_plan is None:
            metas = ray.get(self.ranks[0].weight_metas.remote())
            self._bucket_plan = ws.plan_buckets(metas, int(self.cfg.bucket_mb * 2**20))
        return self._bucket_plan

    def _join_weight_group(self, engines: list, timeout_s: float) -> None:
        """Form the weight group once; again when its membership changed (an engine restarted by Ray has none)."""
        infos = ray.get([e.weight_info.remote() for e in engines], timeout=timeout_s)
        if self._group is not None and all(i["group_id"] == self._group for i in infos) and len(infos) == self._group_size:
            return
        me = ray.get(self.ranks[0].weight_info.remote())
        backend = "nccl" if me["device"] == "cuda" and all(i["gpu_uuid"] for i in infos) else "gloo"
        group, world = uuid.uuid4().hex, len(engines) + 1
        joins = [e.join_weight_group.remote(group, backend, me["ip"], me["port"], i + 1, world, timeout_s)
                 for i, e in enumerate(engines)]
        joins.append(self.ranks[0].join_weight_group.remote(backend, me["port"], world, timeout_s))
        self._wait(joins, len(engines), timeout_s, what="weight group of")
        self._group, self._group_size = group, len(engines)

    def _wait(self, refs: list, engines: int, timeout_s: float, what: str = "weight push of") -> None:
        """Wait for every call (engines' first); a failed one raises at once (a dead engine must not leave the push
        waiting out the timeout), one not done by the deadline raises TimeoutError."""
        deadline, pending = time.monotonic() + timeout_s, list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                for a in pending:
                    ray.cancel(a, force=False)
                reached = sum(r not in pending for r in refs[:engines])
                raise TimeoutError(f"{what} policy version {self.version} reached {reached} of {engines} "
                                   f"engines within learner.push_timeout_s={timeout_s:g} s")
            ray.get(ready)

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
