"""Nodes that compose what the sampler generates: outpainting canvases, clip extension, a prompt per chunk."""

from ..annotators.outpaint import outpaint_canvas, outpaint_padding
from ..models.wan.prompt_schedule import PromptSchedule, parse_prompt_schedule
from ..models.wan.vace_context import EXTENSION_MODES, clip_extension_control
from .convert import image_to_video, video_to_image, video_to_mask
from .types import PROMPTS_TYPE

CONTROL_OUTPUTS = ("IMAGE", "MASK")
CONTROL_OUTPUT_TOOLTIPS = ("Control video for VACE Control's control_video (new area gray).",
                           "For VACE Control's control_mask: white = generate, black = keep.")


class StreamVACEOutpaint:
    """Put an image or video on a larger gray canvas with a mask over the new area, for VACE outpainting."""

    DESCRIPTION = ("Outpainting for the Stream Sampler: grows the canvas on the chosen sides by expand_ratio of the "
                   "source size (or expand_pixels) as VACE's outpainting annotator does; the new area is gray with "
                   "mask 1 (generate). Connect both outputs to a VACE Control (timing 'stream' for a video, a single "
                   "image holds for the whole stream). With width/height set, the source is scaled so the grown canvas "
                   "fits that size exactly (set the sampler to the same size); else the canvas is rounded up to "
                   "multiples of 16.")
    CATEGORY = "StreamVACE/control"
    RETURN_TYPES = CONTROL_OUTPUTS
    RETURN_NAMES = ("control_video", "control_mask")
    OUTPUT_TOOLTIPS = CONTROL_OUTPUT_TOOLTIPS
    FUNCTION = "outpaint"

    @classmethod
    def INPUT_TYPES(cls):
        """The source, the sides to grow, how much, and an optional output size."""
        side = lambda default: ("BOOLEAN", {"default": default, "tooltip": "Grow the canvas on this side."})  # noqa: E731
        return {"required": {
            "image": ("IMAGE", {"tooltip": "An image or a video (IMAGE batch) to outpaint."}),
            "top": side(False), "bottom": side(False), "left": side(True), "right": side(True),
            "expand_ratio": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 4.0, "step": 0.05, "tooltip": "Added "
                             "on each chosen side, as a fraction of the source height (top/bottom) or width "
                             "(left/right); VACE's default is 0.3."}),
            "expand_pixels": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8, "tooltip": "Pixels added on "
                              "each chosen side; overrides expand_ratio when above 0."}),
            "width": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 16, "tooltip": "Output width (0: the "
                      "grown canvas, rounded up to a multiple of 16). Use the sampler's width."}),
            "height": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 16, "tooltip": "Output height (0: the "
                       "grown canvas, rounded up to a multiple of 16). Use the sampler's height."}),
        }}

    def outpaint(self, image, top, bottom, left, right, expand_ratio, expand_pixels, width, height):
        """IMAGE -> (canvas IMAGE, MASK)."""
        sides = [name for name, on in (("top", top), ("bottom", bottom), ("left", left), ("right", right)) if on]
        padding = outpaint_padding(image.shape[1], image.shape[2], sides, expand_ratio, expand_pixels)
        if (width == 0) != (height == 0):
            raise ValueError(f"set both width and height for a fixed output size, or neither (got {width}x{height})")
        frames, mask = outpaint_canvas(image_to_video(image), padding, (height, width) if width else None)
        return video_to_image(frames), video_to_mask(mask)


class StreamVACEExtendVideo:
    """Extend known clips with VACE: continue after a clip, lead up to one, or bridge two."""

    DESCRIPTION = ("Clip extension for the Stream Sampler (VACE's firstclip / lastclip / firstlastclip): first_clip "
                   "keeps the clip and generates generate_frames after it; last_clip generates generate_frames "
                   "leading into the clip; first_last_clip bridges clip and end_clip. Known frames get mask 0, new "
                   "ones gray with mask 1; the length is rounded up to whole chunks (9 + 12k frames). Connect "
                   "control_video and control_mask to a VACE Control (timing 'stream') and queue 'chunks' chunks "
                   "from a fresh stream. To continue a clip without re-generating it, use the sampler's prefill "
                   "input instead.")
    CATEGORY = "StreamVACE/control"
    RETURN_TYPES = CONTROL_OUTPUTS + ("INT",)
    RETURN_NAMES = ("control_video", "control_mask", "chunks")
    OUTPUT_TOOLTIPS = CONTROL_OUTPUT_TOOLTIPS + ("Chunks the whole extended video spans (the first chunk is 9 "
                                                 "frames, later ones 12): generate that many from a fresh stream.",)
    FUNCTION = "extend"

    @classmethod
    def INPUT_TYPES(cls):
        """The mode, the known clip(s) and how many frames to generate."""
        return {"required": {
            "mode": (list(EXTENSION_MODES), {"default": "first_clip", "tooltip": "first_clip: clip then new frames; "
                     "last_clip: new frames then the clip; first_last_clip: clip, new frames, end_clip."}),
            "clip": ("IMAGE", {"tooltip": "The known frames (an IMAGE batch, or one image)."}),
            "generate_frames": ("INT", {"default": 24, "min": 0, "max": 4096, "tooltip": "New frames to generate "
                                "(rounded up so the video fills whole chunks)."}),
        }, "optional": {
            "end_clip": ("IMAGE", {"tooltip": "first_last_clip only: the known frames the video ends on (same size "
                                   "as clip)."}),
        }}

    def extend(self, mode, clip, generate_frames, end_clip=None):
        """IMAGE clip(s) -> (control IMAGE, MASK, chunks)."""
        frames, mask, chunks = clip_extension_control(mode, image_to_video(clip), generate_frames,
                                                      None if end_clip is None else image_to_video(end_clip))
        return video_to_image(frames), video_to_mask(mask), chunks


def encode_text(clip, text: str):
    """A prompt's text embedding [1, L, D] from ComfyUI's CLIP object, as core CLIPTextEncode computes it."""
    tokens = clip.tokenize(text)
    if hasattr(clip, "encode_from_tokens_scheduled"):  # ComfyUI >= 0.3.2x
        return clip.encode_from_tokens_scheduled(tokens)[0][0]
    return clip.encode_from_tokens(tokens)


class StreamVACEPromptSchedule:
    """A prompt per chunk index for the Stream Sampler; each switch re-caches the window under the new prompt."""

    DESCRIPTION = ("Prompt schedule for the Stream Sampler's 'prompts' input: one 'chunk: prompt' per line (e.g. "
                   "'0: a cat walking' and '8: a dog running'), chunk being the stream's chunk index from which the "
                   "prompt holds. Each prompt is encoded with the connected CLIP (the umT5-XXL text encoder, type "
                   "wan) as CLIPTextEncode does. At a switch the sampler re-caches the recent frames under the new "
                   "prompt (LongLive's prompt switch). Before the first entry the sampler's positive prompt holds.")
    CATEGORY = "StreamVACE/sampling"
    RETURN_TYPES = (PROMPTS_TYPE,)
    RETURN_NAMES = ("prompts",)
    OUTPUT_TOOLTIPS = ("For the Stream Sampler's 'prompts' input.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        """The text encoder and the schedule text."""
        return {"required": {
            "clip": ("CLIP", {"tooltip": "From Load CLIP with umt5_xxl (type wan), as for CLIPTextEncode."}),
            "schedule": ("STRING", {"multiline": True, "default": "0: a cat walking in a garden\n8: a dog running "
                         "in a garden", "tooltip": "One 'chunk: prompt' per line; lines starting with # are "
                         "skipped. A chunk is 3 latent frames (9 video frames first, then 12)."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, schedule):
        """Reject schedule text that does not parse, before the run touches any stream."""
        try:
            parse_prompt_schedule(schedule)
        except ValueError as error:
            return str(error)
        return True

    def encode(self, clip, schedule):
        """Encode every line's prompt once."""
        return (PromptSchedule(tuple((chunk, encode_text(clip, text).cpu())
                                     for chunk, text in parse_prompt_schedule(schedule))),)


NODE_CLASS_MAPPINGS = {
    "StreamVACEOutpaint": StreamVACEOutpaint,
    "StreamVACEExtendVideo": StreamVACEExtendVideo,
    "StreamVACEPromptSchedule": StreamVACEPromptSchedule,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "StreamVACEOutpaint": "Outpaint Canvas (StreamVACE)",
    "StreamVACEExtendVideo": "Extend Video (StreamVACE)",
    "StreamVACEPromptSchedule": "Prompt Schedule (StreamVACE)",
}
