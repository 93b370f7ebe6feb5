"""`python launch/generate.py task="..." [out=page.html] [model=PRESET | model.name=PATH] [self_edit.rounds=3] [critic=none|heuristic|openai]`

Inference as ReLook deploys it: the first page, then the critic-free self-edit cycle (actors/self_edit.py); with a
critic configured, its feedback drives the rounds and only improving revisions are kept. Writes the final page to
`out` and its screenshots beside it, and prints one JSON line (rounds, latency_s, tokens, valid, score, ...).
`+bench=true` also times plain one-shot decoding on the same task and engine, pair by pair, and reports
`self_edit_vs_base_latency` (median self-edit latency / median one-shot latency).
"""
from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere

import hydra  # noqa: E402
from hydra.core.config_store import ConfigStore  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from launch.inference import GenerateConfig, resolve  # noqa: E402

ConfigStore.instance().store(name="generate_config", node=GenerateConfig)


async def generate(cfg: GenerateConfig, bench: bool) -> dict:
    import torch

    from actors.engine import Sampling
    from launch.inference import Stack, write_page
    task = {"id": "cli", "prompt": cfg.task, "checklist": list(cfg.checklist)}
    async with Stack(cfg) as stack:
        if not bench:
            torch.manual_seed(cfg.seed)
            res = await stack.run(task)
            report = {}
        else:
            se = cfg.self_edit
            one_shot = Sampling(se.temperature, se.top_p, se.max_new_tokens)
            prompt = stack.conv.prompt_ids(task["prompt"])
            await stack.run(task, replace(se, rounds=1, max_new_tokens=8))  # warm-up
            base, edit, rows = [], [], []
            for r in range(cfg.bench_repeats):  # interleaved pairs, same seed: the first pages are the same
                torch.manual_seed(cfg.seed + r)
                t = time.perf_counter()
                (plain,) = await stack.generate(prompt, one_shot, 1)
                base.append(time.perf_counter() - t)
                torch.manual_seed(cfg.seed + r)
                res = await stack.run(task)
                edit.append(res.latency_s)
                rows.append({"base_s": round(base[-1], 3), "base_tokens": len(plain.token_ids),
                             "self_edit_s": round(res.latency_s, 3), "tokens": res.tokens, "rounds": res.rounds,
                             "accepted_rounds": sum(h["accepted"] for h in res.history[1:]),
                             "stop": res.stop, "timings_s": {k: round(v, 3) for k, v in res.timings_s.items()}})
            report = {"bench": {"base_latency_s": round(statistics.median(base), 3),
                                "self_edit_latency_s": round(statistics.median(edit), 3),
                                "self_edit_vs_base_latency": round(statistics.median(edit) / statistics.median(base), 3),
                                "rounds_configured": se.rounds, "revision_format": cfg.revision.format, "engine": cfg.engine.kind,
                                "model": cfg.model.name, "pairs": rows}}
    out = Path(cfg.out)
    shots = [str(p) for p in write_page(res, out, out.parent, f"{out.stem}-shot")]
    return {"out": cfg.out, "shots": shots, **res.to_json(), "feedback": res.feedback, **report}


@hydra.main(config_path="../conf", config_name="generate", version_base="1.3")
def main(dcfg: DictConfig) -> None:
    cfg, extra = resolve(dcfg, extras=("bench",))
    if not cfg.task.strip():
        print('config error: task is required, e.g. task="a landing page for a bakery with an order form"',
              file=sys.stderr)
        sys.exit(2)
    print(json.dumps(asyncio.run(generate(cfg, bool(extra["bench"])))), flush=True)


if __name__ == "__main__":
    main()
