"""Reading weight files safely: .safetensors, or .pth/.pt/.ckpt/.bin through torch.load(weights_only=True).

Every failure is a CheckpointError whose message names the file, what it looked like and the fix.
"""

import os
import pickle
import zipfile

import torch

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")


class CheckpointError(ValueError):
    """A weight file that cannot be used; the message says which file, why, and what to do."""


def read_checkpoint(path: str):
    """Load a weight file onto the CPU: a flat {name: tensor} dict, or the nested dict a .pth holds."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file. Put the weights there or pick another file.")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: the file is empty (an interrupted download?). Download it again.")
    lower = path.lower()
    if lower.endswith(SAFETENSORS_SUFFIXES):
        return _read_safetensors(path)
    if lower.endswith(PICKLE_SUFFIXES):
        return _read_pickle(path)
    raise CheckpointError(
        f"{path}: unknown weight file type; expected one of "
        f"{', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)}.")


def safetensors_keys(path: str) -> list:
    """The tensor names of a .safetensors file, from its header only (no tensor is read)."""
    return list(safetensors_meta(path))


def safetensors_meta(path: str) -> dict:
    """{name: meta tensor} of a .safetensors file: every tensor's shape and dtype from the header, no data read."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            return {name: torch.empty(handle.get_slice(name).get_shape(), device="meta") for name in handle.keys()}
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable .safetensors file ({type(error).__name__}: {error}). "
                              "The file is corrupt or truncated; download it again.") from error


def _read_safetensors(path):
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as error:
        raise CheckpointError(
            f"{path}: not a readable .safetensors file ({type(error).__name__}: {error}). "
            "The file is corrupt or truncated; download it again.") from error


def _read_pickle(path):
    try:
        mmap = zipfile.is_zipfile(path)  # memory-map the modern zip format instead of reading it all
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: torch.load(weights_only=True) refused it: the file holds Python objects, not only "
            "tensors, and StreamVACE never runs code from a weight file. Convert it to .safetensors "
            f"with a tool you trust. ({error})") from error
    except Exception as error:
        raise CheckpointError(
            f"{path}: not a readable PyTorch weight file ({type(error).__name__}: {error}). "
            "The file is corrupt or truncated; download it again.") from error


def nonfinite_names(named_tensors) -> list:
    """Names of the floating-point tensors that hold NaN or infinite values (one host sync for them all)."""
    named = [(name, t) for name, t in named_tensors if t.is_floating_point() and t.numel()]
    if not named:
        return []
    flags = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()
    return [name for (name, _), ok in zip(named, flags) if not ok]


def nonfinite_error(path: str, bad: list, dtype=None) -> "CheckpointError":
    """The CheckpointError for a file whose weights `bad` hold NaN or infinite values."""
    loaded = f", as loaded in {str(dtype).replace('torch.', '')}" if dtype is not None else ""
    return CheckpointError(
        f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values (first: {key_summary(bad, 3)}){loaded}. "
        "The file is damaged or was saved from a diverged training run: download it again; if it was loaded in "
        "float16, its values may overflow float16 (load it in bf16).")


def check_finite_weights(named_tensors, path: str) -> None:
    """Raise CheckpointError naming the file and the first tensors that hold NaN or infinite values.

    Works on the tensors where they are, so a model is best checked on its device after loading.
    """
    named = list(named_tensors)
    bad = nonfinite_names(named)
    if bad:
        raise nonfinite_error(path, bad, next(t.dtype for name, t in named if name == bad[0]))


def key_summary(keys, limit: int = 5) -> str:
    """A short, sorted listing of some keys, for error messages."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def state_mismatch(expected: dict, state: dict):
    """What keeps `state` from loading strictly into a model whose state dict is `expected`: 'missing ...;
    unexpected ...; wrong shapes ...' naming the keys, or None when every key fits."""
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    wrong = [k for k in set(expected) & set(state) if expected[k].shape != state[k].shape]
    if not (missing or unexpected or wrong):
        return None
    return (f"missing {key_summary(missing) or 'none'}; unexpected {key_summary(unexpected) or 'none'}; "
            f"wrong shapes {key_summary(wrong) or 'none'}")
