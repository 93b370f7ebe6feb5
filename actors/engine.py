"""Generation engines: one interface, prompts as token ids in, completions with per-token log-probs out.

Prompts are token ids (not text) so that a multi-turn conversation is built from the ids exactly as they were
generated: the learner's loss mask and log-probs line up with what the policy really produced.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
from array import array
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import (EosTokenCriteria, GenerationConfig, LogitsProcessor, LogitsProcessorList,
                          StoppingCriteria, StoppingCriteriaList, StopStringCriteria)

from common.models import load_model, load_tokenizer
from learner.weight_sync import ModelReceiver


@dataclass(frozen=True)
class Sampling:
    """A value (frozen, hashable): requests with equal settings share an engine call, whoever built them."""
    temperature: float = 0.8  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 512
    stop: tuple[str, ...] = ()  # extra stop strings (the end-of-turn token always stops)


@dataclass
class Completion:
    token_ids: list[int]  # generated ids, including the end-of-turn token when the model emitted it
    logprobs: list[float]  # log p(token) under the policy at the sampling temperature, one per token
    text: str
    finished: bool  # ended by end-of-turn or a stop string (not by max_new_tokens)
    version: int = 0  # the policy version that sampled it (asynchronous training bounds its staleness)


class ContextFull(ValueError):
    """A request whose prompt plus its reply budget passes the engine's context: the agent loop ends that trajectory
    (Trajectory.stopped = "context_full", counted in the step's metrics) instead of the run."""

    def __init__(self, prompt: int, budget: int, limit: int):
        super().__init__(f"a prompt of {prompt} tokens plus a reply budget of {budget} passes the engine's context of "
                         f"{limit} tokens (engine.max_model_len for vLLM, the model's max_position_embeddings for hf)")

    @classmethod
    def check(cls, prompt: list[int], sampling: "Sampling", limit: int | None) -> None:
        """Raise before a request that cannot fit (both engines call it as a request arrives)."""
        if limit and len(prompt) + sampling.max_new_tokens > limit:
            raise cls(len(prompt), sampling.max_new_tokens, limit)


def request_seed(stream: int, prompt: list[int], index: int) -> int:
    """The sampling seed of the index-th request for `prompt` in `stream` (a rollout group): a function of what is
    asked, not of which batch or worker serves it, so a run samples the same tokens however its requests were batched."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{stream}:{index}:".encode())
    h.update(array("q", prompt).tobytes())
    return int.from_bytes(h.digest(), "little") >> 1  # 63 bits: fits torch's and vLLM's seeds


def seeded(generate, stream: int):
    """generate(prompt, sampling, n) with each request's seed from request_seed: the k-th time this stream asks for a
    prompt it gets index k (a rejected attempt's resample is a new draw, the same question in a rerun the same one)."""
    asked: dict[tuple, int] = {}

    async def generate_seeded(prompt: list[int], sampling: "Sampling", n: int = 1) -> list["Completion"]:
        key = (tuple(prompt), sampling)
        first = asked.get(key, 0)
        asked[key] = first + n
        return await generate(prompt, sampling, n, seeds=[request_seed(stream, prompt, first + j) for j in range(n)])
    return generate_seeded


class RowSampler(LogitsProcessor):
    """Samples each row with its own generator (temperature, then top-p; temperature 0: the argmax), and leaves only
    the drawn token standing: generate's greedy pick then takes it. A row's tokens depend on its seed and its logits,
    not on its batch. It keeps each drawn token's log-prob under the tempered, untruncated distribution (the
    learner's): a [B] per step, instead of generate keeping [B, V] raw logits per step for a [B, T, V] pass at the end
    (measured at 32 rows x 160 tokens: 1 GB, and ~3 s of stacking alone)."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device):
        self.gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.temperature, self.top_p = temperature, top_p
        self.logprobs: list[torch.Tensor] = []  # [B] per generated token

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.temperature > 0:
            tempered = scores.float() / self.temperature  # [B, V]
            picks = self._draw(torch.softmax(tempered, dim=-1))  # [B, 1]
        else:
            tempered = scores.float()
            picks = tempered.argmax(-1, keepdim=True)  # [B, 1]
        self.logprobs.append(torch.log_softmax(tempered, dim=-1).gather(-1, picks).squeeze(-1))
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, picks, 0.0)

    def _draw(self, probs: torch.Tensor) -> torch.Tensor:
        """probs [B, V] -> one token per row [B, 1]."""
        if self.top_p < 1.0:  # keep the smallest set of tokens whose mass reaches top_p
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p >= self.top_p  # [B, V] the mass before a token already suffices
            probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
        # Inverse CDF, one uniform per row: torch.multinomial draws an exponential per vocabulary entry (1.3 ms a row
        # on a 49k vocabulary here, 7 % of a decode step). The first entry whose CDF exceeds u * total has mass > 0;
        # the target stays below the total, so float rounding cannot run off the end.
        cdf = probs.cumsum(-1)  # [B, V]
        u = torch.cat([torch.rand(1, generator=g, device=probs.device) for g in self.gens])  # [B]
        total = cdf[:, -1:]  # [B, 1]
        target = torch.minimum(u[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))  # [B, 1]
        return torch.searchsorted(cdf, target, right=True)  # [B, 1]


class RowFinish(StoppingCriteria):
    """The end-of-turn ids (every one the model stops at) and the stop strings, as one criterion that records when
    each row finished: the completion is cut there, so no token after it - generate pads finished rows with the pad
    id, which for many models (SmolLM2) is the eos id - enters training with a log-prob the sampler never drew.
    `eos_token_id` is what generate looks for to pad finished rows and stop once all are done."""

    def __init__(self, eos_ids: list[int], stops: StopStringCriteria | None, width: int):
        self.eos_token_id = eos_ids
        self.parts = [EosTokenCriteria(eos_ids)] + ([stops] if stops is not None else [])
        self.width, self.length = width, None  # length: [B] generated tokens when each row finished, -1 while not

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for part in self.parts:
            done |= part(input_ids, scores, **kwargs)
        if self.length is None:
            self.length = torch.full_like(done, -1, dtype=torch.long)
        self.length = torch.where(done & (self.length < 0), input_ids.shape[1] - self.width, self.length)
        return done


def _onednn_linear(self, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear.forward for CPU decoding: oneDNN with the weight reordered once into its own blocked layout."""
    if torch.is_grad_enabled():  # the packed path is inference-only (under autograd oneDNN re-reorders every call)
        return F.linear(x, self.weight, self.bias)
    stamp = (self.weight._version, self.weight.data_ptr())  # an in-place change (a push, an optimiser step) bumps it
    if self._packed_stamp != stamp:
        self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), None)
        self._packed_stamp = stamp
    return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")


def prepack_linears(model: torch.nn.Module, min_numel: int = 2 ** 19) -> int:
    """Route the float32 model's larger linear layers through oneDNN with prepacked weights; returns how many.
    Decoding runs each layer on a few rows, where F.linear (MKL sgemm) is slow for its arithmetic: measured on this
    repo's 2-core AMD EPYC, all of SmolLM2's 211 layers once, 63 ms -> 38 ms at 4 rows, 67 -> 44 at 8, 38 -> 35 at 1
    (decode tokens/s: `python -m actors bench`). But a oneDNN call costs ~50 us more than an sgemm one whatever its
    size: a 192x576 weight takes 80 us packed against 34 plain at 1 row, 1536x576 108 against 126, the 49152x576 head
    4.8 ms against 10.0. So only weights of at least min_numel elements are packed (SmolLM2's MLP and head; none of
    the tiny test model's). Parameters keep their names and tensors (pushes land as before); each layer re-packs
    itself when its weight changed in place since the last pack. A copy of those weights is the memory cost."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return 0
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.weight.dtype == torch.float32
              and m.weight.device.type == "cpu" and m.weight.numel() >= min_numel]
    for m in layers:
        m._packed, m._packed_stamp = None, None
        m.forward = _onednn_linear.__get__(m)
    return len(layers)


def own_generation_config(model, tokenizer) -> tuple[list[int], dict]:
    """Replace the model's generation_config by a plain one, so that generate applies no processor the learner does
    not (Qwen's repetition_penalty, no_repeat_ngram_size, suppressed tokens, forced ids): the sampler (RowSampler)
    draws from softmax(logits / T), as the learner scores. Returns every end-of-turn id (the config's list - Llama
    3's <|eot_id|> beside <|end_of_text|> - and the tokenizer's) and the settings dropped."""
    old = model.generation_config
    eos = old.eos_token_id if isinstance(old.eos_token_id, list) else [old.eos_token_id]
    eos_ids = sorted({int(e) for e in eos + [tokenizer.eos_token_id] if e is not None})
    dropped = {k: v for k, v in old.to_diff_dict().items() if k in PROCESSOR_KEYS}
    model.generation_config = GenerationConfig(pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids)
    return eos_ids, dropped


PROCESSOR_KEYS = ("repetition_penalty", "no_repeat_ngram_size", "bad_words_ids", "suppress_tokens",
                  "begin_suppress_tokens", "min_length", "min_new_tokens", "forced_bos_token_id", "forced_eos_token_id",
                  "sequence_bias", "encoder_repetition_penalty", "exponential_decay_length_penalty", "top_k", "top_p",
                  "temperature", "typical_p", "epsilon_cutoff", "eta_cutoff", "min_p", "renormalize_logits")


class HFEngine(ModelReceiver):
    """transformers `generate`, batched, on CPU (or one GPU): the default engine where vLLM is not available.
    Takes pushed weights as a ModelReceiver (learner/weight_sync.py: weight_info, join, receive, load)."""

    def __init__(self, model: str, dtype: torch.dtype | None = None, device: str = "auto", seed: int = 0,
                 prepack: bool = True, cores: float = 1.0):
        if device == "auto":  # a Ray actor sees a GPU only if it was given one (num_gpus)
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
        self.tokenizer = load_tokenizer(model)
        super().__init__(load_model(model, dtype).to(device), device)  # self.model, self.version, self.lock
        self.eos_ids, _ = own_generation_config(self.model, self.tokenizer)
        self.max_context = getattr(self.model.config, "max_position_embeddings", None) or 1 << 30
        self._stops: dict[tuple, StopStringCriteria] = {}  # built once per stop set (it indexes the vocabulary)
        # Ray pins an actor to one thread (OMP_NUM_THREADS=1); cores: the share of the host's cores a call uses
        # (rollout.engine_cores: all in synchronous RL, where the learner idles during rollouts).
        self.threads = max(1, round((os.cpu_count() or 1) * cores)) if device == "cpu" else None
        if device == "cpu" and prepack:
            prepack_linears(self.model)
        torch.manual_seed(seed)

    def chat_ids(self, messages: list[dict]) -> list[int]:
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: Sampling, seeds: list[int] | None = None) -> list[Completion]:
        """One batched call; seeds: one per prompt (RowSampler); a missing one is drawn from torch's global generator."""
        tok, pad = self.tokenizer, self.tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        greedy = sampling.temperature <= 0  # the argmax: no seeds drawn
        sampler = RowSampler([0 if greedy else int(torch.randint(2 ** 62, ())) if s is None else s
                              for s in seeds or [None] * len(prompts)], sampling.temperature, sampling.top_p,
                             self.device)
        if sampling.stop and sampling.stop not in self._stops:
            self._stops[sampling.stop] = StopStringCriteria(tok, list(sampling.stop))
        finish = RowFinish(self.eos_ids, self._stops.get(sampling.stop), width)
        with self.lock:  # a push waits: one call is sampled by one policy version
            self._own_threads()
            version = self.version
            out = self.model.generate(  # greedy over RowSampler's output = its draw; no processor before it
                input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=sampling.max_new_tokens,
                logits_processor=LogitsProcessorList([sampler]), stopping_criteria=StoppingCriteriaList([finish]),
                return_dict_in_generate=True, past_key_values=self._shared_prefill(prompts, ids, mask))
        new = out.sequences[:, width:]  # [B, T]
        logp = torch.stack(sampler.logprobs, dim=1)[:, :new.shape[1]]  # [B, T]
        ends = finish.length.tolist() if finish.length is not None else [-1] * len(prompts)  # [B]
        results = []
        for row, lp, end in zip(new.tolist(), logp.tolist(), ends):
            n = end if end >= 0 else len(row)  # a row that finished ends at its last sampled token
            text = tok.decode(row[:n], skip_special_tokens=True)
            results.append(Completion(row[:n], lp[:n], text, end >= 0, version))
        return results

    def _shared_prefill(self, prompts: list[list[int]], ids: torch.Tensor, mask: torch.Tensor):
        """A group's G samples and a revision's resamples repeat one prompt: encode each distinct prompt once (all
        but its last token, which generate feeds) and copy its KV cache to the rows that ask it. None: no repeats."""
        slot: dict[tuple, int] = {}  # prompt -> its place among the distinct ones
        rows = [slot.setdefault(tuple(p), len(slot)) for p in prompts]  # [B] the distinct prompt each row asks
        if len(slot) == len(prompts) or ids.shape[1] < 2:
            return None
        distinct = [rows.index(k) for k in range(len(slot))]  # first row of each distinct prompt
        position = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate numbers left-padded rows
        cache = self.model(input_ids=ids[distinct, :-1], attention_mask=mask[distinct, :-1],  # the KV alone: the
                           position_ids=position[distinct, :-1], use_cache=True,  # head on one position, not [B, L, V]
                           logits_to_keep=1).past_key_values
        cache.batch_select_indices(torch.tensor(rows, device=self.device))
        return cache

    def _own_threads(self) -> None:
        """OpenMP's thread count is per calling thread, and calls come from the Batcher's worker threads: in a Ray
        actor those start at OMP_NUM_THREADS=1 whatever the engine's own thread set, while torch.get_num_threads()
        reports the process-wide value (measured: a rollout worker decoded on one core of two, 100 % CPU in top)."""
        if self.threads:
            torch.set_num_threads(self.threads)

    @torch.no_grad()
    def logprobs(self, token_ids: list[int], temperature: float = 1.0) -> list[float]:
        """Log-probs of a fixed sequence (position t: token t+1), to check a weight push against the learner."""
        with self.lock:
            self._own_threads()
            logits = self.model(torch.tensor([token_ids], device=self.device)).logits[0, :-1].float()
        if temperature > 0:
            logits = logits / temperature
        return torch.log_softmax(logits, -1).gather(-1, torch.tensor(token_ids[1:], device=self.device)[:, None]).squeeze(-1).tolist()


def engine_counts() -> dict:
    """What an engine did since the last reset: calls, requests, the largest batch a request was in, and the requests
    waiting as each call began (summed over calls)."""
    return {"calls": 0, "requests": 0, "max": 0, "ready": 0}


def count_call(counts: dict, requests: int, batch: int, ready: int) -> None:
    counts["calls"] += 1
    counts["requests"] += requests
    counts["ready"] += ready
    counts["max"] = max(counts["max"], batch)


class Batcher:
    """Collects concurrent generate requests (trajectories waiting on their next turn) into engine calls, one call per
    distinct sampling setting. Counts what it did (`stats`): engine calls, requests per call, and how many requests
    were waiting when each call began.

    When a call can start it waits for the trajectories that are away - rendering or being critiqued, and so about to
    ask again (the rollout counts them with `join` and `leave`: run_group): a revision phase is then one
    engine call instead of one per wave of renders, each a full sequential decode. It waits at most `max_wait_s` from
    the first waiting request, and not at all once none is away or `max_batch` requests wait. With none counted
    (inference) whatever is waiting goes at once."""

    def __init__(self, engine, max_batch: int = 16, window_s: float = 0.01, max_wait_s: float = 0.0):
        self.engine, self.max_batch, self.window_s, self.max_wait_s = engine, max_batch, window_s, max_wait_s
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._changed: asyncio.Event | None = None
        self.away = 0  # trajectories that will ask again but have not yet (join / leave)
        self.reset_stats()

    def reset_stats(self) -> dict:
        """The counts since the last reset: {"calls", "requests", "max", "ready"} (ready: summed over calls)."""
        old, self.stats = getattr(self, "stats", None), engine_counts()
        return old

    def join(self, n: int = 1) -> None:
        """n trajectories are away and will ask again: a call waits for them (up to max_wait_s)."""
        self.away += n

    def leave(self) -> None:
        """A trajectory is no longer away: it is asking now, or it is done."""
        self.away -= 1
        if self._changed is not None:
            self._changed.set()

    async def generate(self, prompt: list[int], sampling: Sampling, n: int = 1,
                       seeds: list[int] | None = None) -> list[Completion]:
        ContextFull.check(prompt, sampling, getattr(self.engine, "max_context", None))  # alone, not in a call
        if self._task is None:
            self._queue, self._changed = asyncio.Queue(), asyncio.Event()
            self._task = asyncio.ensure_future(self._run())
        futures = [asyncio.get_running_loop().create_future() for _ in range(n)]
        for f, seed in zip(futures, seeds or [None] * n):
            self._queue.put_nowait((prompt, sampling, f, seed))
        self._changed.set()
        return list(await asyncio.gather(*futures))

    async def _gather(self) -> list:
        """The next call's requests: the first to arrive and all that arrive while trajectories are away (bounded
        by max_wait_s from the first, and by max_batch)."""
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        await asyncio.sleep(self.window_s)
        while True:
            while not self._queue.empty() and len(batch) < self.max_batch:
                batch.append(self._queue.get_nowait())
            left = deadline - loop.time()
            if len(batch) >= self.max_batch or self.away <= 0 or left <= 0:
                return batch
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def _run(self) -> None:
        while True:
            batch = await self._gather()
            groups: dict[Sampling, list] = {}
            for item in batch:  # one engine call per distinct sampling setting (a value, so equal ones merge)
                groups.setdefault(item[1], []).append(item)
            unserved = len(batch)
            for items in groups.values():
                # Rows in seed order, not arrival order: a row's log-probs move by ~3e-5 with its place in the batch
                # (SmolLM2, 8 rows, two groups swapped), enough to flip a near-tie mid-reply, and arrival order is
                # timing. Requests without a seed keep theirs (a stable sort).
                items.sort(key=lambda item: -1 if item[3] is None else item[3])
                # requests waiting as this call begins: this batch's unserved ones and any queued since
                count_call(self.stats, len(items), len(items), unserved + self._queue.qsize())
                unserved -= len(items)
                try:
                    outs = await asyncio.to_thread(self.engine.generate, [p for p, *_ in items], items[0][1],
                                                   [seed for *_, seed in items])
                    for (_, _, f, _), c in zip(items, outs):
                        f.done() or f.set_result(c)
                except Exception as e:  # surface to every waiting trajectory
                    for _, _, f, _ in items:
                        f.done() or f.set_exception(e)
