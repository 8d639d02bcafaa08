"""What a stream's state holds in memory, moving it between devices, and checks before large allocations (a
stream that cannot fit is refused with its estimate and the free memory, instead of a bare allocator error or
minutes of swapping in the middle of a run).

A stream's state is everything reachable from its object that is not a model: tensors and NumPy arrays
inside containers, dataclasses and objects of this package (or transformers' inference sessions, which
SAM2 streams keep). nn.Modules are weights shared by every stream on them, and inside ComfyUI they
belong to its model management: they are never counted or moved here, only listed (`modules_of`).

Tensors are counted once per storage (views share their base's bytes). Moving keeps two references
to one tensor pointing to one moved tensor; separate views of one storage become separate copies.
After a move, every walked object with a `state_moved()` method is told (a stream drops what points at
the old addresses, such as captured CUDA graphs).
torch.Generators stay where they are: a CUDA generator's state cannot live on the CPU, it holds no
memory worth moving, and a moved-away stream only runs again after moving back.
"""

import dataclasses
import os

import numpy as np
import torch

_PACKAGE = __name__.split(".")[0]
_FOREIGN_STATE = ("transformers.",)  # libraries whose state objects a stream may keep (SAM2's inference session)


def _walks_into(value) -> bool:
    if isinstance(value, (torch.nn.Module, type)) or not hasattr(value, "__dict__"):
        return False
    module = type(value).__module__ or ""
    return (dataclasses.is_dataclass(value) or module == _PACKAGE or module.startswith(_PACKAGE + ".")
            or module.startswith(_FOREIGN_STATE))


def _children(value):
    """(container, key, child) for the items of a container or the attributes of a walked object."""
    if isinstance(value, dict):
        return [(value, key, child) for key, child in value.items()]
    if isinstance(value, (list, tuple)):
        return [(value, index, child) for index, child in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        return [(value, None, child) for child in value]
    if _walks_into(value):
        return [(value.__dict__, key, child) for key, child in vars(value).items()]
    return []


def _leaves(root):
    """Every tensor, array and module reachable from root (modules are not entered), each object once."""
    seen, stack = set(), [root]
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, (torch.Tensor, np.ndarray, torch.nn.Module)):
            yield value
            continue
        stack.extend(child for _, _, child in _children(value))


def _on(tensor: torch.Tensor, device) -> bool:
    if device is None:
        return True
    device = torch.device(device)
    return tensor.device.type == device.type and (device.index is None or tensor.device.index == device.index)


def state_nbytes(state, device=None) -> int:
    """Bytes of the tensors (and NumPy arrays, on the CPU) a stream's state holds, on `device` or anywhere."""
    storages, total = set(), 0
    for leaf in _leaves(state):
        if isinstance(leaf, torch.Tensor) and leaf.device.type != "meta" and _on(leaf, device):
            storage = leaf.untyped_storage()
            key = (str(leaf.device), storage.data_ptr())
            if key not in storages:
                storages.add(key)
                total += storage.nbytes()
        elif isinstance(leaf, np.ndarray) and _on(torch.empty(0), device) and leaf.base is None:
            total += leaf.nbytes
    return total


def state_devices(state) -> set:
    """The devices the state's tensors live on."""
    return {leaf.device for leaf in _leaves(state) if isinstance(leaf, torch.Tensor)}


def modules_of(obj) -> list:
    """The nn.Modules an engine object is made of (itself if it is one), outermost only, each once."""
    if isinstance(obj, torch.nn.Module):
        return [obj]
    found = [leaf for leaf in _leaves(obj) if isinstance(leaf, torch.nn.Module)]
    inner = {id(sub) for module in found for sub in module.modules() if sub is not module}
    return [module for module in found if id(module) not in inner]


def move_state(state, device, non_blocking: bool = False, copy: bool = False) -> int:
    """Move every tensor of a stream's state to `device` in place (models untouched); returns the bytes moved.

    copy=True also replaces tensors already there by fresh copies (what a round trip through another device does).
    """
    device = torch.device(device)
    moved, seen, stack, total = {}, set(), [state], 0
    tuples = []  # (container, key, tuple) to rebuild once their items have moved
    told = []  # walked objects that want to know
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if _walks_into(value) and callable(getattr(value, "state_moved", None)):
            told.append(value)
        for container, key, child in _children(value):
            if isinstance(child, torch.Tensor):
                if copy or not _on(child, device):
                    if id(child) not in moved:
                        moved[id(child)] = (child, child.to(device, non_blocking=non_blocking, copy=copy))
                        total += child.nbytes
                    if key is None:
                        raise TypeError("a tensor inside a set cannot be moved; keep stream tensors in lists")
                    if isinstance(container, tuple):
                        continue  # rebuilt below
                    container[key] = moved[id(child)][1]
            elif isinstance(child, tuple):
                tuples.append((container, key, child))
                stack.append(child)
            else:
                stack.append(child)
    for container, key, old in reversed(tuples):  # innermost first: an outer tuple sees its rebuilt items
        if not any(id(item) in moved for item in old):
            continue
        items = [moved[id(item)][1] if id(item) in moved else item for item in old]
        new = type(old)(*items) if hasattr(old, "_fields") else type(old)(items)
        moved[id(old)] = (old, new)
        if not isinstance(container, tuple):
            container[key] = new
    if total:
        for value in told:
            value.state_moved()
    return total


GIB = 1024 ** 3
HEADROOM = 0.9  # leave a tenth of the free memory for the allocator's fragmentation and other work


class NotEnoughMemoryError(MemoryError):
    """A stream (or model) would need more memory than the device has free; the message gives both."""


def free_bytes(device) -> int:
    """Bytes that can still be allocated on `device` (None when unknown): CUDA's free memory plus what
    PyTorch's caching allocator holds unused; on the CPU the kernel's MemAvailable."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def gib(nbytes: float) -> str:
    """Bytes as GiB with one decimal, for messages."""
    return f"{nbytes / GIB:.1f} GiB"


def check_fits(needed: int, device, what: str, fix: str, reclaimable: int = 0, parts: dict = None) -> None:
    """Raise NotEnoughMemoryError when `needed` bytes do not fit in the free memory of `device` (plus
    `reclaimable` bytes that would be freed first); unknown free memory passes."""
    free = free_bytes(device)
    if free is None or needed <= (free + reclaimable) * HEADROOM:
        return
    detail = ", ".join(f"{name} {gib(size)}" for name, size in (parts or {}).items())
    raise NotEnoughMemoryError(
        f"{what} needs about {gib(needed)}{f' ({detail})' if detail else ''}, but only {gib(free + reclaimable)} "
        f"is free on {torch.device(device)}. {fix}")
