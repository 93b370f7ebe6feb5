"""How new weights travel from the learner to the rollout engines. Both sides live here; the learner sends
(`learner/rank.py`), each engine holds one `Receiver` (`actors/engine.py`, and inside vLLM's worker processes).

Transports (`learner.weight_sync`):
- `object_store`: rank 0 puts the full state dict into the Ray object store once; every engine reads that object.
- `broadcast`: a dedicated process group of learner rank 0 + every engine (NCCL between GPUs, gloo otherwise), apart
  from the learner's own group. Weights go in buckets of about `bucket_mb`; each bucket is one flat byte buffer and
  one collective. Under ZeRO-3 each bucket's parameters are gathered just for that bucket.
- `cuda_ipc`: learner and engine share a GPU (colocated): rank 0 packs the buckets on the GPU (one extra copy of the
  weights while a push lasts) and the engine maps them through CUDA IPC handles and copies out; nothing crosses a wire.
"""
from __future__ import annotations

import datetime
import pickle
from typing import Iterator, NamedTuple

import torch
import torch.distributed as dist

TRANSPORTS = ("auto", "object_store", "broadcast", "cuda_ipc")


class TensorMeta(NamedTuple):  # a tuple, so it crosses Ray and vLLM's msgpack RPC as is
    name: str
    shape: tuple
    dtype: str  # torch dtype name without "torch.", e.g. "bfloat16"

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * getattr(torch, self.dtype).itemsize


def plan_buckets(metas: list[TensorMeta], bucket_bytes: int) -> list[list[TensorMeta]]:
    """Consecutive tensors into buckets of at most bucket_bytes; a larger tensor gets a bucket of its own."""
    buckets: list[list[TensorMeta]] = [[]]
    size = 0
    for m in metas:
        if buckets[-1] and size + m.nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(m)
        size += m.nbytes
    return [b for b in buckets if b]


def pack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Tensors of any dtypes -> one flat uint8 buffer (their bytes, in order)."""  # [sum(nbytes)]
    return torch.cat([t.detach().contiguous().view(-1).view(torch.uint8) for t in tensors])


def unpack(flat: torch.Tensor, metas: list[TensorMeta]) -> dict[str, torch.Tensor]:
    """The inverse of pack: views into flat, named and shaped as metas say."""
    out, offset = {}, 0
    for m in metas:
        out[m.name] = flat[offset:offset + m.nbytes].view(getattr(torch, m.dtype)).view(m.shape)
        offset += m.nbytes
    return out


def free_port(host: str = "") -> int:
    """A port free right now on this node, for a rendezvous (the DeepSpeed group's or a weight group's)."""
    import socket
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def weight_group(backend: str, master: str, port: int, rank: int, world: int, timeout_s: float):
    """A process group of its own (not the default one, which a learner rank already uses for DeepSpeed).
    Rank 0 hosts the rendezvous store; a member that never joins makes the others fail after timeout_s."""
    timeout = datetime.timedelta(seconds=timeout_s)
    store = dist.PrefixStore("relook-weights", dist.TCPStore(master, port, world, rank == 0, timeout=timeout))
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world, timeout)
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world, opts)
    raise ValueError(f"weight group backend {backend!r}: expected 'gloo' or 'nccl'")


def broadcast(group, flat: torch.Tensor) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([flat], opts).wait()


def gpu_uuid(device: torch.device | int | None = None) -> str:
    return str(torch.cuda.get_device_properties(device if device is not None else torch.cuda.current_device()).uuid)


def share_cuda(flat: torch.Tensor) -> bytes:
    """A CUDA IPC handle for a buffer (the sender keeps the buffer alive until the receivers have copied it)."""
    from torch.multiprocessing.reductions import reduce_tensor
    rebuild, args = reduce_tensor(flat)
    return pickle.dumps((rebuild, args, gpu_uuid(flat.device)))


def open_cuda(handle: bytes) -> torch.Tensor:
    """Map a buffer shared by share_cuda. Ray gives each actor its own CUDA_VISIBLE_DEVICES, so the same GPU can
    have another index here: it is found by UUID."""
    rebuild, args, uuid = pickle.loads(handle)
    local = [i for i in range(torch.cuda.device_count()) if gpu_uuid(i) == uuid]
    if not local:
        raise RuntimeError(f"cuda_ipc: GPU {uuid} is not visible to this engine; use learner.weight_sync=broadcast")
    args = list(args)
    args[6] = local[0]  # the storage's device index (torch.multiprocessing.reductions.rebuild_cuda_tensor)
    return rebuild(*args)


class Receiver:
    """The engine's side of `broadcast` and `cuda_ipc`: yields the received weights bucket by bucket, as
    {name: tensor} views into the bucket's buffer; the engine copies them into its model before the next bucket
    (the learner frees shared buffers only after every engine has answered)."""

    def __init__(self):
        self.group, self.group_id, self.backend = None, None, None

    def join(self, group_id: str, backend: str, master: str, port: int, rank: int, world: int, timeout_s: float) -> None:
        self.group = weight_group(backend, master, port, rank, world, timeout_s)
        self.group_id, self.backend = group_id, backend

    def receive(self, transport: str, buckets: list, handles: list[bytes] | None = None) -> Iterator[dict]:
        for i, metas in enumerate(buckets):
            metas = [TensorMeta(m[0], tuple(m[1]), m[2]) for m in metas]
            if transport == "cuda_ipc":
                yield unpack(open_cuda(handles[i]), metas)
            elif transport == "broadcast":
                if self.group is None:
                    raise RuntimeError("broadcast push to an engine that has not joined a weight group")
                device = "cuda" if self.backend == "nccl" else "cpu"
                flat = torch.empty(sum(m.nbytes for m in metas), dtype=torch.uint8, device=device)
                broadcast(self.group, flat)
                yield unpack(flat, metas)
            else:
                raise ValueError(f"unknown weight transport {transport!r}: expected one of {TRANSPORTS[1:]}")
