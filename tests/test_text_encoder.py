"""The umT5 text encoder: every file layout loads to the same model, and its output is what Wan and ComfyUI feed
the DiT (oracles: transformers' UMT5EncoderModel, and an independent forward in Wan's own key layout)."""

import math
import os

import pytest
import torch
from safetensors.torch import save_file

from streamvace.models.checkpoint_io import CheckpointError
from streamvace.models.wan.text_encoder import TEXT_LEN, clean_prompt, load_text_encoder, wan_to_umt5_keys
from umt5_tiny import WORDS, save_tokenizer, save_wan_pth, tiny_umt5, wan_layout

PROMPT = "A red car runs over the  beach at sunset &amp; in rain"


@pytest.fixture(scope="module")
def model():
    return tiny_umt5(seed=3)


def _reference(model, ids):
    """transformers on the same tokens, then zero-padded to 512."""
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    out = torch.zeros(1, TEXT_LEN, hidden.shape[-1])
    out[:, :ids.shape[1]] = hidden
    return out


def test_hf_folder_matches_transformers_and_pads_like_wan(model, tmp_path):
    folder = tmp_path / "umt5"
    model.save_pretrained(str(folder))
    save_tokenizer(folder)
    encoder = load_text_encoder(str(folder), dtype=torch.float32)
    ids = encoder.tokens(PROMPT)
    words = clean_prompt(PROMPT).lower().split()
    assert ids.shape[1] == len(words) + 1 and ids[0, -1].item() == 1  # every word once, then </s>
    assert (ids[0, :-1] > 2).sum() == sum(w in WORDS for w in words)  # known words are not <unk>
    out = encoder.encode(PROMPT)
    assert out.shape == (1, TEXT_LEN, 64) and out.dtype == torch.float32
    torch.testing.assert_close(out, _reference(model, ids), rtol=1e-5, atol=1e-5)
    assert out[0, :ids.shape[1]].abs().amin(dim=-1).gt(0).all() and not out[0, ids.shape[1]:].any()


def test_equals_comfyui_padding_to_512(model, tmp_path):
    """ComfyUI: pad token 0 up to 512, padding masked in attention, padded outputs zeroed."""
    folder = save_tokenizer(tmp_path / "umt5")
    model.save_pretrained(folder)
    encoder = load_text_encoder(folder, dtype=torch.float32)
    ids = encoder.tokens(PROMPT)
    padded = torch.zeros(1, TEXT_LEN, dtype=torch.long)
    padded[:, :ids.shape[1]] = ids
    mask = (torch.arange(TEXT_LEN) < ids.shape[1]).long()[None]
    with torch.no_grad():
        comfy = model(input_ids=padded, attention_mask=mask).last_hidden_state * mask[..., None]
    torch.testing.assert_close(encoder.encode(PROMPT), comfy, rtol=1e-4, atol=1e-5)


def _buckets(relative, buckets=32, max_distance=128):
    """T5's bidirectional relative-position buckets (Raffel et al.), written out for the oracle."""
    half = buckets // 2
    exact = half // 2
    out = (relative > 0).long() * half
    distance = relative.abs()
    far = exact + (torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                   * (half - exact)).long()
    return out + torch.where(distance < exact, distance, far.clamp(max=half - 1))


def _wan_forward(sd, ids, heads):
    """An independent umT5 encoder forward over Wan's key names (no transformers)."""
    def norm(x, weight):
        return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    x = sd["token_embedding.weight"][ids[0]]
    length = x.shape[0]
    relative = torch.arange(length)[None, :] - torch.arange(length)[:, None]  # key - query
    layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for n in range(layers):
        p = lambda name: sd[f"blocks.{n}.{name}.weight"]  # noqa: E731
        h = norm(x, p("norm1"))
        q, k, v = ((h @ p(f"attn.{part}").T).view(length, heads, -1).transpose(0, 1) for part in "qkv")
        bias = p("pos_embedding.embedding")[_buckets(relative)].permute(2, 0, 1)
        attended = torch.softmax(q @ k.transpose(1, 2) + bias, dim=-1) @ v  # T5: no 1/sqrt(d) scaling
        x = x + attended.transpose(0, 1).reshape(length, -1) @ p("attn.o").T
        h = norm(x, p("norm2"))
        gated = torch.nn.functional.gelu(h @ p("ffn.gate.0").T, approximate="tanh") * (h @ p("ffn.fc1").T)
        x = x + gated @ p("ffn.fc2").T
    return norm(x, sd["norm.weight"])[None]


def test_wan_pth_layout_loads_and_matches_both_oracles(model, tmp_path):
    path = tmp_path / "models_t5_umt5-xxl-enc-fp32.pth"
    wan_sd = wan_layout(model)
    torch.save(wan_sd, path)
    save_tokenizer(tmp_path / "google" / "umt5-xxl")  # where Wan's repo keeps it
    encoder = load_text_encoder(str(path), dtype=torch.float32)
    ids = torch.tensor([[5 + (i * 7) % 40 for i in range(47)] + [1]])  # 48 tokens: far buckets are used too
    encoder.tokenizer = None
    encoder.tokens = lambda prompt: ids
    out = encoder.encode("ignored")
    torch.testing.assert_close(out, _reference(model, ids), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, :48], _wan_forward(wan_sd, ids, heads=4), rtol=1e-4, atol=1e-4)


def test_wan_bf16_pth_and_comfy_safetensors(model, tmp_path):
    save_tokenizer(tmp_path / "umt5-xxl")
    reference = load_text_encoder(save_tokenizer(_saved(model, tmp_path / "hf")), dtype=torch.float32)
    expected = reference.encode(PROMPT)
    wan = load_text_encoder(save_wan_pth(model, tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"), dtype=torch.float32)
    assert wan.model.shared.weight.dtype == torch.float32
    rounded = tiny_umt5(seed=3)  # the oracle on the same bf16-rounded weights
    rounded.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in model.state_dict().items()})
    torch.testing.assert_close(wan.encode(PROMPT), _reference(rounded, wan.tokens(PROMPT)), rtol=1e-5, atol=1e-5)
    comfy = {k: v.contiguous() for k, v in model.state_dict().items() if k != "shared.weight"}
    comfy["spiece_model"] = torch.zeros(16, dtype=torch.uint8)  # ComfyUI keeps its tokenizer in the file
    save_file(comfy, str(tmp_path / "umt5_xxl_fp16.safetensors"))
    loaded = load_text_encoder(str(tmp_path / "umt5_xxl_fp16.safetensors"), dtype=torch.float32)
    torch.testing.assert_close(loaded.encode(PROMPT), expected, rtol=1e-5, atol=1e-5)


def _saved(model, folder):
    model.save_pretrained(str(folder))
    return folder


def test_truncates_to_text_len_keeping_eos(model, tmp_path):
    folder = save_tokenizer(_saved(model, tmp_path / "hf"))
    encoder = load_text_encoder(folder, dtype=torch.float32, text_len=6)
    ids = encoder.tokens(" ".join(WORDS))
    assert ids.shape == (1, 6) and ids[0, -1].item() == 1
    assert encoder.encode(" ".join(WORDS)).shape == (1, 6, 64)
    assert clean_prompt("  a\n\tcat &amp;amp; dog ") == "a cat & dog"


def test_clear_errors(model, tmp_path):
    path = tmp_path / "enc.pth"
    torch.save(wan_layout(model), path)
    with pytest.raises(FileNotFoundError, match="google/umt5-xxl"):
        load_text_encoder(str(path))
    save_tokenizer(tmp_path)
    torch.save({"head.head.weight": torch.zeros(2, 2), "blocks.0.self_attn.q.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match="not a umT5 text encoder"):
        load_text_encoder(str(path))
    with pytest.raises(CheckpointError, match="T5 encoder, not umT5"):
        wan_to_umt5_keys({"pos_embedding.embedding.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="no such file"):
        load_text_encoder(str(tmp_path / "missing.pth"))
    assert os.path.isfile(tmp_path / "tokenizer.json")


def test_nodes_give_comfyui_conditioning(model, tmp_path, monkeypatch):
    from streamvace.nodes import NODE_CLASS_MAPPINGS as NODES
    from streamvace.nodes.model_cache import clear

    folder = tmp_path / "text_encoders"
    folder.mkdir()
    save_wan_pth(model, folder / "models_t5_umt5-xxl-enc-bf16.pth")
    save_tokenizer(folder / "umt5-xxl")
    monkeypatch.setenv("STREAMVACE_MODELS_DIR", str(tmp_path))
    loader = NODES["StreamVACELoadTextEncoder"]
    spec = loader.INPUT_TYPES()["required"]
    assert "models_t5_umt5-xxl-enc-bf16.pth" in spec["text_encoder_name"][0] and "umt5-xxl" in spec["tokenizer"][0]
    encoder = loader().load("models_t5_umt5-xxl-enc-bf16.pth", "auto", "fp32")[0]
    assert loader().load("models_t5_umt5-xxl-enc-bf16.pth", "auto", "fp32")[0] is encoder  # memoised
    conditioning = NODES["StreamVACETextEncode"]().encode(encoder, PROMPT)[0]
    assert len(conditioning) == 1 and conditioning[0][1] == {}
    embeddings = conditioning[0][0]
    assert embeddings.shape == (1, TEXT_LEN, 64) and embeddings.device.type == "cpu"
    expected = load_text_encoder(str(folder / "models_t5_umt5-xxl-enc-bf16.pth"), dtype=torch.float32).encode(PROMPT)
    torch.testing.assert_close(embeddings, expected)
    clear()


def test_comfy_fp8_scaled_file_is_dequantised(model, tmp_path):
    """Comfy-Org's umt5_xxl_fp8_e4m3fn_scaled: fp8 weights times their scale_weight, norms kept in float."""
    quantised, dequantised = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}, {}
    for key, value in model.state_dict().items():
        if key.endswith(".weight") and value.ndim == 2 and ("SelfAttention." in key or "DenseReluDense" in key) \
                and "relative_attention_bias" not in key:
            scale = value.abs().amax() / 448.0
            q = (value / scale).to(torch.float8_e4m3fn)
            quantised[key], quantised[key[:-len("weight")] + "scale_weight"] = q, scale.reshape(1)
            dequantised[key] = q.float() * scale
        else:
            quantised[key] = dequantised[key] = value
    del quantised["encoder.embed_tokens.weight"]  # the same tensor as shared.weight
    save_file({k: v.contiguous() for k, v in quantised.items()}, str(tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"))
    save_tokenizer(tmp_path)
    encoder = load_text_encoder(str(tmp_path / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"), dtype=torch.float32)
    oracle = tiny_umt5(seed=3)
    oracle.load_state_dict(dequantised)
    torch.testing.assert_close(encoder.encode(PROMPT), _reference(oracle, encoder.tokens(PROMPT)), rtol=1e-5, atol=1e-5)


def test_text_encoder_list_offers_umt5_and_hides_other_encoders(model, tmp_path, monkeypatch):
    """Files are told apart by their tensor names (a T5 keeps its position bias in block 0 only; CLIP has no
    encoder blocks); folders by config.json; pickles stay listed."""
    from transformers import T5Config, T5EncoderModel

    from streamvace.models.wan.text_encoder import text_encoder_file_kind
    from streamvace.nodes import NODE_CLASS_MAPPINGS as NODES

    folder = tmp_path / "text_encoders"
    folder.mkdir()
    save_file({k: v.clone() for k, v in model.state_dict().items()}, folder / "umt5_xxl_fp16.safetensors")
    save_file(wan_layout(model), folder / "umt5-xxl-enc-bf16.safetensors")
    t5 = T5EncoderModel(T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4))
    save_file({k: v.clone() for k, v in t5.state_dict().items()}, folder / "t5xxl_fp16.safetensors")
    save_file({"text_model.embeddings.token_embedding.weight": torch.zeros(8, 4)}, folder / "clip_l.safetensors")
    save_wan_pth(model, folder / "models_t5_umt5-xxl-enc-bf16.pth")
    model.save_pretrained(str(folder / "umt5-hf"))
    t5.save_pretrained(str(folder / "t5-hf"))
    kinds = {name: text_encoder_file_kind(str(folder / name))[0] for name in os.listdir(folder)}
    assert kinds == {"umt5_xxl_fp16.safetensors": "umt5", "umt5-xxl-enc-bf16.safetensors": "umt5",
                     "t5xxl_fp16.safetensors": "other", "clip_l.safetensors": "other",
                     "models_t5_umt5-xxl-enc-bf16.pth": "unknown", "umt5-hf": "umt5", "t5-hf": "other"}
    monkeypatch.setenv("STREAMVACE_MODELS_DIR", str(tmp_path))
    offered = NODES["StreamVACELoadTextEncoder"].INPUT_TYPES()["required"]["text_encoder_name"][0]
    assert sorted(offered) == sorted(["umt5_xxl_fp16.safetensors", "umt5-xxl-enc-bf16.safetensors",
                                      "models_t5_umt5-xxl-enc-bf16.pth", "umt5-hf", "umt5-hf/model.safetensors"])
