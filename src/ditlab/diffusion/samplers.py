"""Samplers with one k-diffusion-style signature, their registry, and the dispatcher ``run_sampler``.

    sampler(model_fn, x, timesteps, *, extra_args=None, callback=None, generator=None, objective,
            progress=False, **options) -> x_0

- ``model_fn(x, t, **extra_args)``: the model's raw output at model times t (N,): the trained integer
  timestep (long) under a ``GaussianDiffusion``, flow time × ``time_scale`` (float) under ``FlowMatching``.
  Classifier-free guidance is not a sampler argument: wrap the model once, ``GuidedModel(model, cond, uncond,
  scale=...)``, and pass that as ``model_fn``.
- ``x``: the starting noise x_T, any shape (N, C, *spatial).
- ``timesteps``: what the sampler visits, noisiest first: step indices into ``objective``'s chain for the
  Gaussian samplers (``ddpm``, ``ddim``: consecutive kept steps, the chain respaced to them when they are a
  subset; ``dpmpp_2m``: any decreasing indices), flow times from 1 down to 0 for the flow samplers (``euler``,
  ``heun``). ``sampler_timesteps`` builds them from a step count.
- ``callback`` receives ``dict(i, t, x, denoised)`` once per step: x the state before the step, t the model
  time of the step, denoised the x_0 prediction. ``generator`` feeds the per-step noise of the stochastic
  samplers (``ddpm``, ``ddim`` with η > 0).
- options: ``objective`` (the ``GaussianDiffusion`` or ``FlowMatching`` the model was trained with),
  ``progress`` (a tqdm bar), ``clip_denoised`` (Gaussian samplers), ``eta`` (``ddim``).

``run_sampler(name, model_fn, x, objective, steps=...)`` builds the timesteps and dispatches; the default
sampler of an objective is its ``default_sampler``. Sampling runs under ``torch.no_grad``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ._util import check_sample_tensor, randn_like
from .flow import FlowMatching, time_dtype
from .gaussian import GaussianDiffusion
from .guidance import GuidedModel

# The deprecated ``sample`` and ``sample_<name>`` are importable but not listed.
__all__ = ["SAMPLERS", "chain_timesteps", "dpm_solver_timesteps", "run_sampler", "sampler_timesteps"]


@dataclass(frozen=True)
class _Entry:
    """What the dispatcher knows of a sampler: the objective it walks, how a step count becomes its
    timesteps ((objective, steps, **schedule options) -> (objective, timesteps)) and the step count used when
    none is given."""

    fn: Callable[..., torch.Tensor]
    objective: type
    plan: Callable
    default_steps: int | None
    schedule_options: tuple[str, ...] = ()


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {}
_ENTRIES: dict[str, _Entry] = {}


def _register(name: str, objective: type, plan: Callable, default_steps, schedule_options=()):
    def add(fn):
        SAMPLERS[name] = fn
        _ENTRIES[name] = _Entry(fn, objective, plan, default_steps, tuple(schedule_options))
        return fn

    return add


def _entry(name: str, objective) -> _Entry:
    """The registry entry of ``name``; an unknown name or a sampler of another objective is a clear error."""
    if name not in _ENTRIES:
        raise ValueError(f"unknown sampler {name!r}; valid: {', '.join(SAMPLERS)}")
    entry = _ENTRIES[name]
    if not isinstance(objective, entry.objective):
        valid = ", ".join(n for n, e in _ENTRIES.items() if isinstance(objective, e.objective))
        raise TypeError(
            f"sampler {name!r} needs a {entry.objective.__name__} objective, got {type(objective).__name__}"
            + (f"; samplers for it: {valid}" if valid else "")
        )
    return entry


def _steps_bar(iterable, progress: bool, name: str, total: int):
    return tqdm(iterable, total=total, desc=name, disable=not progress, leave=False)


def _step_indices(timesteps, num_steps: int) -> list[int]:
    """Gaussian-sampler timesteps as a list of ints: strictly decreasing step indices in 0..num_steps-1."""
    if isinstance(timesteps, torch.Tensor):
        timesteps = timesteps.detach().cpu().numpy()
    indices = np.asarray(timesteps)
    if indices.ndim != 1 or len(indices) < 1 or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"timesteps must be a non-empty 1-D sequence of step indices, got {timesteps!r}")
    if np.any(np.diff(indices) >= 0) or indices[-1] < 0 or indices[0] >= num_steps:
        raise ValueError(
            f"timesteps must be strictly decreasing step indices in 0..{num_steps - 1} (noisiest first)"
        )
    return indices.tolist()


def _flow_times(timesteps) -> list[float]:
    times = np.asarray(timesteps.detach().cpu() if isinstance(timesteps, torch.Tensor) else timesteps)
    if times.ndim != 1 or len(times) < 2 or np.any(np.diff(times) >= 0):
        raise ValueError("flow timesteps must be >= 2 strictly decreasing flow times (from 1 down to 0)")
    return times.astype(np.float64).tolist()


# ---------------------------------------------------------------------------------------------- timesteps
def chain_timesteps(objective: GaussianDiffusion, steps) -> tuple[GaussianDiffusion, np.ndarray]:
    """DDPM/DDIM plan: ``objective`` respaced by ``steps`` (None = every step; an int N or a respacing string
    ``"250"``, ``"ddim50"``, ``"25,25,50"`` with the official semantics) and all its step indices, noisiest
    first."""
    chain = objective.respace(steps)
    return chain, np.arange(len(chain) - 1, -1, -1)


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


def _dpm_plan(objective: GaussianDiffusion, steps) -> tuple[GaussianDiffusion, np.ndarray]:
    return objective, dpm_solver_timesteps(len(objective), steps)


def _flow_plan(objective: FlowMatching, steps, shift: float = 1.0) -> tuple[FlowMatching, np.ndarray]:
    return objective, FlowMatching.sampling_times(steps, shift)


def sampler_timesteps(name: str, objective, steps=None, **schedule_options):
    """``(objective, timesteps)`` for sampler ``name`` with ``steps`` steps (None: the sampler's default):
    pass both on to the sampler. Flow samplers take the option ``shift`` (SD3's resolution shift)."""
    entry = _entry(name, objective)
    unknown = set(schedule_options) - set(entry.schedule_options)
    if unknown:
        raise TypeError(f"sampler {name!r} has no schedule option(s) {sorted(unknown)}")
    return entry.plan(objective, entry.default_steps if steps is None else steps, **schedule_options)


# ---------------------------------------------------------------------------------------------- Gaussian
def _walk_chain(name, step_fn, model_fn, x, timesteps, extra_args, callback, objective, progress):
    """The DDPM/DDIM loop: model, then ``step_fn``, over consecutive steps of the chain the timesteps keep."""
    check_sample_tensor(x, "noise")
    indices = _step_indices(timesteps, len(objective))
    # Every step kept: walk the chain itself; a subset: the chain respaced to it (β recomputed from ᾱ).
    chain = objective if len(indices) == len(objective) else objective.respace(indices[::-1])
    extra_args = extra_args or {}
    n, device = x.shape[0], x.device
    model_steps = chain.timestep_map.tolist()
    for i, index in enumerate(_steps_bar(range(len(chain) - 1, -1, -1), progress, name, len(chain))):
        t = torch.full((n,), index, device=device, dtype=torch.long)
        t_model = torch.full((n,), model_steps[index], device=device, dtype=torch.long)
        out = step_fn(chain, model_fn(x, t_model, **extra_args), x, t)
        if callback is not None:
            callback({"i": i, "t": model_steps[index], "x": x, "denoised": out["pred_xstart"]})
        x = out["sample"]
    return x


@_register("ddpm", GaussianDiffusion, chain_timesteps, default_steps=None)
@torch.no_grad()
def ddpm(model_fn, x, timesteps, *, extra_args=None, callback=None, generator=None,
        objective: GaussianDiffusion, progress=False, clip_denoised=False):  # fmt: skip
    """Ancestral DDPM sampling. Noise is drawn at every step, the last included, as the official loop does."""

    def step(chain, output, x_t, t):
        return chain.ddpm_step(output, x_t, t, randn_like(x_t, generator), clip_denoised=clip_denoised)

    return _walk_chain("ddpm", step, model_fn, x, timesteps, extra_args, callback, objective, progress)


@_register("ddim", GaussianDiffusion, chain_timesteps, default_steps=None)
@torch.no_grad()
def ddim(model_fn, x, timesteps, *, extra_args=None, callback=None, generator=None,
        objective: GaussianDiffusion, progress=False, eta=0.0, clip_denoised=False):  # fmt: skip
    """DDIM sampling (η = 0: deterministic; respacing ``"ddimN"`` gives the integer stride of the DDIM
    paper). Noise is drawn only when η > 0."""

    def step(chain, output, x_t, t):
        noise_t = randn_like(x_t, generator) if eta > 0 else None
        return chain.ddim_step(output, x_t, t, noise_t, eta=eta, clip_denoised=clip_denoised)

    return _walk_chain("ddim", step, model_fn, x, timesteps, extra_args, callback, objective, progress)


@_register("dpmpp_2m", GaussianDiffusion, _dpm_plan, default_steps=25)
@torch.no_grad()
def dpmpp_2m(model_fn, x, timesteps, *, extra_args=None, callback=None, generator=None,
            objective: GaussianDiffusion, progress=False, clip_denoised=False):  # fmt: skip
    """DPM-Solver++(2M) (Lu et al. 2022), the multistep second-order data-prediction solver of the probability
    flow ODE, on the discrete chain of ``objective`` (a respaced process works too), one model evaluation per
    timestep (``dpm_solver_timesteps`` by default); the first update is first order (no history yet) and the
    last, to σ = 0, is first order and returns the final x_0 prediction, as diffusers' default.
    Learned-variance models are fine: only their ε channels are used. ``generator`` is unused."""
    check_sample_tensor(x, "noise")
    indices = np.asarray(_step_indices(timesteps, len(objective)), dtype=np.int64)
    steps = len(indices)
    extra_args = extra_args or {}
    alphas_cumprod = objective.alphas_cumprod.numpy()[indices]
    # α_i = √ᾱ, σ_i = √(1−ᾱ), λ_i = log(α_i/σ_i); the end point σ = 0 has λ = +∞. All float64 scalars.
    alpha = np.append(np.sqrt(alphas_cumprod), 1.0)
    sigma = np.append(np.sqrt(1.0 - alphas_cumprod), 0.0)
    lam = np.log(alpha[:-1]) - np.log(sigma[:-1])
    model_steps = objective.timestep_map.numpy()[indices].tolist()

    n, device = x.shape[0], x.device
    previous_denoised, previous_h = None, None
    for i in _steps_bar(range(steps), progress, "dpmpp_2m", steps):
        t = torch.full((n,), int(indices[i]), device=device, dtype=torch.long)
        t_model = torch.full((n,), model_steps[i], device=device, dtype=torch.long)
        eps, _ = objective.split_model_output(model_fn(x, t_model, **extra_args), x)
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


# ---------------------------------------------------------------------------------------------- flow
def _flow_velocity(model_fn, x, extra_args, flow: FlowMatching):
    """v(x_t, t) of the network ``model_fn`` at a flow time t in [0, 1], whatever the network predicts."""
    n, device, dtype = x.shape[0], x.device, time_dtype(x)
    extra_args = extra_args or {}

    def velocity(x_now, t_now: float):
        t_model = torch.full((n,), t_now * flow.time_scale, device=device, dtype=dtype)
        return flow.velocity(flow.check_output(model_fn(x_now, t_model, **extra_args), x_now), x_now, t_now)

    return velocity


def _flow_ode(name, heun, model_fn, x, timesteps, extra_args, callback, flow: FlowMatching, progress):
    """Integrate dx/dt = v from the first to the last of the flow times: Euler, or Heun's trapezoid rule."""
    check_sample_tensor(x, "noise")
    times = _flow_times(timesteps)
    steps = len(times) - 1
    velocity = _flow_velocity(model_fn, x, extra_args, flow)
    for i in _steps_bar(range(steps), progress, name, steps):
        t_now, t_next = times[i], times[i + 1]
        v = velocity(x, t_now)
        if callback is not None:
            callback({"i": i, "t": t_now * flow.time_scale, "x": x, "denoised": x - t_now * v})
        dt = t_next - t_now
        x_euler = x + dt * v
        if heun and (t_next > 0 or flow.prediction == "velocity"):
            # Trapezoidal correction with the slope at the end point: 2 evaluations per step. A velocity
            # network's slope is defined at t = 0, so its last step is corrected too; an x0 network's slope
            # (x − x̂₀)/t is not (as an EDM denoiser's at σ = 0), so its last step is Euler's, onto x̂₀.
            x = x + dt * 0.5 * (v + velocity(x_euler, t_next))
        else:
            x = x_euler
    return x


@_register("euler", FlowMatching, _flow_plan, default_steps=50, schedule_options=("shift",))
@torch.no_grad()
def euler(model_fn, x, timesteps, *, extra_args=None, callback=None, generator=None,
         objective: FlowMatching, progress=False):  # fmt: skip
    """Euler ODE integration of a flow-matching model over the flow times ``timesteps`` (from 1, noise, to 0).
    ``generator`` is unused (deterministic)."""
    return _flow_ode("euler", False, model_fn, x, timesteps, extra_args, callback, objective, progress)


@_register("heun", FlowMatching, _flow_plan, default_steps=25, schedule_options=("shift",))
@torch.no_grad()
def heun(model_fn, x, timesteps, *, extra_args=None, callback=None, generator=None,
        objective: FlowMatching, progress=False):  # fmt: skip
    """Heun (2nd-order) ODE integration of a flow-matching model over the flow times ``timesteps``: two model
    evaluations per step. ``generator`` is unused (deterministic)."""
    return _flow_ode("heun", True, model_fn, x, timesteps, extra_args, callback, objective, progress)


@_register("euler_sde", FlowMatching, _flow_plan, default_steps=50, schedule_options=("shift",))
@torch.no_grad()
def euler_sde(model_fn, x, timesteps, *, extra_args=None, callback=None, generator=None,
              objective: FlowMatching, progress=False, eta=1.0):  # fmt: skip
    """Euler–Maruyama on the reverse SDE with the flow's marginals (SiT's SDE sampler): over a step of length h
    down from t, x ← x − h·v − η·h·ε̂ + √(2·η·t·h)·z, ε̂ = x + (1 − t)·v the predicted noise. Each step takes
    out η·h/t of the noise and draws back as much fresh noise, so the noise level stays t's; η = 0 is
    ``euler``. The diffusion coefficient is g²(t) = 2·η·t (the score-SDE one of σ = t at η = 1); the last
    step, onto t = 0, draws no noise."""
    check_sample_tensor(x, "noise")
    if not eta >= 0:
        raise ValueError(f"eta (the SDE's noise scale) must be >= 0, got {eta!r}")
    times = _flow_times(timesteps)
    steps = len(times) - 1
    velocity = _flow_velocity(model_fn, x, extra_args, objective)
    for i in _steps_bar(range(steps), progress, "euler_sde", steps):
        t_now, t_next = times[i], times[i + 1]
        v = velocity(x, t_now)
        if callback is not None:
            callback({"i": i, "t": t_now * objective.time_scale, "x": x, "denoised": x - t_now * v})
        h = t_now - t_next
        if eta > 0 and t_next > 0:
            eps = x + (1 - t_now) * v  # the predicted noise: x_t = (1 − t)·x̂₀ + t·ε̂ with x̂₀ = x_t − t·v
            x = x - h * v - eta * h * eps + (2 * eta * t_now * h) ** 0.5 * randn_like(x, generator)
        else:
            x = x - h * v
    return x


# ---------------------------------------------------------------------------------------------- dispatch
def run_sampler(
    name: str | None,
    model_fn,
    x,
    objective,
    *,
    steps=None,
    extra_args=None,
    callback=None,
    generator=None,
    progress=False,
    **options,
) -> torch.Tensor:
    """Sample with sampler ``name`` (None: ``objective.default_sampler``) over ``steps`` steps (None: the
    sampler's default; DDPM/DDIM: every step, or a respacing string); ``shift`` goes to the flow schedule,
    every other option to the sampler. ``model_fn`` is called as ``model_fn(x, t, **extra_args)``; guide it
    with ``GuidedModel`` first."""
    name = objective.default_sampler if name is None else name
    entry = _entry(name, objective)
    check_sample_tensor(x, "noise")
    schedule = {k: options.pop(k) for k in entry.schedule_options if k in options}
    objective, timesteps = sampler_timesteps(name, objective, steps, **schedule)
    return entry.fn(
        model_fn,
        x,
        timesteps,
        extra_args=extra_args,
        callback=callback,
        generator=generator,
        objective=objective,
        progress=progress,
        **options,
    )


# ---------------------------------------------------------------------------------------------- deprecated
# The pre-0.2 API, kept for one release: ``sample_<name>(model, noise, objective, cond=None, *, uncond=None,
# steps=..., guidance_scale=1.0, guidance_interval=None, guidance_channels=None, progress=False,
# callback=None, generator=None, **options)`` and ``sample(model, noise, objective, sampler=None, cond=None,
# **kwargs)``. They guide the model, then call ``run_sampler``: the same numbers as the new API.
_LEGACY_DEFAULT_SAMPLER = {GaussianDiffusion: "ddpm", FlowMatching: "euler"}  # ``sample``'s default until 0.2


def deprecated_alias(fn: Callable, old: str, new: str) -> Callable:
    """``fn`` under its old name: same signature, a DeprecationWarning pointing at ``new`` on every call."""

    @functools.wraps(fn)
    def alias(*args, **kwargs):
        warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=2)
        return fn(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old.rpartition(".")[2]
    return alias


def _guided_sampler(name: str) -> Callable:
    def guided_sampler(
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
        **options,
    ):
        _entry(name, objective)  # the objective and the noise are checked before the guidance arguments
        check_sample_tensor(noise, "noise")
        guided = GuidedModel(
            model, cond, uncond, scale=guidance_scale, interval=guidance_interval, channels=guidance_channels
        )
        return run_sampler(
            name,
            guided,
            noise,
            objective,
            steps=steps,
            callback=callback,
            generator=generator,
            progress=progress,
            **options,
        )

    return guided_sampler


_OLD_SAMPLERS = {name: _guided_sampler(name) for name in SAMPLERS}
_NEW = "run_sampler(name, GuidedModel(model, cond, uncond, scale=...), noise, objective, steps=...)"
sample_ddpm = deprecated_alias(_OLD_SAMPLERS["ddpm"], "sample_ddpm", _NEW)
sample_ddim = deprecated_alias(_OLD_SAMPLERS["ddim"], "sample_ddim", _NEW)
sample_dpmpp_2m = deprecated_alias(_OLD_SAMPLERS["dpmpp_2m"], "sample_dpmpp_2m", _NEW)
sample_euler = deprecated_alias(_OLD_SAMPLERS["euler"], "sample_euler", _NEW)
sample_heun = deprecated_alias(_OLD_SAMPLERS["heun"], "sample_heun", _NEW)


def _old_sample(model, noise, objective, sampler: str | None = None, cond=None, **kwargs) -> torch.Tensor:
    # Its default sampler stays the old one (ddpm for a GaussianDiffusion) while it lives.
    if sampler is None:
        sampler = next((s for k, s in _LEGACY_DEFAULT_SAMPLER.items() if isinstance(objective, k)), None)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    return _OLD_SAMPLERS[sampler](model, noise, objective, cond, **kwargs)


sample = deprecated_alias(
    _old_sample, "ditlab.diffusion.sample", "ditlab.diffusion.run_sampler or ditlab.generate"
)
