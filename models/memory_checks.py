"""Memory checks before large allocations: a stream that cannot fit is refused with its estimate and the
free memory, instead of a bare allocator error (or minutes of swapping) in the middle of a run."""

import os

import torch

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
