"""The engine samples what the learner scores: log-probs, stop strings, EOS ids, the model's generation_config,
the context limit and the chat template's prefix stability. No Ray, no Chromium."""
import pytest

from actors.config import RolloutConfig
from actors.engine import Batcher, HFEngine, Sampling
from actors.rollout import Conversation
from render_farm.result import RenderResult

from .conftest import run

@pytest.mark.parametrize("temperature,stop", [(0.8, ()), (1.0, ()), (0.0, ()), (0.8, ("e", "page"))])
def test_the_learner_scores_exactly_what_the_engine_sampled(temperature, stop):
    """The on-policy check of every training step (core_algos.sampler_gap), here without Ray: the learner's forward
    (rank.collate, rank.trained_only, token_logprobs at the sampling temperature) on the engine's tokens gives the
    engine's log-probs, at T 0.8 / 1 / greedy and with stop strings - with the pad id equal to the eos id (SmolLM2),
    where a row stopped by a stop string used to keep a pad token it never sampled, and with a repetition penalty in
    the model's generation_config, which generate used to apply before the sampler."""
    import torch

    from learner import core_algos as algos
    from learner.batches import collate, trained_only
    from actors.engine import own_generation_config
    engine = HFEngine("tiny")
    engine.tokenizer.pad_token = engine.tokenizer.eos_token  # as SmolLM2's
    engine.model.generation_config.repetition_penalty = 1.5  # as Qwen's configs carry one
    engine.model.generation_config.no_repeat_ngram_size = 2
    engine.eos_ids, _ = own_generation_config(engine.model, engine.tokenizer)
    learner = engine.model  # the same weights; the learner never sees the engine's generation_config
    prompts = [engine.chat_ids([{"role": "user", "content": f"Write page {i}"}]) for i in range(6)]
    outs = engine.generate(prompts, Sampling(temperature, 1.0, 40, stop), seeds=list(range(6)))
    pad = engine.tokenizer.pad_token_id
    for p, c in zip(prompts, outs):
        assert len(c.token_ids) == len(c.logprobs) and all(lp <= 1e-6 for lp in c.logprobs)
        if stop and c.finished and c.token_ids[-1] != pad:  # ended by a stop string: it ends the text, no pad after
            assert any(c.text.endswith(s) or s in engine.tokenizer.decode(c.token_ids[-2:]) for s in stop), c.text
            assert pad not in c.token_ids
    if stop:
        assert any(c.finished and c.token_ids[-1] != pad for c in outs)  # the stop strings did stop some rows
    samples = [{"token_ids": p + c.token_ids, "loss_mask": [0] * len(p) + [1] * len(c.token_ids),
                "logprobs": [0.0] * len(p) + c.logprobs, "advantage": 0.0} for p, c in zip(prompts, outs)]
    batch = collate(samples, pad)
    inputs = trained_only(batch)
    with torch.no_grad():
        logp = algos.token_logprobs(learner(**inputs).logits, batch["labels"], temperature)
    gap = algos.sampler_gap(logp, batch["old_logprobs"], batch["loss_mask"])
    assert gap["tokens"] > 0 and gap["abs"] / gap["tokens"] < 1e-4 and gap["max"] < 1e-3, gap


def test_processors_of_a_models_generation_config_are_dropped_and_every_eos_kept():
    from actors.engine import own_generation_config
    engine = HFEngine("tiny")
    engine.model.generation_config.repetition_penalty = 1.3
    engine.model.generation_config.eos_token_id = [7, engine.tokenizer.eos_token_id]  # e.g. Llama 3's two ids
    eos, dropped = own_generation_config(engine.model, engine.tokenizer)
    assert eos == sorted({7, engine.tokenizer.eos_token_id}) and dropped == {"repetition_penalty": 1.3}
    assert engine.model.generation_config.repetition_penalty in (None, 1.0)  # generate's default: none applied
    engine.eos_ids = eos
    prompt = engine.chat_ids([{"role": "user", "content": "hi"}])
    for c in engine.generate([prompt] * 4, Sampling(1.0, 1.0, 48), seeds=[1, 2, 3, 4]):
        stops = [i for i, t in enumerate(c.token_ids) if t in eos]
        assert stops in ([], [len(c.token_ids) - 1]) and c.finished == bool(stops)  # ends at the first of either


def test_a_conversation_past_the_engines_context_ends_its_trajectory_not_the_run():
    """The HF engine's Batcher refuses a prompt whose reply budget passes the context (vLLM's engine does the same
    at engine.max_model_len): the revision turn ends the trajectory with stopped='context_full', the first page kept;
    a task whose prompt alone is too long gives unscorable trajectories with nothing to train on."""
    from actors.engine import ContextFull
    from actors.rollout import run_group
    from critic_service.critique import Critique
    engine = HFEngine("tiny")
    conv = Conversation(engine.tokenizer, "sys", "tool")
    prompt = conv.prompt_ids("make a page")
    engine.max_context = len(prompt) + 40  # room for the first page, not for a revision on top of it
    batcher = Batcher(engine)

    async def render(html):
        return RenderResult(True, None, screenshots=[b"png"], shot_times=[0.0], dom={"text": "x"})

    async def critique(req):
        return Critique(50.0, "add a table", {})

    cfg = RolloutConfig(group_size=2, max_turns=3, max_new_tokens=24)
    [a, b] = run(run_group({"id": "t", "prompt": "make a page"}, conv, batcher.generate, render, critique, cfg))
    assert a.stopped == b.stopped == "context_full" and len(a.attempts) == len(b.attempts) == 1
    assert sum(a.loss_mask) == len(a.token_ids) - len(prompt) > 0  # the first page alone, trained on
    with pytest.raises(ContextFull, match="passes the engine's context"):
        run(batcher.generate(prompt, Sampling(1.0, 1.0, 41)))
    long = run(run_group({"id": "u", "prompt": "make a page " * 40}, conv, batcher.generate, render, critique, cfg))
    assert all(t.unscorable and t.stopped == "context_full" and not any(t.loss_mask) for t in long)


def test_a_chat_template_that_rewrites_earlier_turns_is_refused_at_start():
    engine = HFEngine("tiny")
    tok = engine.tokenizer
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' and not "
                         "loop.last %}{{ m['content'].split('</think>')[-1] }}{% else %}{{ m['content'] }}{% endif %}"
                         "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(ValueError, match="not prefix-stable"):  # as Qwen3's drops an earlier reply's <think>
        Conversation(tok, "sys", "tool")
