"""Temporal ControlNet-LLLite for the DreamLite U-Net, in a form torch.compile folds into the U-Net graph.

One kohya-shaped module per hooked Linear (`attn1.to_q/k/v` and `attn2.to_q` inside the transformer
blocks): `conditioning1` (a strided-conv CNN run once per condition image) -> `down` -> `mid` (with the
condition embedding) -> zero-initialised `up`; the result is added to the Linear's *input*.

The compile-friendly reformulation (seed 003, §III-C): the condition embedding lives in a fixed buffer
written in place (its identity never changes, so neither Dynamo guards nor CUDA-graph addresses do), the
multiplier is a tensor buffer, and the forward has no Python branches. The published adapter
(`temporal_lllite_step001440.safetensors`, keys `modules_dict.<path with __>.<layer>`) loads into any
hook subset; the hooks outside the subset are reported as ignored.
"""

import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint_io import SAFETENSORS_SUFFIXES, CheckpointError, key_summary, read_checkpoint, safetensors_keys

LLLITE_PROJECTIONS = (".attn1.to_q", ".attn1.to_k", ".attn1.to_v", ".attn2.to_q")
HOOK_SUBSETS = {
    "down_blocks": ("down_blocks.",),
    "down_blocks+mid_block": ("down_blocks.", "mid_block."),
    "all": ("down_blocks.", "mid_block.", "up_blocks."),
}
WIDTH_CONCAT = 2  # edit mode feeds [target | source] along width; only the target half is conditioned
STATE_PREFIX = "modules_dict."


def adapter_file_kind(path: str) -> tuple:
    """What a file in the adapter folder holds, from a .safetensors header alone: ("lllite" | "other" | "unknown",
    reason). "lllite" is what `TemporalLLLite.from_file` loads; pickles and unreadable headers are "unknown"."""
    name = os.path.basename(path)
    if not path.lower().endswith(SAFETENSORS_SUFFIXES):
        return "unknown", f"{name}: a PyTorch pickle, whose contents are only known once it is loaded"
    try:
        keys = safetensors_keys(path)
    except CheckpointError as error:
        return "unknown", str(error)
    if any(k.startswith(STATE_PREFIX) and k.endswith(".conditioning1.0.weight") for k in keys):
        return "lllite", "a DreamLite Temporal-LLLite adapter"
    if any(k.startswith("lllite_unet_") for k in keys):
        return "other", "a kohya SDXL LLLite, which does not fit DreamLite"
    return "other", f"{name}: not a Temporal-LLLite adapter (a ControlNet or another model)"


def lllite_target_names(unet: nn.Module, hook_blocks: str = "all") -> list:
    """Module paths of the Linears an LLLite adapter hooks, restricted to a subset of HOOK_SUBSETS."""
    if hook_blocks not in HOOK_SUBSETS:
        raise ValueError(f"unknown LLLite hook subset {hook_blocks!r}; choose one of {sorted(HOOK_SUBSETS)}")
    prefixes = HOOK_SUBSETS[hook_blocks]
    return [name for name, module in unet.named_modules()
            if isinstance(module, nn.Linear) and name.endswith(LLLITE_PROJECTIONS)
            and ".transformer_blocks." in name and name.startswith(prefixes)]


def hook_key(module_path: str) -> str:
    """The state-dict key of the hook on a Linear (dreamlite-lllite's ModuleDict naming)."""
    return module_path.replace(".", "__")


def feature_stride(module_path: str, num_down_blocks: int, vae_scale: int = 8) -> int:
    """Pixels per feature cell at the U-Net block holding `module_path` (8 at down_blocks.0 for a /8 VAE)."""
    head, _, rest = module_path.partition(".")
    if head == "down_blocks":
        level = int(rest.split(".")[0])
    elif head == "mid_block":
        level = num_down_blocks - 1
    elif head == "up_blocks":
        level = num_down_blocks - 1 - int(rest.split(".")[0])
    else:
        raise ValueError(f"{module_path} is not inside down_blocks, mid_block or up_blocks")
    return vae_scale * 2 ** level


def conditioning_encoder(cond_emb_dim: int, stride: int) -> nn.Sequential:
    """kohya's `conditioning1`: strided convs 3 -> c/2 -> ... -> c with total stride `stride`.

    Strides are factored into 4s then a 2 (8 = 4·2, 16 = 4·4, 32 = 4·4·2), which gives exactly kohya's
    depth-1/2/3 layer shapes and so the published layer indices (.0, .2, .4).
    """
    strides, rest = [], stride
    while rest % 4 == 0:
        strides.append(4)
        rest //= 4
    if rest == 2:
        strides.append(2)
    elif rest != 1:
        raise ValueError(f"LLLite feature stride {stride} is not a power of two")
    layers, channels = [], 3
    for index, step in enumerate(strides):
        out = cond_emb_dim if index == len(strides) - 1 else cond_emb_dim // 2
        layers += [nn.Conv2d(channels, out, kernel_size=step, stride=step), nn.ReLU(inplace=True)]
        channels = out
    return nn.Sequential(*layers[:-1])


class LLLiteModule(nn.Module):
    """The adapter on one Linear: its forward replaces the Linear's forward once attached."""

    def __init__(self, host: nn.Linear, cond_emb_dim: int, mlp_dim: int, stride: int):
        super().__init__()
        self.stride = stride
        self.cond_emb_dim = cond_emb_dim
        self._host = [host]  # a list keeps the host out of this module's state dict
        self._grid = (0, 0)
        self.conditioning1 = conditioning_encoder(cond_emb_dim, stride)
        self.down = nn.Sequential(nn.Linear(host.in_features, mlp_dim), nn.ReLU(inplace=True))
        self.mid = nn.Sequential(nn.Linear(mlp_dim + cond_emb_dim, mlp_dim), nn.ReLU(inplace=True))
        self.up = nn.Sequential(nn.Linear(mlp_dim, host.in_features))
        nn.init.zeros_(self.up[0].weight)  # an untrained adapter is an exact no-op
        nn.init.zeros_(self.up[0].bias)
        self.register_buffer("cond_emb", torch.zeros(0, 0, cond_emb_dim), persistent=False)
        self.register_buffer("multiplier", torch.ones(()), persistent=False)

    def allocate(self, max_batch: int, height: int, width: int) -> bool:
        """Size the condition-embedding buffer for frames of height x width; True if it was (re)allocated."""
        rows, cols = height // self.stride, width // self.stride
        shape = (max_batch, rows * cols * WIDTH_CONCAT, self.cond_emb_dim)
        weight = self.down[0].weight
        self._grid = (rows, cols)
        if (tuple(self.cond_emb.shape), self.cond_emb.device, self.cond_emb.dtype) == (shape, weight.device,
                                                                                        weight.dtype):
            return False
        # zeros stay in the source half forever: the reference latent gets no LLLite delta
        self.cond_emb = torch.zeros(shape, device=weight.device, dtype=weight.dtype)
        return True

    def set_cond(self, cond_image: torch.Tensor) -> None:
        """Encode condition images [B, 3, H, W] in [-1, 1] into the buffer, in place."""
        rows, cols = self._grid
        embedding = self.conditioning1(cond_image)
        if tuple(embedding.shape[2:]) != (rows, cols):
            raise ValueError(f"LLLite condition of size {tuple(cond_image.shape[2:])} does not match the "
                             f"allocated frame size {rows * self.stride}x{cols * self.stride}; call allocate first")
        grid = self.cond_emb.view(self.cond_emb.shape[0], rows, cols * WIDTH_CONCAT, self.cond_emb_dim)
        grid[: embedding.shape[0], :, :cols].copy_(embedding.permute(0, 2, 3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The hooked Linear: host(x + up(mid([cond, down(x)])) * multiplier), branch-free."""
        host = self._host[0]
        hidden = self.mid(torch.cat([self.cond_emb[: x.shape[0]], self.down(x)], dim=-1))
        return F.linear(x + self.up(hidden) * self.multiplier, host.weight, host.bias)


@dataclass
class LLLiteLoadReport:
    """What a non-strict adapter load did: hooks loaded, hooks ignored (outside the subset), hooks missing."""

    loaded: list = field(default_factory=list)
    ignored: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unknown: list = field(default_factory=list)

    def summary(self) -> str:
        """One human-readable line."""
        text = f"LLLite: loaded {len(self.loaded)} hooks, ignored {len(self.ignored)} outside the subset"
        if self.missing:
            text += f", {len(self.missing)} hooks of the subset absent from the file (they stay no-ops)"
        if self.unknown:
            text += f", {len(self.unknown)} hooks that match no Linear of this U-Net"
        return text


class TemporalLLLite(nn.Module):
    """All LLLite modules of one U-Net for one hook subset, plus the condition/multiplier controls."""

    def __init__(self, unet: nn.Module, hook_blocks: str = "down_blocks", cond_emb_dim: int = 32,
                 mlp_dim: int = 64, vae_scale: int = 8):
        super().__init__()
        self.hook_blocks = hook_blocks
        self.cond_owner = None  # which stream's condition the buffers hold (see DreamLiteStylizer)
        self._multiplier = None
        self._all_keys = {hook_key(name) for name in lllite_target_names(unet, "all")}
        num_down = len(unet.down_blocks)
        self.modules_dict = nn.ModuleDict({
            hook_key(name): LLLiteModule(unet.get_submodule(name), cond_emb_dim, mlp_dim,
                                         feature_stride(name, num_down, vae_scale))
            for name in lllite_target_names(unet, hook_blocks)})

    @classmethod
    def from_file(cls, unet: nn.Module, path: str, hook_blocks: str = "down_blocks"):
        """Build the adapter with the sizes stored in a published file and load it: (adapter, report)."""
        state = read_checkpoint(path)
        probe = [k for k in state if k.startswith(STATE_PREFIX) and k.endswith(".conditioning1.0.weight")]
        if not probe:
            hint = (" It looks like a kohya SDXL LLLite (lllite_unet_* keys), which does not fit DreamLite."
                    if any(k.startswith("lllite_unet_") for k in state) else "")
            raise CheckpointError(
                f"{path}: not a DreamLite Temporal-LLLite adapter (expected keys like "
                f"'modules_dict.down_blocks__0__attentions__0__transformer_blocks__0__attn2__to_q.down.0.weight', "
                f"found {key_summary(state)}).{hint}")
        first = probe[0][: -len("conditioning1.0.weight")]
        cond_emb_dim = 2 * state[probe[0]].shape[0]
        mlp_dim = state[first + "down.0.weight"].shape[0]
        adapter = cls(unet, hook_blocks, cond_emb_dim, mlp_dim)
        report = adapter.load_adapter_state(state, source=path)
        return adapter, report

    def load_adapter_state(self, state: dict, source: str = "state dict") -> LLLiteLoadReport:
        """Load `modules_dict.*` weights non-strictly into this subset and report what happened."""
        grouped = {}
        for key, tensor in state.items():
            if key.startswith(STATE_PREFIX):
                hook, _, param = key[len(STATE_PREFIX):].partition(".")
                grouped.setdefault(hook, {})[param] = tensor
        report = LLLiteLoadReport()
        for hook, params in sorted(grouped.items()):
            if hook in self.modules_dict:
                try:
                    self.modules_dict[hook].load_state_dict(params, strict=True)
                except RuntimeError as error:
                    raise CheckpointError(f"{source}: LLLite hook {hook} does not fit this U-Net: {error}") from error
                report.loaded.append(hook)
            elif hook in self._all_keys:
                report.ignored.append(hook)
            else:
                report.unknown.append(hook)
        report.missing = sorted(set(self.modules_dict) - set(grouped))
        if not report.loaded and self.modules_dict:
            raise CheckpointError(f"{source}: none of its {len(grouped)} LLLite hooks matches the "
                                  f"'{self.hook_blocks}' hooks of this U-Net ({report.summary()}).")
        return report

    def attach(self) -> None:
        """Route every hooked Linear's forward through its adapter (the U-Net weights stay untouched)."""
        for module in self.modules_dict.values():
            module._host[0].forward = module.forward

    def detach(self) -> None:
        """Give every hooked Linear its own forward back."""
        for module in self.modules_dict.values():
            module._host[0].__dict__.pop("forward", None)

    def allocate(self, max_batch: int, height: int, width: int) -> None:
        """Size every condition buffer for `max_batch` frames of height x width pixels."""
        resized = [module.allocate(max_batch, height, width) for module in self.modules_dict.values()]
        if any(resized):
            self.cond_owner = None  # fresh buffers hold nobody's condition

    @torch.no_grad()
    def set_cond_image(self, cond_image: torch.Tensor, owner=None) -> None:
        """Encode condition frames [B, 3, H, W] in [-1, 1] into every hook's buffer; remember the owner."""
        cond_image = cond_image.to(dtype=next(self.parameters()).dtype)
        for module in self.modules_dict.values():
            module.set_cond(cond_image)
        self.cond_owner = owner

    def set_multiplier(self, value: float) -> None:
        """Set the adapter strength in place (0 gives the bare U-Net exactly); a no-op if unchanged."""
        if self._multiplier == float(value):
            return
        for module in self.modules_dict.values():
            module.multiplier.fill_(float(value))
        self._multiplier = float(value)
