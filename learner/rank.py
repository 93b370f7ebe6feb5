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
from . import zero
from .batches import collate, micro_batches, trained_only
from .weight_arrays import to_arrays
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
    """Made in three calls, so that every address it rendezvouses on is one the others can reach: the constructor
    (nothing distributed yet), `address()` on rank 0 (its node's IP and a port free there), `join(master, port)` on
    every rank (the DeepSpeed group), then `build()` (model, optimiser, DeepSpeed engine)."""

    def __init__(self, model: str, cfg: LearnerConfig, rank: int, world: int, micro_batches_per_step: int,
                 temperature: float):
        self.cfg, self.rank, self.world, self.temperature, self.model_name = cfg, rank, world, temperature, model
        self.gas = micro_batches_per_step
        self.device_type = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        os.environ["DS_ACCELERATOR"] = self.device_type  # not inherited from the driver: a CPU test session sets "cpu"
        if self.device_type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(CACHE / "torch_extensions"))  # DeepSpeed's JIT op, built once
        _clear_stale_build_locks(pathlib.Path(os.environ["TORCH_EXTENSIONS_DIR"]))

    def address(self) -> tuple[str, int]:
        """Rank 0: where the group meets - this node's IP and a port free on it right now."""
        ip = ray.util.get_node_ip_address()
        return ip, ws.free_port(ip)

    def node_ip(self) -> str:
        return ray.util.get_node_ip_address()

    def sees(self, path: str) -> bool:
        """Whether a file the driver wrote is visible here (rank 0 writes the checkpoints)."""
        return os.path.exists(path)

    def join(self, master: str, port: int) -> int:
        """Join the DeepSpeed group at master:port (the driver bounds the wait: learner.rendezvous_timeout_s)."""
        import deepspeed
        os.environ.update(MASTER_ADDR=master, MASTER_PORT=str(port), RANK=str(self.rank), WORLD_SIZE=str(self.world),
                          LOCAL_RANK="0" if self.device_type == "cpu" else str(self.rank % max(torch.cuda.device_count(), 1)))
        ws.use_interface_towards(master)
        deepspeed.init_distributed(dist_backend="gloo" if self.device_type == "cpu" else "nccl")
        return self.rank

    def build(self) -> int:
        import deepspeed

        from common.models import load_tokenizer
        cfg, model = self.cfg, self.model_name
        torch.manual_seed(max(cfg.seed, 0))  # -1 (trainer.seed) is resolved by the trainer; 0 when used alone
        random.seed(max(cfg.seed, 0))
        dtype = torch.bfloat16 if self.device_type == "cuda" and cfg.bf16 else torch.float32
        self.pad_id = load_tokenizer(model).pad_token_id
        # an empty micro-batch still runs a forward and backward (every rank takes the same number of steps)
        self.filler = {"token_ids": [self.pad_id] * 2, "loss_mask": [0, 0], "logprobs": [0.0, 0.0], "advantage": 0.0}
        # fp32 training: the optimizer's fp32 master partitions equal the weights, so a checkpoint need not hold them
        # twice; they are refreshed from the (exact) weights on load. bf16 keeps them: they are more precise.
        self.fp32_master_in_weights = dtype == torch.float32 and cfg.zero_stage < 3
        ds_config = zero.train_config(cfg, self.gas, dtype, self.fp32_master_in_weights)
        policy, self._hf_zero3 = zero.load(model, dtype, ds_config, cfg.gradient_checkpointing)  # ZeRO-3: partitioned
        optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        self.engine, *_ = deepspeed.initialize(model=policy, optimizer=optimizer, config=ds_config)
        self.ref = None
        if cfg.kl_coef > 0:  # the frozen reference for the KL term: ZeRO-3 partitions it too (learner/zero.py)
            ref_config = zero.reference_config(cfg, dtype)
            ref, keep = zero.load(model, dtype, ref_config)
            self.ref = deepspeed.initialize(model=ref.requires_grad_(False), config=ref_config)[0] if ref_config \
                else ref.to(self.engine.device).requires_grad_(False)
            if keep is not None and self._hf_zero3 is not None:
                from transformers.integrations.deepspeed import set_hf_deepspeed_config
                set_hf_deepspeed_config(self._hf_zero3)  # transformers' ZeRO-3 flag is the policy's again
        self.device = self.engine.device
        return self.rank

    def step(self, samples: list[dict], global_tokens: int, measure: bool = False) -> dict:
        """One optimiser step over this rank's share of the global batch. Returns sums for the driver to combine;
        measure: this step is the RL step's first, so the weights are still the sampler's (DeepSpeed updates at the
        accumulation boundary) and the gap to the engine's log-probs is measured on the way (core_algos.sampler_gap)."""
        self.engine.train()
        sums = {"loss": 0.0, "kl": 0.0, "clipped": 0.0, "entropy": 0.0, "tokens": 0.0}
        gap = {"abs": 0.0, "max": 0.0, "ratio": 0.0, "tokens": 0.0}
        for mb in micro_batches(samples, self.cfg.micro_batch_size, self.gas):
            batch = {k: v.to(self.device) for k, v in collate(mb or [self.filler], self.pad_id).items()}
            inputs = trained_only(batch)  # the LM head runs on the K positions some row trains on
            mask = batch["loss_mask"]  # [B, K]
            logits = self.engine(**inputs).logits  # [B, K, V]
            logp = algos.token_logprobs(logits, batch["labels"], self.temperature)  # [B, K]
            if self.cfg.loss == "decoupled":  # samples up to trainer.max_staleness versions old
                prox = batch["prox_logprobs"] if mb and "prox_logprobs" in mb[0] else logp.detach()  # the step's own
                loss_tok, clipped = algos.decoupled_policy_loss(logp, prox, batch["old_logprobs"], batch["advantages"],
                                                                self.cfg.clip_low, self.cfg.clip_high, self.cfg.is_cap)
            else:
                loss_tok, clipped = algos.policy_loss(logp, batch["old_logprobs"], batch["advantages"],
                                                      self.cfg.clip_low, self.cfg.clip_high)
            kl = torch.zeros_like(logp)
            if self.ref is not None:
                with torch.no_grad():
                    ref_logits = self.ref(**inputs).logits
                kl = algos.kl_k3(logp, algos.token_logprobs(ref_logits, batch["labels"], self.temperature))
                loss_tok = loss_tok + self.cfg.kl_coef * kl
            # Normalised by the global batch's token count; x world size because DeepSpeed averages over ranks.
            loss = algos.global_token_mean(loss_tok, mask, global_tokens) * self.world
            self.engine.backward(loss, scale_wrt_gas=False)
            self.engine.step()  # DeepSpeed updates only at the accumulation boundary
            with torch.no_grad():  # summed on the device: one host sync per step, not five per micro-batch
                for key, value in (("loss", loss_tok), ("kl", kl), ("clipped", clipped), ("tokens", torch.ones_like(logp))):
                    sums[key] = sums[key] + (value * mask).sum()
                sums["entropy"] = sums["entropy"] + algos.entropy(logits[mask.bool()]).sum()  # trained tokens only
                if measure:
                    part = {k: float(v) for k, v in algos.sampler_gap(logp, batch["old_logprobs"],
                                                                       mask * batch["on_policy"][:, None]).items()}
                    gap = {k: max(gap[k], v) if k == "max" else gap[k] + v for k, v in part.items()}
        out = {k: float(v) for k, v in sums.items()}
        out.update({f"gap_{k}": v for k, v in gap.items()})
        norm = self.engine.get_global_grad_norm()
        out["grad_norm"] = float(norm) if norm is not None else 0.0
        return out

    @torch.no_grad()
    def proximal(self, samples: list[dict], count: int) -> list[list[float]]:
        """The current policy's log-probs of each sample's tokens (the layout of its `logprobs`: index t holds token
        t's, 0 at index 0), in `count` forwards (every rank runs as many: ZeRO-3 gathers weights in each). The
        decoupled loss's proximal policy, taken once before a step's first update."""
        self.engine.eval()
        out = []
        for mb in micro_batches(samples, self.cfg.micro_batch_size, count):
            batch = {k: v.to(self.device) for k, v in collate(mb or [self.filler], self.pad_id).items()}
            logits = self.engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            logp = algos.token_logprobs(logits, batch["labels"], self.temperature).cpu()  # [B, L-1]
            out += [[0.0] + row[:len(s["token_ids"]) - 1] for s, row in zip(mb, logp.tolist())]
        return out

    @torch.no_grad()
    def logprobs(self, token_ids: list[int]) -> list[float]:
        """Log-probs of a fixed sequence under the current weights (position t: token t+1)."""
        self.engine.eval()
        ids = torch.tensor([token_ids], device=self.device)
        logits = self.engine(input_ids=ids).logits[:, :-1]
        return algos.token_logprobs(logits, ids[:, 1:], self.temperature)[0].tolist()

    def state_dict(self) -> dict:
        """Full weights on CPU at rank 0, {} elsewhere; every rank calls it together (ZeRO-3 gathers bucket by
        bucket, learner.bucket_mb: zero.full_state_dict)."""
        return zero.full_state_dict(self.engine.module, self.cfg.zero_stage == 3, self.cfg.bucket_mb, self.rank)

    def put_state_dict(self) -> list:
        """Weights into the Ray object store once (weight_arrays.to_arrays); the ref (in a list, so Ray does not resolve it) is
        what engines read."""
        # ZeRO-3 gathers (every rank takes part); otherwise rank 0 reads its weights in place: ray.put copies.
        sd = self.state_dict() if self.cfg.zero_stage == 3 else self.engine.module.state_dict() if self.rank == 0 else {}
        return [ray.put(to_arrays(sd))] if self.rank == 0 else []

    # --- weight push: the send side of learner/weight_sync.py ---

    def weight_info(self) -> dict:
        """Where this rank's weights live, and a free port on its node for a weight group's rendezvous (rank 0 hosts it)."""
        cuda = self.device.type == "cuda"
        ip = ray.util.get_node_ip_address()
        return {"device": self.device.type, "gpu_uuid": ws.gpu_uuid(self.device) if cuda else None,
                "ip": ip, "port": ws.free_port(ip)}

    def weight_metas(self) -> list:
        """Every parameter name with its full shape (even where ZeRO-3 partitions it). A tied weight goes under each of
        its names: vLLM's in-place reload keeps the old values of a name it is not sent."""
        return [ws.TensorMeta(n, tuple(getattr(p, "ds_shape", p.shape)), str(p.dtype).removeprefix("torch."))
                for n, p in self.engine.module.named_parameters(remove_duplicate=False)]

    def join_weight_group(self, backend: str, port: int, world: int, timeout_s: float) -> None:
        self.weight_group = ws.weight_group(backend, ray.util.get_node_ip_address(), port, 0, world, timeout_s)
        self.weight_backend = backend

    def send_weights(self, transport: str, buckets: list) -> list | None:
        """Every rank calls this together; rank 0 sends (weight_sync.send_buckets). For cuda_ipc it returns the
        buckets' IPC handles and keeps the buffers until free_shared."""
        params = dict(self.engine.module.named_parameters(remove_duplicate=False))
        handles, self.shared = ws.send_buckets(params, buckets, transport, self.rank, getattr(self, "weight_group", None),
                                               getattr(self, "weight_backend", None), self.cfg.zero_stage == 3)
        return handles if self.rank == 0 and transport == "cuda_ipc" else None

    def free_shared(self) -> None:
        self.shared = []
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def save(self, path: str) -> None:
        """Rank 0 writes the Hugging Face model (transformers and vLLM load it as is); every rank writes its DeepSpeed
        state (Adam moments; the fp32 master partition when training in bf16) and RNG. The weights are stored once:
        under ZeRO-1/2 DeepSpeed would write the whole module again beside the HF copy, so its module file is left
        empty and `load` takes the weights from the HF copy (ZeRO-3's module file holds only placeholders)."""
        # ZeRO-3: every rank joins the gather; otherwise rank 0 alone needs the full weights
        sd = self.state_dict() if self.rank == 0 or self.cfg.zero_stage == 3 else None
        if self.rank == 0:
            from common.models import load_tokenizer
            self.engine.module.save_pretrained(os.path.join(path, "hf"), state_dict=sd, safe_serialization=True)
            load_tokenizer(self.model_name).save_pretrained(os.path.join(path, "hf"))
        if self.cfg.zero_stage < 3:
            self.engine.module_state_dict = lambda **_: {}  # this one save only: the HF copy holds the weights
        if self.fp32_master_in_weights:
            full = self.engine.optimizer.state_dict
            self.engine.optimizer.state_dict = lambda: {k: v for k, v in full().items()
                                                        if k != "single_partition_of_fp32_groups"}
        try:
            self.engine.save_checkpoint(os.path.join(path, "deepspeed"), tag="state")
        finally:
            self.engine.__dict__.pop("module_state_dict", None)
            self.engine.optimizer.__dict__.pop("state_dict", None)
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, os.path.join(path, f"rng_rank{self.rank}.pt"))

    def load(self, path: str) -> None:
        load_fn = None
        if self.cfg.zero_stage < 3:
            import glob

            from safetensors.torch import load_file
            weights = {}  # every shard of the HF copy (large models are saved in several files)
            for shard in sorted(glob.glob(os.path.join(path, "hf", "*.safetensors"))):
                weights.update(load_file(shard))

            def load_fn(src, dst):  # the module's weights from the HF copy; tied names may be absent from it
                missing, unexpected = dst.load_state_dict(weights, strict=False)
                tied = {n for n, _ in dst.named_parameters(remove_duplicate=False)} - {n for n, _ in dst.named_parameters()}
                if unexpected or set(missing) - tied:
                    raise ValueError(f"checkpoint {path}: weights do not fit the model (missing {missing}, "
                                     f"unexpected {unexpected})")
        # The optimizer's fp32 master partitions come from DeepSpeed's files in bf16 training, and from the (exact)
        # weights just loaded in fp32 training (zero_optimization.load_from_fp32_weights, set in build).
        self.engine.load_checkpoint(os.path.join(path, "deepspeed"), tag="state", custom_load_fn=load_fn)
        rng = torch.load(os.path.join(path, f"rng_rank{self.rank}.pt"), weights_only=False)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
