"""Token normalisation layers of the DiT family (the `modulate` that adaLN applies after them lives with the
modulation family, in `ditlab.nn.modulation`).

DiT normalises tokens with a LayerNorm that has *no* learnable affine (the affine comes from the condition),
later models (Lumina, SD3's QK-norm, Z-Image) use RMSNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
        # torch's rms_norm is x · rsqrt(mean(x²) + eps) · weight, the same ops in the same order in one call
        # (a model with sandwich and QK norms calls this six times per block; the Python ops cost more than
        # the arithmetic at small sizes). x and the weight go in as float32, so half inputs are normed there.
        weight = None if self.weight is None else self.weight.float()
        return F.rms_norm(x.float(), (self.dim,), weight, self.eps).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, elementwise_affine={self.weight is not None}"


def make_norm(kind: str, dim: int, eps: float = 1e-6, affine: bool = False) -> nn.Module:
    """The token norm named `kind` ("layernorm" or "rmsnorm"), without affine by default as in DiT."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, elementwise_affine=affine, eps=eps)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps, elementwise_affine=affine)
    raise ValueError(f"unknown norm {kind!r}; choose one of: {', '.join(NORMS)}")
