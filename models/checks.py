"""Value checks on inputs at a call's boundary (once per call, never inside a chunk loop).

A NaN or a 0..255 frame that slips into a stream comes out as NaN, black or squashed video and stays in
the stream's caches; these checks refuse such input with a message that names the input and the fix.
On a GPU each check costs one host sync, so engines run them where a call starts, on its inputs.
"""

import torch

TOLERANCE = 0.02  # resampling filters overshoot [0, 1] / [-1, 1] by a little; larger excursions are mistakes


def value_summary(tensor: torch.Tensor) -> tuple:
    """(all finite, min, max) of a tensor with one host sync (min / max are only meaningful when finite)."""
    x = tensor.detach()
    if not x.is_floating_point():
        x = x.float()
    low, high = torch.aminmax(x)  # no full-size temporaries: control videos can be long
    ok, low, high = torch.stack([torch.isfinite(x).all().to(low.dtype), low, high]).float().tolist()
    return bool(ok), low, high


def check_finite(tensor: torch.Tensor, what: str, fix: str = "check the node or code that produced it") -> None:
    """Raise ValueError if `tensor` holds NaN or infinite values."""
    if tensor.numel() and not value_summary(tensor)[0]:
        raise ValueError(f"{what} contains NaN or infinite values; {fix}")


def check_values(tensor: torch.Tensor, what: str, low: float, high: float, fix: str = "") -> None:
    """Raise ValueError unless `tensor` is finite and within [low, high] (a small overshoot is allowed).

    A range that looks like 8-bit pixels (maximum above 2 where 1 is expected) gets the matching hint.
    """
    if tensor.numel() == 0:
        raise ValueError(f"{what} is empty")
    finite, lo, hi = value_summary(tensor)
    if not finite:
        raise ValueError(f"{what} contains NaN or infinite values; check the node or code that produced it "
                         "(a NaN upstream poisons every later frame)")
    slack = TOLERANCE * (high - low)
    if lo < low - slack or hi > high + slack:
        hint = fix
        if high > 0 and 10 * high < hi <= 512 * high:  # 0..255 pixels, also after an x * 2 - 1 conversion
            hint = f"they look like 8-bit values 0..255: divide by 255 first. {fix}".strip()
        raise ValueError(f"{what} has values from {lo:.4g} to {hi:.4g}, outside [{low:g}, {high:g}]; {hint}".rstrip("; "))
