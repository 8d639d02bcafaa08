"""Loading annotator models from local Hugging Face folders, never from the network, with clear errors."""

import json
import os

import torch

from ..models.checkpoint_io import (SAFETENSORS_SUFFIXES, CheckpointError, key_summary, read_checkpoint,
                                    safetensors_keys, state_mismatch)

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


def read_hf_config(path: str, model_types: tuple, what: str, example: str) -> dict:
    """The config.json of a local Hugging Face model folder, checked to be one of `model_types`."""
    if not os.path.isdir(path):
        raise CheckpointError(
            f"{path}: expected a Hugging Face model folder for {what} (config.json + model.safetensors), "
            f"e.g. the files of {example}.")
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise CheckpointError(f"{path}: no config.json in this {what} folder. Copy the whole folder of {example} "
                              "(config.json and model.safetensors) there.")
    try:
        with open(config_path) as handle:
            config = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{config_path}: unreadable config.json ({error}); download it again.") from error
    if config.get("model_type") not in model_types:
        raise CheckpointError(
            f"{path}: this folder holds a '{config.get('model_type')}' model, but {what} needs one of "
            f"{list(model_types)} (e.g. {example}).")
    if not any(os.path.isfile(os.path.join(path, name)) for name in HF_WEIGHT_FILES):
        raise CheckpointError(f"{path}: no weight file (expected one of {', '.join(HF_WEIGHT_FILES)}); "
                              f"download the weights of {example} into it.")
    return config


# what each annotator's loader accepts: transformers folders by config.json model_type, original weight files by a
# key their loader requires (depth_checkpoint, sam2_checkpoint, line_model, flow.RaftFlow)
HF_MODEL_KINDS = {"depth_anything": "depth", "vitpose": "pose", "rt_detr": "detector", "rt_detr_v2": "detector",
                  "sam2_video": "sam2"}
FILE_MARKERS = (("depth", ("pretrained.cls_token",)), ("sam2", ("image_encoder.trunk.patch_embed.proj.weight",)),
                ("line", ("model0.1.weight", "model4.1.weight")), ("raft", ("feature_encoder.", "update_block.")))
ANNOTATOR_KINDS = ("depth", "pose", "detector", "sam2", "line", "raft")


def annotator_model_kind(path: str) -> tuple:
    """What an annotator model file or folder holds, cheaply: (kind, reason), kind one of ANNOTATOR_KINDS, "other"
    (named in the reason) or "unknown" (a pickle, or unreadable: only loading it tells).

    A folder is read by its config.json model_type, a .safetensors file by its header's tensor names.
    """
    name = os.path.basename(path.rstrip(os.sep))
    if os.path.isdir(path):
        config_path = os.path.join(path, "config.json")
        if not os.path.isfile(config_path):
            return "other", f"{name}: a folder without config.json (not a transformers model)"
        try:
            with open(config_path) as handle:
                model_type = json.load(handle).get("model_type")
        except (OSError, ValueError, AttributeError) as error:
            return "unknown", f"{config_path}: unreadable ({error})"
        if model_type in HF_MODEL_KINDS:
            return HF_MODEL_KINDS[model_type], f"a transformers '{model_type}' model"
        return "other", f"a transformers '{model_type}' model"
    if not path.lower().endswith(SAFETENSORS_SUFFIXES):
        return "unknown", f"{name}: a PyTorch pickle, whose contents are only known once it is loaded"
    try:
        keys = [key.removeprefix("module.") for key in safetensors_keys(path)]
    except CheckpointError as error:
        return "unknown", str(error)
    for kind, markers in FILE_MARKERS:
        if all(any(key == m or (m.endswith(".") and key.startswith(m)) for key in keys) for m in markers):
            return kind, f"a {kind} annotator model"
    return "other", f"{name}: none of the annotators' weights (keys like {sorted(keys)[:3]})"


def load_hf_model(model_class, path: str, model_types: tuple, what: str, example: str,
                  device="cpu", dtype=torch.float32):
    """Load a transformers model from a local folder offline; any missing or misshapen weight is an error."""
    read_hf_config(path, model_types, what, example)
    try:
        model, info = model_class.from_pretrained(path, local_files_only=True, output_loading_info=True,
                                                  dtype=torch.float32)
    except Exception as error:  # transformers raises many types; the user needs the file and the reason
        raise CheckpointError(f"{path}: could not load {what} ({type(error).__name__}: {error}).") from error
    problems = {name: info.get(name) for name in ("missing_keys", "mismatched_keys") if info.get(name)}
    if problems:
        detail = "; ".join(f"{name}: {sorted(map(str, keys))[:5]}" for name, keys in problems.items())
        raise CheckpointError(f"{path}: the weights do not match the config ({detail}). The file is incomplete or "
                              f"belongs to another model; download {example} again.")
    return model.eval().requires_grad_(False).to(device=device, dtype=dtype)


def original_state(path: str, marker: str, not_it: str) -> dict:
    """The state dict of an original (non-transformers) checkpoint, unwrapped from {'model': ...}.

    A file without the `marker` key raises a CheckpointError: `not_it`, with {found} replaced by its keys.
    """
    state = read_checkpoint(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or marker not in state:
        found = key_summary(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: {not_it.format(found=found)}")
    return state


def load_converted(model, converted: dict, path: str, what: str, assign: bool = False):
    """Load converted weights into `model` (float32, eval, frozen); every key must fit: missing, unexpected and
    misshapen keys are named in a CheckpointError. assign=True for a model built on the meta device."""
    mismatch = state_mismatch(model.state_dict(), converted)
    if mismatch:
        raise CheckpointError(f"{path}: the checkpoint does not fit {what} ({mismatch}).")
    model.load_state_dict({k: v.float() for k, v in converted.items()}, strict=True, assign=assign)
    return model.eval().requires_grad_(False)
