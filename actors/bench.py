"""`python -m actors bench [MODEL]`: the HF engine's decode speed with and without oneDNN-prepacked linear layers
(engine.prepack_linears), side by side: the same prompt, seeds and token budget at 1, 4 and 8 rows, the two engines
alternating round by round (this machine is noisy); the median of the rounds. One JSON line per batch size."""
from __future__ import annotations

import json
import statistics
import time

import torch

from .engine import HFEngine, Sampling

PROMPT = ("Write a single HTML page for a bakery: an ivory background, forest-green buttons, a photo gallery, a menu "
          "table with prices and an order form.")


def run(model: str = "smollm2-135m", batches: tuple[int, ...] = (1, 4, 8), new_tokens: int = 96,
        rounds: int = 2) -> list[dict]:
    engines = {packed: HFEngine(model, device="cpu", prepack=packed) for packed in (False, True)}
    prompt = engines[True].chat_ids([{"role": "user", "content": PROMPT}])
    sampling = Sampling(temperature=0.8, max_new_tokens=new_tokens)
    for e in engines.values():  # warm-up: first-call allocations, oneDNN's first reorder
        e.generate([prompt] * 2, Sampling(temperature=0.8, max_new_tokens=4), seeds=[0, 1])
    rows = []
    for b in batches:
        rates = {False: [], True: []}
        for _ in range(rounds):
            for packed, e in engines.items():
                t = time.perf_counter()
                outs = e.generate([prompt] * b, sampling, seeds=list(range(b)))
                rates[packed].append(sum(len(o.token_ids) for o in outs) / (time.perf_counter() - t))
        plain, packed = statistics.median(rates[False]), statistics.median(rates[True])
        rows.append({"batch": b, "tokens_per_s_plain": round(plain, 1), "tokens_per_s_prepacked": round(packed, 1),
                     "speedup": round(packed / plain, 2), "threads": torch.get_num_threads()})
        print(json.dumps(rows[-1]), flush=True)
    return rows
