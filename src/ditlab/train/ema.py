"""Exponential moving average of model weights, the copy DiT samples from.

ema ← decay·ema + (1 − decay)·θ after every optimizer step, over all parameters (the frozen position table
included, as the official train.py), with one fused foreach op rather than a Python loop per tensor.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False):
        self.decay = decay
        self.warmup = warmup
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay used after optimizer step `step` (0-based); with warm-up it grows as (1+s)/(10+s)."""
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int, apply: torch.Tensor | None = None) -> None:
        """One EMA step toward `model`. `apply`: a 0-dim bool tensor; False leaves the EMA as it is (a skipped,
        non-finite training step), decided on the device without a host sync."""
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        weight = 1.0 - self.decay_at(step)
        if apply is not None:
            weight = apply.to(ema_params[0].dtype) * weight
        torch._foreach_lerp_(ema_params, params, weight)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
