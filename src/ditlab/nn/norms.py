"""Token normalisation layers of the DiT family (the `modulate` that adaLN applies after them lives with the
modulation family, in `ditlab.nn.modulation`).

DiT normalises tokens with a LayerNorm that has *no* learnable affine (the affine comes from the condition),
later models (Lumina, SD3's QK-norm, Z-Image) use RMSNorm.
"""

from __future__ import annotations

import torch
from torch import nn

NORMS = ("layernorm", "rmsnorm")


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
