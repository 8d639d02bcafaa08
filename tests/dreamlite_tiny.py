"""A tiny random DreamLite-mobile, saved in the real diffusers folder layout (test helper).

model_index.json + unet/ (DreamLiteUNetModel with the real block types), vae/ (AutoencoderTiny, /8),
scheduler/ (FlowMatchEulerDiscreteScheduler with dynamic shift), text_encoder/ (Qwen3VLForConditionalGeneration,
DeepStack on), tokenizer/ and processor/ (a byte-level BPE with Qwen's special tokens).
"""

import json
import os

import pytest
import torch
from diffusers import AutoencoderTiny, DreamLiteUNetModel, FlowMatchEulerDiscreteScheduler
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer, Qwen3VLConfig, Qwen3VLForConditionalGeneration

from streamvace.models.dreamlite.text_encoder import EDIT_INSTRUCTION, EDIT_SYSTEM_PREFIX

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
TEXT_HIDDEN = 32
# Qwen2's pre-tokenizer split; with whole-word tokens the edit system prefix is 64 tokens, as upstream drops
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
              r"\s+(?!\S)|\s+")

TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=["CrossAttnDownRemoveSelfAttnBlock2D", "CrossAttnDownRemoveSelfAttnBlock2D",
                      "CrossAttnDownBlock2D"],
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpRemoveSelfAttnBlock2DV1", "UpBlock2D"],
    block_out_channels=[16, 32, 32], attention_head_dim=[1, 2, 2], transformer_layers_per_block=[1, 2, 2],
    layers_per_block=1, cross_attention_dim=24, encoder_hid_dim=TEXT_HIDDEN, encoder_hid_dim_type="text_proj_rms",
    addition_embed_type="time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=16,
    norm_num_groups=8, ff_mult=3, num_kv_heads=1, qk_norm="rms_norm", use_linear_projection=True, use_sep_conv=True)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models are dominated by per-op overhead: one intra-op thread is far faster than two contending ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_tokenizer():
    """A byte-level BPE with Qwen2's pre-tokenizer and special tokens, whole words for the template text."""
    corpus = [EDIT_SYSTEM_PREFIX, EDIT_INSTRUCTION.format("an oil painting style, a watercolor wash"),
              "system user assistant"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=5000, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer)
    return Qwen2Tokenizer(tokenizer_object=tokenizer, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                          pad_token="<|endoftext|>")


def tiny_text_encoder(tokenizer):
    """A random Qwen3VLForConditionalGeneration, 3 text layers, 3 vision blocks, DeepStack on 2 of them."""
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=64,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         max_position_embeddings=1024, pad_token_id=ids("<|endoftext|>"),
                         rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 1, 1],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=3, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=16,
                           temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=TEXT_HIDDEN,
                           num_position_embeddings=64, deepstack_visual_indexes=[0, 1]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True)
    torch.manual_seed(1)
    return Qwen3VLForConditionalGeneration(config).eval()


def tiny_unet():
    """A random DreamLiteUNetModel with the real block types and options, 39 LLLite-eligible Linears."""
    torch.manual_seed(2)
    return DreamLiteUNetModel(**TINY_UNET).eval()


def tiny_vae():
    """A random AutoencoderTiny with TAESD's /8 layout and 4 latent channels."""
    torch.manual_seed(3)
    return AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                           num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
                           latent_channels=4).eval()


def tiny_scheduler():
    """DreamLite's flow-matching Euler scheduler with dynamic shift."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, use_dynamic_shifting=True, base_shift=0.5,
                                           max_shift=1.16, base_image_seq_len=256, max_image_seq_len=4096)


def build_tiny_dreamlite(folder: str) -> str:
    """Write a tiny random DreamLite-mobile in the diffusers layout of carlofkl/DreamLite-mobile@diffusers."""
    os.makedirs(folder, exist_ok=True)
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
    tokenizer.save_pretrained(os.path.join(folder, "processor"))
    with open(os.path.join(folder, "processor", "preprocessor_config.json"), "w") as handle:
        json.dump({"image_processor_type": "Qwen2VLImageProcessor", "patch_size": 16, "temporal_patch_size": 2,
                   "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                   "size": {"shortest_edge": 65536, "longest_edge": 16777216}}, handle)
    tiny_text_encoder(tokenizer).save_pretrained(os.path.join(folder, "text_encoder"))
    tiny_unet().save_pretrained(os.path.join(folder, "unet"))
    tiny_vae().save_pretrained(os.path.join(folder, "vae"))
    tiny_scheduler().save_pretrained(os.path.join(folder, "scheduler"))
    index = {"_class_name": "DreamLiteMobilePipeline", "_diffusers_version": "0.42.1",
             "processor": ["transformers", "Qwen3VLProcessor"], "scheduler": ["diffusers",
                                                                              "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "Qwen3VLForConditionalGeneration"],
             "tokenizer": ["transformers", "Qwen2Tokenizer"], "unet": ["diffusers", "DreamLiteUNetModel"],
             "vae": ["diffusers", "AutoencoderTiny"]}
    with open(os.path.join(folder, "model_index.json"), "w") as handle:
        json.dump(index, handle, indent=2)
    return folder


def random_frames(count: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """A smooth moving test clip, IMAGE layout [T, H, W, 3] in [0, 1], quantised to 8 bits like a decoded video."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, size // 4, size // 4, generator=generator),
                                           size=(size * 2, size * 2), mode="bicubic", align_corners=False)
    frames = [base[0, :, 2 * t: 2 * t + size, 3 * t: 3 * t + size] for t in range(count)]
    return (torch.stack(frames).permute(0, 2, 3, 1).clamp(0, 1) * 255).round() / 255
