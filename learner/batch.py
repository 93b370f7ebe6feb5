"""Trajectories -> padded tensors for the learner. The learner knows token ids, masks and rewards, never pages."""
from __future__ import annotations

import torch


def collate(samples: list[dict], pad_id: int) -> dict:
    """samples: dicts with token_ids, loss_mask, logprobs, advantage. Position t of the shifted tensors holds
    token t+1 (the token the logits at t predict).
    -> input_ids [B, L], attention_mask [B, L], labels / loss_mask / old_logprobs [B, L-1], advantages [B]."""
    width = max(len(s["token_ids"]) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(samples), width), dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.float32)
    old = torch.zeros((len(samples), width), dtype=torch.float32)
    for i, s in enumerate(samples):
        n = len(s["token_ids"])
        ids[i, :n] = torch.tensor(s["token_ids"])
        attn[i, :n] = 1
        mask[i, :n] = torch.tensor(s["loss_mask"], dtype=torch.float32)
        old[i, :n] = torch.tensor(s["logprobs"], dtype=torch.float32)
    return {"input_ids": ids, "attention_mask": attn, "labels": ids[:, 1:], "loss_mask": mask[:, 1:],
            "old_logprobs": old[:, 1:], "advantages": torch.tensor([s["advantage"] for s in samples])}


def shard(samples: list[dict], ranks: int) -> list[list[dict]]:
    """Split a batch across ranks with roughly equal token counts (longest first, to the lightest rank)."""
    out, load = [[] for _ in range(ranks)], [0] * ranks
    for s in sorted(samples, key=lambda s: -len(s["token_ids"])):
        r = load.index(min(load))
        out[r].append(s)
        load[r] += len(s["token_ids"])
    return out


def micro_batches(samples: list[dict], size: int, count: int) -> list[list[dict]]:
    """Exactly `count` micro-batches of at most `size` (empty ones pad the count: DeepSpeed's accumulation
    boundary is fixed at init)."""
    chunks = [samples[i:i + size] for i in range(0, len(samples), size)]
    if len(chunks) > count:
        raise ValueError(f"{len(samples)} trajectories on one rank need {len(chunks)} micro-batches of "
                         f"{size}; learner.micro_batches_per_step is {count}")
    return chunks + [[] for _ in range(count - len(chunks))]
