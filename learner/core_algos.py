"""GRPO's math as small pure functions: advantages, the clipped policy loss, the k3 KL, token-mean aggregation.

Shapes: N = trajectories in the global batch, B = trajectories in a micro-batch, T = tokens (shifted: position t
holds the log-prob of token t+1), V = vocabulary.
"""
from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor, unscorable: torch.Tensor,
                     eps: float = 1e-6) -> tuple[torch.Tensor, int]:
    """A = (r - mean) / (std + eps) within each task group. Unscorable samples are left out of the mean and std
    and get 0; a group whose scorable rewards are all equal (or that has fewer than two) gives 0 everywhere.
    rewards [N] float, groups [N] int (group id), unscorable [N] bool -> (advantages [N], groups with all-equal rewards)."""
    adv = torch.zeros_like(rewards, dtype=torch.float32)  # [N]
    flat = 0
    for g in torch.unique(groups):
        members = (groups == g) & ~unscorable  # [N]
        r = rewards[members].float()
        if r.numel() < 2 or torch.all(r == r[0]):
            flat += 1
            continue
        adv[members] = (r - r.mean()) / (r.std() + eps)  # unbiased std, as in GRPO / verl
    return adv, flat


def turn_advantages(outcome: torch.Tensor, first: torch.Tensor, first_end: torch.Tensor, width: int) -> torch.Tensor:
    """Turn-level credit for multi-turn trajectories (MT-GRPO, Zeng et al. 2025, with the weight 1/2): the first reply's
    tokens get the mean of its own one-shot group advantage and the trajectory's, later turns the trajectory's alone.
    A first page rescued by a revision is then not paid the revision's reward in full; a single-turn trajectory gets
    exactly GRPO's advantage (first == outcome).
    outcome [N], first [N], first_end [N] int (shifted position where the first reply's tokens end) -> [N, width]."""
    pos = torch.arange(width, device=outcome.device).unsqueeze(0)  # [1, T]
    in_first = pos < first_end.unsqueeze(-1)  # [N, T]
    return torch.where(in_first, ((outcome + first) / 2).unsqueeze(-1), outcome.unsqueeze(-1))


def trained_positions(loss_mask: torch.Tensor) -> torch.Tensor:
    """The shifted positions at least one row of a micro-batch trains on: the only logits the loss reads, so the LM
    head and the [B, T, V] log-softmax after it run on these alone (prompts, fed-back pages and padding are most of a
    multi-turn batch). loss_mask [B, T] -> [K] int64, K >= 1: an all-padding micro-batch keeps position 0, so its
    backward still reaches every weight."""
    keep = loss_mask.bool().any(0).nonzero().squeeze(-1)  # [K]
    return keep if keep.numel() else torch.zeros(1, dtype=torch.long, device=loss_mask.device)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(label) under logits / temperature. logits [B, T, V], labels [B, T] -> [B, T]."""
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-token entropy of the policy. logits [B, T, V] -> [B, T]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip_low: float,
                clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO/GRPO clipped surrogate with an asymmetric clip range [1 - clip_low, 1 + clip_high] on the token-level
    importance ratio. logp, old_logp [B, T], advantages [B] or per token [B, T] -> (loss per token [B, T], clip
    active [B, T] bool)."""
    ratio = torch.exp(logp - old_logp)  # [B, T]
    a = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages  # [B, 1] or [B, T]
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * a
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(policy || reference), >= 0 and unbiased. [B, T] -> [B, T]."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def global_token_mean(values: torch.Tensor, mask: torch.Tensor, global_tokens: int) -> torch.Tensor:
    """Sum over this micro-batch's masked tokens divided by the number of masked tokens in the *whole global batch*
    (all ranks, all micro-batches), so every token weighs the same however the batch is split.
    values, mask [B, T] -> scalar."""
    return (values * mask).sum() / max(global_tokens, 1)


def decoupled_policy_loss(logp: torch.Tensor, prox_logp: torch.Tensor, behav_logp: torch.Tensor,
                          advantages: torch.Tensor, clip_low: float, clip_high: float,
                          is_cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Off-policy GRPO for asynchronous training: AReaL's decoupled PPO. The proximal policy (prox_logp) is the
    learner's own policy before this RL step's first update, computed once for the whole step: the clipped ratio is
    taken against it, so later mini-batches and epochs stay in its trust region (with one update per step it equals
    logp.detach()). The gap to the policy that sampled each token (behav_logp, possibly k versions old) is a separate
    importance weight min(pi_prox / pi_behav, is_cap), truncated as in verl's rollout correction (TIS): stale tokens
    still count, and none counts more than is_cap times. Both ratios are per token.
    logp [B, T] (with grad), prox_logp [B, T], behav_logp [B, T], advantages [B] or [B, T] -> (loss per token
    [B, T], weight truncated [B, T] bool)."""
    prox = prox_logp.detach()  # [B, T]
    weight = torch.exp(prox - behav_logp)  # [B, T]
    truncated = weight > is_cap
    ratio = torch.exp(logp - prox)  # [B, T]
    a = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages  # [B, 1] or [B, T]
    surrogate = torch.minimum(ratio * a, torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * a)
    return -weight.clamp(max=is_cap) * surrogate, truncated


def sampler_gap(logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """How far the learner's log-probs are from the engine's on the sampled tokens, before any update (verl's
    training/rollout_probs_diff_*): on-policy this is rounding alone, and a systematic gap (another temperature,
    processors the learner does not apply, a token the sampler never drew) biases every ratio.
    logp, sampler_logp, mask [B, T] -> sums over masked tokens: {"abs": sum |diff|, "max": max |diff|, "ratio": sum
    exp(diff), "tokens": count} (scalars, for the driver to combine across micro-batches and ranks)."""
    diff = (logp.detach() - sampler_logp) * mask  # [B, T]
    return {"abs": diff.abs().sum(), "max": diff.abs().max() if diff.numel() else diff.sum(),
            "ratio": (torch.exp(diff) * mask).sum(), "tokens": mask.sum()}
