"""DreamLite's edit-mode prompt encoder: Qwen3-VL sees the source frame and the instruction.

Same result as DreamLiteMobilePipeline.encode_prompt(mode="edit") followed by dropping the system prefix,
but shaped for a video stream (dreamlite-stream pipeline_ops.py): the frame is resized to 256x256 on the
GPU (64 image tokens), the text is right-padded to a fixed 256 tokens so the U-Net always sees
[B, 192, 2048], and everything that depends only on the prompt (token ids, M-RoPE positions, the causal
mask, the vision tower's grid tables) is computed once per prompt on the CPU. The per-batch forward
therefore has static shapes and no host synchronisation: it runs Qwen3-VL's own vision tower and decoder
layers, splicing the image and DeepStack features in at their fixed token positions.
"""

import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.masking_utils import create_causal_mask
from transformers.vision_utils import (get_vision_cu_seqlens, get_vision_interpolation_indices_and_weights,
                                       get_vision_position_ids)

EDIT_SYSTEM_PREFIX = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n")
EDIT_TEMPLATE = EDIT_SYSTEM_PREFIX + "<|vision_start|>{image}<|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n"
EDIT_INSTRUCTION = ("[Edit]: A diptych with two side-by-side images of the same scene. "
                    "Compared to the right side, the left one has {}")
IMAGE_TOKEN = "<|image_pad|>"
VISION_START = "<|vision_start|>"


@dataclass(frozen=True)
class VisionPatching:
    """How Qwen3-VL's image processor cuts a frame into patches (processor/preprocessor_config.json)."""

    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple = (0.5, 0.5, 0.5)
    image_std: tuple = (0.5, 0.5, 0.5)

    @classmethod
    def from_folder(cls, folder: str) -> "VisionPatching":
        """Read preprocessor_config.json from `folder` if it is there, else Qwen3-VL's defaults."""
        path = os.path.join(folder, "preprocessor_config.json")
        if not os.path.isfile(path):
            return cls()
        with open(path) as handle:
            config = json.load(handle)
        fields = {name: config[name] for name in ("patch_size", "temporal_patch_size", "merge_size") if name in config}
        for name in ("image_mean", "image_std"):
            if name in config:
                fields[name] = tuple(config[name])
        return cls(**fields)


@dataclass
class _PromptPlan:
    """Everything about one (prompt, batch size) that does not depend on the frames."""

    text_embeds: torch.Tensor
    attention_mask: torch.Tensor
    causal_mask: object
    rope: tuple
    image_start: int
    keep_from: int
    vision_kwargs: dict


class EditPromptEncoder:
    """Encode (instruction, source frames) into DreamLite's cross-attention input, batch by batch."""

    def __init__(self, model, tokenizer, patching: VisionPatching = VisionPatching(),
                 image_size: int = 256, max_length: int = 256):
        self.model = model
        self.tokenizer = tokenizer
        self.patching = patching
        self.image_size = image_size
        self.max_length = max_length
        side = image_size // patching.patch_size
        if side * patching.patch_size != image_size or side % patching.merge_size:
            raise ValueError(f"text-encoder image size {image_size} must be a multiple of "
                             f"{patching.patch_size * patching.merge_size}")
        self.grid = (1, side, side)
        self.image_tokens = side * side // patching.merge_size ** 2
        self._plans = {}

    @property
    def device(self) -> torch.device:
        """Where the text encoder's weights live."""
        return self.model.language_model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The text encoder's compute dtype."""
        return self.model.language_model.embed_tokens.weight.dtype

    def sequence_length(self) -> int:
        """Length of the embeddings handed to the U-Net (the padded tokens minus the system prefix)."""
        return self.max_length - self._tokens("")[3]

    def _tokens(self, prompt: str):
        text = EDIT_TEMPLATE.format(image=IMAGE_TOKEN * self.image_tokens, text=EDIT_INSTRUCTION.format(prompt))
        needed = len(self.tokenizer(text)["input_ids"])
        if needed > self.max_length:
            raise ValueError(f"the prompt is too long: with the template and {self.image_tokens} image tokens it "
                             f"needs {needed} tokens, at most {self.max_length}. Shorten the prompt.")
        encoded = self.tokenizer(text, padding="max_length", max_length=self.max_length, padding_side="right",
                                 return_tensors="pt")
        ids = encoded["input_ids"]
        image_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        positions = (ids[0] == image_id).nonzero().flatten().tolist()
        start = positions[0]
        if positions != list(range(start, start + self.image_tokens)):
            raise ValueError("the tokenizer split the image placeholder unexpectedly; is this a Qwen3-VL tokenizer?")
        keep_from = (ids[0] == self.tokenizer.convert_tokens_to_ids(VISION_START)).nonzero().flatten().tolist()[0]
        return ids, encoded["attention_mask"], start, keep_from

    def _plan(self, prompt: str, batch: int) -> _PromptPlan:
        key = (prompt, batch)
        if key in self._plans:
            return self._plans[key]
        self._plans = {k: v for k, v in self._plans.items() if k[0] == prompt}  # keep only the live prompt
        ids, mask, start, keep_from = self._tokens(prompt)
        grid = torch.tensor([self.grid] * batch)
        mm_types = (ids == self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)).int()
        positions, _ = self.model.get_rope_index(ids, mm_types, image_grid_thw=grid[:1], attention_mask=mask)
        device, lm = self.device, self.model.language_model
        text_embeds = lm.embed_tokens(ids.to(device))
        batch_embeds = text_embeds.expand(batch, -1, -1)
        batch_mask = mask.to(device).expand(batch, -1)
        rope = lm.rotary_emb(batch_embeds, positions.to(device).expand(-1, batch, -1))
        causal = create_causal_mask(config=lm.config, inputs_embeds=batch_embeds, attention_mask=batch_mask,
                                    cache=None)  # `past_key_values=` goes in transformers 5.40
        visual = self.model.visual
        indices, weights = get_vision_interpolation_indices_and_weights(
            grid, visual.num_grid_per_side, mode=visual.interpolation_mode,
            align_corners=visual.interpolation_align_corners, spatial_merge_size=visual.config.spatial_merge_size)
        vision_kwargs = dict(
            grid_thw=grid,  # stays on the CPU: the tower only reads it on the host, so nothing syncs
            cu_seqlens=get_vision_cu_seqlens(grid),  # CPU too: the SDPA path splits on it with .tolist()
            position_ids=get_vision_position_ids(grid, visual.spatial_merge_size).to(device),
            interp_indices=indices.to(device), interp_weights=weights.to(device))
        plan = _PromptPlan(text_embeds, batch_mask, causal, rope, start, keep_from, vision_kwargs)
        self._plans[key] = plan
        return plan

    def patches(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames [B, 3, H, W] in [-1, 1] -> Qwen3-VL pixel patches [B * h * w, 3 * t * p * p]."""
        p, t, m = self.patching.patch_size, self.patching.temporal_patch_size, self.patching.merge_size
        size = self.image_size
        images = (frames.float() + 1.0) * 0.5
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        # Python-float statistics: a small tensor built from a list would be a host-to-device copy per batch
        images = torch.cat([(images[:, c:c + 1] - mean) / std for c, (mean, std) in
                            enumerate(zip(self.patching.image_mean, self.patching.image_std))], dim=1)
        batch, grid = images.shape[0], size // p
        # a still image fills both temporal slots, then the processor's block-major patch order
        clip = images[:, None].expand(batch, t, 3, size, size)
        clip = clip.reshape(batch, t, 3, grid // m, m, p, grid // m, m, p)
        clip = clip.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return clip.reshape(batch * grid * grid, 3 * t * p * p)

    @torch.no_grad()
    def encode(self, prompt: str, frames: torch.Tensor):
        """Embeddings [B, L, D] and mask [B, L] for the instruction applied to each source frame [B, 3, H, W]."""
        batch = frames.shape[0]
        plan = self._plan(prompt, batch)
        visual, lm = self.model.visual, self.model.language_model
        vision = visual(self.patches(frames).to(self.dtype), **plan.vision_kwargs)
        start, count, dim = plan.image_start, self.image_tokens, plan.text_embeds.shape[-1]
        end = start + count
        image = vision.pooler_output.view(batch, count, dim).to(self.dtype)
        text = plan.text_embeds.expand(batch, -1, -1)
        hidden = torch.cat([text[:, :start], image, text[:, end:]], dim=1)
        deepstack = [feature.view(batch, count, dim).to(self.dtype) for feature in vision.deepstack_features]
        for index, layer in enumerate(lm.layers):
            hidden = layer(hidden, position_embeddings=plan.rope, attention_mask=plan.causal_mask)
            if index < len(deepstack):  # DeepStack: ViT features added to the image tokens of the first layers
                hidden = torch.cat([hidden[:, :start], hidden[:, start:end] + deepstack[index], hidden[:, end:]], 1)
        hidden = lm.norm(hidden)
        return hidden[:, plan.keep_from:], plan.attention_mask[:, plan.keep_from:]
