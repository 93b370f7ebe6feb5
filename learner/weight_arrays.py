"""The object-store push's payload (learner/weight_sync.py, transport `object_store`): a state dict as numpy arrays,
which Ray writes into its object store in one copy and an engine reads in place."""
from __future__ import annotations

import warnings

import torch


def to_arrays(state_dict: dict[str, torch.Tensor]) -> dict[str, tuple]:
    """The object-store payload: name -> (dtype name, numpy array; bfloat16 as int16 bits), each storage once. Ray
    writes numpy arrays into the store in one copy and readers map them in place; pickled tensors were copied twice
    each way (learner/README.md, "Bench"), and pickle's memo now writes a tied weight once."""
    out, seen = {}, {}
    for name, t in state_dict.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if key not in seen:
            c = t.detach().cpu().contiguous()
            bits = c.view(torch.int16) if c.dtype == torch.bfloat16 else c  # numpy has no bfloat16
            seen[key] = (str(c.dtype).removeprefix("torch."), bits.numpy())
        out[name] = seen[key]
    return out


def from_arrays(payload: dict) -> dict[str, torch.Tensor]:
    """to_arrays' inverse, reading the arrays in place (read-only: receivers copy them); tensors pass through."""
    out = {}
    with warnings.catch_warnings():  # "non-writable array": nothing writes to the object store's buffers
        warnings.simplefilter("ignore", UserWarning)
        for name, value in payload.items():
            if isinstance(value, torch.Tensor):
                out[name] = value
            else:
                dtype, array = value
                out[name] = torch.from_numpy(array).view(getattr(torch, dtype))
    return out
