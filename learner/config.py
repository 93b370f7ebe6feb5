"""Learner configuration (the `learner` config group): one typed dataclass, a one-line doc per field."""
from __future__ import annotations

from dataclasses import dataclass

from common.checks import check

from .weight_sync import TRANSPORTS

CREDITS = ("trajectory", "turn")


@dataclass
class LearnerConfig:
    ranks: int = 1  # DeepSpeed ranks (Ray actors in one torch.distributed group: gloo on CPU, NCCL on GPU)
    zero_stage: int = 2  # DeepSpeed ZeRO stage: 1, 2 or 3
    lr: float = 1e-6  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    grad_clip: float = 1.0  # global gradient-norm clip
    clip_low: float = 0.2  # ratio clip below: 1 - clip_low
    clip_high: float = 0.28  # ratio clip above: 1 + clip_high (asymmetric, "clip-higher")
    loss: str = "auto"  # "ppo": ratio to the sampler's log-probs, clipped; "decoupled": AReaL's decoupled PPO with a truncated importance weight, for stale samples; auto = decoupled when trainer.max_staleness >= 1, else ppo
    is_cap: float = 2.0  # decoupled loss: a token's importance weight pi_learner / pi_sampler is truncated at this
    kl_coef: float = 0.001  # k3 KL to the frozen reference model; 0 disables the reference model entirely
    ref_offload: bool = False  # the reference model as a ZeRO-3 engine with its partitions on CPU (any stage); under ZeRO-3 it is partitioned over the ranks anyway
    gradient_checkpointing: bool = False  # recompute activations in backward: a layer's input per layer is kept, not its internals
    micro_batch_size: int = 4  # trajectories per forward/backward on one rank
    micro_batches_per_step: int = 0  # gradient accumulation steps per rank and optimiser step; 0 = from the mini-batch size
    mini_batches: int = 1  # optimiser steps per RL step: the batch is split in this many mini-batches, in task order (verl's ppo_mini_batch_size, as a count)
    epochs: int = 1  # passes over the batch per RL step (PPO epochs): later passes are off-policy and the ratio clip bounds them
    adv_eps: float = 1e-6  # std epsilon in the group advantages
    credit: str = "trajectory"  # multi-turn credit: "trajectory" (every token gets the final reward's group advantage) or "turn" (the first reply's tokens get the mean of that and its own one-shot advantage: core_algos.turn_advantages)
    device: str = "auto"  # "auto" (cuda if available), "cpu" or "cuda"
    bf16: bool = True  # bf16 on GPU (CPU always trains in fp32)
    seed: int = -1  # torch / python RNG seed on every rank; -1 = trainer.seed in a training run (0 elsewhere)
    weight_sync: str = "auto"  # push transport: auto, object_store, broadcast (NCCL/gloo group) or cuda_ipc (same GPU)
    bucket_mb: float = 256.0  # broadcast / cuda_ipc: weights travel in buckets of about this many MiB
    push_timeout_s: float = 120.0  # a weight push that takes longer raises instead of hanging
    rendezvous_timeout_s: float = 120.0  # the DeepSpeed group must form within this, or the run fails naming host:port
    keep_checkpoints: int = 1  # checkpoints kept in trainer.output_dir/checkpoints (each is ~1.7 GB for SmolLM2 on CPU)

    def validate(self) -> "LearnerConfig":
        checks = [
            ("ranks", self.ranks >= 1, "an integer >= 1"),
            ("zero_stage", self.zero_stage in (1, 2, 3), "1, 2 or 3"),
            ("lr", self.lr > 0, "> 0"),
            ("clip_low", 0 <= self.clip_low < 1, "in [0, 1)"),
            ("clip_high", self.clip_high >= 0, ">= 0"),
            ("kl_coef", self.kl_coef >= 0, ">= 0 (0 disables the reference model)"),
            ("loss", self.loss in ("auto", "ppo", "decoupled"), "'auto', 'ppo' or 'decoupled'"),
            ("is_cap", self.is_cap >= 1, ">= 1"),
            ("credit", self.credit in CREDITS, f"one of {list(CREDITS)}"),
            ("micro_batch_size", self.micro_batch_size >= 1, "an integer >= 1"),
            ("mini_batches", self.mini_batches >= 1, "an integer >= 1"),
            ("epochs", self.epochs >= 1, "an integer >= 1"),
            ("device", self.device in ("auto", "cpu", "cuda"), "'auto', 'cpu' or 'cuda'"),
            ("weight_sync", self.weight_sync in TRANSPORTS, f"one of {list(TRANSPORTS)}"),
            ("bucket_mb", self.bucket_mb > 0, "> 0"),
            ("rendezvous_timeout_s", self.rendezvous_timeout_s > 0, "seconds > 0"),
        ]
        return check("learner", self, checks)
