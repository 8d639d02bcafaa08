"""A test helper that fails on host syncs: code run inside `no_host_sync()` may not read tensor values on the
host (`.item()`, `bool(t)`, `int(t)`, `if t.any():`, `.tolist()`, `.numpy()`, `.cpu()`), nor run ops whose
output shape depends on tensor values (`nonzero`, `masked_select`, `unique`, boolean indexing), which on a GPU
all wait for the device. With `host_data=False` it also refuses tensors made from host data (`torch.tensor`
of Python values: a pageable host-to-device copy, which a CUDA graph cannot capture).

Scalar reads go through `aten._local_scalar_dense` (`aten.item` / `aten.is_nonzero` under inference mode) and
data-dependent shapes through a few aten ops, which a TorchDispatchMode sees on any device, so the check runs
on the CPU; `.tolist()` / `.numpy()` / `.cpu()` bypass the dispatcher and are patched on torch.Tensor for the
duration."""

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNCING_OPS = {"_local_scalar_dense", "item", "is_nonzero", "nonzero", "nonzero_static", "masked_select", "_unique", "_unique2",
               "unique_dim", "unique_consecutive", "repeat_interleave.Tensor"}
BOOL_INDEX_OPS = {"index", "index_put", "index_put_", "_index_put_impl_"}
HOST_DATA_OPS = {"lift_fresh", "lift_fresh_copy"}


class HostSyncError(AssertionError):
    """Code that must not sync with the host did."""


class _Refuse(TorchDispatchMode):
    def __init__(self, refused):
        super().__init__()
        self.refused = refused

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.refused or f"{name}.{func._overloadname}" in self.refused:
            raise HostSyncError(f"host sync: aten.{name} ({func}) in code that must not sync with the host")
        if name in BOOL_INDEX_OPS and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                          for i in (args[1] if len(args) > 1 else ())):
            raise HostSyncError(f"host sync: boolean-mask indexing (aten.{name}) has a data-dependent shape")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def no_host_sync(host_data: bool = True):
    """Raise HostSyncError on any host sync (and, with host_data=False, on tensors made from host data)."""
    refused = SYNCING_OPS | (set() if host_data else HOST_DATA_OPS)
    patched = {}
    for name in ("tolist", "numpy", "cpu"):
        def refuse(self, *args, _name=name, **kwargs):
            raise HostSyncError(f"host sync: Tensor.{_name}() in code that must not sync with the host")
        patched[name] = getattr(torch.Tensor, name)
        setattr(torch.Tensor, name, refuse)
    try:
        with _Refuse(refused):
            yield
    finally:
        for name, method in patched.items():
            setattr(torch.Tensor, name, method)
