"""GRPO math against hand-computed numbers."""
import math
import pickle

import numpy as np
import pytest
import torch

from learner.core_algos import (decoupled_policy_loss, entropy, global_token_mean, group_advantages, kl_k3, policy_loss,
                                sampler_gap, token_logprobs, trained_positions, turn_advantages)


def test_group_advantages_hand_computed():
    r = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.2, 0.9, 0.3])
    g = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    u = torch.tensor([False, False, False, False, False, False, False])
    adv, flat = group_advantages(r, g, u, eps=0.0)
    # group 0: mean 0.5, unbiased std 0.5 -> [1, -1, 0]; group 1 all equal -> 0; group 2: mean 0.6, std 0.424264
    assert adv[:3].tolist() == pytest.approx([1.0, -1.0, 0.0])
    assert adv[3:5].tolist() == [0.0, 0.0] and flat == 1
    s = math.sqrt(((0.9 - 0.6) ** 2 + (0.3 - 0.6) ** 2) / 1)
    assert adv[5:].tolist() == pytest.approx([0.3 / s, -0.3 / s])


def test_unscorable_samples_leave_the_baseline_and_get_zero():
    r = torch.tensor([1.0, 0.0, 0.0, 0.5])
    g = torch.tensor([0, 0, 0, 0])
    u = torch.tensor([False, False, True, False])  # the unscorable 0 is not a real zero
    adv, _ = group_advantages(r, g, u, eps=0.0)
    assert adv[2] == 0.0
    assert adv[[0, 1, 3]].tolist() == pytest.approx([1.0, -1.0, 0.0])  # mean 0.5, std 0.5 over the three scored
    adv, flat = group_advantages(torch.tensor([0.7, 0.1]), torch.tensor([0, 0]), torch.tensor([False, True]))
    assert adv.tolist() == [0.0, 0.0] and flat == 1  # one scorable sample: no baseline


def test_policy_loss_clips_asymmetrically():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[0.5, 1.0, 1.25, 1.5]]))  # ratios 0.5, 1.0, 1.25, 1.5
    loss, clipped = policy_loss(logp, old, torch.tensor([1.0]), clip_low=0.2, clip_high=0.28)
    # A > 0: min(r, clip(r, 0.8, 1.28)) -> 0.5, 1.0, 1.25, 1.28
    assert (-loss).tolist()[0] == pytest.approx([0.5, 1.0, 1.25, 1.28])
    assert clipped.tolist()[0] == [False, False, False, True]
    loss, clipped = policy_loss(logp, old, torch.tensor([-1.0]), clip_low=0.2, clip_high=0.28)
    # A < 0: min(-r, -clip(r)) -> -0.8 for r=0.5 (clipped), -1, -1.25, -1.5
    assert (-loss).tolist()[0] == pytest.approx([-0.8, -1.0, -1.25, -1.5])
    assert clipped.tolist()[0] == [True, False, False, False]


def test_k3_kl():
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    ref = torch.log(torch.tensor([[0.5, 0.5]]))
    kl = kl_k3(logp, ref)
    assert kl.tolist()[0] == pytest.approx([0.0, 2.0 - math.log(2.0) - 1.0])
    assert torch.all(kl_k3(torch.randn(3, 5), torch.randn(3, 5)) >= 0)


def test_global_token_mean_weighs_every_token_equally_across_splits():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    whole = global_token_mean(values, mask, global_tokens=3)
    split = global_token_mean(values[:1], mask[:1], 3) + global_token_mean(values[1:], mask[1:], 3)
    assert whole.item() == pytest.approx((1 + 2 + 4) / 3) == pytest.approx(split.item())


def test_logprobs_and_entropy():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # [1, 2, 2]
    labels = torch.tensor([[1, 0]])
    assert token_logprobs(logits, labels).tolist()[0] == pytest.approx([math.log(0.5), math.log(0.75)])
    assert entropy(logits).tolist()[0] == pytest.approx([math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))])
    assert token_logprobs(logits, labels, temperature=2.0).tolist()[0][0] == pytest.approx(math.log(0.5))


def test_weight_buckets_pack_and_unpack_exactly():
    from learner.weight_sync import TensorMeta, pack, plan_buckets, unpack
    tensors = {"a": torch.randn(3, 4), "b": torch.randn(10).to(torch.bfloat16), "c": torch.arange(6).view(2, 3),
               "d": torch.randn(40)}
    metas = [TensorMeta(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in tensors.items()]
    assert [m.nbytes for m in metas] == [48, 20, 48, 160]
    buckets = plan_buckets(metas, bucket_bytes=100)
    assert [[m.name for m in b] for b in buckets] == [["a", "b"], ["c"], ["d"]]  # d is over the size: on its own
    for b in buckets:
        out = unpack(pack([tensors[m.name] for m in b]), b)
        for m in b:
            assert out[m.name].dtype == tensors[m.name].dtype and torch.equal(out[m.name], tensors[m.name])


def test_object_store_payload_round_trips_every_dtype_and_writes_tied_weights_once():
    from learner.weight_arrays import from_arrays, to_arrays
    emb = torch.randn(64, 8)
    state = {"embed.weight": emb, "head.weight": emb, "norm.weight": torch.randn(8).to(torch.bfloat16),
             "bias": torch.randn(3, dtype=torch.float16), "steps": torch.arange(4)}
    payload = to_arrays(state)
    assert all(isinstance(a, np.ndarray) for _, a in payload.values())  # what Ray writes out of band, in one copy
    buffers = []
    back = from_arrays(pickle.loads(pickle.dumps(payload, protocol=5, buffer_callback=buffers.append), buffers=buffers))
    assert sum(memoryview(b).nbytes for b in buffers) == sum(  # the tied pair travels once
        t.numel() * t.element_size() for k, t in state.items() if k != "head.weight")
    for k, t in state.items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t), k
    assert back["embed.weight"].data_ptr() == back["head.weight"].data_ptr()  # one buffer, read in place
    assert all(v is state[k] for k, v in from_arrays(state).items())  # a plain state dict passes through


def test_decoupled_loss_weights_stale_tokens_and_truncates_them():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)  # [1, 3] the learner's policy now
    adv = torch.tensor([2.0])
    # on-policy (the sampler is the learner): the PPO loss, value and gradient
    on, trunc = decoupled_policy_loss(logp, logp.detach(), logp.detach(), adv, 0.2, 0.28, 2.0)
    ppo, _ = policy_loss(logp, logp.detach(), adv, 0.2, 0.28)
    assert torch.allclose(on, ppo) and not trunc.any()
    g_on = torch.autograd.grad(on.sum(), logp)[0]
    assert torch.allclose(g_on, torch.full((1, 3), -2.0))  # d(-A * exp(logp - logp.detach()))/dlogp = -A
    # a stale sampler: token 0 was likelier then (weight e^-0.5), token 1 less likely (e^1.5 = 4.48, truncated to 2)
    behav = torch.tensor([[-0.5, -3.5, -0.5]])
    off, trunc = decoupled_policy_loss(logp, logp.detach(), behav, adv, 0.2, 0.28, 2.0)
    g_off = torch.autograd.grad(off.sum(), logp)[0]
    assert torch.allclose(g_off, torch.tensor([[-2.0 * math.exp(-0.5), -2.0 * 2.0, -2.0]]))
    assert trunc.tolist() == [[False, True, False]]
    assert torch.allclose(off.detach(), torch.tensor([[-2.0 * math.exp(-0.5), -4.0, -2.0]]))


def test_turn_credit_gives_the_first_reply_half_its_own_advantage():
    from learner.batches import collate
    outcome, first = torch.tensor([1.0, -1.0]), torch.tensor([-1.0, 1.0])
    adv = turn_advantages(outcome, first, torch.tensor([2, 0]), 4)  # [2, 4]
    # trajectory 0: positions 0, 1 are its first reply -> (1 - 1) / 2 = 0, then the revision -> 1; trajectory 1 has
    # no first-reply positions in range (a prompt-only prefix) -> -1 everywhere
    assert adv.tolist() == [[0.0, 0.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]]
    # collate: first_end is a token index; shifted position t holds token t+1, so tokens 1..2 (the first reply of a
    # 1-token prompt) are positions 0..1; without first_end (learner.credit=trajectory) every position gets the outcome
    turn = {"token_ids": [5, 6, 7, 8, 9], "loss_mask": [0, 1, 1, 1, 1], "logprobs": [0.0] * 5, "advantage": 1.0,
            "first_advantage": -0.5, "first_end": 3}
    plain = {"token_ids": [5, 6, 7], "loss_mask": [0, 1, 1], "logprobs": [0.0] * 3, "advantage": 0.5}
    got = collate([turn, plain], pad_id=0)["advantages"]  # [2, 4]
    assert got[0].tolist() == [0.25, 0.25, 1.0, 1.0] and got[1].tolist() == [0.5] * 4
    # single-turn (first == outcome, first_end at the end): exactly GRPO's advantage
    same = turn_advantages(torch.tensor([0.7]), torch.tensor([0.7]), torch.tensor([3]), 3)
    assert same[0].tolist() == pytest.approx([0.7, 0.7, 0.7])
    loss, _ = policy_loss(torch.zeros(2, 4), torch.zeros(2, 4), got, 0.2, 0.28)  # per-token advantages broadcast
    assert loss[0].tolist() == [-0.25, -0.25, -1.0, -1.0]


def test_the_head_on_trained_positions_alone_gives_the_same_loss_and_gradients():
    """The learner runs the LM head only where some row trains (rank.trained_only: trained_positions +
    logits_to_keep): the loss and every gradient equal those of the full [B, T, V] logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from learner.batches import trained_only
    mask = torch.tensor([[0, 0, 1, 1, 0, 0, 1], [0, 0, 0, 1, 1, 0, 0]], dtype=torch.float32)  # [B, T] 2 turns
    assert trained_positions(mask).tolist() == [2, 3, 4, 6]
    assert trained_positions(torch.zeros(2, 5)).tolist() == [0]  # an all-padding micro-batch still runs backward
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1))
    ids = torch.randint(0, 64, (2, 8))
    labels, old, adv = ids[:, 1:], -3.0 * torch.ones(2, 7), torch.tensor([[1.0] * 7, [-0.5] * 7])  # [B, T]

    def loss_and_grads(cut: bool):
        model.zero_grad()
        b = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "loss_mask": mask,
             "old_logprobs": old, "prox_logprobs": old, "advantages": adv}  # as rank.collate makes it
        if cut:  # what the learner rank does
            logits = model(**trained_only(b)).logits  # [B, K, V]
        else:
            logits = model(input_ids=ids).logits[:, :-1]  # [B, T, V]
        logp = token_logprobs(logits, b["labels"], 0.8)
        loss = global_token_mean(policy_loss(logp, b["old_logprobs"], b["advantages"], 0.2, 0.28)[0], b["loss_mask"],
                                 int(mask.sum()))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    full, kept = loss_and_grads(False), loss_and_grads(True)
    assert torch.allclose(full[0], kept[0], atol=1e-6)
    assert all(torch.allclose(g, h, atol=1e-6) for g, h in zip(full[1], kept[1]))
    assert any(g.abs().sum() > 0 for g in kept[1])


def test_the_decoupled_loss_keeps_its_trust_region_after_the_first_update():
    """Two mini-batches (or a second epoch): by the second update the policy has moved. With the proximal policy taken
    once before the step's first update, a token pushed past 1 + clip_high is clipped (no gradient); taken as the
    current policy (logp.detach(), the old rule) the ratio is 1 again and nothing ever clips."""
    before = torch.tensor([[-1.0, -1.0, -1.0]])  # [1, 3] the learner before the step = the sampler (on-policy)
    moved = torch.tensor([[-1.0, -0.5, -1.3]], requires_grad=True)  # after the first mini-batch's update
    adv = torch.tensor([1.0])
    loss, _ = decoupled_policy_loss(moved, before, before, adv, 0.2, 0.28, 2.0)
    grad = torch.autograd.grad(loss.sum(), moved)[0]
    # ratios e^0 = 1, e^0.5 = 1.65 (past 1.28: clipped, no gradient), e^-0.3 = 0.74 (A > 0: the min keeps it)
    assert grad[0, 1] == 0 and grad[0, 0] != 0 and grad[0, 2] != 0
    assert (-loss.detach())[0].tolist() == pytest.approx([1.0, 1.28, math.exp(-0.3)])
    old_rule, _ = decoupled_policy_loss(moved, moved.detach(), before, adv, 0.2, 0.28, 2.0)
    assert torch.autograd.grad(old_rule.sum(), moved)[0][0, 1] != 0  # unclipped: no trust region


def test_sampler_gap_measures_only_masked_tokens():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    engine = torch.tensor([[-1.0, -2.1, 0.0], [-0.5, -0.3, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])  # the last column is padding
    gap = sampler_gap(logp, engine, mask)
    assert float(gap["tokens"]) == 4 and float(gap["abs"]) == pytest.approx(0.3)
    assert float(gap["max"]) == pytest.approx(0.2)
    assert float(gap["ratio"]) == pytest.approx(2 + math.exp(0.1) + math.exp(-0.2))


def test_no_length_mix_overfills_a_rank():
    """shard balances tokens but holds at most ceil(N / ranks) samples a rank, so the accumulation count sized from
    sample counts at start-up always fits; micro_batches makes exactly `count` micro-batches whatever it gets."""
    import random

    from learner.learner import shard
    from learner.batches import micro_batches
    lengths = [900, 300, 300, 300, 280, 260, 250, 240]  # the mix that gave counts [3, 5] against a capacity of 4
    parts = shard([{"token_ids": [0] * n} for n in lengths], 2)
    assert [len(p) for p in parts] == [4, 4]
    rng = random.Random(0)
    for _ in range(500):
        ranks, mbs = rng.choice([1, 2, 3]), rng.choice([1, 2, 4])
        n = rng.randint(1, 24)
        gas = max(1, math.ceil(math.ceil(n / ranks) / mbs))  # as Learner sizes it for n trajectories a step
        samples = [{"token_ids": [0] * rng.choice([rng.randint(5, 40), rng.randint(500, 4000)])} for _ in range(n)]
        parts = shard(samples, ranks)
        assert sorted(id(s) for p in parts for s in p) == sorted(id(s) for s in samples)
        for p in parts:
            chunks = micro_batches(p, mbs, gas)
            assert len(chunks) == gas and all(len(c) <= mbs for c in chunks) and sum(map(len, chunks)) == len(p)
    assert [len(c) for c in micro_batches([{}] * 9, 2, 3)] == [3, 3, 3]  # more than size x count: larger ones


def test_auto_push_picks_a_transport_per_engine_gpu():
    """Engines on rank 0's GPU take CUDA IPC, those on other GPUs (here GPUs 1..7) a broadcast, CPU ones the object
    store - not one transport for all by rank 0's GPU, which sent the engines on GPUs 1..7 through the object store."""
    from learner.weight_sync import group_by_transport
    me = {"device": "cuda", "gpu_uuid": "GPU-0"}
    infos = [{"gpu_uuid": f"GPU-{i}"} for i in range(8)] + [{"gpu_uuid": None}]
    plan = group_by_transport(me, infos, list(range(9)))
    assert plan == {"cuda_ipc": [0], "broadcast": [1, 2, 3, 4, 5, 6, 7], "object_store": [8]}
    assert group_by_transport({"device": "cpu", "gpu_uuid": None}, infos[:2], [0, 1]) == {"object_store": [0, 1]}
    # a tensor-parallel engine whose first worker shares rank 0's GPU still takes the broadcast (each worker does)
    assert group_by_transport(me, [{"gpu_uuid": "GPU-0", "members": 2}], [0]) == {"broadcast": [0]}
