"""What every training objective (``GaussianDiffusion``, ``FlowMatching``) shares: the trainer entry point
``loss`` and the declaration of its default sampler."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._util import check_sample_tensor, randn_like

__all__ = ["TrainingObjective"]


class TrainingObjective:
    """Base of the objectives. A subclass sets ``default_sampler`` (the one place an objective's default is
    declared) and implements ``_draw_timesteps`` and ``_losses``."""

    default_sampler: str

    def loss(
        self,
        model: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        model_kwargs: dict | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
    ) -> dict:
        """Trainer entry point: draws t (then noise) from ``generator`` — or torch's global RNG, in the same
        order as the official train.py — and returns the per-sample ``training_losses``: ``loss`` (N,) and
        its terms (``mse``, and ``vb`` for a learned-variance DDPM)."""
        check_sample_tensor(x0, "x0")
        drawn = t is None
        if drawn:
            t = self._draw_timesteps(x0, generator)
        if noise is None:
            noise = randn_like(x0, generator)
        return self._losses(model, x0, t, model_kwargs, noise, drawn)

    def _draw_timesteps(self, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def _losses(self, model, x0, t, model_kwargs, noise, drawn: bool) -> dict:
        """``training_losses`` at t; ``drawn``: t came from ``_draw_timesteps``, so it need not be checked."""
        raise NotImplementedError
