"""ComfyUI node adapters. Every module here that defines NODE_CLASS_MAPPINGS is registered.

A module that fails to import is logged and recorded in LOAD_ERRORS instead of taking the whole
pack down inside ComfyUI; the test suite asserts LOAD_ERRORS is empty.
"""

import importlib
import logging
import pkgutil

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
LOAD_ERRORS = {}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    try:
        _module = importlib.import_module(f"{__name__}.{_info.name}")
    except Exception as error:  # a broken optional dependency must not hide the other nodes
        LOAD_ERRORS[_info.name] = error
        logging.getLogger(__name__).exception("StreamVACE: could not load nodes/%s.py", _info.name)
        continue
    NODE_CLASS_MAPPINGS.update(getattr(_module, "NODE_CLASS_MAPPINGS", {}))
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_module, "NODE_DISPLAY_NAME_MAPPINGS", {}))

from . import host, streams  # noqa: E402  (after the node modules: a broken one must not stop the hook)

# inside ComfyUI: its free_memory parks our streams when it needs device memory, and its Unload models /
# Free (unload_all_models) drops them; a no-op elsewhere
host.watch_memory(streams.park_streams,
                  lambda: streams.drop_all_streams("ComfyUI unloaded all models (Unload models / Free)"))
