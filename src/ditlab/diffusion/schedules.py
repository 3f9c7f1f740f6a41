"""Noise schedules: the β table of a discrete Gaussian diffusion, built in float64 for any step count.

Names: ``linear`` (DiT/ADM default, β 1e-4 → 0.02 at 1000 steps), ``scaled_linear`` (Stable Diffusion / LDM,
linear in √β), ``cosine`` (Nichol & Dhariwal; ``squaredcos_cap_v2`` is the diffusers/official alias).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SCHEDULES", "get_beta_schedule"]


def _linear(num_steps: int, beta_start: float | None, beta_end: float | None) -> np.ndarray:
    # The defaults are the 1000-step values, stretched by 1000/T so that a shorter or longer chain destroys
    # the signal by about the same amount (the official ADM/DiT rule; identical to the plain values at
    # T = 1000).
    scale = 1000.0 / num_steps
    start = scale * 1e-4 if beta_start is None else beta_start
    end = scale * 0.02 if beta_end is None else beta_end
    return np.linspace(start, end, num_steps, dtype=np.float64)


def _scaled_linear(num_steps: int, beta_start: float | None, beta_end: float | None) -> np.ndarray:
    scale = 1000.0 / num_steps
    start = scale * 0.00085 if beta_start is None else beta_start
    end = scale * 0.012 if beta_end is None else beta_end
    return np.linspace(start**0.5, end**0.5, num_steps, dtype=np.float64) ** 2


def _cosine(num_steps: int, beta_start: float | None, beta_end: float | None) -> np.ndarray:
    if beta_start is not None or beta_end is not None:
        raise ValueError("the cosine schedule takes no beta_start/beta_end; it is defined by ᾱ(t) alone")

    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    # β_i = 1 − ᾱ((i+1)/T) / ᾱ(i/T), capped at 0.999 to keep the last steps finite.
    betas = [
        min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), 0.999) for i in range(num_steps)
    ]
    return np.asarray(betas, dtype=np.float64)


SCHEDULES = {
    "linear": _linear,
    "scaled_linear": _scaled_linear,
    "cosine": _cosine,
    "squaredcos_cap_v2": _cosine,
}


def get_beta_schedule(
    name: str, num_steps: int = 1000, *, beta_start: float | None = None, beta_end: float | None = None
) -> np.ndarray:
    """β_1..β_T as a float64 array of length ``num_steps`` for the named schedule."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; valid names: {', '.join(SCHEDULES)}")
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    betas = SCHEDULES[name](num_steps, beta_start, beta_end)
    if not (np.all(betas > 0) and np.all(betas <= 1)):
        raise ValueError(
            f"schedule {name!r} with these settings gives β outside (0, 1]; check beta_start/beta_end"
        )
    return betas
