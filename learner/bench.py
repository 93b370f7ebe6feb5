"""`python -m learner bench`: the DeepSpeed learner's GRPO step vs a plain torch loop (same model, batch, loss),
and the time to push the weights into one HF engine on a local Ray. One JSON object."""
from __future__ import annotations

import os
import statistics
import time

import ray
import torch

from . import core_algos as algos
from . import weight_sync as ws
from .config import LearnerConfig
from .learner import Learner
from .batches import collate, micro_batches, trained_only


def _batch(n: int, length: int, prompt: int, vocab: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"task_id": f"t{i // 4}", "token_ids": torch.randint(3, vocab, (length,), generator=g).tolist(),
             "loss_mask": [0] * prompt + [1] * (length - prompt), "logprobs": [0.0] * prompt + [-3.0] * (length - prompt),
             "reward": float(i % 4) / 3, "unscorable": False} for i in range(n)]


def _torch_steps(model_name: str, cfg: LearnerConfig, rows: list[dict], steps: int, device: str) -> list[float]:
    """The same GRPO step written as a plain single-process torch loop (on GPU: bf16 autocast over fp32 weights,
    as DeepSpeed's bf16 mode keeps fp32 master weights)."""
    from common.models import load_model, load_tokenizer
    policy, ref = load_model(model_name).to(device).train(), load_model(model_name).to(device).requires_grad_(False)
    pad = load_tokenizer(model_name).pad_token_id
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    rewards = torch.tensor([r["reward"] for r in rows])
    groups = torch.tensor([int(r["task_id"][1:]) for r in rows])
    adv, _ = algos.group_advantages(rewards, groups, torch.zeros(len(rows), dtype=torch.bool))
    samples = [{**r, "advantage": float(a)} for r, a in zip(rows, adv)]
    tokens = sum(sum(r["loss_mask"]) for r in rows)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        for mb in micro_batches(samples, cfg.micro_batch_size, -(-len(samples) // cfg.micro_batch_size)):
            b = {k: v.to(device) for k, v in collate(mb, pad).items()}
            inputs = trained_only(b)
            logits = policy(**inputs).logits
            logp = algos.token_logprobs(logits, b["labels"])
            loss_tok, _ = algos.policy_loss(logp, b["old_logprobs"], b["advantages"], cfg.clip_low, cfg.clip_high)
            with torch.no_grad():
                ref_logits = ref(**inputs).logits
            loss_tok = loss_tok + cfg.kl_coef * algos.kl_k3(logp, algos.token_logprobs(ref_logits, b["labels"]))
            algos.global_token_mean(loss_tok, b["loss_mask"], tokens).backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


@ray.remote
class BenchEngine(ws.ModelReceiver):
    """The receive side alone: the policy in a Ray actor, on the GPU when the actor has one."""

    def __init__(self, model: str):
        from common.models import load_model
        device = "cuda" if torch.cuda.is_available() else "cpu"
        super().__init__(load_model(model, torch.bfloat16 if device == "cuda" else torch.float32).to(device), device)


def run(model: str = "smollm2-135m", trajectories: int = 8, length: int = 256, steps: int = 3) -> dict:
    """On CPU the engine is a separate actor (object store vs gloo broadcast); on a GPU it shares the learner's GPU in
    one placement-group bundle (object store vs CUDA IPC). Pushes of the transports alternate, 3 each."""
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from common.models import load_tokenizer
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    gpu = torch.cuda.is_available()
    ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False, num_cpus=4, num_gpus=int(gpu))
    cfg = LearnerConfig(ranks=1, zero_stage=2, lr=1e-6, kl_coef=0.001, micro_batch_size=4)
    rows = _batch(trajectories, length, length // 4, len(load_tokenizer(model)))
    group = placement_group([{"CPU": 3, **({"GPU": 1} if gpu else {})}], strategy="STRICT_PACK")  # one bundle, shared
    ray.get(group.ready(), timeout=60)
    bundle = {"scheduling_strategy": PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0)}
    learner = Learner(model, cfg, temperature=1.0, trajectories_per_step=trajectories, cpus_per_rank=2,
                      gpus_per_rank=0.5 if gpu else 0, placement=[bundle])
    ds_times = []
    for _ in range(steps + 1):  # first step warms up
        t = time.perf_counter()
        learner.step(rows)
        ds_times.append(time.perf_counter() - t)
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    th_times = _torch_steps(model, cfg, rows, steps + 1, "cuda" if gpu else "cpu")
    worker = BenchEngine.options(num_cpus=1, num_gpus=0.5 if gpu else 0, **bundle).remote(model)
    ray.get(worker.weight_info.remote())
    transports = ["object_store", "cuda_ipc" if gpu else "broadcast"]
    pushes = {t: [] for t in transports}
    learner.push_weights([worker], transport=transports[1])  # forms the weight group / warms up
    for _ in range(3):
        for name in transports:
            t = time.perf_counter()
            learner.push_weights([worker], transport=name)
            pushes[name].append(time.perf_counter() - t)
    auto = "+".join(learner.pusher.pick([worker]))
    ds, th = statistics.median(ds_times[1:]), statistics.median(th_times[1:])
    weights_gb = sum(m.nbytes for m in ray.get(learner.ranks[0].weight_metas.remote())) / 1e9
    ray.shutdown()
    return {"model": model, "device": "cuda" if gpu else "cpu", "batch": f"{trajectories}x{length} tokens",
            "deepspeed_step_s": round(ds, 3), "torch_step_s": round(th, 3),
            "deepspeed_vs_torch_step_ratio": round(ds / th, 3), "weight_push_transport": auto,
            "weight_push_s": round(statistics.median(pushes[auto]), 3),
            "weight_push_s_by_transport": {k: round(statistics.median(v), 3) for k, v in pushes.items()},
            "weights_gb": round(weights_gb, 3)}


def _rss_mb(rank) -> tuple[float, float]:
    """A rank's resident memory now and its peak since the last call (VmRSS, VmHWM of its process), in MiB; the
    call returns freed memory to the kernel and resets the peak, so the next phase's peak is its own."""
    def read(_self):
        import ctypes
        status = lambda: dict(line.split(":", 1) for line in open("/proc/self/status"))  # noqa: E731
        peak = int(status()["VmHWM"].split()[0]) / 1024
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the kernel's peak-RSS reset
        return int(status()["VmRSS"].split()[0]) / 1024, peak
    return ray.get(rank.__ray_call__.remote(read))


def memory(model: str = "smollm2-135m", ranks: int = 2, zero_stage: int = 3, **learner_keys) -> dict:
    """`python -m learner memory`: each rank's peak resident memory (MiB) through the phases of an RL step on CPU -
    built, a weight push's gather (put_state_dict), a checkpoint, one update: each phase's own peak (the kernel's
    counter is reset between phases) and what it added to what the rank held when the phase began (`added`: the
    phase's own cost, apart from what earlier ones left allocated)."""
    import shutil
    import tempfile
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False, num_cpus=max(4, ranks * 2))
    cfg = LearnerConfig(**{"ranks": ranks, "zero_stage": zero_stage, "lr": 1e-6, "kl_coef": 0.001, "micro_batch_size": 4,
                           **learner_keys})
    from common.models import load_tokenizer
    rows = _batch(8, 256, 64, len(load_tokenizer(model)))
    scratch = tempfile.mkdtemp(prefix="relook-memory-")
    learner = Learner(model, cfg, temperature=1.0, trajectories_per_step=8, cpus_per_rank=2, gpus_per_rank=0)
    built = [_rss_mb(r) for r in learner.ranks]  # the build's peak: model, reference, DeepSpeed engines
    phases, added, start = {"build": [round(p) for _, p in built]}, {}, [rss for rss, _ in built]
    for name, run in (("push_gather", lambda: ray.get([r.put_state_dict.remote() for r in learner.ranks])),
                      ("checkpoint", lambda: learner.save(os.path.join(scratch, "ckpt"))),
                      ("step", lambda: learner.step(rows))):  # last: what it frees is not all returned
        run()
        now = [_rss_mb(r) for r in learner.ranks]
        phases[name] = [round(peak) for _, peak in now]
        added[name] = [round(peak - before) for (_, peak), before in zip(now, start)]
        start = [rss for rss, _ in now]
    ray.shutdown()
    shutil.rmtree(scratch, ignore_errors=True)
    return {"model": model, "ranks": ranks, "zero_stage": zero_stage, **learner_keys,
            "peak_rss_mib_by_phase": phases, "added_mib_by_phase": added,
            "peak_rss_mib": max(max(v) for v in phases.values())}
