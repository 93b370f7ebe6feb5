"""`python -m actors bench [MODEL] [DEVICE]`: the HF engine's decode speed.
On CPU (the default), with and without oneDNN-prepacked linear layers (engine.prepack_linears), side by side: the same
prompt, seeds and token budget at 1, 4 and 8 rows, the two engines alternating round by round (this machine is noisy);
the median of the rounds. On a GPU (DEVICE=cuda), the bf16 engine alone at 1, 8, 32 and 64 rows.
One JSON line per batch size."""
from __future__ import annotations

import json
import statistics
import time

import torch

from .engine import HFEngine, Sampling

PROMPT = ("Write a single HTML page for a bakery: an ivory background, forest-green buttons, a photo gallery, a menu "
          "table with prices and an order form.")


def _rate(engine: HFEngine, prompt: list[int], rows: int, sampling: Sampling) -> float:
    t = time.perf_counter()
    outs = engine.generate([prompt] * rows, sampling, seeds=list(range(rows)))  # token lists: already on the host
    return sum(len(o.token_ids) for o in outs) / (time.perf_counter() - t)


def run(model: str = "smollm2-135m", device: str = "cpu", batches: tuple[int, ...] | None = None,
        new_tokens: int = 96, rounds: int = 2) -> list[dict]:
    cpu = device == "cpu"
    batches = batches or ((1, 4, 8) if cpu else (1, 8, 32, 64))
    # on a GPU prepacking does not apply: one engine, the same rounds
    kinds = (False, True) if cpu else (False,)
    engines = {packed: HFEngine(model, device=device, prepack=packed) for packed in kinds}
    prompt = engines[False].chat_ids([{"role": "user", "content": PROMPT}])
    sampling = Sampling(temperature=0.8, max_new_tokens=new_tokens)
    for e in engines.values():  # warm-up: first-call allocations, oneDNN's first reorder, CUDA kernels
        _rate(e, prompt, 2, Sampling(temperature=0.8, max_new_tokens=4))
    rows = []
    for b in batches:
        rates = {packed: [] for packed in engines}
        for _ in range(rounds):
            for packed, e in engines.items():
                rates[packed].append(_rate(e, prompt, b, sampling))
        plain = statistics.median(rates[False])
        if cpu:
            packed = statistics.median(rates[True])
            row = {"batch": b, "tokens_per_s_plain": round(plain, 1), "tokens_per_s_prepacked": round(packed, 1),
                   "speedup": round(packed / plain, 2), "threads": engines[False].threads}
        else:
            row = {"batch": b, "device": torch.cuda.get_device_name(), "dtype": "bfloat16",
                   "tokens_per_s": round(plain, 1), "new_tokens": new_tokens}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows
