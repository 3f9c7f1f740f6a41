"""An ADM-style convolutional output head at pixel resolution, modulated by AdaGN (issue 21, item 3).

A DiT predicts each p×p patch from one token, so everything it knows about a patch's pixels has passed
through that token; the per-token SPADE modulation of `ditlab.nn.spatial` cannot place an edge inside a patch.
This head runs after the unpatchify, on pixels:

    [model output (C_out), noisy input x_t (C_in)] ── Conv3×3 → `width` channels
        -> AdaGN: GroupNorm · (1 + y_s) + y_b, with (y_s, y_b) = Linear(SiLU(c)) per channel from the global
           condition c (timestep + class/text), PLUS, for layout models, SPADE's per-pixel (scale, shift):
           layout (N, K, H, W) → Conv3×3(K -> width) + ReLU → Conv1×1(width -> 2·width)
        -> SiLU -> Conv3×3(width -> C_out), zero-initialised, ADDED to the model output

The last conv (and both modulation projections) start at zero, so a fresh model with the head computes
exactly what the same model without it computes.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ditlab.nn.conditional_norms import AdaGN
from ditlab.nn.spatial import SpatialEmbedder

PIXEL_HEADS = ("none", "adagn")  # none: the DiT's linear head only; adagn: this module after it


def head_groups(width: int) -> int:
    """GroupNorm groups of the head: 8 (or the largest divisor of `width` below it)."""
    return math.gcd(width, 8)


class PixelHead(nn.Module):
    """out + Conv3×3(SiLU(AdaGN(Conv3×3([out, x_t]), c[, layout per pixel]))); see the module docstring."""

    def __init__(
        self, in_channels: int, out_channels: int, width: int, cond_dim: int, layout_channels: int = 0
    ):
        super().__init__()
        self.width = width
        self.conv_in = nn.Conv2d(out_channels + in_channels, width, 3, padding=1)
        self.norm = AdaGN(width, cond_dim, num_groups=head_groups(width), zero_init=True)
        # the layout at pixel resolution (patch 1): SPADE's shared conv, then the per-pixel (scale, shift)
        self.layout_embedder = SpatialEmbedder(layout_channels, 1, width) if layout_channels else None
        self.layout_modulation = nn.Conv2d(width, 2 * width, 1) if layout_channels else None
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)
        self.reset_to_zero()

    def reset_to_zero(self) -> None:
        """The parts whose zeros make the head add exactly nothing (and ignore the condition) at the start."""
        for conv in (self.conv_out, self.layout_modulation):
            if conv is not None:
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.norm.proj[1].weight)
        nn.init.zeros_(self.norm.proj[1].bias)

    def embed_layout(self, layout, size: tuple[int, int], batch: int) -> torch.Tensor | None:
        """A layout model's layout (None: the empty one) -> (N, width, H, W) features; None without a layout
        path."""
        if self.layout_embedder is None:
            return None
        return self.layout_embedder(layout, size, batch)

    def forward(self, out, x, c, layout_features=None) -> torch.Tensor:
        """out (N, C_out, H, W) the model's prediction, x (N, C_in, H, W) its noisy input, c (N, cond_dim),
        layout_features (N, width, H, W) from `embed_layout` or None -> (N, C_out, H, W)."""
        h = self.conv_in(torch.cat([out, x.to(out.dtype)], dim=1))
        pixel = None
        if self.layout_modulation is not None and layout_features is not None:
            pixel = self.layout_modulation(layout_features.to(h.dtype)).chunk(2, dim=1)
        return out + self.conv_out(F.silu(self.norm(h, c.to(h.dtype), pixel)))
