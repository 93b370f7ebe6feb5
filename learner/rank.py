"""LearnerRank: one DeepSpeed rank as a Ray actor. N of them form one torch.distributed group (gloo on CPU)."""
from __future__ import annotations

import os
import pathlib
import random
import time

import ray
import torch

from . import core_algos as algos
from . import weight_sync as ws
from .batch import collate, micro_batches
from .config import LearnerConfig

CACHE = pathlib.Path(__file__).resolve().parents[1] / ".cache"


def _clear_stale_build_locks(root: pathlib.Path, max_age_s: float = 300.0) -> None:
    """torch's extension builder waits while a `lock` file exists; a build killed midway leaves one forever.
    A real build takes well under a minute, so an older lock is stale."""
    for lock in root.glob("*/lock"):
        try:
            if time.time() - lock.stat().st_mtime > max_age_s:
                lock.unlink()
        except OSError:
            pass


@ray.remote
class LearnerRank:
    def __init__(self, model: str, cfg: LearnerConfig, rank: int, world: int, master: str, port: int,
                 micro_batches_per_step: int, temperature: float):
        device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        os.environ.update(MASTER_ADDR=master, MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK="0" if device == "cpu" else str(rank % max(torch.cuda.device_count(), 1)))
        os.environ["DS_ACCELERATOR"] = device  # not inherited from the driver: a CPU test session sets "cpu"
        if device == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(CACHE / "torch_extensions"))  # DeepSpeed's JIT op, built once
        _clear_stale_build_locks(pathlib.Path(os.environ["TORCH_EXTENSIONS_DIR"]))
        import deepspeed

        from actors.models import load_model, load_tokenizer
        self.cfg, self.rank, self.world, self.temperature, self.model_name = cfg, rank, world, temperature, model
        self.gas = micro_batches_per_step
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        deepspeed.init_distributed(dist_backend="gloo" if device == "cpu" else "nccl")
        dtype = torch.bfloat16 if device == "cuda" and cfg.bf16 else torch.float32
        self.pad_id = load_tokenizer(model).pad_token_id
        policy = load_model(model, dtype)
        optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        ds_config = {"train_micro_batch_size_per_gpu": cfg.micro_batch_size, "gradient_accumulation_steps": self.gas,
                     "zero_optimization": {"stage": cfg.zero_stage}, "gradient_clipping": cfg.grad_clip,
                     "bf16": {"enabled": dtype == torch.bfloat16}, "steps_per_print": 10**9}
        self.engine, *_ = deepspeed.initialize(model=policy, optimizer=optimizer, config=ds_config)
        self.ref = None
        if cfg.kl_coef > 0:  # frozen reference for the KL term
            self.ref = load_model(model, dtype).to(self.engine.device).requires_grad_(False)
        self.device = self.engine.device

    def ready(self) -> int:
        return self.rank

    def step(self, samples: list[dict], global_tokens: int) -> dict:
        """One optimiser step over this rank's share of the global batch. Returns sums for the driver to combine."""
        self.engine.train()
        sums = {"loss": 0.0, "kl": 0.0, "clipped": 0.0, "entropy": 0.0, "tokens": 0.0}
        filler = {"token_ids": [self.pad_id, self.pad_id], "loss_mask": [0, 0], "logprobs": [0.0, 0.0], "advantage": 0.0}
        for mb in micro_batches(samples, self.cfg.micro_batch_size, self.gas):
            batch = {k: v.to(self.device) for k, v in collate(mb or [filler], self.pad_id).items()}
            mask = batch["loss_mask"]  # [B, T]
            logits = self.engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            logp = algos.token_logprobs(logits, batch["labels"], self.temperature)  # [B, T]
            loss_tok, clipped = algos.policy_loss(logp, batch["old_logprobs"], batch["advantages"],
                                                  self.cfg.clip_low, self.cfg.clip_high)
            kl = torch.zeros_like(logp)
            if self.ref is not None:
                with torch.no_grad():
                    ref_logits = self.ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
                kl = algos.kl_k3(logp, algos.token_logprobs(ref_logits, batch["labels"], self.temperature))
                loss_tok = loss_tok + self.cfg.kl_coef * kl
            # Normalised by the global batch's token count; x world size because DeepSpeed averages over ranks.
            loss = algos.global_token_mean(loss_tok, mask, global_tokens) * self.world
            self.engine.backward(loss, scale_wrt_gas=False)
            self.engine.step()  # DeepSpeed updates only at the accumulation boundary
            with torch.no_grad():  # summed on the device: one host sync per step, not five per micro-batch
                for key, value in (("loss", loss_tok), ("kl", kl), ("clipped", clipped),
                                   ("entropy", algos.entropy(logits)), ("tokens", torch.ones_like(logp))):
                    sums[key] = sums[key] + (value * mask).sum()
        out = {k: float(v) for k, v in sums.items()}
        norm = self.engine.get_global_grad_norm()
        out["grad_norm"] = float(norm) if norm is not None else 0.0
        return out

    @torch.no_grad()
    def logprobs(self, token_ids: list[int]) -> list[float]:
        """Log-probs of a fixed sequence under the current weights (position t: token t+1)."""
        self.engine.eval()
        ids = torch.tensor([token_ids], device=self.device)
        logits = self.engine(input_ids=ids).logits[:, :-1]
        return algos.token_logprobs(logits, ids[:, 1:], self.temperature)[0].tolist()

    def state_dict(self) -> dict:
        """Full weights on CPU (gathered from all ranks under ZeRO-3); every rank must call it together."""
        module = self.engine.module
        if self.cfg.zero_stage == 3:
            import deepspeed
            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    def put_state_dict(self) -> list:
        """Weights into the Ray object store once; the ref (in a list, so Ray does not resolve it) is what engines read."""
        sd = self.state_dict()
        return [ray.put(sd)] if self.rank == 0 else []

    # --- weight push: the send side of learner/weight_sync.py ---

    def weight_info(self) -> dict:
        """Where this rank's weights live, and a free port for a weight group's rendezvous (rank 0 hosts it)."""
        cuda = self.device.type == "cuda"
        return {"device": self.device.type, "gpu_uuid": ws.gpu_uuid(self.device) if cuda else None,
                "ip": ray.util.get_node_ip_address(), "port": ws.free_port()}

    def weight_metas(self) -> list:
        """Every parameter name with its full shape (even where ZeRO-3 partitions it). A tied weight goes under each of
        its names: vLLM's in-place reload keeps the old values of a name it is not sent."""
        return [ws.TensorMeta(n, tuple(getattr(p, "ds_shape", p.shape)), str(p.dtype).removeprefix("torch."))
                for n, p in self.engine.module.named_parameters(remove_duplicate=False)]

    def join_weight_group(self, backend: str, port: int, world: int, timeout_s: float) -> None:
        self.weight_group = ws.weight_group(backend, ray.util.get_node_ip_address(), port, 0, world, timeout_s)
        self.weight_backend = backend

    def send_weights(self, transport: str, buckets: list) -> list | None:
        """Every rank calls this together (ZeRO-3 gathers each bucket's parameters); rank 0 sends. For cuda_ipc it
        returns the buckets' IPC handles and keeps the buffers until free_shared."""
        import contextlib

        import deepspeed
        params = dict(self.engine.module.named_parameters(remove_duplicate=False))
        handles, self.shared = [], []
        for metas in buckets:
            tensors = [params[m[0]] for m in metas]
            unique = list(dict.fromkeys(tensors))  # a tied weight is gathered once
            gather = (deepspeed.zero.GatheredParameters(unique, modifier_rank=None) if self.cfg.zero_stage == 3
                      else contextlib.nullcontext())
            with gather, torch.no_grad():
                if self.rank != 0:
                    continue
                flat = ws.pack(tensors)  # [bucket bytes] on the learner's device
                if transport == "cuda_ipc":
                    self.shared.append(flat)
                    handles.append(ws.share_cuda(flat))
                else:
                    ws.broadcast(self.weight_group, flat.to("cuda" if self.weight_backend == "nccl" else "cpu"))
        return handles if self.rank == 0 and transport == "cuda_ipc" else None

    def free_shared(self) -> None:
        self.shared = []
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def save(self, path: str) -> None:
        """DeepSpeed state (model, optimizer) + this rank's RNG; rank 0 also writes the Hugging Face model."""
        sd = self.state_dict()
        self.engine.save_checkpoint(os.path.join(path, "deepspeed"), tag="state")
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, os.path.join(path, f"rng_rank{self.rank}.pt"))
        if self.rank == 0:  # a complete Hugging Face model directory: transformers and vLLM load it as is
            from actors.models import load_tokenizer
            self.engine.module.save_pretrained(os.path.join(path, "hf"), state_dict=sd, safe_serialization=True)
            load_tokenizer(self.model_name).save_pretrained(os.path.join(path, "hf"))

    def load(self, path: str) -> None:
        self.engine.load_checkpoint(os.path.join(path, "deepspeed"), tag="state")
        rng = torch.load(os.path.join(path, f"rng_rank{self.rank}.pt"), weights_only=False)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
