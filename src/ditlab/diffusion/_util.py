"""Small tensor helpers shared by the objectives and samplers (seeded noise, per-sample broadcasting)."""

from __future__ import annotations

import torch


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like x, from ``generator`` when given, else from torch's global RNG
    (then it consumes exactly what ``torch.randn_like(x)`` would)."""
    if generator is None:
        return torch.randn_like(x)
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N,) values viewed as (N, 1, ..., 1) in x's dtype, so they broadcast over x's non-batch dims."""
    return values.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))


def check_sample_tensor(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2 or not x.is_floating_point():
        raise ValueError(
            f"{name} must be a floating tensor shaped (N, C, *spatial), got {x.dtype} {tuple(x.shape)}"
        )
