"""Inference: ReLook's critic-free self-edit cycle, and the critic-driven variant with Forced Optimization.

After the first page the model re-reads its own code together with the render report (revision.render_report: what
the render farm saw, in plain words: the context the policy trained in, less the critic's verdict) and answers in
the run's revision format (`revision.format`). Without a critic a revision is kept only if the render farm's own
signals do not get worse (rollout.accept_self_edit: it renders, no more errors, no less visible text or elements, every
element the task names kept), so a round can never empty a page. The cycle stops early when a round changes nothing
or the rendered page is unchanged. With a critic, its score and feedback drive the rounds and only strictly
improving revisions are kept (Forced Optimization, the training loop's rule). The conversation grows by kept rounds
only, so each round's context extends the previous one: vLLM's prefix cache reuses it, the HF engine re-reads it (on CPU a small cost next to decoding).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from critic_service.critique import Critique, CritiqueRequest
from render_farm.result import RenderResult

from .config import SelfEditConfig
from .engine import Sampling
from .revision import RevisionConfig, critic_report, extract_html, render_report, revise, revision_message
from .rollout import Conversation, accept_revision, accept_self_edit


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
    round_scores: list = field(default_factory=list)  # with self_edit.score_rounds: the judge's score of the page kept after round 0, 1, ...
    one_shot_s: float = 0.0  # wall time to the first page, generated and rendered (what one-shot decoding costs)
    first_html: str | None = None  # the first page (round 0), for judging one-shot against self-edit

    def to_json(self) -> dict:
        return {"valid": bool(self.page and self.page.valid), "reason": "no_html" if self.page is None else self.page.reason, "score": self.score,
                "rounds": self.rounds, "stop": self.stop, "tokens": self.tokens, "latency_s": round(self.latency_s, 3),
                "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()}, "history": self.history,
                "round_scores": self.round_scores, "one_shot_s": round(self.one_shot_s, 3)}


async def score_rounds(kept: list[tuple], rounds: int, judge, final: Critique) -> list[float | None]:
    """The judge's score of the page kept after each round (kept: [(html, page)] from round 0 on); rounds an early
    stop skipped keep their page's score. Each distinct page is judged once; the last one already was (final)."""
    kept = kept + [kept[-1]] * (rounds + 1 - len(kept))
    scores: dict[int, float | None] = {id(kept[-1][1]): final.score}
    for html, page in kept:
        if id(page) not in scores:
            scores[id(page)] = (await judge(html, page)).score
    return [scores[id(page)] for _, page in kept]


async def _timed(res: "EditResult", stage: str, coro):
    t = time.perf_counter()
    out = await coro
    res.timings_s[stage] += time.perf_counter() - t
    return out


def _renders_the_same(new: RenderResult, old: RenderResult | None) -> bool:
    """The same pixels, the same verdict and as many errors: the revision changed nothing a person or the farm sees."""
    return old is not None and new.screenshots == old.screenshots and new.reason == old.reason and \
        len(new.console_errors + new.page_errors) == len(old.console_errors + old.page_errors)


def _finish(res: "EditResult", html, page, reply: str, verdict) -> "EditResult":
    res.html, res.page, res.reply = html, page, reply
    res.score = verdict.score if verdict is not None else None
    res.feedback = verdict.feedback if verdict is not None else render_report(page)
    return res


async def self_edit(task: dict, conv: Conversation, generate, render, cfg: SelfEditConfig,
                    critique=None, revision: RevisionConfig | None = None) -> EditResult:
    """One page for task through cfg.rounds revision rounds. generate(ids, Sampling, n) -> [Completion];
    render(html) -> RenderResult; critique(CritiqueRequest) -> Critique, or None. With cfg.use_critic the critique
    drives the rounds; otherwise it only scores the kept page at the end (a judge, as in evaluation)."""
    revision = revision or RevisionConfig()
    res, in_loop, t_start = EditResult(None, None), critique is not None and cfg.use_critic, time.perf_counter()

    async def judge(html: str | None, page: RenderResult | None, reply: str = "") -> Critique:
        if page is None or not page.valid:  # strict zero for an invalid render, no critic call
            return Critique(0.0, render_report(page), backend="render")
        # a judge that reads the whole answer (ArtifactsBench) gets the reply when it is the page, else the page
        answer = reply if reply and extract_html(reply) == html else ""
        return await _timed(res, "critic", critique(CritiqueRequest(
            task["prompt"], html, list(task.get("checklist") or []), page.screenshots, page.shot_times, page.dom,
            page.console_errors + page.page_errors, answer)))

    page_sampling = Sampling(cfg.temperature, cfg.top_p, cfg.max_new_tokens, tuple(cfg.stop))
    edit_sampling = Sampling(cfg.temperature, cfg.top_p, revision.edit_max_new_tokens, tuple(cfg.stop))
    context = conv.prompt_ids(task["prompt"])
    (last,) = await _timed(res, "generate", generate(context, page_sampling, 1))
    context = context + last.token_ids
    html = extract_html(last.text)
    page = await _timed(res, "render", render(html)) if html is not None else None
    res.one_shot_s, res.first_html = time.perf_counter() - t_start, html
    verdict = await judge(html, page, last.text) if in_loop else None
    res.tokens = len(last.token_ids)
    res.history.append({"round": 0, "kind": "page", "accepted": True, "tokens": len(last.token_ids),
                        "valid": bool(page and page.valid), "score": verdict and verdict.score, "note": "first page"})
    kept = [(html, page)]  # the page kept after each round (round 0: the first page)
    for rnd in range(1, cfg.rounds + 1):
        try:
            if verdict is not None and verdict.score is None:
                res.stop = "unscorable"  # no feedback to revise from
                break
            whole = html is None or revision.format == "page"
            verdict_text = critic_report(verdict.score, verdict.feedback) if in_loop and page and page.valid else None
            message = revision_message(render_report(page), "page" if whole else "edits", verdict_text)
            delta = conv.feedback_ids(task["prompt"], last, message)
            sampling = page_sampling if whole else edit_sampling
            (reply,) = await _timed(res, "generate", generate(context + delta, sampling, 1))
            res.rounds, res.tokens = rnd, res.tokens + len(reply.token_ids)
            row = {"round": rnd, "kind": "page" if whole else "edits", "accepted": False, "tokens": len(reply.token_ids)}
            res.history.append(row)
            new, row["note"] = revise(html, reply.text, reply.finished)
            if new is None or new == html:
                res.stop = row["note"] if new is None else "no_change"
                if cfg.early_stop:
                    break
                continue
            new_page = await _timed(res, "render", render(new))
            row["valid"] = new_page.valid
            if _renders_the_same(new_page, page):
                res.stop = "page_unchanged"
                if cfg.early_stop:
                    break
                continue
            if in_loop:
                new_verdict = await judge(new, new_page, reply.text)
                row["score"] = new_verdict.score
                row["accepted"] = accept_revision(new_verdict.score, verdict.score)
            else:
                row["accepted"] = accept_self_edit(new_page, page, task["prompt"])
            if row["accepted"]:
                res.stop = "rounds"
                html, page, context, last = new, new_page, context + delta + reply.token_ids, reply
                verdict = new_verdict if in_loop else None
            else:
                res.stop = "not_improved"
                if cfg.temperature == 0:  # greedy decoding would only repeat the rejected reply
                    break
        finally:  # the page kept after this round, whatever ended it
            kept.append((html, page))
    res.latency_s = time.perf_counter() - t_start
    if critique is not None and verdict is None:
        verdict = await judge(html, page, last.text)
    if cfg.score_rounds and critique is not None:
        res.round_scores = await score_rounds(kept, cfg.rounds, judge, verdict)
    return _finish(res, html, page, last.text, verdict)
