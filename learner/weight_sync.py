"""How new weights travel from the learner to the rollout engines: the whole protocol in one module.

- `WeightReceiver`: what an engine implements to take a push (a rollout worker is its engine, so the learner calls
  these on the worker actors directly). `ModelReceiver` implements it for a torch model in this process (HFEngine);
  VLLMEngine relays it into vLLM's worker process.
- `Pusher`: the driver's side: picks the transport, forms the weight group, waits with a deadline.
- `send_buckets`: a learner rank's side (called by every rank; rank 0 sends).
- `Receiver`: the engine's side of `broadcast` and `cuda_ipc` (and inside vLLM's worker processes).

Transports (`learner.weight_sync`):
- `object_store`: rank 0 puts the full state dict into the Ray object store once, as numpy arrays (`weight_arrays.py`: one
  copy in, read in place); every engine reads that object.
- `broadcast`: a dedicated process group of learner rank 0 + every engine (NCCL between GPUs, gloo otherwise), apart
  from the learner's own group. Weights go in buckets of about `bucket_mb`; each bucket is one flat byte buffer and
  one collective. Under ZeRO-3 each bucket's parameters are gathered just for that bucket.
- `cuda_ipc`: learner and engine share a GPU (colocated): rank 0 packs the buckets on the GPU (one extra copy of the
  weights while a push lasts) and the engine maps them through CUDA IPC handles and copies out; nothing crosses a wire.
"""
from __future__ import annotations

import datetime
import pickle
import threading
import time
import uuid
from typing import Iterator, NamedTuple, Protocol

import torch
import torch.distributed as dist

from .weight_arrays import from_arrays

TRANSPORTS = ("auto", "object_store", "broadcast", "cuda_ipc")


class WeightReceiver(Protocol):
    """The receive side of a push, as an engine implements it (each returns at once or raises)."""

    def weight_info(self) -> dict:
        """{"device": "cpu"|"cuda", "gpu_uuid": str|None, "group_id": the weight group joined (None), "version": int,
        and optionally "members": the processes that join a weight group for it (vLLM: its tensor-parallel workers,
        ranks rank .. rank + members - 1), 1 when absent}"""

    def join(self, group_id: str, backend: str, master: str, port: int, rank: int, world: int, timeout_s: float) -> None:
        """Join the weight group (rank >= 1; learner rank 0 is its root)."""

    def receive(self, transport: str, buckets: list, version: int, handles: list | None = None) -> int:
        """Take the buckets of a broadcast / cuda_ipc push into the model; returns the new policy version."""

    def load(self, state_dict: dict, version: int) -> int:
        """Take a whole state dict (the object-store push); returns the new policy version."""


class PushInterrupted(RuntimeError):
    """A broadcast push broke off (a member died mid-collective); the next push forms a new group."""


def check_tensor(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    """A pushed tensor must match the engine's own in shape and dtype: a silent cast or broadcast would load
    weights the learner never had."""
    if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
        raise ValueError(f"pushed weight {name!r} is {tuple(got.shape)} {got.dtype}; the engine's is "
                         f"{tuple(want.shape)} {want.dtype} (learner and engine must load the same model and dtype)")


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


def use_interface_towards(peer: str) -> None:
    """gloo picks its network interface from the hostname, which on a multi-homed host (or a network namespace) can
    resolve to an address the other members cannot reach: pin it (GLOO_SOCKET_IFNAME) to the interface this process
    would use to reach `peer`, unless the user set one. No packet is sent (a UDP socket's connect only routes)."""
    import os
    import socket

    import psutil
    if "GLOO_SOCKET_IFNAME" in os.environ and not os.environ.get("RELOOK_PINNED_GLOO"):
        return
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((peer, 9))
            local = s.getsockname()[0]
    except OSError:
        return
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address == local for a in addrs):
            os.environ.update(GLOO_SOCKET_IFNAME=name, RELOOK_PINNED_GLOO="1")
            return


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
    use_interface_towards(master)
    try:
        store = dist.PrefixStore("relook-weights", dist.TCPStore(master, port, world, rank == 0, timeout=timeout))
    except Exception as e:  # a refused or unreachable rendezvous: say where, not only what
        raise TimeoutError(f"weight group rendezvous at {master}:{port} (rank {rank} of {world}) failed within "
                           f"{timeout_s:g} s: {e}") from e
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


class ModelReceiver:
    """WeightReceiver for a torch model in this process: HFEngine is one (actors/engine.py); the learner's bench
    pushes into a bare one. Each pushed tensor is checked against the model's own (name, shape, dtype)."""

    def __init__(self, model: torch.nn.Module, device: str):
        self.model, self.device, self.version = model, device, 0
        self.receiver = Receiver()
        self.lock = threading.Lock()  # a push waits for the generate call in flight, and the other way round

    def weight_info(self) -> dict:
        cuda = self.device == "cuda"
        return {"device": self.device, "gpu_uuid": gpu_uuid() if cuda else None, "group_id": self.receiver.group_id,
                "version": self.version}

    def join(self, group_id: str, backend: str, master: str, port: int, rank: int, world: int, timeout_s: float) -> None:
        self.receiver.join(group_id, backend, master, port, rank, world, timeout_s)

    @torch.no_grad()
    def receive(self, transport: str, buckets: list, version: int, handles: list | None = None) -> int:
        targets = self._targets()
        with self.lock:
            for part in self.receiver.receive(transport, buckets, handles):
                self._copy_in(targets, part)
            self.version = version
        return version

    @torch.no_grad()
    def load(self, state_dict: dict, version: int) -> int:
        state_dict = from_arrays(state_dict)
        missing = {n for n, _ in self.model.named_parameters(remove_duplicate=False)} - set(state_dict)
        if missing:
            raise ValueError(f"pushed weights lack {sorted(missing)[:5]} ({len(missing)} names)")
        targets = self._targets()
        with self.lock:
            self._copy_in(targets, state_dict)
            self.version = version
        return version

    def _targets(self) -> dict:
        """Every tensor a push may set, tied weights under each of their names."""
        return {**dict(self.model.named_buffers(remove_duplicate=False)),
                **dict(self.model.named_parameters(remove_duplicate=False))}

    @staticmethod
    def _copy_in(targets: dict, tensors: dict) -> None:
        for name, tensor in tensors.items():
            if name not in targets:
                raise ValueError(f"pushed weight {name!r} is not a parameter of this engine's model")
            check_tensor(name, tensor, targets[name])
            targets[name].copy_(tensor)


def send_buckets(params: dict, buckets: list, transport: str, rank: int, group, backend: str | None,
                 zero3: bool) -> tuple[list[bytes], list[torch.Tensor]]:
    """A learner rank's side of a broadcast / cuda_ipc push. Every rank calls it together (under ZeRO-3 each bucket's
    parameters are gathered just for that bucket); rank 0 sends. For cuda_ipc it returns the buckets' IPC handles,
    and the caller keeps `shared` (the packed buffers) alive until every engine has copied them."""
    from .zero import gathered
    handles, shared = [], []
    for metas in buckets:
        tensors = [params[m[0]] for m in metas]
        unique = list(dict.fromkeys(tensors))  # a tied weight is gathered once
        with gathered(unique, zero3), torch.no_grad():
            if rank != 0:
                continue
            flat = pack(tensors)  # [bucket bytes] on the learner's device
            if transport == "cuda_ipc":
                shared.append(flat)
                handles.append(share_cuda(flat))
            else:
                broadcast(group, flat.to("cuda" if backend == "nccl" else "cpu"))
    return handles, shared


def group_by_transport(me: dict, infos: list[dict], engines: list) -> dict[str, list]:
    """Pure: learner rank 0's weight_info and each engine's -> {transport: engines} (Pusher.pick)."""
    out: dict[str, list] = {"cuda_ipc": [], "broadcast": [], "object_store": []}
    for info, engine in zip(infos, engines):
        if me["device"] != "cuda" or info["gpu_uuid"] is None:
            out["object_store"].append(engine)
        elif info.get("members", 1) > 1:  # tensor parallel: its GPUs are several, and each worker takes the broadcast
            out["broadcast"].append(engine)
        else:
            out["cuda_ipc" if info["gpu_uuid"] == me["gpu_uuid"] else "broadcast"].append(engine)
    return {t: e for t, e in out.items() if e}


class Pusher:
    """The driver's side: full weights from learner rank 0 to every engine, by `learner.weight_sync`. Raises
    TimeoutError instead of hanging, PushInterrupted when a broadcast broke off (the caller may retry). Ray is imported
    in its methods: vLLM's worker processes import this module, and have no Ray."""

    def __init__(self, ranks: list, transport: str, bucket_mb: float, timeout_s: float):
        self.ranks, self.transport, self.bucket_mb, self.timeout_s = ranks, transport, bucket_mb, timeout_s
        self._plan, self._group, self._group_size, self.last_transport = None, None, 0, None

    def push(self, engines: list, version: int, transport: str | None = None, timeout_s: float | None = None) -> None:
        timeout_s = timeout_s or self.timeout_s
        transport = transport or self.transport
        plan = self.pick(engines) if transport == "auto" else {transport: engines}
        for t, group in plan.items():  # each engine by its own way: one on rank 0's GPU, others on other GPUs
            self._push(t, group, version, timeout_s)
        self.last_transport = "+".join(plan)

    def _push(self, transport: str, engines: list, version: int, timeout_s: float) -> None:
        import ray
        if transport == "object_store":
            (ref,) = [r for refs in ray.get([rank.put_state_dict.remote() for rank in self.ranks]) for r in refs]
            self._wait([e.load.remote(ref, version) for e in engines], len(engines), timeout_s, version)
        elif transport == "broadcast":
            self._join(engines, timeout_s, version)
            sends = [rank.send_weights.remote("broadcast", self._buckets()) for rank in self.ranks]
            acks = [e.receive.remote("broadcast", self._buckets(), version) for e in engines]
            try:
                self._wait(acks + sends, len(engines), timeout_s, version)
            except ray.exceptions.RayTaskError as e:  # e.g. gloo's "connection reset": a member died mid-collective
                self._group = None
                raise PushInterrupted(f"weight broadcast of policy version {version} broke off: {e}") from e
            except Exception:
                self._group = None  # members may be stuck mid-collective: the next push forms a new group
                raise
        elif transport == "cuda_ipc":
            handles = [h for h in ray.get([r.send_weights.remote("cuda_ipc", self._buckets()) for r in self.ranks]) if h][0]
            try:
                self._wait([e.receive.remote("cuda_ipc", self._buckets(), version, handles) for e in engines],
                           len(engines), timeout_s, version)
            finally:
                ray.get(self.ranks[0].free_shared.remote())
        else:
            raise ValueError(f"learner.weight_sync={transport!r} is invalid: expected one of {list(TRANSPORTS)}")

    def pick(self, engines: list) -> dict[str, list]:
        """auto, engine by engine: CUDA IPC for an engine on rank 0's GPU, an NCCL broadcast for engines on other
        GPUs (of any node), the object store for engines on CPU or with a learner on CPU: a gloo broadcast is faster
        there (1.1 s against 1.9 s for SmolLM2, `python -m learner bench`), but one cut by a dying engine holds the
        learner until the group's timeout. -> {transport: its engines}, in the order cuda_ipc, broadcast, object_store."""
        import ray
        return group_by_transport(ray.get(self.ranks[0].weight_info.remote()),
                                  ray.get([e.weight_info.remote() for e in engines]), engines)

    def _buckets(self) -> list:
        import ray
        if self._plan is None:
            metas = ray.get(self.ranks[0].weight_metas.remote())
            self._plan = plan_buckets(metas, int(self.bucket_mb * 2**20))
        return self._plan

    def _join(self, engines: list, timeout_s: float, version: int) -> None:
        """Form the weight group once; again when its membership changed (an engine restarted by Ray has none)."""
        import ray
        refs = [e.weight_info.remote() for e in engines]
        self._wait(refs, len(engines), timeout_s, version, what="the weight-group check of")
        infos = ray.get(refs)
        if self._group is not None and all(i["group_id"] == self._group for i in infos) and len(infos) == self._group_size:
            return
        me = ray.get(self.ranks[0].weight_info.remote())
        backend = "nccl" if me["device"] == "cuda" and all(i["gpu_uuid"] for i in infos) else "gloo"
        sizes = [i.get("members", 1) for i in infos]  # a tensor-parallel engine joins with each of its workers
        group, world = uuid.uuid4().hex, 1 + sum(sizes)
        joins = [e.join.remote(group, backend, me["ip"], me["port"], 1 + sum(sizes[:k]), world, timeout_s)
                 for k, e in enumerate(engines)]
        joins.append(self.ranks[0].join_weight_group.remote(backend, me["port"], world, timeout_s))
        self._wait(joins, len(engines), timeout_s, version, what=f"weight group at {me['ip']}:{me['port']} of")
        self._group, self._group_size = group, len(engines)

    @staticmethod
    def _wait(refs: list, engines: int, timeout_s: float, version: int, what: str = "weight push of") -> None:
        """Wait for every call (engines' first); a failed one raises at once (a dead engine must not leave the push
        waiting out the timeout), one not done by the deadline raises TimeoutError."""
        import ray
        deadline, pending = time.monotonic() + timeout_s, list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                for a in pending:
                    ray.cancel(a, force=False)
                reached = sum(r not in pending for r in refs[:engines])
                raise TimeoutError(f"{what} policy version {version} reached {reached} of {engines} "
                                   f"engines within learner.push_timeout_s={timeout_s:g} s")
            ray.get(ready)
