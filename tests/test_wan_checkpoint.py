"""Oracle parity with diffusers' Wan / Wan-VACE transformers, and every checkpoint distribution round-tripping
through the real loader (prefixes, training-checkpoint nesting, diffusers naming, shards, VACE modules,
LoRAs, dtypes), plus clear errors for corrupt, foreign and incomplete files."""

import os

import pytest
import torch
from diffusers import WanTransformer3DModel, WanVACETransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors.torch import save_file

from streamvace.models.checkpoint_io import CheckpointError
from streamvace.models.wan.checkpoint import load_wan_model

from wan_tiny import TEXT_DIM, TINY, tiny_model


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(5)
    return dict(latents=torch.randn(1, 16, 3, 8, 12), timesteps=torch.tensor([640.0]), text=torch.randn(1, 20, TEXT_DIM),
                context=torch.randn(1, 96, 3, 8, 12))


def _out(model, inputs, vace=False):
    with torch.no_grad():
        kwargs = dict(vace_context=[inputs["context"]], vace_scales=[0.6]) if vace else {}
        return model(inputs["latents"], inputs["timesteps"], inputs["text"], **kwargs)


def _save(sd, path):
    if path.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        torch.save(sd, path)
    return path


def _diffusers_kwargs():
    return dict(patch_size=(1, 2, 2), num_attention_heads=TINY["num_heads"], attention_head_dim=128, in_channels=16,
                out_channels=16, text_dim=TINY["text_dim"], freq_dim=TINY["freq_dim"], ffn_dim=TINY["ffn_dim"],
                num_layers=TINY["num_layers"])


@pytest.mark.parametrize("vace", [False, True], ids=["t2v", "vace"])
def test_forward_equals_diffusers(tmp_path, inputs, vace):
    original = tiny_model(vace=vace)
    path = _save(original.state_dict(), str(tmp_path / "wan.safetensors"))
    ours = load_wan_model(path, dtype=torch.float32)
    converted = convert_wan_transformer_to_diffusers({k: v.clone() for k, v in original.state_dict().items()})
    if vace:
        oracle = WanVACETransformer3DModel(**_diffusers_kwargs(), vace_layers=[0, 2], vace_in_channels=96)
    else:
        oracle = WanTransformer3DModel(**_diffusers_kwargs())
    oracle.load_state_dict(converted, strict=True)
    text = torch.zeros(1, 512, TEXT_DIM)
    text[:, :inputs["text"].shape[1]] = inputs["text"]
    with torch.no_grad():
        kwargs = dict(control_hidden_states=inputs["context"], control_hidden_states_scale=torch.full((2,), 0.6)) if vace else {}
        expected = oracle.eval()(hidden_states=inputs["latents"], timestep=inputs["timesteps"],
                                 encoder_hidden_states=text, return_dict=False, **kwargs)[0]
    assert rel_err(_out(ours, inputs, vace), expected) <= 1e-4



def test_several_vace_contexts_add_their_own_strength_weighted_hints(inputs):
    # several controls are summed outside the blocks (combine_hints); the one-context path is the one diffusers
    # checks above, so each context with the other at strength 0 must equal it alone, and order must not matter
    model = tiny_model(vace=True)
    first, second = inputs["context"], torch.randn(inputs["context"].shape, generator=torch.Generator().manual_seed(9))

    def out(contexts, scales):
        with torch.no_grad():
            return model(inputs["latents"], inputs["timesteps"], inputs["text"], vace_context=contexts,
                         vace_scales=scales)

    torch.testing.assert_close(out([first, second], [0.7, 0.0]), out([first], [0.7]))
    torch.testing.assert_close(out([first, second], [0.0, 0.4]), out([second], [0.4]))
    torch.testing.assert_close(out([first, second], [0.7, 0.4]), out([second, first], [0.4, 0.7]))
    assert not torch.allclose(out([first, second], [0.7, 0.4]), out([first, second], [0.4, 0.7]))

def test_diffusers_naming_in_a_sharded_folder_loads(tmp_path, inputs):
    original = tiny_model(vace=True)
    converted = convert_wan_transformer_to_diffusers({k: v.clone() for k, v in original.state_dict().items()})
    keys = sorted(converted)
    folder = tmp_path / "transformer"
    folder.mkdir()
    _save({k: converted[k] for k in keys[::2]}, str(folder / "diffusion_pytorch_model-00001-of-00002.safetensors"))
    _save({k: converted[k] for k in keys[1::2]}, str(folder / "diffusion_pytorch_model-00002-of-00002.safetensors"))
    loaded = load_wan_model(str(folder), dtype=torch.float32)
    assert torch.equal(_out(loaded, inputs, True), _out(original, inputs, True))


@pytest.mark.parametrize("layout", ["wan-ai.safetensors", "comfy-org.safetensors", "self-forcing.pth", "fsdp-ema.pth"])
def test_distributions_round_trip(tmp_path, inputs, layout):
    original = tiny_model()
    sd = original.state_dict()
    if layout.startswith("comfy-org"):
        sd = {f"model.diffusion_model.{k}": v for k, v in sd.items()}
    elif layout.startswith("self-forcing"):
        decoy = {f"model.{k}": torch.zeros_like(v) for k, v in sd.items()}
        sd = {"generator": decoy, "generator_ema": {f"model.{k}": v for k, v in sd.items()}, "step": torch.tensor(3)}
    elif layout.startswith("fsdp"):
        sd = {"generator_ema": {f"model._fsdp_wrapped_module.{k}": v for k, v in sd.items()}}
    loaded = load_wan_model(_save(sd, str(tmp_path / layout)), dtype=torch.float32)
    assert torch.equal(_out(loaded, inputs), _out(original, inputs))


def test_vace_module_file_combines_with_a_base_model(tmp_path, inputs):
    full = tiny_model(vace=True)
    sd = full.state_dict()
    base = _save({k: v for k, v in sd.items() if not k.startswith("vace_")}, str(tmp_path / "t2v.safetensors"))
    module = _save({k: v.to(torch.bfloat16) for k, v in sd.items() if k.startswith("vace_")},
                   str(tmp_path / "Wan2_1-VACE_module_1_3B_bf16.safetensors"))
    loaded = load_wan_model(base, vace_path=module, dtype=torch.float32)
    assert loaded.has_vace and loaded.vace_layers == [0, 2]
    reference = tiny_model(vace=True)
    reference.load_state_dict({k: (v.to(torch.bfloat16).float() if k.startswith("vace_") else v) for k, v in sd.items()})
    assert torch.equal(_out(loaded, inputs, True), _out(reference, inputs, True))
    with pytest.raises(CheckpointError, match="VACE module"):
        load_wan_model(module)


@pytest.mark.parametrize("style", ["peft", "kohya"])
def test_lora_is_merged_at_load(tmp_path, inputs, style):
    base = tiny_model()
    sd = base.state_dict()
    torch.manual_seed(9)
    lora, expected = {}, {k: v.clone() for k, v in sd.items()}
    for i in range(TINY["num_layers"]):
        for name in ("self_attn.q", "cross_attn.o", "ffn.0"):
            weight = sd[f"blocks.{i}.{name}.weight"]
            down, up = torch.randn(4, weight.shape[1]) * 0.05, torch.randn(weight.shape[0], 4) * 0.05
            if style == "peft":
                lora[f"base_model.model.blocks.{i}.{name}.lora_A.weight"] = down
                lora[f"base_model.model.blocks.{i}.{name}.lora_B.weight"] = up
                scale = 1.0
            else:
                flat = f"lora_unet_blocks_{i}_{name.replace('.', '_')}"
                lora[f"{flat}.lora_down.weight"], lora[f"{flat}.lora_up.weight"] = down, up
                lora[f"{flat}.alpha"] = torch.tensor(2.0)
                scale = 0.5
            expected[f"blocks.{i}.{name}.weight"] = weight + 0.8 * scale * (up @ down)
    wrapped = {"generator_lora": lora} if style == "peft" else lora
    lora_path = _save(wrapped, str(tmp_path / f"lora.{'pth' if style == 'peft' else 'safetensors'}"))
    base_path = _save(sd, str(tmp_path / "base.safetensors"))
    merged = load_wan_model(base_path, loras=[(lora_path, 0.8)], dtype=torch.float32)
    reference = tiny_model()
    reference.load_state_dict(expected)
    assert rel_err(_out(merged, inputs), _out(reference, inputs)) <= 1e-5


def test_lora_for_another_model_is_refused(tmp_path):
    base_path = _save(tiny_model().state_dict(), str(tmp_path / "base.safetensors"))
    lora = _save({"lora_unet_down_blocks_0_attn.lora_down.weight": torch.zeros(4, 8),
                  "lora_unet_down_blocks_0_attn.lora_up.weight": torch.zeros(8, 4)}, str(tmp_path / "sd15_lora.safetensors"))
    with pytest.raises(CheckpointError, match="match no layer"):
        load_wan_model(base_path, loras=[(lora, 1.0)])


@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16, torch.float8_e4m3fn])
def test_stored_dtypes_load(tmp_path, inputs, stored):
    original = tiny_model()
    sd = {k: (v.to(stored) if v.ndim >= 2 or stored != torch.float8_e4m3fn else v) for k, v in original.state_dict().items()}
    loaded = load_wan_model(_save(sd, str(tmp_path / "w.safetensors")), dtype=torch.float32)
    reference = tiny_model()
    reference.load_state_dict({k: v.float() for k, v in sd.items()})
    assert torch.equal(_out(loaded, inputs), _out(reference, inputs))
    assert load_wan_model(str(tmp_path / "w.safetensors"), dtype=torch.bfloat16).dtype == torch.bfloat16


def test_scaled_fp8_weights_are_rescaled(tmp_path, inputs):
    original = tiny_model()
    sd = {}
    for k, v in original.state_dict().items():
        if k.endswith(".weight") and v.ndim == 2:
            scale = v.abs().max() / 448.0
            sd[k] = (v / scale).to(torch.float8_e4m3fn)
            sd[k[:-len("weight")] + "scale_weight"] = scale.reshape(1)
        else:
            sd[k] = v
    sd["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    loaded = load_wan_model(_save(sd, str(tmp_path / "scaled.safetensors")), dtype=torch.float32)
    dequantised = tiny_model()
    dequantised.load_state_dict({k: (v.float() * sd[k[:-len("weight")] + "scale_weight"]
                                     if k[:-len("weight")] + "scale_weight" in sd else v.float())
                                 for k, v in sd.items() if not k.endswith("scale_weight") and k != "scaled_fp8"})
    assert torch.equal(_out(loaded, inputs), _out(dequantised, inputs))
    assert rel_err(_out(loaded, inputs), _out(original, inputs)) < 0.1  # and close to the unquantised model


def test_lora_merges_into_dequantised_fp8_weights(tmp_path, inputs):
    base = tiny_model()
    sd = {k: (v.to(torch.float8_e4m3fn) if v.ndim == 2 else v) for k, v in base.state_dict().items()}
    weight = sd["blocks.0.self_attn.q.weight"].float()
    down, up = torch.randn(4, weight.shape[1]) * 0.01, torch.randn(weight.shape[0], 4) * 0.01  # below fp8's step
    lora = {"base_model.model.blocks.0.self_attn.q.lora_A.weight": down,
            "base_model.model.blocks.0.self_attn.q.lora_B.weight": up}
    merged = load_wan_model(_save(sd, str(tmp_path / "fp8.safetensors")), dtype=torch.float32,
                            loras=[(_save(lora, str(tmp_path / "lora.safetensors")), 1.0)])
    assert torch.allclose(merged.blocks[0].self_attn.q.weight, weight + up @ down, atol=1e-6)


def test_corrupt_foreign_and_incomplete_files_get_clear_errors(tmp_path):
    good = _save(tiny_model().state_dict(), str(tmp_path / "good.safetensors"))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(open(good, "rb").read()[:5000])
    with pytest.raises(CheckpointError, match="truncated.safetensors.*corrupt or truncated"):
        load_wan_model(str(truncated))

    unet = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
            "model.diffusion_model.out.2.weight": torch.zeros(4, 4, 3, 3)}
    with pytest.raises(CheckpointError, match="Stable Diffusion-style U-Net"):
        load_wan_model(_save(unet, str(tmp_path / "sd15.safetensors")))

    sd = tiny_model().state_dict()
    del sd["blocks.3.ffn.2.weight"], sd["blocks.1.self_attn.norm_q.weight"]
    with pytest.raises(CheckpointError, match=r"Missing: blocks\.1\.self_attn\.norm_q\.weight, blocks\.3\.ffn\.2\.weight"):
        load_wan_model(_save(sd, str(tmp_path / "incomplete.safetensors")))

    with pytest.raises(CheckpointError, match="no such file"):
        load_wan_model(str(tmp_path / "missing.safetensors"))

    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"generator": Payload()}, tmp_path / "code.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_wan_model(str(tmp_path / "code.pth"))


def test_checkpoint_kind_reads_only_the_safetensors_header(tmp_path):
    from streamvace.models.wan.checkpoint import checkpoint_kind

    full = tiny_model(vace=True).state_dict()
    base = {k: v for k, v in full.items() if not k.startswith("vace_")}
    files = {
        "comfy_repack.safetensors": ({f"model.diffusion_model.{k}": v for k, v in base.items()}, "dit"),
        "diffusers.safetensors": (convert_wan_transformer_to_diffusers(dict(base)), "dit"),
        "with_vace.safetensors": (full, "vace_dit"),
        "vace_module.safetensors": ({k: v for k, v in full.items() if k.startswith("vace_")}, "vace"),
        "wan_lora.safetensors": ({"lora_unet_blocks_0_self_attn_q.lora_down.weight": torch.zeros(4, 8),
                                  "lora_unet_blocks_0_self_attn_q.lora_up.weight": torch.zeros(8, 4)}, "lora"),
        "sd15_lora.safetensors": ({"lora_unet_down_blocks_0_attn.lora_down.weight": torch.zeros(4, 8),
                                   "lora_unet_down_blocks_0_attn.lora_up.weight": torch.zeros(8, 4)}, "other"),
        "unet.safetensors": ({"input_blocks.0.0.weight": torch.zeros(2)}, "other"),
        "longlive_base.pt": (base, "unknown"),
        "model-00001-of-00002.safetensors": (base, "unknown"),
    }
    for name, (sd, kind) in files.items():
        assert checkpoint_kind(_save(sd, str(tmp_path / name)))[0] == kind, name
    with open(tmp_path / "truncated.safetensors", "wb") as handle:
        handle.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    kind, reason = checkpoint_kind(str(tmp_path / "truncated.safetensors"))
    assert kind == "unknown" and "download it again" in reason
