"""A facade with the official DiT/ADM diffusion API, for code written against facebookresearch/DiT.

``create_diffusion(...)`` takes the official arguments and returns a ``SpacedDiffusion`` (a
``GaussianDiffusion``) with the official methods: ``training_losses``, ``q_sample``, ``p_sample_loop`` and
``ddim_sample_loop``. ``model_kwargs`` reach the model unchanged on every call, so the official pattern
``p_sample_loop(model.forward_with_cfg, z.shape, z, model_kwargs=dict(y=y, cfg_scale=4.0))`` works as is,
and ``p_sample_loop`` consumes torch's global RNG exactly as the official loop does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .gaussian import GaussianDiffusion
from .samplers import run_sampler
from .schedules import get_beta_schedule

__all__ = ["SpacedDiffusion", "create_diffusion"]


def _model_device(model) -> torch.device | None:
    # The official loop asks the model for its device; a bound method such as forward_with_cfg is followed
    # to its module.
    owner = getattr(model, "__self__", model)
    parameters = getattr(owner, "parameters", None)
    if callable(parameters):
        first = next(iter(parameters()), None)
        if first is not None:
            return first.device
    return None


class SpacedDiffusion(GaussianDiffusion):
    """``GaussianDiffusion`` plus the official sampling-loop methods."""

    def _initial_noise(self, model, shape, noise, device) -> torch.Tensor:
        if noise is not None:
            if tuple(noise.shape) != tuple(shape):
                raise ValueError(f"noise shape {tuple(noise.shape)} differs from shape {tuple(shape)}")
            return noise
        if not isinstance(shape, Sequence) or len(shape) < 2:
            raise ValueError(f"shape must be a sequence (N, C, *spatial), got {shape!r}")
        device = device if device is not None else (_model_device(model) or torch.device("cpu"))
        return torch.randn(*shape, device=device)

    def _loop(self, sampler, model, shape, noise, model_kwargs, progress, device, **options) -> torch.Tensor:
        x = self._initial_noise(model, shape, noise, device)
        return run_sampler(sampler, model, x, self, extra_args=model_kwargs, progress=progress, **options)

    def p_sample_loop(
        self, model, shape, noise=None, clip_denoised=False, model_kwargs=None, progress=False, device=None
    ) -> torch.Tensor:
        """Ancestral sampling over every step of this process (official ``p_sample_loop``; note the default
        ``clip_denoised=False``, which is what DiT always passes)."""
        return self._loop(
            "ddpm", model, shape, noise, model_kwargs, progress, device, clip_denoised=clip_denoised
        )

    def ddim_sample_loop(
        self,
        model,
        shape,
        noise=None,
        clip_denoised=False,
        model_kwargs=None,
        progress=False,
        device=None,
        eta=0.0,
    ) -> torch.Tensor:
        """DDIM over every step of this process (official ``ddim_sample_loop``). Samples equal the official
        ones; with η = 0 no per-step noise is drawn (the official loop draws and discards it)."""
        return self._loop(
            "ddim", model, shape, noise, model_kwargs, progress, device, clip_denoised=clip_denoised, eta=eta
        )


def create_diffusion(
    timestep_respacing: str | None = "",
    noise_schedule: str = "linear",
    use_kl: bool = False,
    sigma_small: bool = False,
    predict_xstart: bool = False,
    learn_sigma: bool = True,
    rescale_learned_sigmas: bool = False,
    diffusion_steps: int = 1000,
) -> SpacedDiffusion:
    """The official DiT ``create_diffusion``: a ``diffusion_steps`` chain with the named schedule,
    ε-prediction, learned-range variance (``learn_sigma``; else fixed large, or fixed small with
    ``sigma_small``), the hybrid loss (``use_kl`` → VLB×T, ``rescale_learned_sigmas`` → VLB×T/1000), respaced
    by ``timestep_respacing`` (``""``/None = all steps) with the model still seeing the original timesteps."""
    if predict_xstart:
        raise ValueError(
            "predict_xstart=True (x_0 prediction) is not supported: ditlab's DDPM predicts ε, as DiT does"
        )
    var_type = "learned_range" if learn_sigma else ("fixed_small" if sigma_small else "fixed_large")
    loss_type = "rescaled_kl" if use_kl else ("rescaled_mse" if rescale_learned_sigmas else "mse")
    base = SpacedDiffusion(
        get_beta_schedule(noise_schedule, diffusion_steps), var_type=var_type, loss_type=loss_type
    )
    # The official code always respaces ("" = all steps), which recomputes β from ᾱ; do the same.
    return base.respace(timestep_respacing or str(diffusion_steps))
