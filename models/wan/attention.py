"""The single attention entry point: torch SDPA by default, flash-attn or SageAttention when installed and chosen.

Tensors are [batch, tokens, heads, head_dim] throughout (the KV cache's layout), so no backend needs a copy.
"""

import importlib

import torch
import torch.nn.functional as F

BACKENDS = ("sdpa", "flash_attn", "sageattention")
_backend = "sdpa"


def available_backends() -> list:
    """Backends whose package imports here ('sdpa' always)."""
    found = ["sdpa"]
    for name in BACKENDS[1:]:
        try:
            importlib.import_module(name)
            found.append(name)
        except ImportError:
            pass
    return found


def set_backend(name: str) -> None:
    """Choose the attention backend for every model in this process."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {BACKENDS}")
    if name not in available_backends():
        raise ImportError(f"attention backend {name!r} is not installed; `pip install {name.replace('_', '-')}` "
                          "or choose 'sdpa'")
    _backend = name


def get_backend() -> str:
    """The attention backend in use."""
    return _backend


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for [B, L, H, D] tensors; a mask (bool, True = attend), a CPU tensor or
    float32 (which flash-attn and SageAttention do not take) use SDPA."""
    fast = mask is None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
    if fast and _backend == "flash_attn":
        from flash_attn import flash_attn_func

        return flash_attn_func(q, k, v)
    if fast and _backend == "sageattention":
        from sageattention import sageattn

        return sageattn(q, k, v, tensor_layout="NHD")
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)
