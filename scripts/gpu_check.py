"""The GPU path's checks without Ray or vLLM, for a single-GPU machine with PyTorch (plus transformers and DeepSpeed
brought as wheels): one JSON line per check, each with "ok".

  engine_ratio   the HF engine samples on CUDA, a separate learner copy scores the same tokens (rank.collate,
                 trained_only, token_logprobs): logprob_diff_mean per T (0.8, 1, greedy, stop strings) and dtype
  zero3_step     DeepSpeed ZeRO-3 on one GPU (NCCL): the policy partitioned as it loads, the KL reference a ZeRO-3
                 engine, one GRPO step with and without gradient checkpointing (peak memory of each), the weights
                 gathered bucket by bucket (learner/zero.py)
  cuda_ipc_push  moved weights in buckets through CUDA IPC handles into an engine in another process (the receive
                 side of learner/weight_sync.py), then its log-probs against the sender's

Usage: python scripts/gpu_check.py [MODEL] [--device cpu]   (cpu: a dry run of the first two, gloo for NCCL)
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

BOUND = {torch.float32: 1e-3, torch.bfloat16: 2e-2}  # conf/engine: hf (fp32) and the bf16/vLLM tolerance


def emit(check: str, **fields) -> None:
    print(json.dumps({"check": check, **fields}), flush=True)


def scored(learner, prompts, outs, temperature: float, pad: int) -> dict:
    from learner import core_algos as algos
    from learner.batches import collate, trained_only
    samples = [{"token_ids": p + c.token_ids, "loss_mask": [0] * len(p) + [1] * len(c.token_ids),
                "logprobs": [0.0] * len(p) + c.logprobs, "advantage": 0.0} for p, c in zip(prompts, outs)]
    batch = {k: v.to(learner.device) for k, v in collate(samples, pad).items()}
    with torch.no_grad():
        logp = algos.token_logprobs(learner(**trained_only(batch)).logits.float(), batch["labels"], temperature)
    return {k: float(v) for k, v in algos.sampler_gap(logp, batch["old_logprobs"], batch["loss_mask"]).items()}


def engine_ratio(model: str, device: str) -> None:
    from actors.engine import HFEngine, Sampling
    from common.models import load_model
    for dtype in ([torch.float32, torch.bfloat16] if device == "cuda" else [torch.float32]):
        engine = HFEngine(model, dtype=dtype, device=device)
        learner = load_model(model, dtype).to(device)  # a copy, as the learner's: other batch shapes, same weights
        prompts = [engine.chat_ids([{"role": "user", "content": f"Write a landing page for shop {i}"}])
                   for i in range(8)]
        for temperature, stop in ((0.8, ()), (1.0, ()), (0.0, ()), (0.8, ("</h1>", "```\n"))):
            t = time.perf_counter()
            outs = engine.generate(prompts, Sampling(temperature, 1.0, 96, stop), seeds=list(range(8)))
            gap = scored(learner, prompts, outs, temperature, engine.tokenizer.pad_token_id)
            mean = gap["abs"] / max(gap["tokens"], 1)
            emit("engine_ratio", device=device, dtype=str(dtype).removeprefix("torch."), temperature=temperature,
                 stop=list(stop), tokens=int(gap["tokens"]), logprob_diff_mean=mean, logprob_diff_max=gap["max"],
                 ratio_mean=gap["ratio"] / max(gap["tokens"], 1), seconds=round(time.perf_counter() - t, 2),
                 ok=mean <= BOUND[dtype])


def _one_rank_group(device: str) -> None:
    import deepspeed
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo")


def zero3_step(model: str, device: str) -> None:
    import deepspeed

    from learner import core_algos as algos
    from learner import zero
    from learner.config import LearnerConfig
    from learner.batches import collate, trained_only
    _one_rank_group(device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    from common.models import load_tokenizer
    g = torch.Generator().manual_seed(0)
    vocab = len(load_tokenizer(model))
    rows = [{"token_ids": torch.randint(3, vocab, (512,), generator=g).tolist(), "loss_mask": [0] * 128 + [1] * 384,
             "logprobs": [0.0] * 128 + [-3.0] * 384, "advantage": a} for a in (1.0, -1.0, 0.5, -0.5)]
    for checkpointing in (False, True):
        cfg = LearnerConfig(zero_stage=3, kl_coef=0.01, micro_batch_size=4, gradient_checkpointing=checkpointing,
                            lr=1e-5, bf16=dtype == torch.bfloat16, bucket_mb=1.0)
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        ds = zero.train_config(cfg, 1, dtype, False)
        policy, keep = zero.load(model, dtype, ds, checkpointing)
        partitioned = all(getattr(p, "ds_numel", 0) > p.numel() for p in policy.parameters() if p.ds_numel > 1)
        engine, *_ = deepspeed.initialize(model=policy, optimizer=torch.optim.AdamW(policy.parameters(), lr=cfg.lr),
                                          config=ds)
        ref_cfg = zero.reference_config(cfg, dtype)
        ref = deepspeed.initialize(model=zero.load(model, dtype, ref_cfg)[0].requires_grad_(False), config=ref_cfg)[0]
        batch = {k: v.to(engine.device) for k, v in collate(rows, 0).items()}
        inputs = trained_only(batch)
        engine.train()
        logp = algos.token_logprobs(engine(**inputs).logits.float(), batch["labels"])
        with torch.no_grad():
            ref_logp = algos.token_logprobs(ref(**inputs).logits.float(), batch["labels"])
        loss_tok, _ = algos.policy_loss(logp, batch["old_logprobs"], batch["advantages"], cfg.clip_low, cfg.clip_high)
        loss = algos.global_token_mean(loss_tok + cfg.kl_coef * algos.kl_k3(logp, ref_logp), batch["loss_mask"],
                                       int(batch["loss_mask"].sum()))
        engine.backward(loss)
        engine.step()
        full = zero.full_state_dict(engine.module, True, cfg.bucket_mb, 0)
        numel = sum(v.numel() for k, v in full.items())
        emit("zero3_step", device=device, gradient_checkpointing=checkpointing, loss=float(loss),
             partitioned_at_load=partitioned, gathered_tensors=len(full), gathered_numel=numel,
             peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3) if device == "cuda" else None,
             seconds=round(time.perf_counter() - t, 2),
             ok=bool(torch.isfinite(loss)) and numel > 0 and all(torch.isfinite(v.float()).all() for v in full.values()))
        del engine, ref, policy, keep, full


def _engine_side(model: str, buckets: list, handles: list, seq: list, out) -> None:
    from actors.engine import HFEngine
    engine = HFEngine(model, dtype=torch.float32, device="cuda")
    engine.receive("cuda_ipc", buckets, 1, handles)
    out.put(engine.logprobs(seq))


def cuda_ipc_push(model: str, device: str) -> None:
    if device != "cuda":
        emit("cuda_ipc_push", ok=None, skipped="needs CUDA")
        return
    import torch.multiprocessing as mp

    from common.models import load_model
    from learner import weight_sync as ws
    sender = load_model(model, torch.float32).to("cuda")
    torch.manual_seed(3)
    with torch.no_grad():
        for p in sender.parameters():
            p.add_(0.01 * torch.randn_like(p))  # moved, as a learner step would
    params = dict(sender.named_parameters(remove_duplicate=False))
    metas = [ws.TensorMeta(n, tuple(p.shape), "float32") for n, p in params.items()]
    buckets = ws.plan_buckets(metas, 32 * 2**20)
    t = time.perf_counter()
    flats = [ws.pack([params[m.name] for m in b]) for b in buckets]  # kept alive until the engine has copied them
    handles = [ws.share_cuda(f) for f in flats]
    seq = list(range(5, 200))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_engine_side, args=(model, [[tuple(m) for m in b] for b in buckets], handles, seq, out))
    child.start()
    got = out.get(timeout=300)
    child.join(timeout=60)
    from learner import core_algos as algos
    with torch.no_grad():
        ids = torch.tensor([seq], device="cuda")
        want = algos.token_logprobs(sender(input_ids=ids).logits[:, :-1].float(), ids[:, 1:])[0].tolist()
    diff = max(abs(a - b) for a, b in zip(got, want))
    emit("cuda_ipc_push", buckets=len(buckets), seconds=round(time.perf_counter() - t, 2), max_logprob_diff=diff,
         ok=diff < 1e-3)


def main(argv: list[str]) -> int:
    import argparse
    parser = argparse.ArgumentParser(description="the GPU path's Ray-free checks, one JSON line each")
    parser.add_argument("model", nargs="?", default="smollm2-135m")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = parser.parse_args(argv)
    model, device = args.model, args.device
    os.environ["DS_ACCELERATOR"] = device
    failed = 0
    for check in (engine_ratio, zero3_step, cuda_ipc_push):
        try:
            check(model, device)
        except Exception as e:  # one check's failure is reported and the others still run
            emit(check.__name__, ok=False, error=f"{type(e).__name__}: {e}"[:500])
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
