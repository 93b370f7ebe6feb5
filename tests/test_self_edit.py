"""The self-edit cycle: edit parsing as pure functions, and the loop's rules on a real Chromium. The policy's replies
are scripted here so that each rule (edit budget, early stops, what is kept) is checked exactly; the real model runs
the same loop end to end in test_inference.py."""
import pytest

from actors.config import RolloutConfig, SelfEditConfig
from actors.engine import Completion
from actors.revision import ASK, RevisionConfig, apply_edits, parse_edits, revise
from actors.rollout import Conversation, run_trajectory
from actors.self_edit import farm_rank, self_edit
from critic_service.critique import Critique
from common.models import load_tokenizer
from render_farm.renderer import Renderer

from .conftest import run
from .test_actors_loop import ScriptedCritic

BROKEN = "<html><body><h1>Bakery</h1><script>undefinedFunction();</script></body></html>"
FIXED = "<html><body><h1>Bakery</h1><script>console.log('ok');</script></body></html>"
TASK = {"id": "t", "prompt": "Write a bakery page.", "checklist": []}


def edit(search: str, replace: str) -> str:
    return f"<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE"


def test_parse_and_apply_edits():
    text = "Fixing it.\n" + edit("undefinedFunction();", "console.log('ok');") + "\n" + edit("nothing like this", "x")
    edits = parse_edits(text)
    assert edits == [("undefinedFunction();", "console.log('ok');"), ("nothing like this", "x")]
    new, applied = apply_edits(BROKEN, edits)
    assert new == FIXED and applied == 1
    indented = "<ul>\n    <li>a</li>\n    <li>b</li>\n</ul>"
    assert apply_edits(indented, [("<li>a</li>\n<li>b</li>", "<li>c</li>")]) == ("<ul>\n<li>c</li>\n</ul>", 1)
    cut = edit("a", "b")[:-10]  # the token budget ran out inside the block
    assert parse_edits(cut) == []


def test_revise_rules():
    assert revise(BROKEN, edit("undefinedFunction();", "console.log('ok');"), True, False) == (FIXED, "1/1 edits applied")
    assert revise(BROKEN, edit("missing", "x"), True, False) == (None, "edits_not_found")
    assert revise(BROKEN, "NO CHANGES", True, False) == (None, "no_change")
    page = "```html\n<html><body>new</body></html>\n```"
    assert revise(BROKEN, page, True, False)[0] == "<html><body>new</body></html>"
    # Without a critic a cut-off page never replaces a whole one; with one, the critic judges it.
    assert revise(BROKEN, "```html\n<html><body>cut", False, keep_truncated=False) == (None, "truncated")
    assert revise(BROKEN, "```html\n<html><body>cut", False, keep_truncated=True)[0] == "<html><body>cut"
    assert revise(None, "```html\n<html><body>cut", False, False)[0] is not None  # but beats having no page


class ScriptedPolicy:
    """Replies in order; records each call's context length and token budget."""

    def __init__(self, tok, replies):
        self.tok, self.replies, self.calls, self.contexts = tok, list(replies), [], []

    async def __call__(self, ids, sampling, n):
        text = self.replies[min(len(self.calls), len(self.replies) - 1)]
        self.calls.append((len(ids), sampling.max_new_tokens))
        self.contexts.append(list(ids))
        token_ids = self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
        return [Completion(token_ids, [0.0] * len(token_ids), text, True)] * n


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def cycle(tok, replies, critic=None, **kw):
    cfg = SelfEditConfig(**{"rounds": 3, "max_new_tokens": 300, **kw})
    policy = ScriptedPolicy(tok, replies)

    async def go():
        async with Renderer() as r:
            return await self_edit(TASK, Conversation(tok, cfg.system_prompt, cfg.feedback_role), policy, r.render,
                                   cfg, critic, RevisionConfig(format="edits", edit_max_new_tokens=40))
    return run(go()), policy


def test_critic_free_cycle_fixes_an_error_then_stops_when_nothing_changes(tok):
    res, policy = cycle(tok, [f"```html\n{BROKEN}\n```", edit("undefinedFunction();", "console.log('ok');"),
                              "NO CHANGES"])
    assert res.html == FIXED and res.page.valid and not res.page.page_errors
    assert res.rounds == 2 and res.stop == "no_change" and res.score is None
    assert [c[1] for c in policy.calls] == [300, 40, 40]  # edit rounds get the edit budget
    assert policy.calls[2][0] > policy.calls[1][0]  # the kept round extends the context (a shared prefix)
    assert [h["accepted"] for h in res.history] == [True, True, False]


def test_without_early_stop_every_round_runs(tok):
    res, policy = cycle(tok, [f"```html\n{FIXED}\n```", "NO CHANGES"], early_stop=False)
    assert res.rounds == 3 and len(policy.calls) == 4 and res.stop == "no_change" and res.html == FIXED


def test_a_revision_that_renders_worse_is_not_kept(tok):
    res, _ = cycle(tok, [f"```html\n{FIXED}\n```", edit("<h1>Bakery</h1>", "<h1>Bakery</h1><script>boom()</script>")],
                   temperature=0)
    assert res.html == FIXED and res.stop == "not_improved" and res.rounds == 1


def test_an_unchanged_page_stops_the_cycle(tok):
    res, _ = cycle(tok, [f"```html\n{FIXED}\n```", edit("<h1>Bakery</h1>", "<h1>Bakery</h1><!-- tidy -->")])
    assert res.stop == "page_unchanged" and res.rounds == 1 and res.html == FIXED


def test_with_a_critic_only_improving_revisions_are_kept(tok):
    v2 = FIXED.replace("Bakery", "Bakery menu")
    critic = ScriptedCritic([40, 55])
    res, _ = cycle(tok, [f"```html\n{FIXED}\n```", edit("Bakery", "Bakery menu"), "NO CHANGES"], critic)
    assert res.html == v2 and res.score == 55 and res.stop == "no_change"
    assert [h["accepted"] for h in res.history] == [True, True, False]

    critic = ScriptedCritic([40, 30])  # round 1 scores lower: dropped, so round 2's SEARCH text is not in the page
    res, _ = cycle(tok, [f"```html\n{FIXED}\n```", edit("Bakery", "Bakery menu"),
                         edit("Bakery menu", "Bakery menu and prices")], critic)
    assert res.html == FIXED and res.score == 40 and critic.calls == 2
    assert [h["accepted"] for h in res.history] == [True, False, False] and res.history[1]["score"] == 30
    assert res.history[2]["note"] == "edits_not_found" and res.stop == "edits_not_found"


def test_without_an_html_block_the_next_round_asks_for_the_whole_page(tok):
    res, policy = cycle(tok, ["I cannot.", f"```html\n{FIXED}\n```", "NO CHANGES"])
    assert res.history[1]["kind"] == "page" and policy.calls[1][1] == 300
    assert res.html == FIXED and res.page.valid and res.stop == "no_change"


def test_training_revises_in_the_words_and_format_inference_uses(tok):
    """revision.format=edits: the training loop asks for a revision with the self-edit cycle's own message, applies
    the edit reply to its best page, and trains on the reply's tokens; the same verdict at inference reads the same."""
    first_text = f"```html\n{FIXED}\n```"
    reply = edit("Bakery", "Bakery menu")
    revision = RevisionConfig(format="edits", edit_max_new_tokens=40)
    cfg = RolloutConfig(group_size=1, max_turns=2, max_resamples=1, temperature=0.0)
    conv = Conversation(tok, cfg.system_prompt, cfg.feedback_role)
    policy = ScriptedPolicy(tok, [reply])
    prompt = conv.prompt_ids(TASK["prompt"])
    first_ids = tok(first_text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    first = Completion(first_ids, [0.0] * len(first_ids), first_text, True)

    async def train():
        async with Renderer() as r:
            return await run_trajectory(TASK, 0, first, prompt, conv, policy, r.render, ScriptedCritic([40, 55]),
                                        cfg, revision)
    traj = run(train())
    assert [(a.kind, a.accepted, a.score) for a in traj.attempts] == [("page", True, 40), ("edits", True, 55)]
    assert traj.attempts[1].fmt == 1.0 and traj.final_score == 55 and policy.calls[0][1] == 40
    reply_ids = tok(reply, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert traj.token_ids[-len(reply_ids):] == reply_ids and traj.loss_mask[-len(reply_ids):] == [1] * len(reply_ids)
    asked_in_training = tok.decode(policy.contexts[0][len(prompt) + len(first_ids):])

    res, inference = cycle(tok, [first_text, reply, "NO CHANGES"], ScriptedCritic([40, 55]))
    assert res.html == FIXED.replace("Bakery", "Bakery menu")
    asked_at_inference = tok.decode(inference.contexts[1][len(prompt) + len(first_ids):])
    assert asked_in_training == asked_at_inference and ASK["edits"] in asked_in_training


def test_score_rounds_gives_the_judges_curve_over_rounds(tok):
    """A critic as judge only (critic-free rounds): the page kept after each round is scored; rounds an early stop
    skipped keep their page's score. This is the ablation's per-round curve (round 0 = one-shot)."""
    async def judge(req):
        return Critique(70.0 if "menu" in req.html else 40.0, "", backend="scripted")
    res, _ = cycle(tok, [f"```html\n{FIXED}\n```", edit("Bakery", "Bakery menu"), "NO CHANGES"], judge,
                   use_critic=False, score_rounds=True)
    assert res.round_scores == [40.0, 70.0, 70.0, 70.0] and res.score == 70.0 and res.stop == "no_change"


def test_farm_rank_orders_invalid_below_errors_below_clean():
    from render_farm.result import RenderResult
    clean, noisy, bad = RenderResult(True, None), RenderResult(True, None, page_errors=["x"]), RenderResult(False, "blank")
    assert farm_rank(clean) > farm_rank(noisy) > farm_rank(bad) == farm_rank(None)
