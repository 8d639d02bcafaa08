"""A tiny random umT5 encoder and a tiny word-level tokenizer, saved the ways users have them (no downloads)."""

import json
import os

import torch

WORDS = ("a cat dog runs on the beach at sunset in rain red blue car city night forest river over under "
         "walks jumps slowly fast big small").split()
TINY_DIM = 64  # the DiT fixtures' text width (tests/wan_tiny.py TEXT_DIM)


def tiny_umt5(seed: int = 0, dim: int = TINY_DIM, vocab: int = 64):
    """A random UMT5EncoderModel: 2 layers, 4 heads of 16, gated GELU, per-layer position bias."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=vocab, d_model=dim, d_kv=dim // 4, d_ff=96, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                        is_encoder_decoder=False)
    torch.manual_seed(seed)
    model = UMT5EncoderModel(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                param.copy_(1 + 0.2 * torch.randn(param.shape, generator=generator))
            elif "relative_attention_bias" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
            else:
                param.copy_(torch.randn(param.shape, generator=generator) / param.shape[-1] ** 0.5)
    return model


def wan_layout(model) -> dict:
    """The model's weights under Wan's T5 encoder names (models_t5_umt5-xxl-enc-bf16.pth), mapped by hand."""
    sd = model.state_dict()
    out = {"token_embedding.weight": sd["shared.weight"], "norm.weight": sd["encoder.final_layer_norm.weight"]}
    for n in range(model.config.num_layers):
        attention, ffn = f"encoder.block.{n}.layer.0.", f"encoder.block.{n}.layer.1."
        out[f"blocks.{n}.norm1.weight"] = sd[attention + "layer_norm.weight"]
        for part in "qkvo":
            out[f"blocks.{n}.attn.{part}.weight"] = sd[attention + f"SelfAttention.{part}.weight"]
        out[f"blocks.{n}.pos_embedding.embedding.weight"] = sd[attention + "SelfAttention.relative_attention_bias.weight"]
        out[f"blocks.{n}.norm2.weight"] = sd[ffn + "layer_norm.weight"]
        out[f"blocks.{n}.ffn.gate.0.weight"] = sd[ffn + "DenseReluDense.wi_0.weight"]
        out[f"blocks.{n}.ffn.fc1.weight"] = sd[ffn + "DenseReluDense.wi_1.weight"]
        out[f"blocks.{n}.ffn.fc2.weight"] = sd[ffn + "DenseReluDense.wo.weight"]
    return {k: v.clone() for k, v in out.items()}


def save_tokenizer(folder) -> str:
    """A word-level tokenizer.json in umT5's conventions: <pad> 0, </s> 1 appended, <unk> 2."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    os.makedirs(folder, exist_ok=True)
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as handle:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "</s>",
                   "unk_token": "<unk>", "model_max_length": 512}, handle)
    return str(folder)


def save_wan_pth(model, path) -> str:
    """torch.save of the Wan-layout state dict in bf16, as Wan ships it."""
    torch.save({k: v.to(torch.bfloat16) for k, v in wan_layout(model).items()}, str(path))
    return str(path)
