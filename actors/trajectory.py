"""The trajectory record and the small pure rules of the agent loop (HTML extraction, Forced Optimization, reward)."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

_FENCED = re.compile(r"```[ \t]*html[^\n]*\n(.*?)(?:```|\Z)", re.S | re.I)
_DOCUMENT = re.compile(r"<html[\s>].*?</html\s*>", re.S | re.I)
_SVG = re.compile(r"<svg[\s>].*?</svg\s*>", re.S | re.I)


def extract_html(text: str) -> str | None:
    """The page in a model reply: the last fenced html block, else the last <html>...</html>, else the last
    <svg>...</svg>. None when there is none (an invalid sample: reward 0)."""
    blocks = [b for b in _FENCED.findall(text) if b.strip()]
    if blocks:
        return blocks[-1].strip()
    for pattern in (_DOCUMENT, _SVG):
        found = pattern.findall(text)
        if found:
            return found[-1]
    return None


def format_score(text: str) -> float:
    """1 for exactly one well-formed ```html block holding a complete document; 0.5 for one of the two; else 0."""
    one_block = len(re.findall(r"```[ \t]*html", text, re.I)) == 1 and text.count("```") == 2
    html = extract_html(text) or ""
    complete = bool(re.search(r"<html[\s>]", html, re.I) and re.search(r"</html\s*>", html, re.I))
    return 0.5 * one_block + 0.5 * complete


def accept_revision(candidate: float | None, best: float) -> bool:
    """Forced Optimization: a revision survives only if its score strictly beats the best so far.
    An unscorable revision (None) never does."""
    return candidate is not None and candidate > best


def revision_message(score: float, feedback: str) -> str:
    """The critic's turn in the conversation: what the policy reads before a revision (training and inference)."""
    return f"Score: {score:g}/100.\n{feedback}\nRevise the page and reply with the full page."


def reward(valid: bool, score: float | None, fmt: float, format_weight: float) -> float:
    """Final accepted score / 100 + format_weight x format score; exactly 0 whenever the final render is invalid."""
    if not valid or score is None:
        return 0.0
    return score / 100.0 + format_weight * fmt


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
    unscorable: bool = False  # the final page could not be scored: left out of the group baseline
    final_score: float | None = None
    final_valid: bool = False
    policy_version: int = 0
    timings_s: dict = field(default_factory=lambda: {"generate": 0.0, "render": 0.0, "critic": 0.0})
    finished_at: float = 0.0  # wall-clock time the trajectory finished (time.time())
    final_screenshot: bytes | None = None  # for dashboards; not serialised

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("final_screenshot")
        d["loss_mask_tokens"] = sum(self.loss_mask)
        d["total_tokens"] = len(self.token_ids)
        return d
