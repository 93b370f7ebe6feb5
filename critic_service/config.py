"""Critic configuration (the `critic` config group): one typed dataclass, a one-line doc per field."""
from __future__ import annotations

from dataclasses import dataclass

from common.checks import check

BACKENDS = ("heuristic", "openai")
JUDGES = ("relook", "artifactsbench")


@dataclass
class CriticConfig:
    backend: str = "heuristic"  # "heuristic" (deterministic stand-in, no MLLM) or "openai" (any chat-completions endpoint with vision)
    url: str | None = None  # an already running critic service; None = start one
    host: str = "127.0.0.1"  # where a started service listens; "auto" (training): the driver's node IP, which every node of the Ray cluster reaches
    port: int = 8765  # service port (0 = any free port)
    max_concurrency: int = 64  # backend calls in flight at once (a semaphore)
    requests_per_minute: float = 0.0  # token bucket toward the backend; 0 = unlimited
    tokens_per_minute: float = 0.0  # token bucket on estimated prompt tokens; 0 = unlimited
    timeout_s: float = 60.0  # one backend call
    retries: int = 2  # extra attempts on 429/5xx/timeouts/unparseable replies
    backoff_s: float = 0.5  # first retry delay, doubled each retry (bounded by what is left of the deadline)
    cache_entries: int = 4096  # critiques kept by (task, checklist, html, screenshots); 0 disables
    max_body_mb: float = 32.0  # larger requests get 413
    openai_base_url: str = "http://127.0.0.1:8000/v1"  # e.g. vLLM `serve Qwen/Qwen2.5-VL-72B-Instruct`
    openai_model: str = "Qwen/Qwen2.5-VL-72B-Instruct"  # model name sent in each request
    openai_api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key (unset = no auth header)
    max_images: int = 3  # screenshots sent per critique (the last ones when there are more)
    temperature: float = 0.0  # sampling temperature of the critic
    max_reply_tokens: int = 512  # the critic's reply budget
    max_code_tokens: int = 3000  # the page's code is truncated to about this many tokens in the prompt
    judge: str = "relook"  # openai backend's prompt: "relook" (score + feedback for revisions) or "artifactsbench" (the benchmark's own judge)
    artifactsbench_repo: str | None = None  # a checkout of ArtifactsBenchmark; judge=artifactsbench reads its prompt from there

    def validate(self) -> "CriticConfig":
        checks = [
            ("backend", self.backend in BACKENDS, f"one of {list(BACKENDS)}"),
            ("max_concurrency", self.max_concurrency >= 1, "an integer >= 1"),
            ("timeout_s", self.timeout_s > 0, "seconds > 0"),
            ("retries", self.retries >= 0, "an integer >= 0"),
            ("port", 0 <= self.port <= 65535, "0..65535"),
            ("max_images", self.max_images >= 1, "an integer >= 1"),
            ("requests_per_minute", self.requests_per_minute >= 0, ">= 0 (0 = unlimited)"),
            ("tokens_per_minute", self.tokens_per_minute >= 0, ">= 0 (0 = unlimited)"),
            ("judge", self.judge in JUDGES, f"one of {list(JUDGES)}"),
            ("artifactsbench_repo", self.judge != "artifactsbench" or bool(self.artifactsbench_repo),
             "a checkout of the ArtifactsBenchmark repository (judge=artifactsbench reads its prompt there)"),
        ]
        return check("critic", self, checks)

    def attempts(self) -> int:
        """Backend calls one critique may make: retries + 1, at least the benchmark's own count for its judge."""
        from .artifactsbench import ATTEMPTS
        return max(self.retries + 1, ATTEMPTS if self.judge == "artifactsbench" else 0)

    def deadline_s(self) -> float:
        """The most one critique takes at the backend (every attempt, backoff and Retry-After wait inside it);
        the service says it on /healthz, and a client waits that long plus a margin."""
        return self.attempts() * self.timeout_s
