"""Few-step flow-matching sampling for distilled causal Wan models (Self-Forcing / LongLive).

The model predicts the velocity v = noise - x0 at noise level sigma, and its timestep input is
t = 1000 * sigma. Each step takes x0 = x_t - sigma * v and re-noises to the next level with fresh noise,
x_t' = (1 - sigma') * x0 + sigma' * noise (a DMD student's sampler; no CFG).

LongLive and Self-Forcing "warp" the nominal steps [1000, 750, 500, 250] through the shift-5 schedule
sigma = shift*s / (1 + (shift-1)*s), s = t/1000, giving [1000, 937.5, 833.3, 625]; Daydream Scope feeds
the raw steps. Both are offered; warped is the default because the released checkpoints were trained so.
"""

import torch

DEFAULT_STEPS = (1000, 750, 500, 250)
DEFAULT_SHIFT = 5.0


def shifted_sigma(s: float, shift: float) -> float:
    """The flow-matching time shift: s -> shift*s / (1 + (shift-1)*s)."""
    return shift * s / (1.0 + (shift - 1.0) * s)


def sigma_schedule(steps=DEFAULT_STEPS, warp: bool = True, shift: float = DEFAULT_SHIFT) -> list:
    """Noise levels (Python floats, 1.0 = pure noise) for nominal timesteps in [0, 1000]."""
    steps = [float(t) for t in steps]
    if not steps or any(not 0.0 < t <= 1000.0 for t in steps) or steps != sorted(steps, reverse=True):
        raise ValueError(f"denoising steps must be decreasing values in (0, 1000], got {steps}")
    return [shifted_sigma(t / 1000.0, shift) if warp else t / 1000.0 for t in steps]


def parse_steps(text: str) -> tuple:
    """Nominal timesteps from a comma-separated string such as "1000,750,500,250" (checked by sigma_schedule)."""
    try:
        steps = tuple(float(part) for part in str(text).split(","))
        sigma_schedule(steps)
    except ValueError as error:
        raise ValueError(f"steps must be comma-separated numbers (timesteps) decreasing within (0, 1000], such as "
                         f"'1000,750,500,250'; got {text!r} ({error})") from None
    return steps


def model_timestep(sigma: float) -> float:
    """The timestep the DiT is conditioned on for a noise level."""
    return 1000.0 * sigma


def predict_x0(x_t: torch.Tensor, velocity: torch.Tensor, sigma: float) -> torch.Tensor:
    """Clean-sample estimate from the predicted velocity (float32)."""
    return x_t.float() - sigma * velocity.float()


def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """The flow-matching forward process at noise level sigma."""
    return (1.0 - sigma) * x0 + sigma * noise


def chunk_seed(seed: int, chunk_index: int) -> int:
    """A reproducible, well-mixed seed for one chunk of a stream (splitmix64 of seed and index)."""
    z = (seed * 0x9E3779B97F4A7C15 + chunk_index + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF
