"""Inference: ReLook's critic-free self-edit cycle, and the critic-driven variant with Forced Optimization.

After the first page the model re-reads its own code together with what the render farm can say without a critic
(the invalid reason, console and page errors, a page without text) and answers with SEARCH/REPLACE edits, a whole
page, or NO CHANGES. Edits are short replies, so three rounds stay close to one-shot latency. The cycle stops early
when a round changes nothing or the rendered page is unchanged; a revision that renders worse is not kept.
With a critic, its score and feedback drive the rounds and only strictly improving revisions are kept (the training
loop's rule). The conversation grows by kept rounds only, so each round's context extends the previous one: vLLM's
prefix cache reuses it, the HF engine re-reads it (on CPU a small cost next to decoding).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from critic_service.critique import Critique, CritiqueRequest
from render_farm.result import RenderResult

from .config import SelfEditConfig
from .engine import Sampling
from .rollout import Conversation, accept_revision, extract_html, revision_message

_EDIT = re.compile(r"<{5,9}[ \t]*SEARCH[^\n]*\n(.*?)\n?={5,9}[^\n]*\n(.*?)\n?>{5,9}[ \t]*REPLACE", re.S)
ASK_EDITS = ("Re-read your code against the request. If the page is right, reply NO CHANGES. Otherwise fix it with "
             "SEARCH/REPLACE blocks:\n<<<<<<< SEARCH\nexact lines of the current page\n=======\nthe lines that "
             "replace them\n>>>>>>> REPLACE")
ASK_PAGE = ("Re-read your code against the request. If the page is right, reply NO CHANGES. Otherwise reply with "
            "the whole revised page in one ```html block.")


def parse_edits(text: str) -> list[tuple[str, str]]:
    """The complete SEARCH/REPLACE blocks of a reply, in order (a block cut off by the token budget is dropped)."""
    return [(s, r) for s, r in _EDIT.findall(text) if s.strip()]


def apply_edits(html: str, edits: list[tuple[str, str]]) -> tuple[str, int]:
    """Apply each edit to its first match: exact text, else the same lines ignoring indentation.
    Returns (new html, edits applied); an edit whose SEARCH text is not in the page is skipped."""
    applied = 0
    for search, replace in edits:
        if search in html:
            html, applied = html.replace(search, replace, 1), applied + 1
            continue
        lines, want = html.split("\n"), [s.strip() for s in search.strip("\n").split("\n")]
        for i in range(len(lines) - len(want) + 1):
            if [s.strip() for s in lines[i:i + len(want)]] == want:
                lines[i:i + len(want)] = replace.split("\n")
                html, applied = "\n".join(lines), applied + 1
                break
    return html, applied


def farm_report(page: RenderResult | None) -> str:
    """What the render farm can tell the model without a critic."""
    if page is None:
        return "No ```html code block was found in your reply."
    if not page.valid:
        return f"The page did not render: {page.reason} ({page.detail})."
    errors = page.console_errors + page.page_errors
    lines = ["The page rendered."]
    lines += [f"{len(errors)} error(s) in the browser console:"] + [f"- {e[:200]}" for e in errors[:5]] if errors \
        else ["No errors in the browser console."]
    if not page.dom.get("text", "").strip():
        lines.append("The page shows no text.")
    return "\n".join(lines)


def farm_rank(page: RenderResult | None) -> tuple:
    """Critic-free order of renders: valid beats invalid, then fewer errors. A revision is kept unless it ranks lower."""
    return (page is not None and page.valid, -len(page.console_errors + page.page_errors) if page else 0)


def round_message(verdict: Critique | None, page: RenderResult | None, whole: bool) -> str:
    """What the model reads before a revision round: the critic's verdict (None: critic-free, the render farm's
    report instead) and what to reply with (a whole page, or edits)."""
    if verdict is not None and whole:
        return revision_message(verdict.score, verdict.feedback)  # the training loop's own words
    report = f"Score: {verdict.score:g}/100.\n{verdict.feedback}" if verdict is not None else farm_report(page)
    return f"{report}\n{ASK_PAGE if whole else ASK_EDITS}"


def revise(html: str | None, text: str, finished: bool) -> tuple[str | None, str]:
    """The page a reply asks for, and how: edits applied to html, a whole page, or None (nothing usable)."""
    edits = parse_edits(text)
    if edits and html is not None:
        new, applied = apply_edits(html, edits)
        return (new, f"{applied}/{len(edits)} edits applied") if applied else (None, "edits_not_found")
    page = extract_html(text)
    if page is None:
        return None, "no_change"
    if not finished and html is not None:  # a cut-off page never replaces a whole one
        return None, "truncated"
    return page, "page"


@dataclass
class EditResult:
    html: str | None  # the kept page; None when no reply held one
    page: RenderResult | None  # its render
    score: float | None = None  # the critic's score of the kept page (None without a critic or when unscorable)
    feedback: str = ""  # the critic's feedback on the kept page, or the render farm's report
    rounds: int = 0  # revision rounds run
    stop: str = "rounds"  # why the cycle ended: rounds, or the last round's outcome: no_change (NO CHANGES or the same
    # code), truncated (a cut-off whole page), edits_not_found, page_unchanged, not_improved, unscorable
    tokens: int = 0  # generated tokens, all rounds
    latency_s: float = 0.0  # wall time of the cycle (the final scoring by a judge excluded)
    timings_s: dict = field(default_factory=lambda: {"generate": 0.0, "render": 0.0, "critic": 0.0})
    history: list[dict] = field(default_factory=list)  # one row per reply
    reply: str = ""  # the model's reply that holds the kept page (the first reply when none held a page)

    def to_json(self) -> dict:
        return {"valid": bool(self.page and self.page.valid), "reason": "no_html" if self.page is None else self.page.reason, "score": self.score,
                "rounds": self.rounds, "stop": self.stop, "tokens": self.tokens, "latency_s": round(self.latency_s, 3),
                "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()}, "history": self.history}


async def self_edit(task: dict, conv: Conversation, generate, render, cfg: SelfEditConfig,
                    critique=None) -> EditResult:
    """One page for task through cfg.rounds revision rounds. generate(ids, Sampling, n) -> [Completion];
    render(html) -> RenderResult; critique(CritiqueRequest) -> Critique, or None. With cfg.use_critic the critique
    drives the rounds; otherwise it only scores the kept page at the end (a judge, as in evaluation)."""
    res = EditResult(None, None)
    in_loop = critique is not None and cfg.use_critic
    t_start = time.perf_counter()

    async def timed(stage, coro):
        t = time.perf_counter()
        out = await coro
        res.timings_s[stage] += time.perf_counter() - t
        return out

    async def judge(html: str | None, page: RenderResult | None) -> Critique:
        if page is None or not page.valid:  # strict zero for an invalid render, no critic call
            return Critique(0.0, farm_report(page), backend="render")
        return await timed("critic", critique(CritiqueRequest(
            task["prompt"], html, list(task.get("checklist") or []), page.screenshots, page.shot_times, page.dom,
            page.console_errors + page.page_errors)))

    page_sampling = Sampling(cfg.temperature, cfg.top_p, cfg.max_new_tokens)
    edit_sampling = Sampling(cfg.temperature, cfg.top_p, cfg.edit_max_new_tokens)
    context = conv.prompt_ids(task["prompt"])
    (last,) = await timed("generate", generate(context, page_sampling, 1))
    context = context + last.token_ids
    html = extract_html(last.text)
    page = await timed("render", render(html)) if html is not None else None
    verdict = await judge(html, page) if in_loop else None
    res.tokens = len(last.token_ids)
    res.history.append({"round": 0, "kind": "page", "accepted": True, "tokens": len(last.token_ids),
                        "valid": bool(page and page.valid), "score": verdict and verdict.score, "note": "first page"})
    for rnd in range(1, cfg.rounds + 1):
        if verdict is not None and verdict.score is None:
            res.stop = "unscorable"  # no feedback to revise from
            break
        whole = html is None or cfg.mode == "page"
        delta = conv.feedback_ids(task["prompt"], last, round_message(verdict if in_loop else None, page, whole))
        (reply,) = await timed("generate", generate(context + delta, page_sampling if whole else edit_sampling, 1))
        res.rounds, res.tokens = rnd, res.tokens + len(reply.token_ids)
        row = {"round": rnd, "kind": "page" if whole else "edits", "accepted": False, "tokens": len(reply.token_ids)}
        res.history.append(row)
        new, row["note"] = revise(html, reply.text, reply.finished)
        if new is None or new == html:
            res.stop = row["note"] if new is None else "no_change"
            if cfg.early_stop:
                break
            continue
        new_page = await timed("render", render(new))
        row["valid"] = new_page.valid
        if page is not None and new_page.screenshots == page.screenshots and farm_rank(new_page) == farm_rank(page):
            res.stop = "page_unchanged"
            if cfg.early_stop:
                break
            continue
        if in_loop:
            new_verdict = await judge(new, new_page)
            row["score"] = new_verdict.score
            row["accepted"] = accept_revision(new_verdict.score, verdict.score)
        else:
            row["accepted"] = farm_rank(new_page) >= farm_rank(page)
        if row["accepted"]:
            res.stop = "rounds"
            html, page, context, last = new, new_page, context + delta + reply.token_ids, reply
            verdict = new_verdict if in_loop else None
        else:
            res.stop = "not_improved"
            if cfg.temperature == 0:  # greedy decoding would only repeat the rejected reply
                break
    res.latency_s = time.perf_counter() - t_start
    if critique is not None and verdict is None:
        verdict = await judge(html, page)
    res.html, res.page, res.reply = html, page, last.text
    res.score = verdict.score if verdict is not None else None
    res.feedback = verdict.feedback if verdict is not None else farm_report(page)
    return res
