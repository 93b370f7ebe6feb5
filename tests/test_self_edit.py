"""The self-edit cycle: edit parsing as pure functions, and the loop's rules on a real Chromium. The policy's replies
are scripted here so that each rule (edit budget, early stops, what is kept) is checked exactly; the real model runs
the same loop end to end in test_inference.py."""
import pytest

from actors.config import RolloutConfig, SelfEditConfig
from actors.engine import Completion
from actors.revision import ASK, RevisionConfig, apply_edits, parse_edits, revise
from actors.rollout import Conversation, accept_self_edit, run_trajectory
from actors.self_edit import self_edit
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
    assert revise(BROKEN, edit("undefinedFunction();", "console.log('ok');"), True) == (FIXED, "1/1 edits applied")
    assert revise(BROKEN, edit("missing", "x"), True) == (None, "edits_not_found")
    assert revise(BROKEN, "NO CHANGES", True) == (None, "no_change")
    page = "```html\n<html><body>new</body></html>\n```"
    assert revise(BROKEN, page, True)[0] == "<html><body>new</body></html>"
    # a page cut off by the token budget is a page, judged like any other, in training and at inference alike
    assert revise(BROKEN, "```html\n<html><body>cut", False) == ("<html><body>cut", "truncated page")
    assert revise(None, "```html\n<html><body>cut", False)[0] is not None


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


def cycle(tok, replies, critic=None, revision=None, **kw):
    cfg = SelfEditConfig(**{"rounds": 3, "max_new_tokens": 300, **kw})
    policy = ScriptedPolicy(tok, replies)

    async def go():
        async with Renderer() as r:
            return await self_edit(TASK, Conversation(tok, cfg.system_prompt, cfg.feedback_role), policy, r.render,
                                   cfg, critic, revision or RevisionConfig(format="edits", edit_max_new_tokens=40))
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


def asked(tok, context: list[int], first_text: str) -> str:
    """What a revision request read: the context past the prompt and the first reply, decoded."""
    conv = Conversation(tok, RolloutConfig().system_prompt, RolloutConfig().feedback_role)
    first_ids = tok(first_text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return tok.decode(context[len(conv.prompt_ids(TASK["prompt"])) + len(first_ids):])


def train_one_revision(tok, first_text: str, reply: str, revision: RevisionConfig):
    """One training trajectory: the first page, then one revision (critic 40, then 55) -> (trajectory, the scripted
    policy, what its revision request read)."""
    cfg = RolloutConfig(group_size=1, max_turns=2, max_resamples=1, temperature=0.0)
    conv = Conversation(tok, cfg.system_prompt, cfg.feedback_role)
    policy = ScriptedPolicy(tok, [reply])
    first_ids = tok(first_text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    first = Completion(first_ids, [0.0] * len(first_ids), first_text, True)

    async def train():
        async with Renderer() as r:
            return await run_trajectory(TASK, 0, first, conv.prompt_ids(TASK["prompt"]), conv, policy, r.render,
                                        ScriptedCritic([40, 55]), cfg, revision)
    traj = run(train())
    return traj, policy, asked(tok, policy.contexts[0], first_text)


def test_training_revises_in_the_words_and_format_inference_uses(tok):
    """revision.format=edits: the training loop asks for a revision with the self-edit cycle's own message, applies
    the edit reply to its best page, and trains on the reply's tokens; the same verdict at inference reads the same."""
    first_text, reply = f"```html\n{FIXED}\n```", edit("Bakery", "Bakery menu")
    traj, policy, asked_in_training = train_one_revision(tok, first_text, reply,
                                                         RevisionConfig(format="edits", edit_max_new_tokens=40))
    assert [(a.kind, a.accepted, a.score) for a in traj.attempts] == [("page", True, 40), ("edits", True, 55)]
    assert traj.attempts[1].fmt == 1.0 and traj.final_score == 55 and policy.calls[0][1] == 40
    reply_ids = tok(reply, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert traj.token_ids[-len(reply_ids):] == reply_ids and traj.loss_mask[-len(reply_ids):] == [1] * len(reply_ids)

    res, inference = cycle(tok, [first_text, reply, "NO CHANGES"], ScriptedCritic([40, 55]))
    assert res.html == FIXED.replace("Bakery", "Bakery menu")
    asked_at_inference = asked(tok, inference.contexts[1], first_text)
    assert asked_in_training == asked_at_inference and ASK["edits"] in asked_in_training


def test_score_rounds_gives_the_judges_curve_over_rounds(tok):
    """A critic as judge only (critic-free rounds): the page kept after each round is scored; rounds an early stop
    skipped keep their page's score. This is the ablation's per-round curve (round 0 = one-shot)."""
    async def judge(req):
        return Critique(70.0 if "menu" in req.html else 40.0, "", backend="scripted")
    res, _ = cycle(tok, [f"```html\n{FIXED}\n```", edit("Bakery", "Bakery menu"), "NO CHANGES"], judge,
                   use_critic=False, score_rounds=True)
    assert res.round_scores == [40.0, 70.0, 70.0, 70.0] and res.score == 70.0 and res.stop == "no_change"


def test_critic_free_acceptance_can_never_empty_a_page():
    """accept_self_edit: only a revision whose render-farm signals do not get worse is kept."""
    from render_farm.result import RenderResult

    def page(chars=400, elements=20, inputs=2, errors=0, valid=True):
        return RenderResult(valid, None if valid else "blank", page_errors=["x"] * errors,
                            dom={"text_chars": chars, "counts": {"elements": elements, "inputs": inputs, "buttons": 1}})
    old, task = page(), "A bakery page with an order form."
    assert accept_self_edit(page(chars=450, elements=24), old, task)  # more of the page: kept
    assert accept_self_edit(page(), old, task)  # as much: kept (the cycle drops a page that renders the same)
    assert not accept_self_edit(page(chars=0, elements=1, inputs=0), old, task)  # emptied
    assert not accept_self_edit(page(chars=300), old, task)  # a quarter of its text gone
    assert not accept_self_edit(page(inputs=1), old, task)  # the form the task names lost a field
    assert accept_self_edit(page(inputs=1), old, "A bakery page.")  # ... which a task without a form does not name
    assert not accept_self_edit(page(errors=1), old, task) and not accept_self_edit(page(valid=False), old, task)
    assert accept_self_edit(page(chars=10), page(valid=False), task) and accept_self_edit(page(), None, task)
    assert not accept_self_edit(None, old, task)


def test_inference_reads_the_training_context_without_the_critic(tok):
    """One revision context: the message a critic-free self-edit round reads is the training loop's, less the
    critic's verdict (the render report is what both see)."""
    first_text = f"```html\n{FIXED}\n```"
    _, _, in_training = train_one_revision(tok, first_text, first_text, RevisionConfig(format="page"))
    _, inference = cycle(tok, [first_text, "NO CHANGES"], revision=RevisionConfig(format="page"))
    at_inference = asked(tok, inference.contexts[1], first_text)
    verdict = "A reviewer scored it 40/100: feedback after 40\n"
    assert verdict in in_training and in_training.replace(verdict, "") == at_inference, (in_training, at_inference)
    assert "The page rendered." in at_inference and "words of text" in at_inference and "<|im_start|>user" in at_inference


def test_the_per_round_table_counts_changed_accepted_and_scores():
    from launch.evaluate import self_edit_figures
    rows = [{"round_scores": [10, 30, 30, 40], "latency_s": 6.0, "one_shot_s": 2.0,
             "history": [{"round": 0, "accepted": True}, {"round": 1, "accepted": True}, {"round": 2, "accepted": False},
                         {"round": 3, "accepted": True}]},
            {"round_scores": [20, 20, 20, 20], "latency_s": 4.0, "one_shot_s": 2.0,
             "history": [{"round": 0, "accepted": True}, {"round": 1, "accepted": False}]}]
    got = self_edit_figures(rows)
    assert [r["changed"] for r in got["per_round"]] == [0.0, 0.5, 0.5, 0.5]
    assert [r["accepted"] for r in got["per_round"]] == [None, 0.5, 0.0, 0.5]
    assert [r["score"] for r in got["per_round"]] == [15.0, 25.0, 25.0, 30.0]
    assert got["latency_vs_one_shot"] == 2.5 and self_edit_figures([]) == {}
