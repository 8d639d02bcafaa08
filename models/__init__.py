"""The StreamVACE engine: pure PyTorch, no ComfyUI imports."""
