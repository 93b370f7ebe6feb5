"""The self-edit cycle: edit parsing as pure functions, and the loop's rules on a real Chromium. The policy's replies
are scripted here so that each rule (edit budget, early stops, what is kept) is checked exactly; the real model runs
the same loop end to end in test_inference.py."""
import pytest

from actors.config import SelfEditConfig
from actors.engine import Completion
from actors.rollout import Conversation
from actors.self_edit import apply_edits, farm_rank, parse_edits, revise, self_edit
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
    assert revise(BROKEN, "```html\n<html><body>cut", False) == (None, "truncated")  # never replaces a whole page
    assert revise(None, "```html\n<html><body>cut", False)[0] is not None  # but beats having no page


class ScriptedPolicy:
    """Replies in order; records each call's context length and token budget."""

    def __init__(self, tok, replies):
        self.tok, self.replies, self.calls = tok, list(replies), []

    async def __call__(self, ids, sampling, n):
        text = self.replies[min(len(self.calls), len(self.replies) - 1)]
        self.calls.append((len(ids), sampling.max_new_tokens))
        token_ids = self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
        return [Completion(token_ids, [0.0] * len(token_ids), text, True)] * n


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def cycle(tok, replies, critic=None, **kw):
    cfg = SelfEditConfig(**{"rounds": 3, "max_new_tokens": 300, "edit_max_new_tokens": 40, **kw})
    policy = ScriptedPolicy(tok, replies)

    async def go():
        async with Renderer() as r:
            return await self_edit(TASK, Conversation(tok, cfg.system_prompt, cfg.feedback_role), policy, r.render,
                                   cfg, critic)
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


def test_farm_rank_orders_invalid_below_errors_below_clean():
    from render_farm.result import RenderResult
    clean, noisy, bad = RenderResult(True, None), RenderResult(True, None, page_errors=["x"]), RenderResult(False, "blank")
    assert farm_rank(clean) > farm_rank(noisy) > farm_rank(bad) == farm_rank(None)
