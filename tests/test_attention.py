"""The attention entry point: every backend computes softmax(q k^T / sqrt(d)) v on the KV cache's [B, L, H, D]
layout, and a backend that cannot run here is a clear error."""

import sys
import types

import pytest
import torch

from streamvace.models.wan.attention import (BACKENDS, PACKAGES, SDPA_KERNELS, attention, available_backends,
                                             check_backend, package_attention)


def definition(q, k, v, mask=None):
    """The attention definition in float64, [B, L, H, D] in and out."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v.double())


@pytest.fixture
def qkv():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, n, 3, 16, generator=g) for n in (5, 7, 7)]


@pytest.mark.parametrize("backend", ["sdpa", *SDPA_KERNELS])
def test_sdpa_backends_compute_the_definition(qkv, backend):
    q, k, v = qkv
    mask = torch.rand(5, 7, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[:, 0] = True  # every query attends somewhere
    assert torch.allclose(attention(q, k, v, backend=backend).double(), definition(q, k, v), atol=1e-5)
    assert torch.allclose(attention(q, k, v, mask, backend=backend).double(), definition(q, k, v, mask), atol=1e-5)


def _stand_in(module_name, fn_name, returns_lse=False, layout_arg=False):
    """A stand-in for an attention package (not installed here): the definition behind its function's signature."""
    seen = {}

    def fn(q, k, v, **kwargs):
        seen.update(kwargs)
        out = definition(q, k, v).to(q.dtype)
        return (out, torch.zeros(q.shape[0], q.shape[2], q.shape[1])) if returns_lse else out

    return types.SimpleNamespace(**{fn_name: fn, "__name__": module_name}), seen


@pytest.mark.parametrize("returns_lse", [False, True], ids=["returns-out", "returns-out-and-lse"])
def test_flash_attention_3_gives_its_output_whichever_its_build_returns(qkv, monkeypatch, returns_lse):
    module, _ = _stand_in("flash_attn_interface", "flash_attn_func", returns_lse)
    monkeypatch.setitem(sys.modules, "flash_attn_interface", module)
    q, k, v = qkv
    assert "flash_attn_3" in available_backends() and check_backend("flash_attn_3") == "flash_attn_3"
    assert torch.allclose(package_attention("flash_attn_3")(q, k, v).double(), definition(q, k, v), atol=1e-6)


def test_sageattention_smooths_a_copy_of_the_keys(qkv, monkeypatch):
    """SageAttention's own smoothing would subtract the key mean in the cache's own buffer; the pack subtracts it
    from a copy (the result is the same: a per-query constant added to every score)."""
    module, seen = _stand_in("sageattention", "sageattn")
    monkeypatch.setitem(sys.modules, "sageattention", module)
    q, k, v = qkv
    k = k + 3.0  # a key mean far from 0, so smoothing changes the keys
    cache = k.clone()
    out = package_attention("sageattention")(q, k, v)
    assert torch.equal(k, cache) and seen == {"tensor_layout": "NHD", "smooth_k": False}
    assert torch.allclose(out.double(), definition(q, k, v), atol=1e-5)


def test_unknown_or_missing_backends_are_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown attention backend 'flash'.*choose one of"):
        check_backend("flash")
    for name, (module, _) in PACKAGES.items():
        monkeypatch.setitem(sys.modules, module, None)  # import fails: not installed
        assert name not in available_backends() and name in BACKENDS
    with pytest.raises(ImportError, match="flash_attn_3.*not installed.*hopper/ folder.*or choose 'sdpa'"):
        check_backend("flash_attn_3")
    with pytest.raises(ImportError, match="pip install sageattention"):
        check_backend("sageattention")
