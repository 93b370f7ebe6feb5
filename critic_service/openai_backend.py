"""The MLLM critic: any OpenAI-compatible chat-completions endpoint with vision (vLLM serving Qwen2.5-VL, a provider).

Our prompt (judge=relook) gives the task, checklist, the page's code (truncated) and the screenshots with their
times, and asks for {"score": 0-100, "feedback": "..."}. Replies are parsed tolerantly; anything else is retried,
then unscorable. judge=artifactsbench sends the benchmark's own prompt instead (`artifactsbench.py`).
Every call is bounded: the whole critique answers within about attempts x timeout.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import re
import time

import httpx

from . import artifactsbench
from .config import CriticConfig
from .critique import Critique, CritiqueRequest

NAME = "openai"
SYSTEM = ("You are a meticulous front-end reviewer. You judge a web page by its screenshots, taken at the times given, "
          "against the task it was written for. Reply with one JSON object only: "
          '{"score": <integer 0-100>, "feedback": "<actionable feedback>"}. The feedback names concrete visual '
          "defects you can see (missing sections, wrong colours, broken layout, overlapping or cut-off elements, "
          "nothing moving where motion was asked for, unreadable text) and says how to fix each one in the code.")


def _images(req: CritiqueRequest, cfg: CriticConfig, with_times: bool) -> list[dict]:
    parts = []
    for t, png in list(zip(req.times(), req.screenshots))[-cfg.max_images:]:
        if with_times:
            parts.append({"type": "text", "text": f"Screenshot at {t:g} s after load:"})
        parts.append({"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}})
    return parts


def build_judge_messages(req: CritiqueRequest, cfg: CriticConfig, judge: artifactsbench.Judge) -> list[dict]:
    """ArtifactsBench's request: its system message; its template (checklist, question, whole answer), then the shots."""
    answer = artifactsbench.answer_text(req.answer or f"```html\n{req.html}\n```")
    text = judge.prompt(artifactsbench.checklist_text(req.checklist), req.task, answer)
    return [{"role": "system", "content": judge.system},
            {"role": "user", "content": [{"type": "text", "text": text}, *_images(req, cfg, with_times=False)]}]


def build_messages(req: CritiqueRequest, cfg: CriticConfig) -> list[dict]:
    code = req.html if len(req.html) <= cfg.max_code_tokens * 4 else req.html[: cfg.max_code_tokens * 4] + "\n<!-- truncated -->"
    checklist = "\n".join(f"- {c}" for c in req.checklist) or "(none)"
    parts: list[dict] = [{"type": "text", "text": f"Task:\n{req.task}\n\nChecklist:\n{checklist}\n\nPage code:\n```html\n{code}\n```"}]
    if req.errors:
        parts.append({"type": "text", "text": "Errors while rendering:\n" + "\n".join(req.errors[:10])})
    parts += _images(req, cfg, with_times=True)
    parts.append({"type": "text", "text": 'Score the page 0-100 and reply with {"score": ..., "feedback": "..."} only.'})
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": parts}]


def estimate_tokens(messages: list[dict]) -> int:
    """Rough prompt size for the tokens-per-minute bucket: ~4 characters a token, ~1000 tokens an image."""
    n = 0
    for m in messages:
        for p in (m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]):
            n += len(p.get("text", "")) // 4 if p["type"] == "text" else 1000
    return n


_SCORE = re.compile(r'"?(?:overall[ _]score|score)"?\s*[:=]\s*"?\s*(\d+(?:\.\d+)?)', re.I)


def parse_reply(text: str) -> tuple[float, str] | None:
    """(score, feedback) from a reply: a JSON object anywhere (fenced or not), a score given as a string, or
    ArtifactsBench's "Overall Score": "NN" form. None when no score in 0-100 can be read."""
    candidates = re.findall(r"```(?:json)?\s*(\{.*?\})\s*```", text, re.S)
    depth, start = 0, None
    for i, ch in enumerate(text):  # every balanced {...} span, outermost first
        if ch == "{":
            depth, start = depth + 1, i if depth == 0 else start
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                candidates.append(text[start:i + 1])
    for c in candidates:
        try:
            obj = json.loads(c)
        except ValueError:
            continue
        if isinstance(obj, dict):
            raw = next((obj[k] for k in obj if k.lower().replace("_", " ") in ("score", "overall score")), None)
            score = _number(raw)
            if score is not None:
                feedback = obj.get("feedback") or obj.get("Feedback") or obj.get("comments") or text
                return score, str(feedback)
    m = _SCORE.search(text)
    if m and (score := _number(m.group(1))) is not None:
        return score, text.strip()
    return None


def _number(raw) -> float | None:
    if isinstance(raw, str):
        m = re.match(r"\s*(\d+(?:\.\d+)?)", raw)
        raw = float(m.group(1)) if m else None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and 0 <= raw <= 100:
        return float(raw)
    return None


class TokenBucket:
    """Requests or tokens per minute toward the backend; `rate` 0 means unlimited."""

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.capacity = max(per_minute / 6.0, 1.0)  # bursts of up to 10 s worth
        self.level = self.capacity
        self.t = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, n: float, deadline: float) -> bool:
        if self.rate <= 0:
            return True
        async with self.lock:
            while True:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
                self.t = now
                if self.level >= min(n, self.capacity):
                    self.level -= n
                    return True
                wait = (min(n, self.capacity) - self.level) / self.rate
                if now + wait > deadline:
                    return False
                await asyncio.sleep(wait)


def retry_after(value: str | None) -> float:
    """A Retry-After header's wait in seconds (delta-seconds or an HTTP date); 0 when absent or unreadable."""
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return 0.0


class OpenAIBackend:
    name = NAME

    def __init__(self, cfg: CriticConfig, client: httpx.AsyncClient | None = None):
        self.cfg = cfg
        key = os.environ.get(cfg.openai_api_key_env, "")
        self.client = client or httpx.AsyncClient(
            base_url=cfg.openai_base_url.rstrip("/"), headers={"Authorization": f"Bearer {key}"} if key else {},
            limits=httpx.Limits(max_connections=cfg.max_concurrency, max_keepalive_connections=cfg.max_concurrency))
        self.requests = TokenBucket(cfg.requests_per_minute)
        self.tokens = TokenBucket(cfg.tokens_per_minute)
        self.errors: dict[str, int] = {}  # kind -> count, for /metrics
        self.judge = artifactsbench.load_judge(cfg.artifactsbench_repo) if cfg.judge == "artifactsbench" else None

    async def critique(self, req: CritiqueRequest) -> Critique:
        cfg = self.cfg
        attempts = cfg.attempts()
        if self.judge is None:
            messages = build_messages(req, cfg)
            body = {"model": cfg.openai_model, "messages": messages, "temperature": cfg.temperature,
                    "max_tokens": cfg.max_reply_tokens}
        else:  # the benchmark's settings: its temperature, no reply limit, asked again until a score is readable
            messages = build_judge_messages(req, cfg, self.judge)
            body = {"model": cfg.openai_model, "messages": messages, "temperature": artifactsbench.TEMPERATURE}
        deadline = time.monotonic() + cfg.deadline_s()
        reason, asked = "no_attempt", 0.0  # asked: the backend's Retry-After, seconds
        for attempt in range(attempts):
            if attempt:
                delay = max(cfg.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random()), asked)
                if time.monotonic() + delay >= deadline:
                    reason = "rate_limited" if asked else reason  # told to come back after the deadline
                    break
                await asyncio.sleep(delay)
                asked = 0.0
            if not (await self.requests.take(1, deadline) and await self.tokens.take(estimate_tokens(messages), deadline)):
                reason = "rate_limited"
                break
            left = deadline - time.monotonic()
            try:
                resp = await self.client.post("/chat/completions", json=body, timeout=min(cfg.timeout_s, left))
            except httpx.TimeoutException:
                reason = self._error("timeout")
                continue
            except httpx.HTTPError:
                reason = self._error("transport")
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                reason = self._error(f"backend_http_{resp.status_code}")
                asked = retry_after(resp.headers.get("retry-after"))
                continue
            if resp.status_code >= 400:  # our request is wrong: retrying cannot help
                return Critique.failed(self._error(f"backend_http_{resp.status_code}"), NAME, resp.text[:300])
            try:
                text = resp.json()["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError):
                reason = self._error("bad_response")
                continue
            if self.judge is not None:
                score = artifactsbench.overall_score(text)
                parsed = None if score is None else (score, text.strip())
            else:
                parsed = parse_reply(text)
            if parsed is None:
                reason = self._error("unparseable")
                continue
            return Critique(parsed[0], parsed[1], backend=NAME)
        return Critique.failed(reason, NAME)

    def _error(self, kind: str) -> str:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        return kind

    async def aclose(self) -> None:
        await self.client.aclose()
