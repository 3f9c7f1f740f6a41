"""The convolutional encoder and decoder of ditlab's autoencoders (the LDM / Stable Diffusion design).

ResNet blocks with GroupNorm and SiLU, one block level per entry of ``block_out_channels`` (each level but
the last halves the resolution, so f = 2 ** (levels - 1)), and an optional single-head attention block in the
middle. Module names and tensor shapes are those of diffusers' ``Encoder`` / ``Decoder`` (the parts of its
``AutoencoderKL`` and ``VQModel``), so moving weights between the two is a state-dict copy
(see ``ditlab.autoencoders.interop``); the arithmetic is the same, so outputs agree to float rounding.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Encoder", "Decoder"]

_EPS = 1e-6  # GroupNorm epsilon of the LDM autoencoders


class ResnetBlock(nn.Module):
    """norm -> SiLU -> conv3x3, twice, plus the input (through a 1x1 conv when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=_EPS)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (N, out, H, W)
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with a GroupNorm in front and a residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=_EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels), nn.Dropout(0.0)])

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        tokens = self.group_norm(x).view(n, c, h * w).transpose(1, 2)  # (N, HW, C)
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)  # (N, HW, C) each
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # (N, HW, C)
        out = self.to_out[0](out).transpose(1, 2).reshape(n, c, h, w)
        return x + out


class MidBlock(nn.Module):
    """ResNet block, [attention, ResNet block]: the bottleneck at the lowest resolution."""

    def __init__(self, channels: int, groups: int, attention: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups) for _ in range(2)])
        self.attentions = nn.ModuleList([AttentionBlock(channels, groups)] if attention else [])

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class Downsample(nn.Module):
    """A stride-2 3x3 conv after padding one row and column at the bottom/right (LDM's asymmetric pad)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ResNet blocks, then an optional resampler (diffusers' Down/UpDecoderBlock2D)."""

    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int, resample: str | None):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups)
                for i in range(layers)
            ]
        )
        if resample == "down":
            self.downsamplers = nn.ModuleList([Downsample(out_channels)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Upsample(out_channels)])
        self.resample = resample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.resnets:
            x = block(x)
        if self.resample == "down":
            x = self.downsamplers[0](x)
        elif self.resample == "up":
            x = self.upsamplers[0](x)
        return x


class _Trunk(nn.Module):
    """What Encoder and Decoder share: conv_in, a level per width (each but the last resamples), the middle
    block, then GroupNorm, SiLU and conv_out. The decoder walks the widths in reverse, runs its middle block
    first and has one extra resnet a level. Modules are built in the order they run (the init draws follow it)."""

    resample: str  # "down" (Encoder) or "up" (Decoder)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        block_out_channels: tuple[int, ...],
        layers_per_block: int,
        groups: int,
        mid_attention: bool,
    ) -> None:
        super().__init__()
        resample = self.resample
        up = resample == "up"
        widths = tuple(reversed(block_out_channels)) if up else tuple(block_out_channels)
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        if up:
            self.mid_block = MidBlock(widths[0], groups, mid_attention)
        levels = nn.ModuleList(
            _Level(
                widths[max(i - 1, 0)],
                width,
                layers_per_block + int(up),
                groups,
                resample if i < len(widths) - 1 else None,
            )
            for i, width in enumerate(widths)
        )
        if up:
            self.up_blocks = levels
        else:
            self.down_blocks = levels
            self.mid_block = MidBlock(widths[-1], groups, mid_attention)
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=_EPS)
        self.conv_out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)


class Encoder(_Trunk):
    """Images (N, in_channels, H, W) -> features (N, out_channels, H/f, W/f), f = 2 ** (levels - 1)."""

    resample = "down"

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down_blocks:
            h = level(h)
        h = self.mid_block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class Decoder(_Trunk):
    """Latents (N, in_channels, h, w) -> images (N, out_channels, h*f, w*f); each level has one extra block."""

    resample = "up"

    @property
    def last_layer(self) -> nn.Parameter:
        """The output conv's weight: LDM balances the adversarial loss by gradient norms taken here."""
        return self.conv_out.weight

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid_block(self.conv_in(z))
        for level in self.up_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))
