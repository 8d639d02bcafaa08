"""The single attention entry point, with the kernel chosen per model: torch SDPA (PyTorch picks, or cuDNN /
flash / memory-efficient forced), or flash-attn 2 / FlashAttention-3 / SageAttention when installed.

Tensors are [batch, tokens, heads, head_dim] throughout (the KV cache's layout), so no backend needs a copy.
"""

import importlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SDPA_KERNELS = {"sdpa_cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa_flash": SDPBackend.FLASH_ATTENTION,
                "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION}
# backend -> (module to import, how to get it)
PACKAGES = {"flash_attn": ("flash_attn", "`pip install flash-attn`"),
            "flash_attn_3": ("flash_attn_interface", "FlashAttention-3 for Hopper: build it from the hopper/ folder of "
                             "github.com/Dao-AILab/flash-attention (it has no PyPI wheel)"),
            "sageattention": ("sageattention", "`pip install sageattention`")}
BACKENDS = ("sdpa", *SDPA_KERNELS, *PACKAGES)


def available_backends() -> list:
    """Backends usable here: the SDPA ones always (a forced kernel that cannot run falls back to 'sdpa'),
    flash_attn / flash_attn_3 / sageattention when their package imports."""
    found = ["sdpa", *SDPA_KERNELS]
    for name, (module, _) in PACKAGES.items():
        try:
            importlib.import_module(module)
            found.append(name)
        except ImportError:
            pass
    return found


def check_backend(name: str) -> str:
    """The name, if that backend can run here; else a clear error saying what to install or choose."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKENDS}")
    if name not in available_backends():
        raise ImportError(f"attention backend {name!r} is not installed: {PACKAGES[name][1]}; or choose 'sdpa'")
    return name


def package_attention(backend: str):
    """fn(q, k, v) -> out over [B, L, H, D] tensors for an installed package backend (its import, adapted)."""
    module = importlib.import_module(PACKAGES[backend][0])
    if backend == "sageattention":
        # its smooth_k subtracts the keys' mean in place, which would rewrite the KV cache behind k: smooth here
        return lambda q, k, v: module.sageattn(q, k - k.mean(dim=1, keepdim=True), v, tensor_layout="NHD",
                                               smooth_k=False)
    if backend == "flash_attn_3":
        def flash3(q, k, v):
            out = module.flash_attn_func(q, k, v)
            return out[0] if isinstance(out, tuple) else out  # FA3 builds before 2025 also return the LSE

        return flash3
    return module.flash_attn_func


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor = None,
              backend: str = "sdpa") -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for [B, L, H, D] tensors. A mask (bool, True = attend), CPU tensors and
    float32 always use PyTorch's own SDPA choice (the packages and forced kernels take none)."""
    fast = mask is None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and backend != "sdpa"
    if fast and backend in PACKAGES:
        return package_attention(backend)(q, k, v)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if fast and not torch.compiler.is_compiling():  # inside compiled regions Inductor picks the kernel itself
        # the forced kernel first, PyTorch's default order after it for shapes it cannot take
        with sdpa_kernel([SDPA_KERNELS[backend], SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                          SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH], set_priority=True):
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
