"""The bundled workflows' sample inputs (workflows/inputs/: a short clip, first / last frame and reference images),
copied into ComfyUI's input folder when the pack loads, so LoadVideo / LoadImage offer them and every bundled
workflow runs as shipped. Only missing files are copied: a file of the same name that is already there is left
alone. Outside ComfyUI nothing happens."""

import logging
import os
import shutil

from . import host

SAMPLE_FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workflows", "inputs")


def install_sample_inputs(target: str = None) -> list:
    """Copy the sample inputs missing from `target` (default: ComfyUI's input folder); return the names copied."""
    target = target or host.input_directory()
    if target is None or not os.path.isdir(SAMPLE_FOLDER):
        return []
    copied = []
    for name in sorted(os.listdir(SAMPLE_FOLDER)):
        destination = os.path.join(target, name)
        if os.path.exists(destination):
            continue
        try:
            os.makedirs(target, exist_ok=True)
            shutil.copyfile(os.path.join(SAMPLE_FOLDER, name), destination)
            copied.append(name)
        except OSError as error:  # a read-only input folder must not stop the pack from loading
            logging.getLogger(__name__).warning("StreamVACE: could not copy sample input %s to %s (%s)",
                                                name, target, error)
    if copied:
        logging.getLogger(__name__).info("StreamVACE: sample inputs for the bundled workflows copied to %s: %s",
                                         target, ", ".join(copied))
    return copied


if host.inside_comfyui():
    install_sample_inputs()
