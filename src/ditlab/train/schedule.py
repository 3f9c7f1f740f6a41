"""Learning-rate schedules of a training run, as a pure function of the step (so resume is exact).

    constant   lr after a linear warm-up (the DiT recipe: no warm-up, lr 1e-4 throughout)
    cosine     linear warm-up, then a half cosine from lr down to lr_min at the last step

The warm-up is the trainer's historical one, lr·min(1, (s + 1)/warmup) at 0-based step s, kept bit-identical.
"""

from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "cosine")


def lr_at(
    step: int,
    total_steps: int,
    lr: float,
    schedule: str = "constant",
    warmup_steps: int = 0,
    lr_min: float = 0.0,
) -> float:
    """The learning rate of 0-based optimizer step `step` of a `total_steps` run."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; choose one of: {', '.join(LR_SCHEDULES)}")
    if warmup_steps and step < warmup_steps:
        return lr * min(1.0, (step + 1) / warmup_steps)
    if schedule == "constant":
        return lr
    decay_steps = max(1, total_steps - warmup_steps - 1)  # the last step reaches lr_min exactly
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * progress))


__all__ = ["LR_SCHEDULES", "lr_at"]
