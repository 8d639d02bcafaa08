"""StreamVACE: real-time streaming, controllable video generation.

This folder is both a ComfyUI custom-node pack and the Python package ``streamvace``. ``models`` and
``annotators`` work without ComfyUI; the node layer (``nodes``) is imported only when ComfyUI asks for
NODE_CLASS_MAPPINGS, so ``import streamvace.models.wan.kv_cache`` loads neither the nodes nor transformers.
"""

import importlib

__version__ = "0.1.0"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "__version__"]
_NODE_EXPORTS = ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS")


def __getattr__(name):
    """Load the node layer on first access to its mappings (PEP 562), as ComfyUI does at start-up."""
    if name in _NODE_EXPORTS:
        nodes = importlib.import_module(f"{__name__}.nodes")
        return getattr(nodes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
