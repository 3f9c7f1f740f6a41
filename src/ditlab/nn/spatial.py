"""Spatial (per-token) modulation from a map: SPADE (Park et al., CVPR 2019) inside a DiT's adaLN family.

adaLN gives every token of a sample the same shift, scale and gate; a layout (a segmentation mask, or any
C×H×W map) needs them to vary across the image. SPADE convolves the map into pixel-wise γ, β; here the same
two stages produce a per-token (shift, scale, gate) that is ADDED to the block's global modulation:

    layout (N, K, H, W) ── resized to the input's pixels (gh·p, gw·p) ── space-to-depth by the patch p
        -> (N, K·p·p, gh, gw): each token sees its patch of the map at full resolution
        -> `SpatialEmbedder`: the shared Conv3×3(K·p·p -> hidden) + ReLU, once per forward  (Condition.spatial)
        -> every Block's `SpatialModulation`: its own Conv1×1(hidden -> branches·k·D), zero-initialised
        -> (N, T, branches·k·D) per token, split like the adaLN projection, added to the global fields

Zero-initialised per-layer convs make a fresh model compute exactly what the same model without the layout
computes (the added terms are exact zeros). An all-zero layout is the "empty layout": the unconditional branch
of classifier-free guidance, and what layout dropout trains.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ditlab.nn.modulation import Modulation, params_per_branch

# none: no layout; spade: per-token modulation (this module); concat: the ControlNet-free baseline, the layout
# resized to the input and concatenated to its channels before the patch embedding (in_channels + K)
SPATIAL_CONDITIONS = ("none", "spade", "concat")


def check_layout(layout, batch: int, channels: int) -> torch.Tensor:
    """A model's layout argument as float (N, K, H, W): a float map as it is, an integer label map (N, H, W)
    one-hot encoded; anything else a ValueError saying what is expected."""
    if not torch.is_tensor(layout):
        raise ValueError(f"layout must be a torch tensor (N, {channels}, H, W), got {type(layout).__name__}")
    if not layout.is_floating_point():
        if layout.dim() != 3 or layout.shape[0] != batch:
            raise ValueError(
                f"an integer layout is a label map (N={batch}, H, W); got shape {tuple(layout.shape)}"
            )
        if layout.numel() and (int(layout.min()) < 0 or int(layout.max()) >= channels):
            raise ValueError(
                f"layout labels must lie in [0, {channels}) (layout_channels={channels}); got values "
                f"{int(layout.min())}..{int(layout.max())}"
            )
        return F.one_hot(layout.long(), channels).permute(0, 3, 1, 2).float()
    if layout.dim() != 4 or layout.shape[0] != batch or layout.shape[1] != channels:
        raise ValueError(
            f"layout must have shape (N={batch}, layout_channels={channels}, H, W); got {tuple(layout.shape)}"
        )
    return layout


def layout_to_tokens(layout: torch.Tensor, grid: tuple[int, int], patch: int) -> torch.Tensor:
    """(N, K, H, W) map -> (N, K·p·p, gh, gw): resized to the input's pixel grid (area when shrinking, which
    keeps class fractions, nearest when enlarging, which keeps a one-hot map one-hot), then each token's p×p
    patch stacked into its channels."""
    size = (grid[0] * patch, grid[1] * patch)
    if tuple(layout.shape[2:]) != size:
        shrink = layout.shape[2] >= size[0] and layout.shape[3] >= size[1]
        layout = F.interpolate(layout, size=size, mode="area" if shrink else "nearest")
    return F.pixel_unshuffle(layout, patch) if patch > 1 else layout


def layout_channels_for(layout, batch: int, channels: int, size: tuple[int, int], like: torch.Tensor):
    """The concat baseline's extra input channels: the layout (None: empty) as (N, K, H, W) at the input's size."""
    if layout is None:
        return like.new_zeros(batch, channels, *size)
    layout = check_layout(layout, batch, channels).to(like.device, like.dtype)
    return layout_to_tokens(layout, size, 1)


class SpatialEmbedder(nn.Module):
    """SPADE's shared stage: Conv3×3(K·p·p -> hidden) + ReLU on the layout at the token grid, once per forward."""

    def __init__(self, layout_channels: int, patch: int, hidden: int):
        super().__init__()
        self.layout_channels, self.patch = layout_channels, patch
        self.shared = nn.Sequential(
            nn.Conv2d(layout_channels * patch * patch, hidden, 3, padding=1), nn.ReLU()
        )

    def forward(self, layout, grid: tuple[int, int], batch: int) -> torch.Tensor:
        """layout (N, K, H, W) float or (N, H, W) labels, or None (the empty layout) -> (N, hidden, gh, gw)."""
        weight = self.shared[0].weight
        if layout is None:
            size = (grid[0] * self.patch, grid[1] * self.patch)
            layout = weight.new_zeros(batch, self.layout_channels, *size)
        layout = check_layout(layout, batch, self.layout_channels).to(weight.device, weight.dtype)
        return self.shared(layout_to_tokens(layout, grid, self.patch))


class SpatialModulation(nn.Module):
    """A Block's per-layer stage: Conv1×1(hidden -> branches·k·D), zero-initialised, -> per-token Modulations
    (each field (N, T, D)) in the order of the block's adaLN projection."""

    def __init__(self, hidden: int, dim: int, branches: int, shift: bool, gate: bool):
        super().__init__()
        self.branches, self.shift, self.gate = branches, shift, gate
        out = branches * params_per_branch(shift, gate) * dim
        # 1×1: the shared 3×3 conv gives the spatial context, each layer projects it per token (as adaLN's
        # Linear projects c per sample); a 3×3 here would cost 9× as much for every block
        # built without an init (draws nothing from the RNG), on the default device: a model built under
        # `torch.device("meta")` (the loaders' shape check) gets meta tensors here too
        self.conv = nn.Conv2d(hidden, out, 1, device="meta").to_empty(device=torch.empty(0).device)
        self.reset_to_zero()

    def reset_to_zero(self) -> None:
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, features: torch.Tensor, tokens: int | None = None) -> list[Modulation]:
        """features (N, hidden, gh, gw) -> per-token Modulations; `tokens` > gh·gw: the block's stream holds
        other tokens after the image's (a single-stream model's text), which get zeros (no layout there)."""
        params = self.conv(features).flatten(2).transpose(1, 2)  # (N, T, branches·k·D), tokens row-major
        if tokens is not None and tokens > params.shape[1]:
            params = F.pad(params, (0, 0, 0, tokens - params.shape[1]))
        k = params_per_branch(self.shift, self.gate)
        chunks = params.chunk(self.branches * k, dim=-1)  # [shift,] scale[, gate] per branch, as adaLN's
        out = []
        for b in range(self.branches):
            part = list(chunks[b * k : (b + 1) * k])
            shift = part.pop(0) if self.shift else None
            out.append(Modulation(shift, part[0], part[1] if self.gate else None))
        return out

    def add_to(self, mods: list[Modulation], features: torch.Tensor | None, tokens: int) -> list[Modulation]:
        """The global modulations `mods` plus this layer's per-token ones for a stream of `tokens` tokens
        (features None: no layout)."""
        if features is None:
            return mods
        return [m.plus(s) for m, s in zip(mods, self.forward(features, tokens))]
