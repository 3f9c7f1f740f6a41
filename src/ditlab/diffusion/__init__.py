"""ditlab.diffusion: the training objectives (DDPM with learned variance, rectified-flow matching), timestep
respacing, classifier-free guidance and samplers (DDPM, DDIM, DPM-Solver++(2M), Euler, Heun).

Sampling: ``run_sampler(name, GuidedModel(model, cond, uncond, scale=...), noise, objective, steps=...)``, or
a sampler from ``SAMPLERS`` with the one signature ``sampler(model_fn, x, timesteps, *, extra_args, callback,
generator, objective, **options)`` (see ``samplers``). ``sample`` and ``sample_<name>`` are the deprecated
pre-0.2 forms. Images from a whole model in one call: ``ditlab.generate``.

A model is any callable ``model(x, t, **model_kwargs)``: x is (N, C, *spatial); it returns (N, C, ...) or, for
a learned-variance DDPM, (N, 2C, ...) (ε, then the variance values v). Under the DDPM objective t is the
trained integer timestep (long, 0..T-1; respaced processes map their steps back); under flow matching t is the
flow time times 1000 (float), so one DiT timestep embedder serves both.

Trainer entry point, the same for both objectives:
``objective.loss(model, x0, model_kwargs=None, generator=None, noise=None, t=None)["loss"]`` (N,).
"""

from .compat import SpacedDiffusion, create_diffusion
from .flow import FLOW_TIMESTEP_SAMPLERS, FlowMatching
from .gaussian import LOSS_TYPES, VAR_TYPES, GaussianDiffusion
from .guidance import GuidedModel
from .losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .respace import space_timesteps
from .samplers import (
    SAMPLERS,
    dpm_solver_timesteps,
    run_sampler,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    sampler_timesteps,
)
from .schedules import SCHEDULES, get_beta_schedule

__all__ = [
    "FLOW_TIMESTEP_SAMPLERS",
    "LOSS_TYPES",
    "SAMPLERS",
    "SCHEDULES",
    "VAR_TYPES",
    "FlowMatching",
    "GaussianDiffusion",
    "GuidedModel",
    "SpacedDiffusion",
    "create_diffusion",
    "discretized_gaussian_log_likelihood",
    "dpm_solver_timesteps",
    "get_beta_schedule",
    "mean_flat",
    "normal_kl",
    "run_sampler",
    "sample",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_heun",
    "sampler_timesteps",
    "space_timesteps",
]
