"""The single attention entry point, with the kernel chosen per model: torch SDPA (PyTorch picks, or cuDNN /
flash / memory-efficient forced), or flash-attn / SageAttention when installed.

Tensors are [batch, tokens, heads, head_dim] throughout (the KV cache's layout), so no backend needs a copy.
"""

import importlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SDPA_KERNELS = {"sdpa_cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa_flash": SDPBackend.FLASH_ATTENTION,
                "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION}
PACKAGES = ("flash_attn", "sageattention")
BACKENDS = ("sdpa", *SDPA_KERNELS, *PACKAGES)


def available_backends() -> list:
    """Backends usable here: the SDPA ones always (a forced kernel that cannot run falls back to 'sdpa'),
    flash_attn / sageattention when their package imports."""
    found = ["sdpa", *SDPA_KERNELS]
    for name in PACKAGES:
        try:
            importlib.import_module(name)
            found.append(name)
        except ImportError:
            pass
    return found


def check_backend(name: str) -> str:
    """The name, if that backend can run here; else a clear error saying what to install or choose."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKENDS}")
    if name not in available_backends():
        raise ImportError(f"attention backend {name!r} is not installed; `pip install {name.replace('_', '-')}` "
                          "or choose 'sdpa'")
    return name


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor = None,
              backend: str = "sdpa") -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for [B, L, H, D] tensors. A mask (bool, True = attend), CPU tensors and
    float32 always use PyTorch's own SDPA choice (flash-attn, SageAttention and forced kernels take none)."""
    fast = mask is None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and backend != "sdpa"
    if fast and backend == "flash_attn":
        from flash_attn import flash_attn_func

        return flash_attn_func(q, k, v)
    if fast and backend == "sageattention":
        from sageattention import sageattn

        # its smooth_k subtracts the keys' mean in place, which would rewrite the KV cache behind k: smooth here
        return sageattn(q, k - k.mean(dim=1, keepdim=True), v, tensor_layout="NHD", smooth_k=False)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if fast and not torch.compiler.is_compiling():  # inside compiled regions Inductor picks the kernel itself
        # the forced kernel first, PyTorch's default order after it for shapes it cannot take
        with sdpa_kernel([SDPA_KERNELS[backend], SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                          SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH], set_priority=True):
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
