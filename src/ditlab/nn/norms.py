"""Token normalisation layers of the DiT family and the `modulate` operation that adaLN applies after them.

DiT normalises tokens with a LayerNorm that has *no* learnable affine (the affine comes from the condition),
later models (Lumina, SD3's QK-norm, Z-Image) use RMSNorm.
"""

from __future__ import annotations

import torch
from torch import nn

NORMS = ("layernorm", "rmsnorm")


def modulate(
    x: torch.Tensor, shift: torch.Tensor | None, scale: torch.Tensor | None, inplace: bool = False
) -> torch.Tensor:
    """x * (1 + scale) + shift, with per-sample (N, D) scale and shift broadcast over the tokens of x (N, T, D).

    Either may be None: shift-free modulation (Lumina, Z-Image) passes shift=None.
    `inplace=True` says x is a temporary the caller hands over (e.g. a norm's output): without autograd both
    steps overwrite x; with autograd the shift is added into the fresh product. Same operations in the same
    order, so bit-identical to the plain path, with one or two fewer (N, T, D) buffers to allocate and fill
    (on a CPU a fresh buffer costs about as much as the arithmetic).
    """
    scale = None if scale is None else 1 + scale.unsqueeze(1)  # (N, 1, D)
    shift = None if shift is None else shift.unsqueeze(1)  # (N, 1, D)
    inplace = inplace and can_hold(x, *(t for t in (scale, shift) if t is not None))
    owned = inplace and not torch.is_grad_enabled()  # nothing will need x's value: overwrite it
    if scale is not None:
        x = x.mul_(scale) if owned else x * scale
        owned = inplace  # the product is a buffer of ours (saved by no backward)
    if shift is not None:
        x = x.add_(shift) if owned else x + shift
    return x


def can_hold(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether x's buffer can hold the result of an elementwise op of x with `others` (same dtype after type
    promotion, same shape after broadcasting), i.e. whether the in-place form computes the same thing."""
    dtype, shape = x.dtype, x.shape
    for other in others:
        dtype = torch.promote_types(dtype, other.dtype)
        shape = torch.broadcast_shapes(shape, other.shape)
    return dtype == x.dtype and shape == x.shape


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): x / sqrt(mean(x²) + eps), optionally times a learned weight.

    Unlike LayerNorm it neither centres x nor has a bias. Computed in float32 for half-precision inputs.
    """

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            x = x * self.weight.float()
        return x.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, elementwise_affine={self.weight is not None}"


def make_norm(kind: str, dim: int, eps: float = 1e-6, affine: bool = False) -> nn.Module:
    """The token norm named `kind` ("layernorm" or "rmsnorm"), without affine by default as in DiT."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, elementwise_affine=affine, eps=eps)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps, elementwise_affine=affine)
    raise ValueError(f"unknown norm {kind!r}; choose one of: {', '.join(NORMS)}")
