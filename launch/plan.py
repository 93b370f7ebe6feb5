"""`python launch/cluster.py --plan [group=option ...] [key=value ...]`: what a run would reserve and hold, printed
without Ray, GPUs or the model's weights - each actor's node and GPUs (launch/placement.py's bundles laid on
cluster.nodes x cluster.gpus_per_node) and an estimate of each GPU's memory from the model's shape and the run's
keys - and a refusal naming the key to change when the plan cannot fit. Estimates are upper bounds of the usual
kind (Adam in fp32, activations of one micro-batch of engine.max_model_len tokens), not measurements.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

from . import placement

GIB = 2**30
OVERHEAD_GIB = 2.0  # per GPU: CUDA context, NCCL buffers, allocator fragmentation


class PlanError(ValueError):
    """A plan that cannot fit; the message names the key to change, `lines` hold the plan as far as it went."""
    lines: list[str] = []


@dataclass
class Shape:
    """The numbers of a causal LM's config.json that size its memory."""
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def of(cls, c: dict) -> "Shape":
        heads = c["num_attention_heads"]
        return cls(c["num_hidden_layers"], c["hidden_size"], c["intermediate_size"], heads,
                   c.get("num_key_value_heads", heads), c.get("head_dim") or c["hidden_size"] // heads,
                   c["vocab_size"], bool(c.get("tie_word_embeddings", False)))

    @property
    def params(self) -> int:
        attn = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)  # q, o; k, v
        layer = attn + 3 * self.hidden * self.intermediate + 2 * self.hidden  # SwiGLU MLP, two norms
        return self.layers * layer + self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def kv_bytes_per_token(self, width: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * width


def model_shape(cfg) -> Shape:
    """model.arch (config.json's fields, for a model whose files are not on this machine), else its config.json."""
    if cfg.model.arch:
        return Shape.of(dict(cfg.model.arch))
    from common.models import resolve
    path = resolve(cfg.model.name)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise PlanError(f"model.name={cfg.model.name!r}: no config.json on this machine to size it from; set "
                        f"model.arch (its config.json fields: conf/model/qwen2.5-coder-7b.yaml has an example)")
    return Shape.of(json.load(open(os.path.join(path, "config.json"))))


def learner_memory(cfg, s: Shape) -> dict:
    """GiB on one learner rank's GPU. ZeRO shards optimiser state (stage >= 1), gradients (>= 2) and weights (3)."""
    lc, n, p = cfg.learner, cfg.learner.ranks, s.params
    w = 2 if lc.bf16 else 4
    tokens = cfg.engine.max_model_len * lc.micro_batch_size  # a micro-batch of the longest conversations
    per_layer = 34 * s.hidden * w  # activations kept per token and layer (Korthikanti et al., no s^2 term: SDPA)
    acts = tokens * (s.layers * 2 * s.hidden * w + per_layer if lc.gradient_checkpointing else s.layers * per_layer)
    layer_params = (p - s.vocab * s.hidden * (1 if s.tied else 2)) / s.layers
    out = {"weights": w * p / (n if lc.zero_stage == 3 else 1),
           "grads": w * p / (n if lc.zero_stage >= 2 else 1),
           "optimiser": (8 + (4 if lc.bf16 else 0)) * p / n,  # Adam's two moments (+ the fp32 master in bf16)
           "reference": 0.0 if lc.kl_coef == 0 or lc.ref_offload else w * p / (n if lc.zero_stage == 3 else 1),
           "activations": acts,
           "logits": tokens * s.vocab * 4 * 2,  # fp32 log-softmax and its gradient over the trained positions
           "gather": max(s.vocab * s.hidden, 2 * layer_params) * w if lc.zero_stage == 3 else 0.0,
           "overhead": OVERHEAD_GIB * GIB}
    return {k: v / GIB for k, v in out.items()}


def engine_memory(cfg, s: Shape, gpu_gib: float) -> dict:
    """GiB on one vLLM engine GPU: gpu_memory_utilization of it, weights sharded over tensor_parallel_size, the rest
    KV cache (vLLM's own profile of activations, ~1 GiB, taken off)."""
    e, w = cfg.engine, 2 if cfg.engine.dtype in ("auto", "bfloat16", "float16", "half") else 4
    budget = e.gpu_memory_utilization * gpu_gib
    weights = w * s.params / e.tensor_parallel_size / GIB
    kv = budget - weights - 1.0
    tokens = max(kv, 0) * GIB / (s.kv_bytes_per_token(w) / e.tensor_parallel_size)
    return {"budget": budget, "weights": weights, "kv_cache": kv, "kv_tokens": tokens,
            "contexts": tokens / e.max_model_len}


def layout(cfg, nodes: int, gpus_per_node: int) -> list[tuple[str, int, list[int]]]:
    """(actor, node, GPU indices) for every learner rank and engine: the run's bundles (placement.plan) laid on the
    nodes as Ray would place the group - PACK fills a node before the next, SPREAD goes round the nodes."""
    engine_gpus = cfg.engine.tensor_parallel_size if cfg.engine.kind == "vllm" else 1
    p = placement.plan(cfg.cluster, cfg.learner.ranks, cfg.rollout.workers, 0, nodes * gpus_per_node, engine_gpus)
    free = [list(range(gpus_per_node)) for _ in range(nodes)]
    names = {b: f"learner rank {i}" for i, b in enumerate(p.learner)}
    for i, b in enumerate(p.rollout):
        names[b] = f"{names[b]} + engine {i}" if b in names else f"engine {i}"
    out, turn = [], 0
    for b, bundle in enumerate(p.bundles):
        need = math.ceil(bundle.get("GPU", 0))
        order = list(range(nodes)) if p.strategy != "SPREAD" else [(turn + k) % nodes for k in range(nodes)]
        node = next((n for n in order if len(free[n]) >= need), None)
        if node is None:
            raise PlanError(f"{names[b]} needs {need} GPU(s) and none is left on {nodes} node(s) x {gpus_per_node}: "
                            f"lower learner.ranks ({cfg.learner.ranks}) or rollout.workers ({cfg.rollout.workers}), "
                            f"set cluster.colocate=true, or raise cluster.nodes")
        out.append((names[b], node, [free[node].pop(0) for _ in range(need)]))
        turn = node + 1
    return out


def _fix_learner(cfg, mem: dict) -> str:
    """The key whose change frees the most of a learner GPU that is over (each saving estimated from `mem`)."""
    lc, n = cfg.learner, cfg.learner.ranks
    sharded = mem["optimiser"] + (mem["weights"] + mem["reference"] if lc.zero_stage == 3 else 0) + (
        mem["grads"] if lc.zero_stage >= 2 else 0)
    per_token = mem["activations"] + mem["logits"]
    saving = {
        "learner.zero_stage=3 (weights and gradients sharded over the ranks)":
            (mem["weights"] + mem["reference"]) * (1 - 1 / n) * (lc.zero_stage < 3)
            + mem["grads"] * (1 - 1 / n) * (lc.zero_stage < 2),
        "learner.gradient_checkpointing=true": mem["activations"] * (1 - 2 / 36) * (not lc.gradient_checkpointing),
        "learner.ref_offload=true (the reference model's partitions on CPU)": mem["reference"],
        f"learner.micro_batch_size (now {lc.micro_batch_size}; 1 holds the least)":
            per_token * (1 - 1 / lc.micro_batch_size),
        f"engine.max_model_len (now {cfg.engine.max_model_len}: the longest sample a micro-batch may hold; "
        f"half of it halves activations and logits)": per_token / 2,
        f"learner.ranks (now {n}; twice as many halve what ZeRO shards)": sharded / 2,
    }
    return max(saving, key=saving.get)


def _table(rows: list[tuple[str, dict]], keys: list[str]) -> list[str]:
    lines = [f"  {'GiB per GPU':<34}" + "".join(f"{k:>12}" for k in keys)]
    return lines + [f"  {name:<34}" + "".join(f"{mem[k]:>12.1f}" for k in keys) for name, mem in rows]


def report(cfg) -> str:
    """The plan as text; raises PlanError naming the key to change when it cannot fit (with the plan so far)."""
    out: list[str] = []
    try:
        return _report(cfg, out)
    except PlanError as e:
        e.lines = out
        raise


def _report(cfg, out: list[str]) -> str:
    c = cfg.cluster
    nodes, gpus = c.nodes or 1, c.gpus_per_node
    gpu_gib = c.gpu_memory_gib
    if not c.nodes and not gpus:
        import torch
        gpus = torch.cuda.device_count()
        gpu_gib = torch.cuda.get_device_properties(0).total_memory / GIB if gpus else gpu_gib
    s = model_shape(cfg)
    width = 2 if cfg.learner.bf16 and gpus else 4
    out += [f"plan: {cfg.model.name} ({s.params / 1e9:.2f} B parameters, {'bf16' if width == 2 else 'fp32'}) on "
           f"{nodes} node(s) x {gpus} GPU(s) of {gpu_gib:g} GiB, placement {c.placement.upper()}"
           f"{', colocated' if c.colocate else ''}"]
    if not gpus:
        return "\n".join(out + ["  no GPUs: every learner rank and engine runs on CPU (cluster.nodes / "
                                "cluster.gpus_per_node plan for a GPU cluster)"])
    where = layout(cfg, nodes, gpus)
    for n in range(nodes):
        here = [f"GPU {','.join(map(str, g))}: {name}" for name, node, g in where if node == n]
        out.append(f"  node {n}: " + ("; ".join(here) or "(render workers and the critic only)"))
    out.append(f"  render workers: {cfg.render.workers} x 1 CPU, wherever CPUs are free")
    lm = learner_memory(cfg, s)
    lm["total"] = sum(lm.values())
    keys = ["weights", "grads", "optimiser", "reference", "activations", "logits", "gather", "overhead", "total"]
    out += _table([(f"learner rank (ZeRO-{cfg.learner.zero_stage}, {cfg.learner.ranks} ranks)", lm)], keys)
    if cfg.engine.kind == "vllm":
        em = engine_memory(cfg, s, gpu_gib)
        out.append(f"  engine (vLLM, TP {cfg.engine.tensor_parallel_size}): {em['budget']:.1f} GiB "
                   f"(engine.gpu_memory_utilization={cfg.engine.gpu_memory_utilization:g}): weights "
                   f"{em['weights']:.1f}, KV cache {em['kv_cache']:.1f} = {em['kv_tokens'] / 1e3:.0f}k tokens = "
                   f"{em['contexts']:.0f} contexts of engine.max_model_len={cfg.engine.max_model_len}")
        if em["kv_cache"] <= 0:
            raise PlanError(f"vLLM's weights ({em['weights']:.1f} GiB) leave no KV cache in its {em['budget']:.1f} GiB: "
                            f"raise engine.tensor_parallel_size or engine.gpu_memory_utilization")
        if em["contexts"] < 1:
            raise PlanError(f"vLLM's KV cache holds {em['kv_tokens']:.0f} tokens, less than one context of "
                            f"engine.max_model_len={cfg.engine.max_model_len}: lower engine.max_model_len or raise "
                            f"engine.gpu_memory_utilization / engine.tensor_parallel_size")
        shared = lm["total"] + em["budget"] if c.colocate else max(lm["total"], em["budget"])
        if c.colocate and shared > gpu_gib:
            raise PlanError(f"colocated, a learner rank ({lm['total']:.1f} GiB) and its engine ({em['budget']:.1f} GiB) "
                            f"pass one GPU's {gpu_gib:g} GiB: lower engine.gpu_memory_utilization or set "
                            f"cluster.colocate=false")
    if lm["total"] > gpu_gib:
        raise PlanError(f"a learner rank needs ~{lm['total']:.1f} GiB of a {gpu_gib:g} GiB GPU: set {_fix_learner(cfg, lm)}")
    r = cfg.rollout
    longest = 512 + r.max_turns * r.max_new_tokens + (r.max_turns - 1) * 1024  # prompt, pages, feedback (~1k each)
    if longest > cfg.engine.max_model_len:
        out.append(f"  note: {r.max_turns} turns of rollout.max_new_tokens={r.max_new_tokens} need ~{longest} tokens; "
                   f"engine.max_model_len={cfg.engine.max_model_len} ends longer trajectories early (context_full)")
    return "\n".join(out + ["plan fits"])
