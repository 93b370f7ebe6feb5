"""The agent loop's pure rules, token bookkeeping and engine batching: no Ray, no Chromium."""
import asyncio
import time

import pytest

from actors.config import RolloutConfig
from actors.engine import Batcher, Completion, HFEngine, Sampling, seeded
from actors.revision import extract_html
from actors.reward import RewardConfig, edits_format_score, format_score, judged_score, reward
from actors.rollout import Attempt, Conversation, accept_revision, run_trajectory
from render_farm.result import RenderResult

from .conftest import run


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
    edit = "<<<<<<< SEARCH\n{}\n=======\nnew\n>>>>>>> REPLACE\n"
    assert edits_format_score(edit.format("<h1>") + edit.format("<nav>"), "<html><h1>x</h1></html>") == 0.5
    assert edits_format_score("no blocks", "<html></html>") == 0.0


def test_forced_optimization_accepts_only_strict_improvements():
    assert accept_revision(61.0, 60.0)
    assert not accept_revision(60.0, 60.0)
    assert not accept_revision(10.0, 60.0)
    assert not accept_revision(None, 0.0)  # unscorable never improves


@pytest.mark.parametrize("reason", ["too_large", "blank", "timeout", "crash", "load_error"])
def test_an_invalid_render_gets_exactly_zero_and_never_reaches_the_critic(reason):
    """Through the loop itself: a page whose render comes back invalid for `reason` scores 0, whatever the critic
    would have said, and the reason is recorded."""
    engine = HFEngine("tiny")
    conv = Conversation(engine.tokenizer, "sys", "tool")
    page = "```html\n<html><body><h1>x</h1></body></html>\n```"
    first = Completion([1, 2], [-1.0, -1.0], page, True)
    asked = []

    async def render(html):
        return RenderResult(False, reason, detail="scripted")

    async def critique(req):
        asked.append(req)

    cfg = RolloutConfig(max_turns=1)
    traj = run(run_trajectory({"id": "t", "prompt": "p"}, 0, first, [5], conv, None, render, critique, cfg))
    assert traj.reward == 0.0 and not traj.final_valid and not asked
    assert traj.attempts == [Attempt(0, page, 0.0, False, reason, True, traj.attempts[0].feedback, 2, 0, "page", 1.0)]
    assert reason in traj.attempts[0].feedback
    assert reward(False, 95.0, 1.0, RewardConfig()) == 0.0


def test_reward_and_unscorable():
    assert reward(True, 80.0, 1.0, RewardConfig()) == pytest.approx(0.9)
    assert reward(True, None, 1.0, RewardConfig()) == 0.0
    shaped = RewardConfig(score_scale=10, format_weight=0.5, invalid=-1.0)
    assert reward(True, 8.0, 0.5, shaped) == pytest.approx(1.05) and reward(False, 8.0, 1.0, shaped) == -1.0
    assert shaped.formula() == ("reward = score/10 + 0.5 x format if the final page renders and is scored, else -1; "
                                "with specs (Web-Bench): score = 0.5 x critic + 0.5 x 100 x specs passed")
    # Web-Bench: the task's own specs share the score; an unscorable page stays unscorable
    tests = RewardConfig(tests_weight=0.25)
    assert judged_score(80.0, 0.5, tests) == pytest.approx(0.75 * 80 + 0.25 * 50)
    assert judged_score(None, 1.0, tests) is None and judged_score(80.0, None, tests) == 80.0
    with pytest.raises(ValueError, match=r"reward.score_scale=0 is invalid: expected > 0"):
        RewardConfig(score_scale=0).validate()


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
    (g,) = engine.generate([prompt], Sampling(temperature=0.0, max_new_tokens=8))  # greedy: argmax, untempered
    with torch.no_grad():
        raw = engine.model(torch.tensor([prompt + g.token_ids])).logits[0, len(prompt) - 1:-1]
    assert g.token_ids == raw.argmax(-1).tolist()
    assert torch.allclose(torch.log_softmax(raw, -1).max(-1).values, torch.tensor(g.logprobs), atol=1e-5)
    new = {k: v + 0.01 for k, v in engine.model.state_dict().items()}
    assert engine.load(new, version=3) == 3 and engine.weight_info()["version"] == 3
    assert torch.equal(engine.model.state_dict()["model.norm.weight"], new["model.norm.weight"])
    # A push is checked, never silently cast or broadcast into the model.
    with pytest.raises(ValueError, match="model.norm.weight.*float64"):
        engine.load({**new, "model.norm.weight": new["model.norm.weight"].double()}, version=4)
    with pytest.raises(ValueError, match="model.norm.weight"):
        engine.load({**new, "model.norm.weight": new["model.norm.weight"][:1]}, version=4)
    with pytest.raises(ValueError, match="lack"):
        engine.load({k: v for k, v in new.items() if k != "model.norm.weight"}, version=4)
    assert engine.weight_info()["version"] == 3


def test_requests_with_equal_sampling_share_one_engine_call():
    """Two trajectories reaching their next turn together are one engine call, even with Sampling objects of their
    own; a different setting gets a call of its own."""
    engine = HFEngine("tiny")
    calls = []
    real = engine.generate

    def counting(prompts, sampling, seeds=None):
        calls.append(len(prompts))
        return real(prompts, sampling, seeds)

    engine.generate = counting
    prompt = engine.chat_ids([{"role": "user", "content": "hi"}])

    b = None

    async def go_counted():
        nonlocal b
        b = Batcher(engine)
        return await asyncio.gather(b.generate(prompt, Sampling(0.8, 1.0, 4, ("x",))),
                                    b.generate(prompt, Sampling(0.8, 1.0, 4, ("x",))),
                                    b.generate(prompt, Sampling(0.0, 1.0, 4)))
    outs = run(go_counted())
    assert len(outs) == 3 and sorted(calls) == [1, 2]
    # its counts: 2 calls, 3 requests, at most 2 in one call; 3 were waiting as the first call began, 1 the second
    assert b.reset_stats() == {"calls": 2, "requests": 3, "max": 2, "ready": 4}
    assert b.stats["calls"] == 0


def test_a_call_waits_for_trajectories_still_rendering_but_not_past_its_bound():
    """Trajectories whose renders finish at different times (0.05, 0.2, 0.4 s) ask for their revisions in one
    engine call when the Batcher knows they are away (join / leave, as run_group counts them); without that, or once
    its wait bound passes, what is waiting goes alone."""
    engine = HFEngine("tiny")
    calls, started = [], []
    real = engine.generate

    def counting(prompts, sampling, seeds=None):
        calls.append(len(prompts))
        started.append(time.monotonic())
        return real(prompts, sampling, seeds)

    engine.generate = counting
    prompt = engine.chat_ids([{"role": "user", "content": "hi"}])

    async def revisions(max_wait_s, renders, asks):
        b = Batcher(engine, max_wait_s=max_wait_s)
        b.join(len(renders))

        async def trajectory(render_s, asking):
            await asyncio.sleep(render_s)  # its page is being rendered and critiqued
            b.leave()  # it asks now, for the last time, or it is done
            if asking:
                await b.generate(prompt, Sampling(0.8, 1.0, 4))

        t = time.monotonic()
        await asyncio.gather(*(trajectory(r, a) for r, a in zip(renders, asks)))
        return t

    run(revisions(5.0, [0.05, 0.2, 0.4], [True] * 3))
    assert calls == [3]
    calls.clear()
    run(revisions(0.0, [0.05, 0.2, 0.4], [True] * 3))
    assert calls == [1, 1, 1]
    calls.clear()
    # one trajectory never asks and stays away for 4 s: the others' call goes at the bound (0.5 s), not at 4 s
    t0 = run(revisions(0.5, [0.05, 0.1, 4.0], [True, True, False]))
    assert calls == [2] and 0.5 <= started[-1] - t0 < 2.0


def test_a_trajectory_is_waited_for_only_while_it_may_ask_again():
    """run_group counts a trajectory as away (an engine call may wait for it) while its page is judged and another
    request may follow: not during its last attempt's judgement, and never in a one-turn run (held-out evaluation)."""
    from actors.rollout import run_group
    from critic_service.critique import Critique
    conv = Conversation(HFEngine("tiny").tokenizer, "sys", "tool")
    page = "```html\n<html><body><h1>x</h1></body></html>\n```"

    class Presence:  # the Batcher's join / leave, logged
        def __init__(self):
            self.away, self.log = 0, []

        def join(self, n=1):
            self.away += n
            self.log.append(self.away)

        def leave(self):
            self.away -= 1
            self.log.append(self.away)

    def group(max_turns, scores):
        presence, judged = Presence(), []

        async def generate(prompt, sampling, n=1):
            return [Completion([1, 2], [-1.0, -1.0], page, True) for _ in range(n)]

        async def render(req):
            return RenderResult(True, None)

        async def critique(req):
            judged.append(presence.away)
            return Critique(scores[len(judged) - 1], "fb", backend="scripted")

        cfg = RolloutConfig(group_size=1, max_turns=max_turns, max_resamples=2)
        trajs = run(run_group({"id": "t", "prompt": "p"}, conv, generate, render, critique, cfg, presence=presence))
        return trajs[0], presence, judged

    # first page 40; a revision's first attempt 30 (rejected, a resample follows), its second 50 (the last request)
    traj, presence, judged = group(2, [40, 30, 50])
    assert [a.score for a in traj.attempts] == [40, 30, 50] and traj.final_score == 50
    assert judged == [1, 1, 0] and presence.log == [1, 0, 1, 0] and presence.away == 0
    traj, presence, judged = group(1, [40])
    assert judged == [0] and presence.log == [] and traj.final_score == 40


def test_a_seeded_request_samples_the_same_tokens_in_any_batch():
    """Sampling is a function of the request (its seed), not of the batch or worker that serves it: a run reproduces
    however its requests were grouped, and evaluations before and after training can share their draws."""
    engine = HFEngine("tiny")
    a, b, c = (engine.chat_ids([{"role": "user", "content": t}]) for t in ("a page about cats", "hi", "a long bakery"))
    for sampling in (Sampling(0.8, 1.0, 24), Sampling(1.0, 0.9, 24)):
        (alone,) = engine.generate([a], sampling, [123])
        batched = engine.generate([b, a, c], sampling, [7, 123, 9])
        assert batched[1].token_ids == alone.token_ids
        assert max(abs(x - y) for x, y in zip(alone.logprobs, batched[1].logprobs)) < 1e-4
        assert engine.generate([a], sampling, [124])[0].token_ids != alone.token_ids
    # seeded(): the k-th ask of a prompt in a stream is draw k; another stream, other draws; a rerun, the same ones
    async def asks(stream):
        gen = seeded(Batcher(engine).generate, stream)  # a Batcher lives in one event loop
        first = await gen(a, Sampling(0.8, 1.0, 16), 2)
        again = await gen(a, Sampling(0.8, 1.0, 16))
        return [x.token_ids for x in first + again]
    one, rerun, other = run(asks(5)), run(asks(5)), run(asks(6))
    assert one == rerun and len({tuple(x) for x in one}) == 3 and one != other


def test_the_batcher_hands_rows_to_the_engine_in_seed_order_whatever_their_arrival():
    """A row's log-probs move with its place in the batch (~3e-5 on SmolLM2), enough to flip a near-tie mid-reply; the
    order requests arrive in is timing. So one call's rows go in seed order, and each request still gets its own row."""
    engine = HFEngine("tiny")
    real, seen = engine.generate, []

    def recording(prompts, sampling, seeds=None):
        seen.append(list(seeds))
        return real(prompts, sampling, seeds)

    engine.generate = recording
    a, b = (engine.chat_ids([{"role": "user", "content": t}]) for t in ("a page about cats", "hi"))
    sampling = Sampling(0.8, 1.0, 12)

    async def arrive(order):
        batcher = Batcher(engine)
        asks = {9: a, 3: b, 5: a}
        return dict(zip(order, await asyncio.gather(*(batcher.generate(asks[k], sampling, seeds=[k]) for k in order))))
    first, second = run(arrive([9, 3, 5])), run(arrive([5, 9, 3]))
    assert seen == [[3, 5, 9], [3, 5, 9]]
    for k, prompt in ((9, a), (3, b), (5, a)):
        assert first[k][0].token_ids == second[k][0].token_ids == real([prompt], sampling, [k])[0].token_ids
        assert first[k][0].logprobs == second[k][0].logprobs  # bit for bit: the same batch, the same rows


def test_repeated_prompts_are_encoded_once_and_sample_as_if_alone():
    """A group's samples (and a revision's resamples) repeat one prompt: the engine encodes each distinct prompt once
    and copies its KV cache to the rows that ask it; what each row samples is unchanged."""
    engine = HFEngine("tiny")
    a, b = (engine.chat_ids([{"role": "user", "content": t}]) for t in ("a page about cats", "hi"))
    sampling = Sampling(0.8, 1.0, 12)
    shapes = []
    hook = engine.model.register_forward_pre_hook(lambda m, args, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                                  with_kwargs=True)
    try:
        together = engine.generate([a, b, a, a], sampling, [1, 2, 3, 4])
    finally:
        hook.remove()
    assert shapes[0] == (2, len(a) - 1) and shapes[1][0] == 4  # two prompts encoded, then four rows decode
    for prompt, seed, got in zip([a, b, a, a], [1, 2, 3, 4], together):
        (alone,) = engine.generate([prompt], sampling, [seed])
        assert got.token_ids == alone.token_ids
        assert max(abs(x - y) for x, y in zip(got.logprobs, alone.logprobs)) < 1e-4


def test_prepacked_layers_match_plain_ones_and_follow_every_weight_change():
    """The HF engine's oneDNN-prepacked linear layers (CPU) compute what nn.Linear does, train like it (autograd takes
    the plain path), and re-pack after any in-place change: a push, an optimiser step, an edit by hand."""
    import torch

    from actors.engine import prepack_linears
    plain, packed = HFEngine("tiny", prepack=False), HFEngine("tiny", prepack=False)
    small = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(1024, 1024))
    if prepack_linears(small, min_numel=0) == 0:
        pytest.skip("this torch has no oneDNN")
    assert prepack_linears(small) == 1  # by default only weights large enough to repay oneDNN's per-call cost
    assert prepack_linears(packed.model, min_numel=0) == 15  # every linear layer of the tiny model: 2 x 7 + the head
    ids = torch.tensor([packed.chat_ids([{"role": "user", "content": "a page about cats"}])])
    with torch.no_grad():
        assert torch.allclose(packed.model(ids).logits, plain.model(ids).logits, atol=1e-4)
    new = {k: v + 0.05 * torch.randn_like(v) for k, v in plain.model.state_dict().items()}
    plain.load(new, version=1), packed.load(new, version=1)  # a push: copy_ into the same tensors
    with torch.no_grad():
        assert torch.allclose(packed.model(ids).logits, plain.model(ids).logits, atol=1e-4)
        for m in (plain.model, packed.model):
            m.lm_head.weight.mul_(2.0)  # by hand (tied: the embedding doubles too)
        assert torch.allclose(packed.model(ids).logits, plain.model(ids).logits, atol=1e-4)
    for m in (packed.model, plain.model):  # grad enabled: the plain F.linear, so gradients reach every weight
        m(ids, labels=ids).loss.backward()
        assert all(p.grad is not None for p in m.parameters())
        torch.optim.SGD(m.parameters(), lr=0.1).step()
    with torch.no_grad():
        assert torch.allclose(packed.model(ids).logits, plain.model(ids).logits, atol=1e-3)
    s = Sampling(0.8, 1.0, 16)
    assert packed.generate([ids[0].tolist()], s, [5])[0].token_ids == plain.generate([ids[0].tolist()], s, [5])[0].token_ids


def test_row_sampler_draws_from_the_distribution_and_never_outside_top_p():
    """RowSampler's inverse-CDF draw: frequencies follow the tempered probabilities, a token top-p removed (or of zero
    mass) is never drawn, and a row's draw depends on its seed alone."""
    import torch

    from actors.engine import RowSampler
    logits = torch.log(torch.tensor([[0.5, 0.0, 0.3, 0.15, 0.05]]))  # token 1 has no mass
    sampler = RowSampler([3], temperature=1.0, top_p=1.0, device="cpu")
    draws = torch.tensor([int(sampler(None, logits.clone()).argmax()) for _ in range(20000)])
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    assert freq[1] == 0 and torch.allclose(freq, torch.tensor([0.5, 0.0, 0.3, 0.15, 0.05]), atol=0.015)
    nucleus = RowSampler([3], temperature=1.0, top_p=0.75, device="cpu")  # keeps 0.5 and 0.3 only
    assert {int(nucleus(None, logits.clone()).argmax()) for _ in range(2000)} == {0, 2}
    two = RowSampler([3, 4], temperature=1.0, top_p=1.0, device="cpu")
    one = RowSampler([3], temperature=1.0, top_p=1.0, device="cpu")
    both = [two(None, logits.repeat(2, 1)).argmax(-1)[0].item() for _ in range(50)]
    assert both == [one(None, logits.clone()).argmax().item() for _ in range(50)]
