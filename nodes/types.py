"""Node types and input declarations shared by several node modules (one place, so node modules never import
each other)."""

import torch

VAE_TYPE = "STREAMVACE_VAE"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_INPUT = (list(DTYPES), {"default": "bf16", "tooltip": "Weight and compute precision. bf16 is fast on recent "
                                                            "GPUs; fp32 for CPU or exact comparisons."})
STREAM_INPUTS = {
    "stream_id": ("STRING", {"default": "main", "tooltip": "Name of the stream; queuing again with the same id "
                                                          "continues it where the last run stopped."}),
    "reset": ("BOOLEAN", {"default": False, "tooltip": "Start the stream over (the next chunk is a first chunk)."}),
}
PROMPTS_TYPE = "STREAMVACE_PROMPTS"
