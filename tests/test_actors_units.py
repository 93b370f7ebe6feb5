"""The agent loop's pure rules and token bookkeeping: no Ray, no Chromium."""
import pytest

from actors.agent import Conversation
from actors.config import RolloutConfig
from actors.engine import HFEngine, Sampling
from actors.trajectory import accept_revision, extract_html, format_score, reward


def test_extract_html_prefers_the_last_fenced_block_then_documents_then_svg():
    assert extract_html("a ```html\n<p>1</p>\n``` b ```html\n<p>2</p>\n```") == "<p>2</p>"
    assert extract_html("intro <html><body>x</body></html> and <html><b>y</b></html>") == "<html><b>y</b></html>"
    assert extract_html("art: <svg viewBox='0 0 1 1'><rect/></svg>") == "<svg viewBox='0 0 1 1'><rect/></svg>"
    assert extract_html("```html\n<html><body>cut off by max tokens") == "<html><body>cut off by max tokens"
    assert extract_html("no page here ```python\nprint(1)\n```") is None


def test_format_score():
    assert format_score("```html\n<!DOCTYPE html><html><body>x</body></html>\n```") == 1.0
    assert format_score("<html><body>x</body></html>") == 0.5
    assert format_score("```html\n<div>x</div>\n```") == 0.5
    assert format_score("nothing") == 0.0


def test_forced_optimization_accepts_only_strict_improvements():
    assert accept_revision(61.0, 60.0)
    assert not accept_revision(60.0, 60.0)
    assert not accept_revision(10.0, 60.0)
    assert not accept_revision(None, 0.0)  # unscorable never improves


@pytest.mark.parametrize("reason", ["no_html", "too_large", "blank", "timeout", "crash", "load_error"])
def test_invalid_renders_get_exactly_zero(reason):
    assert reward(False, 95.0, 1.0, 0.1) == 0.0


def test_reward_and_unscorable():
    assert reward(True, 80.0, 1.0, 0.1) == pytest.approx(0.9)
    assert reward(True, None, 1.0, 0.1) == 0.0


def test_feedback_ids_reproduce_the_chat_template_without_retokenising():
    engine = HFEngine("tiny")
    tok = engine.tokenizer
    conv = Conversation(tok, "sys", "tool")
    prompt = conv.prompt_ids("make a page")
    (c,) = engine.generate([prompt], Sampling(temperature=1.0, max_new_tokens=12))
    delta = conv.feedback_ids("make a page", c, "Score: 40/100. Add a table.")
    text = tok.decode(prompt + c.token_ids + delta)
    expected = tok.apply_chat_template(
        [{"role": "system", "content": "sys"}, {"role": "user", "content": "make a page"},
         {"role": "assistant", "content": tok.decode(c.token_ids, skip_special_tokens=True)},
         {"role": "tool", "content": "Score: 40/100. Add a table."}], add_generation_prompt=True, tokenize=False)
    assert text == expected


def test_bad_rollout_config_names_the_key():
    with pytest.raises(ValueError, match="rollout.group_size=0"):
        RolloutConfig(group_size=0).validate()


def test_engine_logprobs_match_a_forward_pass_and_weights_load():
    import torch
    engine = HFEngine("tiny")
    prompt = engine.chat_ids([{"role": "user", "content": "hi"}])
    (c,) = engine.generate([prompt], Sampling(temperature=0.7, max_new_tokens=16))
    with torch.no_grad():
        logits = engine.model(torch.tensor([prompt + c.token_ids])).logits[0, len(prompt) - 1:-1] / 0.7
    lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
    assert torch.allclose(lp, torch.tensor(c.logprobs), atol=1e-5)
    new = {k: v + 0.01 for k, v in engine.model.state_dict().items()}
    engine.load_weights(new, version=3)
    assert engine.version == 3
    assert torch.equal(engine.model.state_dict()["model.norm.weight"], new["model.norm.weight"])
