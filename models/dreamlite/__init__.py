"""DreamLite stylize: edit U-Net pipeline, Qwen3-VL text encoder, Temporal-LLLite adapter, flicker metrics."""
