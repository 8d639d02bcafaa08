"""StreamVACE: real-time streaming, controllable video generation.

This folder is both a ComfyUI custom-node pack (ComfyUI reads NODE_CLASS_MAPPINGS below) and the
Python package ``streamvace`` (``models`` and ``annotators`` work without ComfyUI).
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__version__ = "0.1.0"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "__version__"]
