"""Samplers, all with one signature, and the ``sample`` dispatcher.

    sampler(model, noise, objective, cond=None, *, uncond=None, steps=None, guidance_scale=1.0,
            guidance_interval=None, guidance_channels=None, progress=False, callback=None, generator=None,
            **sampler_options) -> x0

For a ``GaussianDiffusion``: ``ddpm`` (ancestral), ``ddim`` (option ``eta``), ``dpmpp_2m`` (DPM-Solver++(2M),
deterministic, any step count); all take ``clip_denoised``. For ``FlowMatching``: ``euler`` and ``heun``
(ODE from t = 1 to t = 0, option ``shift``). ``noise`` is the starting x_T (any shape (N, C, *spatial));
guidance arguments are those of ``GuidedModel``; ``callback`` receives ``dict(i, t, x, denoised)`` once per
step, with x the state before the step, t the model time of the step and denoised the x_0 prediction;
``generator`` feeds the per-step noise of the stochastic samplers. Sampling runs under ``torch.no_grad``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ._util import check_sample_tensor, randn_like
from .flow import FlowMatching, time_dtype
from .gaussian import GaussianDiffusion
from .guidance import GuidedModel

__all__ = [
    "SAMPLERS",
    "dpm_solver_timesteps",
    "sample",
    "sample_ddpm",
    "sample_ddim",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_heun",
]


def _check(name: str, objective, kind: type, noise) -> None:
    if not isinstance(objective, kind):
        valid = ", ".join(n for n, k in _OBJECTIVE_OF.items() if isinstance(objective, k))
        raise TypeError(
            f"sampler {name!r} needs a {kind.__name__} objective, got {type(objective).__name__}"
            + (f"; samplers for it: {valid}" if valid else "")
        )
    check_sample_tensor(noise, "noise")


def _steps_bar(iterable, progress: bool, name: str, total: int):
    return tqdm(iterable, total=total, desc=name, disable=not progress, leave=False)


def _ancestral_loop(
    name: str, step_fn, guided: GuidedModel, noise, diffusion: GaussianDiffusion, progress, callback
):
    """The DDPM/DDIM loop over every step of a (respaced) process: model, then ``step_fn``."""
    x, n, device = noise, noise.shape[0], noise.device
    model_steps = diffusion.timestep_map.tolist()
    order = range(len(diffusion) - 1, -1, -1)
    for i, index in enumerate(_steps_bar(order, progress, name, len(diffusion))):
        t = torch.full((n,), index, device=device, dtype=torch.long)
        t_model = torch.full((n,), model_steps[index], device=device, dtype=torch.long)
        out = step_fn(diffusion, guided(x, t_model, model_steps[index]), x, t)
        if callback is not None:
            callback({"i": i, "t": model_steps[index], "x": x, "denoised": out["pred_xstart"]})
        x = out["sample"]
    return x


@torch.no_grad()
def sample_ddpm(
    model,
    noise,
    objective,
    cond=None,
    *,
    uncond=None,
    steps=None,
    guidance_scale=1.0,
    guidance_interval=None,
    guidance_channels=None,
    progress=False,
    callback=None,
    generator=None,
    clip_denoised=False,
):
    """Ancestral DDPM sampling. ``steps``: None = every step of ``objective``; an int N or a respacing string
    (``"250"``, ``"ddim50"``, ``"25,25,50"``) respaces with the official semantics. Noise is drawn at every
    step, the last included, as the official loop does."""
    _check("ddpm", objective, GaussianDiffusion, noise)
    guided = GuidedModel(
        model, cond, uncond, scale=guidance_scale, interval=guidance_interval, channels=guidance_channels
    )

    def step(diffusion, output, x, t):
        return diffusion.ddpm_step(output, x, t, randn_like(x, generator), clip_denoised=clip_denoised)

    return _ancestral_loop("ddpm", step, guided, noise, objective.respace(steps), progress, callback)


@torch.no_grad()
def sample_ddim(
    model,
    noise,
    objective,
    cond=None,
    *,
    uncond=None,
    steps=None,
    guidance_scale=1.0,
    guidance_interval=None,
    guidance_channels=None,
    progress=False,
    callback=None,
    generator=None,
    eta=0.0,
    clip_denoised=False,
):
    """DDIM sampling (η = 0: deterministic). ``steps`` as for ``sample_ddpm`` (``"ddim50"`` gives the integer
    stride of the DDIM paper). Noise is drawn only when η > 0."""
    _check("ddim", objective, GaussianDiffusion, noise)
    guided = GuidedModel(
        model, cond, uncond, scale=guidance_scale, interval=guidance_interval, channels=guidance_channels
    )

    def step(diffusion, output, x, t):
        noise_t = randn_like(x, generator) if eta > 0 else None
        return diffusion.ddim_step(output, x, t, noise_t, eta=eta, clip_denoised=clip_denoised)

    return _ancestral_loop("ddim", step, guided, noise, objective.respace(steps), progress, callback)


def dpm_solver_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
    """The ``steps`` step indices DPM-Solver++ evaluates, from the noisiest down: ``steps + 1`` evenly spaced
    points over 0..T-1 without the last (diffusers' ``"linspace"`` spacing); the final update goes to
    σ = 0."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    indices = np.linspace(0, num_timesteps - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
    if len(np.unique(indices)) != steps:
        raise ValueError(
            f"steps={steps} is too many for a {num_timesteps}-step chain: the evaluated timesteps would "
            f"repeat; use fewer"
        )
    return indices


@torch.no_grad()
def sample_dpmpp_2m(
    model,
    noise,
    objective,
    cond=None,
    *,
    uncond=None,
    steps=25,
    guidance_scale=1.0,
    guidance_interval=None,
    guidance_channels=None,
    progress=False,
    callback=None,
    generator=None,
    clip_denoised=False,
):
    """DPM-Solver++(2M) (Lu et al. 2022), the multistep second-order data-prediction solver of the probability
    flow ODE, on the discrete chain of ``objective`` (a respaced process works too). ``steps`` model
    evaluations at ``dpm_solver_timesteps``; the first update is first order (no history yet) and the last,
    to σ = 0, is first order and returns the final x_0 prediction, as diffusers' default. Learned-variance
    models are fine: only their ε channels are used. ``generator`` is unused (deterministic)."""
    _check("dpmpp_2m", objective, GaussianDiffusion, noise)
    guided = GuidedModel(
        model, cond, uncond, scale=guidance_scale, interval=guidance_interval, channels=guidance_channels
    )
    indices = dpm_solver_timesteps(len(objective), steps)
    alphas_cumprod = objective.alphas_cumprod.numpy()[indices]
    # α_i = √ᾱ, σ_i = √(1−ᾱ), λ_i = log(α_i/σ_i); the end point σ = 0 has λ = +∞. All float64 scalars.
    alpha = np.append(np.sqrt(alphas_cumprod), 1.0)
    sigma = np.append(np.sqrt(1.0 - alphas_cumprod), 0.0)
    lam = np.log(alpha[:-1]) - np.log(sigma[:-1])
    model_steps = objective.timestep_map.numpy()[indices].tolist()

    x, n, device = noise, noise.shape[0], noise.device
    previous_denoised, previous_h = None, None
    for i in _steps_bar(range(steps), progress, "dpmpp_2m", steps):
        t = torch.full((n,), int(indices[i]), device=device, dtype=torch.long)
        t_model = torch.full((n,), model_steps[i], device=device, dtype=torch.long)
        eps, _ = objective.split_model_output(guided(x, t_model, model_steps[i]), x)
        denoised = objective.predict_xstart_from_eps(x, t, eps)
        if clip_denoised:
            denoised = denoised.clamp(-1, 1)
        if callback is not None:
            callback({"i": i, "t": model_steps[i], "x": x, "denoised": denoised})
        if i == steps - 1:
            x = denoised  # first-order step to σ = 0: x = α_end·x_0 with α_end = 1
            break
        h = float(lam[i + 1] - lam[i])
        # x' = (σ'/σ)·x + α'(1 − e^{−h})·D, D = x_0 (first order) or x_0 + (x_0 − x_0_prev)/(2r),
        # r = h_prev/h.
        coef_x, coef_d = float(sigma[i + 1] / sigma[i]), float(-alpha[i + 1] * np.expm1(-h))
        if previous_denoised is None:
            x = coef_x * x + coef_d * denoised
        else:
            r = previous_h / h
            x = coef_x * x + coef_d * (denoised + (denoised - previous_denoised) / (2.0 * r))
        previous_denoised, previous_h = denoised, h
    return x


def _flow_ode(
    name: str, heun: bool, guided: GuidedModel, noise, flow: FlowMatching, steps, shift, progress, callback
):
    times = FlowMatching.sampling_times(steps, shift)
    x, n, device = noise, noise.shape[0], noise.device
    dtype = time_dtype(noise)

    def velocity(x_now, t_now: float):
        t_model = torch.full((n,), t_now * flow.time_scale, device=device, dtype=dtype)
        return flow.check_output(guided(x_now, t_model, t_now * flow.time_scale), x_now)

    for i in _steps_bar(range(steps), progress, name, steps):
        t_now, t_next = float(times[i]), float(times[i + 1])
        v = velocity(x, t_now)
        if callback is not None:
            callback({"i": i, "t": t_now * flow.time_scale, "x": x, "denoised": x - t_now * v})
        dt = t_next - t_now
        x_euler = x + dt * v
        if heun:
            # Trapezoidal correction with the slope at the end point, on every step (the velocity is defined
            # at t = 0, unlike an EDM denoiser's ODE slope at σ = 0): 2 evaluations per step.
            x = x + dt * 0.5 * (v + velocity(x_euler, t_next))
        else:
            x = x_euler
    return x


@torch.no_grad()
def sample_euler(
    model,
    noise,
    objective,
    cond=None,
    *,
    uncond=None,
    steps=50,
    guidance_scale=1.0,
    guidance_interval=None,
    guidance_channels=None,
    progress=False,
    callback=None,
    generator=None,
    shift=1.0,
):
    """Euler ODE integration of a flow-matching model from t = 1 (noise) to t = 0 over ``steps`` uniform steps
    (``shift`` warps them as in SD3). ``generator`` is unused (deterministic)."""
    _check("euler", objective, FlowMatching, noise)
    guided = GuidedModel(
        model, cond, uncond, scale=guidance_scale, interval=guidance_interval, channels=guidance_channels
    )
    return _flow_ode("euler", False, guided, noise, objective, steps, shift, progress, callback)


@torch.no_grad()
def sample_heun(
    model,
    noise,
    objective,
    cond=None,
    *,
    uncond=None,
    steps=25,
    guidance_scale=1.0,
    guidance_interval=None,
    guidance_channels=None,
    progress=False,
    callback=None,
    generator=None,
    shift=1.0,
):
    """Heun (2nd-order) ODE integration of a flow-matching model from t = 1 to t = 0: 2·``steps`` model
    evaluations. ``generator`` is unused (deterministic)."""
    _check("heun", objective, FlowMatching, noise)
    guided = GuidedModel(
        model, cond, uncond, scale=guidance_scale, interval=guidance_interval, channels=guidance_channels
    )
    return _flow_ode("heun", True, guided, noise, objective, steps, shift, progress, callback)


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
    "euler": sample_euler,
    "heun": sample_heun,
}
_OBJECTIVE_OF = {
    "ddpm": GaussianDiffusion,
    "ddim": GaussianDiffusion,
    "dpmpp_2m": GaussianDiffusion,
    "euler": FlowMatching,
    "heun": FlowMatching,
}


def sample(model, noise, objective, sampler: str | None = None, cond=None, **kwargs) -> torch.Tensor:
    """Run the sampler named ``sampler`` (default: the objective's, ``ddpm`` or ``euler``); every keyword of
    the common signature and the sampler's own options pass through."""
    if sampler is None:
        sampler = getattr(objective, "default_sampler", None)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    return SAMPLERS[sampler](model, noise, objective, cond, **kwargs)
