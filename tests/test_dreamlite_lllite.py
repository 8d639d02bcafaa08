"""Temporal-LLLite: hook placement, the kohya math, the compile-friendly form, and the published key layout."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import DreamLiteUNetModel
from dreamlite_tiny import TEXT_HIDDEN, tiny_unet
from dreamlite_tiny import one_torch_thread  # noqa: F401 (an autouse fixture)
from safetensors.torch import save_file

from streamvace.models.checkpoint_io import CheckpointError
from streamvace.models.dreamlite.loader import MOBILE_UNET_CONFIG
from streamvace.models.dreamlite.temporal_lllite import (WIDTH_CONCAT, TemporalLLLite, conditioning_encoder, hook_key,
                                               lllite_target_names)

SIZE = 64  # pixels; latents 8x8, concatenated to 8x16


def _randomize(adapter, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter.parameters():  # the zero-initialised `up` too, or the adapter does nothing
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


def _unet_inputs(batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return dict(sample=torch.randn(batch, 4, SIZE // 8, 2 * SIZE // 8, generator=generator),
                timestep=torch.full((batch,), 700.0),
                encoder_hidden_states=torch.randn(batch, 6, TEXT_HIDDEN, generator=generator),
                encoder_attention_mask=torch.ones(batch, 6),
                added_cond_kwargs={"time_ids": torch.tensor([[SIZE, SIZE]] * batch, dtype=torch.float32)},
                return_dict=False)


def _cond(batch=2, seed=1):
    return torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture()
def unet():
    return tiny_unet()


def test_real_mobile_unet_has_the_published_hook_counts():
    with torch.device("meta"):
        unet = DreamLiteUNetModel(**MOBILE_UNET_CONFIG)
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 2) == 389.97
    assert len(lllite_target_names(unet, "all")) == 108
    assert len(lllite_target_names(unet, "down_blocks")) == 38
    assert len(lllite_target_names(unet, "down_blocks+mid_block")) == 38 + 16
    with torch.device("meta"):
        adapter = TemporalLLLite(unet, "all", cond_emb_dim=32, mlp_dim=64)
    # 13.27 M float32 parameters = 50.6 MiB: the size of the published temporal_lllite_step001440.safetensors
    assert sum(p.numel() for p in adapter.parameters()) == 13_265_472


def test_subset_filter_hooks_exactly_the_intended_linears(unet):
    expected = sorted(name for name, module in unet.named_modules() if isinstance(module, torch.nn.Linear)
                      and name.startswith("down_blocks.")
                      and name.rsplit(".", 2)[-2:] in (["attn1", "to_q"], ["attn1", "to_k"], ["attn1", "to_v"],
                                                       ["attn2", "to_q"]))
    adapter = TemporalLLLite(unet, "down_blocks")
    assert sorted(adapter.modules_dict) == sorted(hook_key(name) for name in expected)
    assert len(expected) == 1 + 2 + 2 * 4  # no self-attention in the first two stages: attn2.to_q only
    adapter.attach()
    patched = sorted(name for name, module in unet.named_modules() if "forward" in module.__dict__)
    assert patched == expected
    adapter.detach()
    assert not any("forward" in module.__dict__ for module in unet.modules())


def test_conditioning_encoder_has_kohyas_layer_layout():
    def shapes(stride):
        return {k: tuple(v.shape) for k, v in conditioning_encoder(32, stride).state_dict().items() if "weight" in k}
    assert shapes(8) == {"0.weight": (16, 3, 4, 4), "2.weight": (32, 16, 2, 2)}
    assert shapes(16) == {"0.weight": (16, 3, 4, 4), "2.weight": (32, 16, 4, 4)}
    assert shapes(32) == {"0.weight": (16, 3, 4, 4), "2.weight": (16, 16, 4, 4), "4.weight": (32, 16, 2, 2)}


def _reference_hooks(unet, adapter, cond):
    """kohya's forward, written plainly: embed the condition each call, pad the source half, add to the input."""
    handles = []
    for name, module in adapter.modules_dict.items():
        embedding = module.conditioning1(cond)
        embedding = torch.cat([embedding, torch.zeros_like(embedding).repeat(1, 1, 1, WIDTH_CONCAT - 1)], dim=3)
        tokens = embedding.flatten(2).transpose(1, 2)

        def pre_hook(_, args, module=module, tokens=tokens):
            x = args[0]
            delta = module.up(module.mid(torch.cat([tokens, module.down(x)], dim=2)))
            return (x + delta,)
        handles.append(unet.get_submodule(name.replace("__", ".")).register_forward_pre_hook(pre_hook))
    return handles


@pytest.mark.parametrize("hook_blocks", ["down_blocks", "all"])
def test_compile_friendly_forward_equals_the_reference_forward(unet, hook_blocks):
    adapter = TemporalLLLite(unet, hook_blocks)
    _randomize(adapter)
    cond = _cond()
    with torch.no_grad():
        bare = unet(**_unet_inputs())[0]
        handles = _reference_hooks(unet, adapter, cond)
        reference = unet(**_unet_inputs())[0]
        for handle in handles:
            handle.remove()
        adapter.allocate(2, SIZE, SIZE)
        adapter.set_cond_image(cond)
        adapter.attach()
        ours = unet(**_unet_inputs())[0]
    assert (reference - bare).abs().max() > 1e-3  # the adapter really changes the output
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_multiplier_zero_is_exactly_the_bare_unet(unet):
    adapter = TemporalLLLite(unet, "all")
    _randomize(adapter)
    with torch.no_grad():
        bare = unet(**_unet_inputs())[0]
        adapter.allocate(2, SIZE, SIZE)
        adapter.set_cond_image(_cond())
        adapter.attach()
        adapter.set_multiplier(0.0)
        assert torch.equal(unet(**_unet_inputs())[0], bare)
        adapter.set_multiplier(1.0)
        assert not torch.equal(unet(**_unet_inputs())[0], bare)


def test_unet_and_adapter_compile_to_one_graph_that_sees_in_place_updates(unet):
    adapter = TemporalLLLite(unet, "all")
    _randomize(adapter)
    adapter.allocate(2, SIZE, SIZE)
    adapter.attach()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    # fullgraph=True raises on any graph break, so U-Net + all hooks really are one graph
    compiled = torch.compile(unet, backend="eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        results = []
        for seed, strength in ((1, 1.0), (2, 1.0), (2, 0.5)):
            adapter.set_cond_image(_cond(seed=seed))
            adapter.set_multiplier(strength)
            results.append((compiled(**_unet_inputs())[0], unet(**_unet_inputs())[0]))
    for compiled_out, eager_out in results:
        torch.testing.assert_close(compiled_out, eager_out, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(results[0][0], results[1][0]) and not torch.allclose(results[1][0], results[2][0])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # no recompilation per frame


def _published_style_file(unet, path, hook_blocks="all"):
    """A tiny adapter saved like dreamlite-stream's trainer: every hook, fp32, `modules_dict.` keys, metadata."""
    trained = TemporalLLLite(unet, hook_blocks, cond_emb_dim=8, mlp_dim=16)
    _randomize(trained, seed=5)
    state = {k: v.float().contiguous() for k, v in trained.state_dict().items()}
    save_file(state, str(path), {"kind": "temporal_lllite", "cond_emb_dim": "8", "mlp_dim": "16", "step": "1440"})
    return state


def test_published_layout_loads_non_strictly_into_the_down_blocks_subset(unet, tmp_path):
    path = tmp_path / "temporal_lllite_step001440.safetensors"
    state = _published_style_file(unet, path)
    first = "modules_dict.down_blocks__0__attentions__0__transformer_blocks__0__attn2__to_q."
    assert {first + k for k in ("conditioning1.0.weight", "conditioning1.2.weight", "down.0.weight", "mid.0.weight",
                                "up.0.bias")} <= set(state)
    adapter, report = TemporalLLLite.from_file(unet, str(path), "down_blocks")
    down = lllite_target_names(unet, "down_blocks")
    assert sorted(report.loaded) == sorted(hook_key(n) for n in down)
    assert sorted(report.ignored) == sorted(hook_key(n) for n in lllite_target_names(unet, "all") if n not in down)
    assert report.missing == [] and report.unknown == []
    assert "loaded 11 hooks, ignored 28" in report.summary()
    for key, tensor in adapter.state_dict().items():
        assert torch.equal(tensor, state[key])
    assert adapter.modules_dict[hook_key(down[0])].down[0].out_features == 16


def test_adapter_for_another_model_is_a_clear_error(unet, tmp_path):
    kohya = tmp_path / "controllllite_sdxl.safetensors"
    save_file({"lllite_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.down.0.weight": torch.zeros(2, 2)},
              str(kohya))
    with pytest.raises(CheckpointError, match="kohya SDXL LLLite"):
        TemporalLLLite.from_file(unet, str(kohya))
    other = tmp_path / "other_unet.safetensors"
    state = _published_style_file(unet, other, "down_blocks")
    wrong = {k.replace("down_blocks__2", "down_blocks__7"): v for k, v in state.items()}
    save_file(wrong, str(other))
    _, report = TemporalLLLite.from_file(unet, str(other), "down_blocks")
    assert len(report.unknown) == 8 and len(report.missing) == 8
    bad = {k: (v[:, :1].contiguous() if k.endswith("down.0.weight") else v) for k, v in state.items()}
    save_file(bad, str(other))
    with pytest.raises(CheckpointError, match="does not fit this U-Net"):
        TemporalLLLite.from_file(unet, str(other), "down_blocks")


def test_condition_of_the_wrong_size_is_a_clear_error(unet):
    adapter = TemporalLLLite(unet, "down_blocks")
    adapter.allocate(2, SIZE, SIZE)
    with pytest.raises(ValueError, match="does not match the allocated frame size"):
        adapter.set_cond_image(F.interpolate(_cond(), size=(SIZE * 2, SIZE)))
