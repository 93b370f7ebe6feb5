"""The agent loop with a real tiny policy and a real Chromium; the critic is scripted where a test needs exact scores
(the critic is the external MLLM, the one part a test double may stand in for)."""
import asyncio

import pytest
import torch

from actors.config import RolloutConfig
from actors.engine import Batcher, HFEngine
from actors.rollout import Conversation, run_group
from critic_service.critique import Critique
from render_farm.renderer import Renderer

from .conftest import TASK, run

def taught_engine(path: str, cfg: RolloutConfig) -> tuple[HFEngine, Conversation]:
    engine = HFEngine(path)
    return engine, Conversation(engine.tokenizer, cfg.system_prompt, cfg.feedback_role)


class ScriptedCritic:
    """Scores in order; `None` means unscorable."""

    def __init__(self, scores):
        self.scores, self.calls = list(scores), 0

    async def __call__(self, request):
        score = self.scores[min(self.calls, len(self.scores) - 1)]
        self.calls += 1
        if score is None:
            return Critique.failed("timeout", "scripted")
        return Critique(score, f"feedback after {score}", backend="scripted")


def run_loop(cfg, critic, engine_conv, version=7):
    engine, conv = engine_conv
    engine.version = version  # as after 7 pushes: every turn records the version that sampled it

    async def go():
        async with Renderer() as r:
            return await run_group(TASK, conv, Batcher(engine).generate, r.render, critic, cfg)
    return run(go()), engine


@pytest.fixture(scope="module")
def cfg():
    return RolloutConfig(group_size=1, max_turns=4, max_resamples=3, temperature=0.0, max_new_tokens=80)


@pytest.fixture(scope="module")
def taught(cfg, taught_model):
    return taught_engine(taught_model, cfg)


def test_forced_optimization_keeps_only_improvements_and_stops(cfg, taught):
    # turn 0: 50; turn 1: 40 (rejected), 55 (accepted); turn 2: 55, 30, 54 (three rejections: stop).
    critic = ScriptedCritic([50, 40, 55, 55, 30, 54, 99])
    (traj,), engine = run_loop(cfg, critic, taught)
    assert all(a.valid for a in traj.attempts), [(a.reason, a.text) for a in traj.attempts]
    assert [(a.turn, a.score, a.accepted) for a in traj.attempts] == [
        (0, 50, True), (1, 40, False), (1, 55, True), (2, 55, False), (2, 30, False), (2, 54, False)]
    assert critic.calls == 6  # stopped after max_resamples failures, never reached 99
    accepted = [a.score for a in traj.attempts if a.accepted]
    assert accepted == sorted(set(accepted))  # strictly increasing
    assert traj.final_score == 55 and traj.reward == pytest.approx(0.55 + 0.1 * 1.0)
    assert traj.policy_version == 7
    # Rejected attempts never enter the tokens; the mask decodes to exactly the accepted completions.
    tok = engine.tokenizer
    policy_text = tok.decode([t for t, m in zip(traj.token_ids, traj.loss_mask) if m], skip_special_tokens=True)
    assert policy_text == "".join(a.text for a in traj.attempts if a.accepted)
    feedback_text = tok.decode([t for t, m in zip(traj.token_ids, traj.loss_mask) if not m])
    assert "feedback after 50" in feedback_text and "feedback after 40" not in feedback_text
    assert len(traj.token_ids) == len(traj.loss_mask) == len(traj.logprobs)
    assert all(lp == 0.0 for lp, m in zip(traj.logprobs, traj.loss_mask) if not m)
    assert all(lp < 0.0 for lp, m in zip(traj.logprobs, traj.loss_mask) if m)
    row = traj.to_json()
    assert row["loss_mask_tokens"] == sum(traj.loss_mask) and row["total_tokens"] == len(traj.token_ids)


def test_resamples_drawn_together_keep_the_first_improvement_in_draw_order(cfg, taught):
    """rollout.resamples_at_once=2: the same rule as one at a time (the first improving draw is kept, not the best
    one), in fewer engine calls; every draw is judged and recorded."""
    import dataclasses
    engine, _ = taught
    calls = []
    generate = engine.generate
    engine.generate = lambda prompts, sampling, seeds=None: calls.append(len(prompts)) or generate(prompts, sampling, seeds)
    try:
        # turn 1 draws 40, 45 (neither improves), then its third and last resample alone: 55, kept; turn 2 draws 60, 70:
        # keeps 60, the first that improves
        critic = ScriptedCritic([50, 40, 45, 55, 60, 70, 99])
        (traj,), _ = run_loop(dataclasses.replace(cfg, resamples_at_once=2, max_turns=3), critic, taught)
    finally:
        engine.generate = generate
    assert [(a.turn, a.score, a.accepted) for a in traj.attempts] == [
        (0, 50, True), (1, 40, False), (1, 45, False), (1, 55, True), (2, 60, True), (2, 70, False)]
    assert calls == [1, 2, 1, 2] and critic.calls == 6
    assert traj.final_score == 60
    tok = engine.tokenizer
    policy_text = tok.decode([t for t, m in zip(traj.token_ids, traj.loss_mask) if m], skip_special_tokens=True)
    assert policy_text == "".join(a.text for a in traj.attempts if a.accepted)


def test_without_forced_optimization_every_revision_is_accepted(cfg, taught):
    """The ablation's arm: each revision is taken as it comes (worse ones too), once, and the reward is the last
    page's; the first page's own reward is kept beside it."""
    import dataclasses
    critic = ScriptedCritic([50, 40, 30])
    (traj,), _ = run_loop(dataclasses.replace(cfg, forced_optimization=False, max_turns=3), critic, taught)
    assert [(a.turn, a.score, a.accepted) for a in traj.attempts] == [(0, 50, True), (1, 40, True), (2, 30, True)]
    assert traj.final_score == 30 and traj.reward == pytest.approx(0.3 + 0.1)
    assert traj.first_reward == pytest.approx(0.5 + 0.1)


def test_unscorable_first_page_marks_the_trajectory_unscorable(cfg, taught):
    (traj,), _ = run_loop(cfg, ScriptedCritic([None]), taught)
    assert traj.unscorable and traj.final_score is None and traj.reward == 0.0 and len(traj.attempts) == 1


def test_a_busy_render_farm_makes_the_page_unscorable_never_zero(cfg, taught):
    """Infrastructure is never the page's fault: with the farm's one slot held by a spinning page past
    render.queue_timeout_s, the policy's page is "busy", its trajectory unscorable (left out of the group baseline),
    and the critic is never asked."""
    from render_farm.config import RenderConfig
    from render_farm.result import RenderRequest
    engine, conv = taught
    critic = ScriptedCritic([90])

    async def go():
        async with Renderer(RenderConfig(concurrency=1, queue_timeout_s=0.5, cache_mb=0)) as r:
            assert (await r.render("<h1>warm</h1>")).valid  # its slot opened: the spinner reuses it at once
            spinner = asyncio.ensure_future(r.render(RenderRequest("<script>for(;;){}</script>", deadline_s=12)))
            await asyncio.sleep(0.2)
            trajs = await run_group(TASK, conv, Batcher(engine).generate, r.render, critic, cfg)
            return trajs, await spinner
    (traj,), spun = run(go())
    assert spun.reason == "timeout"
    assert traj.attempts[0].reason == "busy" and traj.attempts[0].score is None, traj.attempts[0]
    assert traj.unscorable and traj.final_score is None and critic.calls == 0
    assert traj.timings_s["render_queue"] >= 0.5


def test_untrained_policy_gets_zero_for_no_html():
    cfg = RolloutConfig(group_size=3, max_turns=2, max_resamples=1, temperature=1.0, max_new_tokens=24)
    critic = ScriptedCritic([90])
    engine = HFEngine("tiny")
    conv = Conversation(engine.tokenizer, cfg.system_prompt, cfg.feedback_role)
    trajs, _ = run_loop(cfg, critic, (engine, conv))
    assert len(trajs) == 3 and [t.group_id for t in trajs] == [0, 1, 2]
    for t in trajs:
        assert t.attempts[0].reason == "no_html" and t.reward == 0.0 and not t.final_valid
    assert critic.calls == 0  # invalid pages never reach the critic
