"""RolloutWorker: a Ray actor owning one generation engine, calling the render farm and the critic service."""
from __future__ import annotations

import ray

from critic_service.client import CriticClient
from render_farm.farm import RenderFarm

from .agent import Conversation, run_group
from .config import RolloutConfig, SelfEditConfig
from .engine import Batcher, make_engine
from .self_edit import EditResult, self_edit


@ray.remote(max_restarts=-1, max_task_retries=0)
class RolloutWorker:
    def __init__(self, model: str, cfg: RolloutConfig, render_workers: list, critic_url: str | None, seed: int = 0,
                 engine: str = "hf"):
        self.cfg = cfg.validate()
        self.engine = make_engine(engine, model, seed)
        self.batcher = Batcher(self.engine, max_batch=cfg.max_batch)
        self.conv = Conversation(self.engine.tokenizer, cfg.system_prompt, cfg.feedback_role)
        self.farm = RenderFarm(workers=render_workers)
        self.critic = CriticClient(critic_url) if critic_url else None  # None: inference without a critic

    async def rollout(self, task: dict) -> list:
        return await run_group(task, self.conv, self.batcher.generate, self.farm.render, self.critic.critique,
                               self.cfg, self.engine.version)

    async def self_edit(self, task: dict, cfg: SelfEditConfig) -> EditResult:
        """Inference (launch/evaluate.py on a Ray cluster): the self-edit cycle on this worker's engine."""
        conv = Conversation(self.engine.tokenizer, cfg.system_prompt, cfg.feedback_role)
        return await self_edit(task, conv, self.batcher.generate, self.farm.render, cfg,
                               self.critic.critique if self.critic is not None else None)

    def load_weights(self, state_dict: dict, version: int) -> int:
        self.engine.load_weights(state_dict, version)
        return version

    def weight_info(self) -> dict:
        return self.engine.weight_info()

    def join_weight_group(self, *args) -> None:
        self.engine.join_weight_group(*args)

    def receive_weights(self, transport: str, buckets: list, version: int, handles: list | None = None) -> int:
        return self.engine.receive_weights(transport, buckets, version, handles)

    def logprobs(self, token_ids: list[int], temperature: float = 1.0) -> list[float]:
        return self.engine.logprobs(token_ids, temperature)

    def reseed(self, seed: int) -> None:
        """Sampling seed of the next generate calls (the HF engine samples with torch's global generator)."""
        import torch
        torch.manual_seed(seed)

    def version(self) -> int:
        return self.engine.version
