"""How a rank's samples become tensors: padded batches with the shifted per-token fields, cut to the positions some
row trains on, in a fixed number of micro-batches. Pure torch (no Ray, no DeepSpeed): the learner ranks, the benches
and scripts/gpu_check.py share it."""
from __future__ import annotations

import torch

from . import core_algos as algos


def collate(samples: list[dict], pad_id: int) -> dict:
    """samples: dicts with token_ids, loss_mask, logprobs (the sampler's, index t: token t), advantage; optionally
    prox_logprobs (the learner's before this step's first update, same layout: the decoupled loss), on_policy
    (sampled by the policy being updated: the sampler-gap metric counts only those), and for turn-level credit
    first_advantage and first_end (token index where the first reply ends). Position t of the shifted tensors holds
    token t+1 (the token the logits at t predict).
    -> input_ids [B, L], attention_mask [B, L], labels / loss_mask / old_logprobs / prox_logprobs / advantages [B, L-1],
    on_policy [B]."""
    width = max(len(s["token_ids"]) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(samples), width), dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.float32)
    old = torch.zeros((len(samples), width), dtype=torch.float32)
    prox = torch.zeros((len(samples), width), dtype=torch.float32)
    for i, s in enumerate(samples):
        n = len(s["token_ids"])
        ids[i, :n] = torch.tensor(s["token_ids"])
        attn[i, :n] = 1
        mask[i, :n] = torch.tensor(s["loss_mask"], dtype=torch.float32)
        old[i, :n] = torch.tensor(s["logprobs"], dtype=torch.float32)
        prox[i, :n] = torch.tensor(s.get("prox_logprobs", s["logprobs"]), dtype=torch.float32)
    outcome = torch.tensor([s["advantage"] for s in samples], dtype=torch.float32)  # [B]
    first = torch.tensor([s.get("first_advantage", s["advantage"]) for s in samples], dtype=torch.float32)  # [B]
    first_end = torch.tensor([s.get("first_end", 0) - 1 for s in samples])  # [B], in shifted positions
    return {"input_ids": ids, "attention_mask": attn, "labels": ids[:, 1:], "loss_mask": mask[:, 1:],
            "old_logprobs": old[:, 1:], "prox_logprobs": prox[:, 1:],
            "on_policy": torch.tensor([float(s.get("on_policy", True)) for s in samples]),
            "advantages": algos.turn_advantages(outcome, first, first_end, width - 1)}


def trained_only(batch: dict) -> dict:
    """Cut a collated micro-batch to the positions some row trains on (core_algos.trained_positions): the shifted
    tensors keep those alone ([B, T] -> [B, K]) and the model is asked for their logits only. -> the model's kwargs."""
    keep = algos.trained_positions(batch["loss_mask"])  # [K]
    batch.update({k: batch[k][:, keep] for k in ("labels", "loss_mask", "old_logprobs", "prox_logprobs", "advantages")})
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "logits_to_keep": keep}


def micro_batches(samples: list[dict], size: int, count: int) -> list[list[dict]]:
    """Exactly `count` micro-batches (DeepSpeed's accumulation boundary is fixed at init; empty ones pad the count) of
    at most `size` samples - or, when a rank got more than size x count, of ceil(N / count): a larger forward
    rather than a failed step."""
    size = max(size, -(-len(samples) // max(count, 1)))
    chunks = [samples[i:i + size] for i in range(0, len(samples), size)]
    return chunks + [[] for _ in range(count - len(chunks))]
