"""DeepSpeed's side of a learner rank: each engine's config, and ZeRO-3's memory rules. Under ZeRO-3 no rank holds
the whole model at once: the policy is partitioned as it loads (zero.Init, through transformers' HfDeepSpeedConfig),
the frozen reference model is a ZeRO-3 engine of its own (its partitions on CPU with learner.ref_offload), and the
full weights leave the ranks bucket by bucket (a push through the object store, a checkpoint), each bucket gathered
only while it is copied out."""
from __future__ import annotations

import contextlib

import torch


def train_config(cfg, gas: int, dtype: torch.dtype, fp32_master_in_weights: bool) -> dict:
    """The policy's DeepSpeed config. fp32_master_in_weights: a checkpoint need not hold the fp32 master twice."""
    return {"train_micro_batch_size_per_gpu": cfg.micro_batch_size, "gradient_accumulation_steps": gas,
            "zero_optimization": {"stage": cfg.zero_stage, "load_from_fp32_weights": not fp32_master_in_weights},
            "gradient_clipping": cfg.grad_clip, "bf16": {"enabled": dtype == torch.bfloat16}, "steps_per_print": 10**9}


def reference_config(cfg, dtype: torch.dtype) -> dict | None:
    """The frozen reference model's DeepSpeed config (an inference engine, no optimiser): partitioned like the
    policy under ZeRO-3, its partitions on CPU with learner.ref_offload (any stage). None: a plain module, whole on
    every rank (ZeRO-1/2 keep the policy's weights whole too, so the reference costs the same again)."""
    if cfg.zero_stage < 3 and not cfg.ref_offload:
        return None
    zero = {"stage": 3, "stage3_param_persistence_threshold": 0}
    if cfg.ref_offload:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {"train_micro_batch_size_per_gpu": cfg.micro_batch_size, "zero_optimization": zero,
            "bf16": {"enabled": dtype == torch.bfloat16}, "steps_per_print": 10**9}


def load(name: str, dtype: torch.dtype, config: dict | None, gradient_checkpointing: bool = False):
    """The model, partitioned while it loads when `config` is ZeRO-3 (transformers' zero.Init path); whole otherwise.
    -> (model, the HfDeepSpeedConfig to keep alive while the model is used, or None)."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    from common.models import resolve
    path = resolve(name)  # a preset is built first, outside zero.Init (its random init must be whole to be saved)
    keep = HfDeepSpeedConfig(config) if config and config["zero_optimization"]["stage"] == 3 else None
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    if gradient_checkpointing:  # activations of one layer at a time are kept; the others are recomputed in backward
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model, keep


def full_state_dict(module: torch.nn.Module, zero3: bool, bucket_mb: float, rank: int) -> dict:
    """Every weight on CPU at rank 0 ({} elsewhere). Under ZeRO-3 every rank takes part: parameters are gathered
    bucket by bucket (about bucket_mb each) and only rank 0 copies them out, so a device holds at most one bucket
    beyond its own partition, and a host one copy of the model."""
    state = module.state_dict()  # under ZeRO-3: placeholders for parameters, real buffers
    if not zero3:
        return {k: v.detach().cpu().clone() for k, v in state.items()} if rank == 0 else {}
    named = dict(module.named_parameters(remove_duplicate=False))
    names_of: dict[int, list[str]] = {}  # a tied weight: one parameter, several names, gathered once
    for n, p in named.items():
        names_of.setdefault(id(p), []).append(n)
    unique = list({id(p): p for p in named.values()}.values())
    out, bucket, size, limit = {}, [], 0, bucket_mb * 2**20

    def flush(params: list) -> None:
        with gathered(params, True):
            if rank == 0:
                for p in params:
                    for n in names_of[id(p)]:
                        out[n] = p.detach().cpu().clone()

    for p in unique:
        bucket.append(p)
        size += getattr(p, "ds_numel", p.numel()) * p.element_size()
        if size >= limit:
            flush(bucket)
            bucket, size = [], 0
    if bucket:
        flush(bucket)
    if rank != 0:
        return {}
    return {k: out[k] if k in out else v.detach().cpu().clone() for k, v in state.items()}


def gathered(params: list, zero3: bool):
    """A context in which ZeRO-3's partitioned `params` are whole on every rank (nothing to do otherwise)."""
    if not zero3:
        return contextlib.nullcontext()
    import deepspeed
    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
