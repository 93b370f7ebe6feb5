"""One trajectory and the rules that build it: generate -> render -> critique -> refine, with Forced Optimization.

Read top to bottom: the record (Attempt, Trajectory), Forced Optimization, the chat-template bookkeeping
(Conversation), then the loop (run_trajectory, run_group). How replies become pages and how revisions are asked
for is in revision.py (shared with inference); the reward formula is in reward.py.

Token bookkeeping: the conversation is a list of token ids built exactly as generated. The policy's accepted
completions carry loss_mask 1 and their rollout log-probs; the prompt and every feedback message (tokenised from
the chat template's own delta, appended after the generated ids) carry 0. Rejected attempts never enter the ids.
"""
from __future__ import annotations

import asyncio
import re
import time
from dataclasses import asdict, dataclass, field

from critic_service.critique import CritiqueRequest

from .config import RolloutConfig
from .engine import Completion, ContextFull, Sampling
from render_farm.result import RenderRequest

from .revision import (ASK, RevisionConfig, critic_report, entry_page, extract_files, extract_html, render_report,
                       revise, revision_message)
from .reward import RewardConfig, edits_format_score, format_score, judged_score, reward


@dataclass
class Attempt:
    turn: int  # 0 = first page, 1.. = revisions
    text: str
    score: float | None  # None when unscorable
    valid: bool
    reason: str | None  # the render's invalid reason, or "no_html"
    accepted: bool
    feedback: str = ""
    tokens: int = 0
    version: int = 0  # the policy version that sampled it
    kind: str = "page"  # what the reply was: "page" (a whole page) or "edits" (SEARCH/REPLACE blocks on the best page)
    fmt: float = 0.0  # its format score (reward.py)
    checks: dict = field(default_factory=dict)  # the critic's sub-scores (0..1) of its page, when the critic gives them


@dataclass
class Trajectory:
    task_id: str
    group_id: int  # index within the task's group of G
    prompt: str
    attempts: list[Attempt] = field(default_factory=list)  # every attempt, rejected ones included (metrics only)
    token_ids: list[int] = field(default_factory=list)  # the whole conversation, as generated
    loss_mask: list[int] = field(default_factory=list)  # 1 on the policy's accepted tokens, 0 on prompt/feedback
    logprobs: list[float] = field(default_factory=list)  # rollout log-probs, 0 where loss_mask is 0
    reward: float = 0.0
    first_reward: float = 0.0  # what the first page alone would have earned (one-shot): revisions' gain = reward - this
    first_end: int = 0  # index in token_ids where the first reply ends (turn-level credit, learner.credit=turn)
    unscorable: bool = False  # the final page could not be scored: left out of the group baseline
    final_score: float | None = None
    final_valid: bool = False
    final_checks: dict = field(default_factory=dict)  # the critic's sub-scores of the final page
    policy_version: int = 0  # the oldest policy version among its accepted turns (what staleness is measured by)
    stopped: str = ""  # "context_full": the conversation outgrew the engine's context, so it ended there
    timings_s: dict = field(default_factory=lambda: {"generate": 0.0, "render": 0.0, "critic": 0.0, "render_queue": 0.0})
    finished_at: float = 0.0  # wall-clock time the trajectory finished (time.time())
    final_screenshot: bytes | None = None  # for dashboards; not serialised

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("final_screenshot")
        d["loss_mask_tokens"] = sum(self.loss_mask)
        d["total_tokens"] = len(self.token_ids)
        return d


def accept_revision(candidate: float | None, best: float) -> bool:
    """Forced Optimization (training, and inference with a critic): a revision survives only if its score strictly
    beats the best so far. An unscorable revision (None) never does."""
    return candidate is not None and candidate > best


# element kinds a task can name -> the render farm's counts that show them (accept_self_edit keeps them)
_NAMED = {r"form|field|input|search|login|sign.?up|regist|book|contact": ("inputs",), r"button|click|submit": ("buttons",),
          r"table|schedule": ("tables",), r"chart|graph|plot": ("svg", "canvas"), r"image|photo|gallery|picture": ("images", "svg"),
          r"nav|menu|link|footer": ("links",)}


def accept_self_edit(new, old, task: str) -> bool:
    """Critic-free acceptance (inference): a revision is kept only if the render farm's own signals do not get worse,
    so it can never empty a page. new, old: RenderResults (old None: the first reply held no page). It must render
    (an invalid page is only ever replaced), raise no more console errors, keep >= 90 % of the visible text and of
    the visible elements, and keep every element the task names (its inputs, buttons, tables, charts, images, links)."""
    if new is None or not new.valid:
        return False
    if old is None or not old.valid:
        return True
    if len(new.console_errors + new.page_errors) > len(old.console_errors + old.page_errors):
        return False
    nd, od = new.dom or {}, old.dom or {}
    nc, oc = nd.get("counts", {}), od.get("counts", {})
    if nd.get("text_chars", 0) < 0.9 * od.get("text_chars", 0) or nc.get("elements", 0) < 0.9 * oc.get("elements", 0):
        return False
    named = {k for pattern, kinds in _NAMED.items() if re.search(pattern, task.lower()) for k in kinds}
    return all(nc.get(k, 0) >= oc.get(k, 0) for k in named)


class Conversation:
    """Chat-template pieces as token ids: the prompt, and the delta that closes an assistant turn and opens the next."""

    def __init__(self, tokenizer, system: str, role: str):
        self.tok, self.system, self.role = tokenizer, system, role
        self.check_prefix_stable()

    def check_prefix_stable(self) -> None:
        """The feedback's ids are the template's text past the closed turn (feedback_ids), which is right only if
        rendering one more message leaves the earlier text as it was. Some templates rewrite earlier turns (Qwen3
        drops an earlier reply's <think>): refused here, at start, rather than cutting the ids in the wrong place."""
        base = self._base("task") + [{"role": "assistant", "content": "<think>a</think>page"}]
        closed = self._render(base, False)
        opened = self._render(base + [{"role": self.role, "content": "feedback"}], True)
        if not opened.startswith(closed):
            name = getattr(self.tok, "name_or_path", "the model")
            raise ValueError(f"{name}: its chat template is not prefix-stable (adding a {self.role!r} message rewrites "
                             f"the earlier turns), so a multi-turn conversation cannot be built from the generated ids; "
                             f"use a model whose template is, or rollout.feedback_role='user' if only that role differs")

    def _render(self, messages, gen: bool) -> str:
        return self.tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, task: str) -> list[int]:
        return self._ids(self._render(self._base(task), True))

    def feedback_ids(self, task: str, completion: Completion, feedback: str) -> list[int]:
        """Ids to append after a generated turn: end of that turn (if it was cut off), the feedback message, and
        the next assistant header. Taken from the template's text around a placeholder, never re-tokenising
        what the model generated."""
        mark = "\x00TURN\x00"
        closed = self._render(self._base(task) + [{"role": "assistant", "content": mark}], False)
        opened = self._render(self._base(task) + [{"role": "assistant", "content": mark},
                                                   {"role": self.role, "content": feedback}], True)
        after_turn = closed[closed.rindex(mark) + len(mark):]  # e.g. "<|im_end|>\n"
        eos = self.tok.eos_token or ""
        if completion.token_ids and completion.token_ids[-1] == self.tok.eos_token_id and after_turn.startswith(eos):
            after_turn = after_turn[len(eos):]
        return self._ids(after_turn + opened[len(closed):])

    def _base(self, task: str) -> list[dict]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": task}]


def site_of(task: dict, text: str, base: dict | None) -> dict | None:
    """A multi-file task's page (Web-Bench): the files the reply writes over `base` (the task's files, then the best
    so far); None when the reply writes no file."""
    changed = extract_files(text)
    return {**(base if base is not None else task.get("files", {})), **changed} if changed else None


async def draw(generate, context: list[int], sampling: Sampling, n: int, traj: Trajectory) -> list | None:
    """n revisions of `context`; None when the conversation outgrew the engine's context (the page so far is the
    trajectory's last: traj.stopped = "context_full")."""
    try:
        return await generate(context, sampling, n)
    except ContextFull:
        traj.stopped = "context_full"
        return None


@dataclass
class Judge:
    """Renders and critiques the page a reply asks for, timing each part into the trajectory; with specs (a
    Web-Bench task with files), the task's own end-to-end tests join the verdict."""
    task: dict
    traj: Trajectory
    render: object
    critique: object
    specs: object
    shaping: RewardConfig

    async def __call__(self, c: Completion, turn: int, html, kind: str, note: str, best_html=None):
        """html None: the reply asked for no page; a dict: a file set (site_of). -> (Attempt, page, html or files)."""
        traj, task = self.traj, self.task
        files = html if isinstance(html, dict) else None
        fmt = format_score(c.text) if kind == "page" else float(files is not None) if kind == "files" \
            else edits_format_score(c.text, best_html)
        made = lambda score, valid, reason, feedback: Attempt(turn, c.text, score, valid, reason, False, feedback,
                                                              len(c.token_ids), c.version, kind, fmt)
        entry = entry_page(files) if files is not None else None
        if files is not None:
            html = files.get(entry)
        if html is None:
            return made(0.0, False, "no_html" if kind != "edits" else note,
                        "No ```html code block was found in the reply: answer with the whole page in one ```html "
                        "block." if kind == "page" else ASK["files"] if kind == "files"
                        else f"The reply changed nothing ({note})."), None, None
        t = time.perf_counter()
        page = await self.render(RenderRequest(html, files={k: v for k, v in files.items() if k != entry})
                                 if files is not None else html)
        traj.timings_s["render"] += time.perf_counter() - t
        traj.timings_s["render_queue"] += page.timings_ms.get("queue", 0) / 1e3
        if page.unscorable:  # the farm ran out of time before the page opened: not the page's fault, never a zero
            return made(None, False, page.reason, ""), page, None
        if not page.valid:  # scored 0 without asking the critic
            return made(0.0, False, page.reason, f"The page did not render: {page.reason} ({page.detail}). Fix it "
                        f"so the page loads and shows its content."), page, files if files is not None else html
        t = time.perf_counter()
        request = task.get("web_bench", {}).get("description", task["prompt"])  # what the critic reads as the task
        verdict = await self.critique(CritiqueRequest(request, html, list(task.get("checklist") or []),
                                                      page.screenshots, page.shot_times, page.dom,
                                                      page.console_errors + page.page_errors))
        traj.timings_s["critic"] += time.perf_counter() - t
        score, feedback, checks = verdict.score, verdict.feedback, dict(verdict.checks)
        if files is not None and self.specs is not None:
            t = time.perf_counter()
            tests = await self.specs(task, files)
            traj.timings_s["specs"] = traj.timings_s.get("specs", 0.0) + time.perf_counter() - t
            score = judged_score(score, tests.fraction, self.shaping)
            feedback, checks["tests"] = f"{feedback}\n{tests.feedback()}", tests.fraction
        attempt = made(score, True, None, feedback)
        attempt.checks = checks
        return attempt, page, files if files is not None else html


def _extend(traj: "Trajectory", ids: list[int], logprobs: list[float] | None) -> None:
    """Tokens onto the trajectory: the policy's (trained, with their log-probs) or context (logprobs None)."""
    traj.token_ids += ids
    traj.loss_mask += [1 if logprobs is not None else 0] * len(ids)
    traj.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)


def _finish(traj: "Trajectory", best, best_attempt: Attempt, best_page, shaping: RewardConfig) -> "Trajectory":
    traj.policy_version = min(a.version for a in traj.attempts if a.accepted)
    traj.final_score, traj.final_valid, traj.final_checks = best, best_attempt.valid, best_attempt.checks
    traj.unscorable = best is None
    traj.reward = reward(best_attempt.valid, best, best_attempt.fmt, shaping)
    if best_page is not None and best_page.screenshots:
        traj.final_screenshot = best_page.screenshots[-1]
    traj.finished_at = time.time()
    return traj


async def run_trajectory(task: dict, group_id: int, first: Completion, prompt_ids: list[int], conv: Conversation,
                         generate, render, critique, cfg: RolloutConfig, revision: RevisionConfig | None = None,
                         shaping: RewardConfig | None = None, specs=None, away=None) -> Trajectory:
    """One trajectory from its already generated first page. generate(prompt_ids, sampling, n) -> [Completion];
    render(RenderRequest) -> RenderResult; critique(CritiqueRequest) -> Critique; specs(task, files) -> SpecReport
    for a task with files and specs (Web-Bench), whose pages are file sets ({path: text}) instead of one html.
    away(flag): told around each request whether the trajectory may ask again (run_group: the engine's Batcher)."""
    revision, shaping = revision or RevisionConfig(), shaping or RewardConfig()
    away = away or (lambda flag: None)
    traj = Trajectory(task["id"], group_id, task["prompt"])
    sampling = Sampling(cfg.temperature, cfg.top_p, cfg.max_new_tokens, tuple(cfg.stop))
    edit_sampling = Sampling(cfg.temperature, cfg.top_p, revision.edit_max_new_tokens, tuple(cfg.stop))
    judge = Judge(task, traj, render, critique, specs, shaping)
    _extend(traj, list(prompt_ids), None)
    site = "files" in task  # a multi-file task: every reply writes files over the best file set so far
    first_page = site_of(task, first.text, None) if site else extract_html(first.text)
    attempt, page, html = await judge(first, 0, first_page, "files" if site else "page", "")
    attempt.accepted = True
    traj.attempts.append(attempt)
    traj.first_reward = reward(attempt.valid, attempt.score, attempt.fmt, shaping)
    _extend(traj, first.token_ids, first.logprobs)
    traj.first_end = len(traj.token_ids)
    best, best_attempt, best_page, best_html, last = attempt.score, attempt, page, html, first
    for turn in range(1, cfg.max_turns):
        if best is None:  # unscorable: no feedback to revise from
            break
        kind = "files" if site else "page" if best_html is None else revision.format  # nothing to edit: a page
        # the render report (what inference sees too), then the critic's verdict (training only)
        delta = conv.feedback_ids(task["prompt"], last, revision_message(
            render_report(best_page), kind, critic_report(best, best_attempt.feedback) if best_attempt.valid else None))
        context, left, accepted = traj.token_ids + delta, cfg.max_resamples if cfg.forced_optimization else 1, None
        while left and accepted is None:  # resamples drawn `resamples_at_once` at a time, judged in draw order
            t = time.perf_counter()
            away(False)
            drawn = await draw(generate, context, edit_sampling if kind == "edits" else sampling,
                               min(cfg.resamples_at_once, left), traj)
            if drawn is None:
                break
            traj.timings_s["generate"] += time.perf_counter() - t
            left -= len(drawn)
            away(bool(left) or turn + 1 < cfg.max_turns)  # judging now; may ask again (a resample, a next turn)
            for candidate in drawn:  # every one drawn is judged and recorded; the first that improves is kept
                new, note = (site_of(task, candidate.text, best_html), "files") if site else \
                    revise(best_html, candidate.text, candidate.finished)
                attempt, page, html = await judge(candidate, turn, new, "edits" if "edits" in note else
                                                  "files" if site else "page", note, best_html)
                traj.attempts.append(attempt)
                if accepted is None and (accept_revision(attempt.score, best) or not cfg.forced_optimization):
                    attempt.accepted, accepted = True, (candidate, attempt, page, html)
        if accepted is None:
            break  # Forced Optimization: no resample improved, the trajectory stops here
        candidate, attempt, page, html = accepted
        _extend(traj, delta, None)
        _extend(traj, candidate.token_ids, candidate.logprobs)
        best, best_attempt, best_page, best_html, last = attempt.score, attempt, page, html, candidate
    return _finish(traj, best, best_attempt, best_page, shaping)


async def run_group(task: dict, conv: Conversation, generate, render, critique, cfg: RolloutConfig,
                    revision: RevisionConfig | None = None, shaping: RewardConfig | None = None,
                    specs=None, presence=None) -> list[Trajectory]:
    """G trajectories for one task: the first pages in one batched call, then each trajectory on its own, so
    one waiting on its render or critique never blocks the others. presence: the engine's Batcher (join/leave),
    told which trajectories are away (rendering, being critiqued) and may ask again, so that one engine call serves
    them together; one in its last request (or a one-turn run) is not waited for."""
    prompt_ids = conv.prompt_ids(task["prompt"])
    sampling = Sampling(cfg.temperature, cfg.top_p, cfg.max_new_tokens, tuple(cfg.stop))
    t = time.perf_counter()
    try:
        firsts = await generate(prompt_ids, sampling, cfg.group_size)
    except ContextFull:  # the task alone fills the context: G unscorable trajectories, nothing to train on
        n = len(prompt_ids)
        return [Trajectory(task["id"], g, task["prompt"], token_ids=list(prompt_ids), loss_mask=[0] * n,
                           logprobs=[0.0] * n, unscorable=True, stopped="context_full") for g in range(cfg.group_size)]
    gen_s = (time.perf_counter() - t) / cfg.group_size

    async def one(g: int, first: Completion) -> Trajectory:
        counted = False

        def away(flag: bool) -> None:  # this trajectory's count in presence, changed only when its state does
            nonlocal counted
            if presence is not None and flag != counted:
                presence.join(1) if flag else presence.leave()
                counted = flag

        away(cfg.max_turns > 1)  # its first page is being judged: a revision may follow
        try:
            return await run_trajectory(task, g, first, prompt_ids, conv, generate, render, critique, cfg, revision,
                                        shaping, specs, away)
        finally:
            away(False)

    trajs = await asyncio.gather(*(one(g, c) for g, c in enumerate(firsts)))
    for tr in trajs:
        tr.timings_s["generate"] += gen_s
    return list(trajs)
