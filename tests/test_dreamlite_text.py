"""The streaming edit-prompt encoder equals transformers' Qwen3-VL on the processor's inputs."""

import numpy as np
import pytest
import torch
from dreamlite_tiny import random_frames, tiny_text_encoder, tiny_tokenizer
from dreamlite_tiny import one_torch_thread  # noqa: F401 (an autouse fixture)
from transformers import Qwen2VLImageProcessor, Qwen3VLModel

from streamvace.models.dreamlite.text_encoder import (EDIT_INSTRUCTION, EDIT_TEMPLATE, IMAGE_TOKEN, EditPromptEncoder,
                                              VisionPatching)

PROMPT = "an oil painting style"


@pytest.fixture(scope="module")
def parts():
    tokenizer = tiny_tokenizer()
    full = tiny_text_encoder(tokenizer)
    return tokenizer, full, EditPromptEncoder(full.model, tokenizer)


def _image_processor():
    return Qwen2VLImageProcessor(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3,
                                 image_std=[0.5] * 3, size={"shortest_edge": 65536, "longest_edge": 16777216})


def _frames_256(count):
    frames = random_frames(count, size=256, seed=4)
    return frames, frames.permute(0, 3, 1, 2) * 2 - 1


def test_patches_match_the_qwen_image_processor(parts):
    _, _, encoder = parts
    frames, pixels = _frames_256(2)
    images = [(frame.numpy() * 255).round().astype(np.uint8) for frame in frames]
    expected = _image_processor()(images=images, return_tensors="pt")
    assert expected["image_grid_thw"].tolist() == [[1, 16, 16]] * 2
    torch.testing.assert_close(encoder.patches(pixels), expected["pixel_values"], atol=1e-5, rtol=0)


def test_embeddings_match_transformers_qwen3vl_forward(parts):
    tokenizer, full, encoder = parts
    frames, pixels = _frames_256(3)
    embeds, mask = encoder.encode(PROMPT, pixels)

    # the oracle: Qwen3VLProcessor's recipe (64 image pads, right padding to 256) into the full HF model
    text = EDIT_TEMPLATE.format(image=IMAGE_TOKEN * 64, text=EDIT_INSTRUCTION.format(PROMPT))
    tokens = tokenizer([text] * 3, padding="max_length", max_length=256, return_tensors="pt")
    images = [(frame.numpy() * 255).round().astype(np.uint8) for frame in frames]
    vision = _image_processor()(images=images, return_tensors="pt")
    mm_types = (tokens.input_ids == tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)).int()
    with torch.no_grad():
        out = full(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, mm_token_type_ids=mm_types,
                   pixel_values=vision.pixel_values, image_grid_thw=vision.image_grid_thw, output_hidden_states=True)
    system_tokens = len(tokenizer(text.split("<|vision_start|>")[0])["input_ids"])
    expected = out.hidden_states[-1][:, system_tokens:]
    assert embeds.shape == (3, 256 - system_tokens, 32) == (3, encoder.sequence_length(), 32)
    valid = tokens.attention_mask[:, system_tokens:].bool()
    torch.testing.assert_close(embeds[valid], expected[valid], atol=2e-5, rtol=1e-4)
    assert torch.equal(mask, tokens.attention_mask[:, system_tokens:])


def test_batched_encoding_equals_one_frame_at_a_time(parts):
    _, _, encoder = parts
    _, pixels = _frames_256(3)
    batched, _ = encoder.encode(PROMPT, pixels)
    single = torch.cat([encoder.encode(PROMPT, pixels[i:i + 1])[0] for i in range(3)])
    torch.testing.assert_close(batched, single, atol=2e-5, rtol=1e-4)


def test_frames_of_any_size_are_resized_for_the_text_encoder(parts):
    _, _, encoder = parts
    pixels = random_frames(2, size=64).permute(0, 3, 1, 2) * 2 - 1
    embeds, _ = encoder.encode(PROMPT, pixels)
    assert embeds.shape[:2] == (2, encoder.sequence_length()) and torch.isfinite(embeds).all()


def test_bare_qwen3vl_model_loads_from_the_full_checkpoint(parts, tmp_path):
    _, full, _ = parts
    full.save_pretrained(tmp_path)
    bare = Qwen3VLModel.from_pretrained(tmp_path)
    assert torch.equal(bare.language_model.embed_tokens.weight, full.model.language_model.embed_tokens.weight)


def test_unet_sees_192_tokens_after_the_64_token_system_prefix(parts):
    # with Qwen2's pre-tokenizer and whole-word tokens (as the real 151k vocabulary has for this text) the
    # system prefix is the 64 tokens upstream drops, leaving [B, 192, D] for the U-Net
    _, _, encoder = parts
    assert encoder.sequence_length() == 192


def test_too_long_prompt_is_a_clear_error(parts):
    _, _, encoder = parts
    _, pixels = _frames_256(1)
    with pytest.raises(ValueError, match="too long"):
        encoder.encode("oil " * 300, pixels)


def test_patching_defaults_when_the_processor_config_is_absent(tmp_path):
    assert VisionPatching.from_folder(str(tmp_path)) == VisionPatching()
