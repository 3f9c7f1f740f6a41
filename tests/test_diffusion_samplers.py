"""Samplers on models with known answers, classifier-free guidance, the common signature and the dispatcher."""

import inspect
import math

import numpy as np
import pytest
import torch

from ditlab.diffusion import (
    SAMPLERS,
    FlowMatching,
    GaussianDiffusion,
    GuidedModel,
    dpm_solver_timesteps,
    run_sampler,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    sampler_timesteps,
    space_timesteps,
)

DIFF = GaussianDiffusion.from_schedule("linear", 1000)  # learned variance: models output 2C channels
FIXED = GaussianDiffusion.from_schedule("linear", 1000, var_type="fixed_small")  # C-channel models
FLOW = FlowMatching()
MU, S = 0.4, 0.5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Hundreds of tiny ops per test: on a busy 2-core machine intra-op threads only add synchronisation stalls.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gaussian_eps_model(mu: float, s: float, learned: bool = False, log=None):
    """The exact ε-predictor E[ε | x_t] for data ~ N(mu, s²) per element (s = 0: a point mass at mu)."""
    table = DIFF.alphas_cumprod

    def model(x, t):
        if log is not None:
            log.append(t.clone())
        ab = table.index_select(0, t).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        eps = (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * s**2 + 1 - ab)
        return torch.cat([eps, torch.zeros_like(eps)], 1) if learned else eps

    return model


def gaussian_velocity_model(mu: float, s: float, log=None):
    """The exact rectified-flow velocity E[ε − x0 | x_t] for data ~ N(mu, s²); receives t·1000."""

    def model(x, t_model):
        if log is not None:
            log.append(t_model.clone())
        t = (t_model / 1000).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        m, var = (1 - t) * mu, (1 - t) ** 2 * s**2 + t**2
        return t * (x - m) / var - (mu + (1 - t) * s**2 * (x - m) / var)

    return model


def ode_target_ddpm(noise):
    # The probability-flow ODE maps x_T ~ N(√ᾱ_T·mu, ᾱ_T s² + 1 − ᾱ_T) affinely onto N(mu, s²).
    ab = DIFF.alphas_cumprod[-1].item()
    return MU + S * (noise - math.sqrt(ab) * MU) / math.sqrt(ab * S**2 + 1 - ab)


def _noise(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("learned", [False, True])
@pytest.mark.parametrize("steps", [1, 3, 10, "ddim20"])
def test_ddim_eta0_recovers_x0_from_an_exact_eps_model(steps, learned):
    noise = _noise(3, 2, 4, 4)
    diffusion = DIFF if learned else FIXED
    model = gaussian_eps_model(MU, 0.0, learned=learned)
    out = run_sampler("ddim", model, noise, diffusion, steps=steps)
    torch.testing.assert_close(out, torch.full_like(noise, MU), rtol=0, atol=1e-10)
    assert torch.equal(out, run_sampler("ddim", model, noise, diffusion, steps=steps))  # deterministic


@pytest.mark.parametrize("steps", [1, 2, 5, 13])
def test_dpmpp_2m_and_ddpm_recover_x0_from_an_exact_eps_model(steps):
    noise = _noise(2, 3, 5)
    model = gaussian_eps_model(MU, 0.0, learned=True)
    torch.testing.assert_close(
        run_sampler("dpmpp_2m", model, noise, DIFF, steps=steps), torch.full_like(noise, MU)
    )
    g = torch.Generator().manual_seed(1)
    torch.testing.assert_close(
        run_sampler("ddpm", model, noise, DIFF, steps=steps, generator=g), torch.full_like(noise, MU)
    )


def test_ode_solvers_converge_on_gaussian_data_and_dpmpp_beats_ddim():
    noise = _noise(1024, 1)
    model = gaussian_eps_model(MU, S)
    target = ode_target_ddpm(noise)

    def err(name, steps):
        return (run_sampler(name, model, noise, FIXED, steps=steps) - target).abs().max().item()

    # Measured max errors over 1024 samples: DDIM 0.25 / 0.10 at 20 / 50 steps, DPM-Solver++(2M) 0.08 / 0.0008
    # (its last, first-order jump to σ = 0 from t ≈ T/steps dominates at few steps, as in diffusers).
    ddim20, ddim50 = err("ddim", 20), err("ddim", 50)
    dpm20, dpm50 = err("dpmpp_2m", 20), err("dpmpp_2m", 50)
    assert dpm20 < ddim20 / 2 and dpm50 < ddim50 / 20
    assert dpm50 < dpm20 / 10 and dpm50 < 0.01
    # Ancestral DDPM over the full chain samples the right distribution: mean and std of N(MU, S²).
    x = run_sampler("ddpm", model, _noise(4096, 1, seed=1), FIXED, generator=torch.Generator().manual_seed(0))
    assert x.mean().item() == pytest.approx(MU, abs=0.025) and x.std().item() == pytest.approx(S, abs=0.02)


def test_flow_euler_integrates_a_linear_field_exactly():
    # All probability mass at a: the velocity field is (x − a)/t (linear in x); its flow lines are straight, so
    # Euler is exact for any step count and shift.
    a = torch.tensor([0.3, -0.7]).view(1, 2, 1).double()

    def field(x, t_model):
        return (x - a) / (t_model / 1000).view(-1, 1, 1)

    noise = _noise(5, 2, 3)
    for steps, shift in ((1, 1.0), (4, 1.0), (17, 3.0)):
        torch.testing.assert_close(
            run_sampler("euler", field, noise, FLOW, steps=steps, shift=shift), a.expand_as(noise)
        )


def test_flow_heun_is_exact_on_a_field_linear_in_time_and_beats_euler():
    def field(x, t_model):  # v = b + c·t: the trapezoid rule integrates it exactly
        t = (t_model / 1000).view(-1, 1)
        return 0.5 + 2.0 * t + 0 * x

    noise = _noise(3, 2)
    # x(0) = x(1) − ∫₀¹ (0.5 + 2t) dt = x(1) − 1.5
    torch.testing.assert_close(run_sampler("heun", field, noise, FLOW, steps=3), noise - 1.5)
    # Gaussian data: the exact ODE maps noise z to MU + S·z; Heun's error shrinks faster than Euler's at equal cost.
    noise = _noise(4096, 1, seed=2)
    model, target = gaussian_velocity_model(MU, S), MU + S * noise
    euler = (run_sampler("euler", model, noise, FLOW, steps=20) - target).abs().max().item()
    heun = (run_sampler("heun", model, noise, FLOW, steps=10) - target).abs().max().item()
    assert heun < euler / 3
    assert (run_sampler("heun", model, noise, FLOW, steps=40) - target).abs().max().item() < 1e-3


# ---------------------------------------------------------------------------------------------- two-Gaussian mixture
# Data per element: a two-component mixture. The marginal at every time is again a mixture in closed form
# (DDPM: means √ᾱ·m, variances ᾱs² + 1 − ᾱ; flow: (1 − t)·m and (1 − t)²s² + t²), and so are the exact
# ε-predictor and velocity (posterior-weighted sums of the per-component ones). Unlike a point mass, whose
# exact x_0-prediction lands any sampler on the data at its last step whatever happened before, a mixture
# makes every step count: errors along the way change where samples end up.
MIXTURE = ((0.35, -1.0, 0.25), (0.65, 1.2, 0.4))  # (weight, mean, std) per component


def mixture_components(scale, noise_std):
    """The marginal at a time where x_t = scale·x_0 + noise_std·ε: (weight, mean, variance) per component;
    scale and noise_std are numbers or tensors broadcasting over x."""
    return [(w, scale * m, scale**2 * s**2 + noise_std**2) for w, m, s in MIXTURE]


def _responsibilities(components, x):
    log_p = torch.stack(
        [math.log(w) - 0.5 * (x - mu) ** 2 / var - 0.5 * torch.log(var) for w, mu, var in components]
    )
    return torch.softmax(log_p, 0)


def mixture_eps_model(x, t):
    """The exact E[ε | x_t] for the mixture under the (fixed-variance) DDPM chain: −√(1−ᾱ)·∇log p_t."""
    ab = FIXED.alphas_cumprod.index_select(0, t).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    components = mixture_components(ab.sqrt(), (1 - ab).sqrt())
    r = _responsibilities(components, x)
    return (1 - ab).sqrt() * sum(r[k] * (x - mu) / var for k, (_, mu, var) in enumerate(components))


def mixture_velocity_model(x, t_model):
    """The exact rectified-flow velocity E[ε − x_0 | x_t] for the mixture; receives t·1000."""
    t = (t_model / 1000).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    components = mixture_components(1 - t, t)
    r = _responsibilities(components, x)
    v = 0
    for k, ((_, mu, var), (_, m, s)) in enumerate(zip(components, MIXTURE)):
        posterior_x0 = m + (1 - t) * s**2 * (x - mu) / var
        posterior_eps = t * (x - mu) / var
        v = v + r[k] * (posterior_eps - posterior_x0)
    return v


def mixture_marginal_at(t_model: float, flow: bool):
    """The analytic marginal's components at the model time a sampler reports in its callback."""
    if flow:
        t = t_model / 1000
        return mixture_components(torch.tensor(1 - t), torch.tensor(t))
    ab = FIXED.alphas_cumprod[int(t_model)]
    return mixture_components(ab.sqrt(), (1 - ab).sqrt())


def ks_distance(x: torch.Tensor, components) -> float:
    """Kolmogorov–Smirnov distance between the empirical distribution of every element of x and a mixture."""
    xs = x.reshape(-1).double().sort().values
    cdf = sum(w * 0.5 * (1 + torch.erf((xs - mu) / torch.sqrt(2 * var))) for w, mu, var in components)
    i = torch.arange(1, len(xs) + 1, dtype=xs.dtype)
    return torch.maximum(i / len(xs) - cdf, cdf - (i - 1) / len(xs)).max().item()


MIXTURE_RUNS = [  # (sampler, objective, model, steps, options)
    ("ddpm", FIXED, mixture_eps_model, "100", {}),
    ("ddim", FIXED, mixture_eps_model, "100", {}),
    ("ddim", FIXED, mixture_eps_model, "100", {"eta": 1.0}),
    ("dpmpp_2m", FIXED, mixture_eps_model, 50, {}),
    ("euler", FLOW, mixture_velocity_model, 100, {}),
    ("heun", FLOW, mixture_velocity_model, 25, {}),
    ("euler_sde", FLOW, mixture_velocity_model, 100, {}),
    ("euler_sde", FLOW, mixture_velocity_model, 100, {"eta": 3.0}),
]


def mixture_run_distances(name, objective, model, steps, options):
    """KS distance of the samples from the data mixture, and of the state at every step (callback) from the
    analytic marginal at that step's time; 16384 draws (4096 × 2 × 2 elements)."""
    noise = _noise(4096, 1, 2, 2, seed=11)
    seen = []
    out = run_sampler(
        name,
        model,
        noise,
        objective,
        steps=steps,
        generator=torch.Generator().manual_seed(12),
        callback=seen.append,
        **options,
    )
    flow = isinstance(objective, FlowMatching)
    steps_ks = [ks_distance(d["x"], mixture_marginal_at(float(d["t"]), flow)) for d in seen]
    return ks_distance(out, mixture_components(torch.tensor(1.0), torch.tensor(0.0))), steps_ks


@pytest.mark.parametrize(
    "run", MIXTURE_RUNS, ids=lambda r: f"{r[0]}-{r[3]}" + "".join(f"-{k}{v:g}" for k, v in r[4].items())
)
def test_every_sampler_follows_the_mixture_marginal_at_every_step(run):
    final, steps_ks = mixture_run_distances(*run)
    # A correct sampler stays within the sampling noise of 16384 draws (KS ≈ 0.01) at every step; one whose
    # per-step noise is 10 % too small or too large leaves it by 0.024–0.036 along the way (measured on DDPM
    # with noise scaled by 0.9 / 1.1, whose final samples can still pass: 0.016 for 1.1).
    assert final < 0.022, final
    assert max(steps_ks) < 0.022 and sorted(steps_ks)[len(steps_ks) // 2] < 0.015, steps_ks


def _trajectory(name, objective, model, steps, noise):
    states = {}

    def record(d):
        states[round(float(d["t"]), 6)] = d["x"]

    out = run_sampler(name, model, noise, objective, steps=steps, callback=record)
    return states, out


def _worst_step_error(name, objective, model, steps, reference, noise) -> float:
    """Largest mean |x − x_ref| over the steps a run shares with the fine reference, its output included."""
    states, out = _trajectory(name, objective, model, steps, noise)
    ref_states, ref_out = reference
    shared = [t for t in states if t in ref_states]
    assert len(shared) >= len(states) - 1  # all but possibly t = 0
    errors = [(states[t] - ref_states[t]).abs().mean().item() for t in shared]
    return max(errors + [(out - ref_out).abs().mean().item()])


def test_ode_samplers_track_a_fine_step_reference_at_every_step_with_their_order():
    # Deterministic samplers on the mixture, state by state against a fine reference from the same noise
    # (DPM-Solver++(2M) over all 999 chain steps; Heun over 1000 flow steps). The error at every step halves
    # when the steps double for the first-order solvers (DDIM, Euler) and quarters for the second-order ones
    # (DPM-Solver++(2M), Heun). Measured worst mean errors: DDIM 0.050 / 0.024 (25 / 50 steps), Euler
    # 0.031 / 0.016, DPM-Solver++ 0.0126 / 0.0032, Heun 0.0051 / 0.0014 (10 / 20).
    noise = _noise(1024, 1, 2, 2, seed=13)
    fine_chain = _trajectory("dpmpp_2m", FIXED, mixture_eps_model, 999, noise)
    fine_flow = _trajectory("heun", FLOW, mixture_velocity_model, 1000, noise)
    for name, objective, model, steps, order, bound in (
        ("ddim", FIXED, mixture_eps_model, (25, 50), 1, 0.03),
        ("euler", FLOW, mixture_velocity_model, (25, 50), 1, 0.02),
        ("dpmpp_2m", FIXED, mixture_eps_model, (25, 50), 2, 0.008),
        ("heun", FLOW, mixture_velocity_model, (10, 20), 2, 0.002),
    ):
        reference = fine_flow if objective is FLOW else fine_chain
        as_steps = (lambda n: str(n)) if name == "ddim" else (lambda n: n)  # "N": DDIM starts at t = 999 too
        coarse, finer = (
            _worst_step_error(name, objective, model, as_steps(n), reference, noise) for n in steps
        )
        assert finer < bound, (name, finer)
        assert coarse / finer > (1.7 if order == 1 else 3.0), (name, coarse, finer)


# ---------------------------------------------------------------------------------------------- time passed to models
def test_models_receive_original_timesteps_and_flow_times():
    log = []
    run_sampler("ddpm", gaussian_eps_model(MU, 0.0, log=log), _noise(2, 1), FIXED, steps="ddim10")
    assert [t[0].item() for t in log] == list(range(900, -1, -100))
    assert all(t.dtype == torch.long and t.shape == (2,) for t in log)
    log.clear()
    run_sampler("dpmpp_2m", gaussian_eps_model(MU, 0.0, log=log), _noise(2, 1), FIXED.respace("250"), steps=3)
    # diffusers-style linspace over the respaced chain's 250 steps (indices 249, 166, 83), mapped to model time.
    assert [t[0].item() for t in log] == FIXED.respace("250").timestep_map[[249, 166, 83]].tolist()
    log.clear()
    run_sampler("heun", gaussian_velocity_model(MU, S, log=log), _noise(2, 1), FLOW, steps=2)
    assert [t[0].item() for t in log] == [1000.0, 500.0, 500.0, 0.0]
    assert log[0].dtype == torch.float64  # float, at least float32


# ---------------------------------------------------------------------------------------------- guidance
class CountingModel:
    """Records the batch size of every call; output depends on x, t and the label y."""

    def __init__(self, out_channels_factor=1):
        self.calls, self.factor = [], out_channels_factor

    def __call__(self, x, t, y, flag=None):
        self.calls.append((x.shape[0], y.clone(), flag))
        tt = t.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        base = torch.tanh(x) * (1 + y.to(x.dtype).view_as(tt)) + 0.001 * tt
        return torch.cat([base] + [base * 0.5 - 0.2] * (self.factor - 1), 1)


def test_guidance_is_one_batched_forward_with_concatenated_kwargs():
    x = _noise(3, 4, 2, 2)
    t = torch.full((3,), 500)
    y, null = torch.tensor([1, 2, 3]), torch.tensor([0, 0, 0])
    model = CountingModel()
    guided = GuidedModel(model, {"y": y, "flag": "keep"}, {"y": null}, scale=4.0)
    out = guided(x, t, 500)
    assert len(model.calls) == 1
    n, labels, flag = model.calls[0]
    assert n == 6 and labels.tolist() == [1, 2, 3, 0, 0, 0] and flag == "keep"
    cond, uncond = model(x, t, y), model(x, t, null)
    torch.testing.assert_close(out, uncond + 4.0 * (cond - uncond))


def test_guidance_interval_skips_the_unconditional_forward_outside():
    x = _noise(2, 4, 2, 2)
    y, null = torch.tensor([1, 2]), torch.tensor([0, 0])
    model = CountingModel()
    guided = GuidedModel(model, {"y": y}, {"y": null}, scale=3.0, interval=(0, 450))
    run_sampler("ddim", guided, x, FIXED, steps="ddim10")
    # model times 900..0 step 100: 900..500 outside (N rows), 400..0 inside (2N rows)
    assert [c[0] for c in model.calls] == [2] * 5 + [4] * 5


def test_guidance_channels_quirk_and_learned_variance_come_from_cond():
    x = _noise(2, 4, 3, 3)
    t = torch.full((2,), 10)
    y, null = torch.tensor([1, 2]), torch.tensor([0, 0])
    model = CountingModel(out_channels_factor=2)  # 8 channels: ε then v
    cond, uncond = model(x, t, y), model(x, t, null)
    full = GuidedModel(model, {"y": y}, {"y": null}, scale=2.5)(x, t, 10)
    torch.testing.assert_close(full[:, :4], uncond[:, :4] + 2.5 * (cond[:, :4] - uncond[:, :4]))
    torch.testing.assert_close(full[:, 4:], cond[:, 4:])  # variance never guided
    quirk = GuidedModel(model, {"y": y}, {"y": null}, scale=2.5, channels=3)(x, t, 10)
    torch.testing.assert_close(quirk[:, :3], full[:, :3])
    torch.testing.assert_close(quirk[:, 3:], cond[:, 3:])  # 4th latent channel and v pass through from cond


def test_guidance_scale_one_runs_only_the_conditional_branch_and_bad_guidance_input():
    model = CountingModel()
    x = _noise(2, 4, 2, 2)
    GuidedModel(model, {"y": torch.tensor([1, 2])}, scale=1.0)(x, torch.full((2,), 3), 3)
    assert model.calls[0][0] == 2
    with pytest.raises(ValueError, match="needs uncond"):
        GuidedModel(model, {"y": torch.tensor([1, 2])}, scale=2.0)
    with pytest.raises(ValueError, match="guidance_channels"):
        GuidedModel(model, {}, {}, scale=2.0, channels=0)
    with pytest.raises(ValueError, match="t_lo <= t_hi"):
        GuidedModel(model, {}, {}, scale=2.0, interval=(500, 100))
    with pytest.raises(ValueError, match="exceeds the 4 input channels"):
        GuidedModel(model, {"y": torch.tensor([1, 2])}, {"y": torch.tensor([0, 0])}, scale=2.0, channels=5)(
            x, torch.full((2,), 3), 3
        )


def test_cfg_moves_flow_samples_toward_the_conditional_mode():
    # Two classes with point masses at ±1; the unconditional field is the mixture's. Guidance (scale 3) must
    # land class +1 at +1 exactly as the conditional model does, since guidance on an exact conditional field
    # with point masses still ends at the class's point.
    def model(x, t_model, y):
        t = (t_model / 1000).view(-1, 1)
        target = torch.where(y.view(-1, 1) == 1, 1.0, -1.0).to(x.dtype)
        cond_v = (x - target) / t
        # unconditional: posterior-weighted average over the two points (equal priors)
        logits = torch.stack([-((x - (1 - t) * c) ** 2) / (2 * t**2) for c in (1.0, -1.0)])
        w = torch.softmax(logits, 0)
        uncond_v = w[0] * (x - 1.0) / t + w[1] * (x + 1.0) / t
        return torch.where(y.view(-1, 1) == 2, uncond_v, cond_v)

    noise = _noise(64, 1)
    y = torch.ones(64, dtype=torch.long)
    guided = GuidedModel(model, {"y": y}, {"y": torch.full_like(y, 2)}, scale=3.0)
    out = run_sampler("euler", guided, noise, FLOW, steps=30)
    assert (out - 1.0).abs().max().item() < 0.05


# ---------------------------------------------------------------------------------------------- signature, dispatcher
def test_every_sampler_shares_the_core_signature_callback_and_shapes():
    core = ["extra_args", "callback", "generator", "objective", "progress"]
    for name, fn in SAMPLERS.items():
        params = inspect.signature(fn).parameters
        names = list(params)
        assert names[:3] == ["model_fn", "x", "timesteps"] and names[3 : 3 + len(core)] == core, name
        assert all(params[p].kind is inspect.Parameter.KEYWORD_ONLY for p in names[3:]), name
    # The deprecated names keep their old signature, so that old positional calls still work.
    old_core = [
        "cond",
        "uncond",
        "steps",
        "guidance_scale",
        "guidance_interval",
        "guidance_channels",
        "progress",
        "callback",
        "generator",
    ]
    for fn in (sample_ddpm, sample_ddim, sample_dpmpp_2m, sample_euler, sample_heun):
        params = list(inspect.signature(fn).parameters)
        assert params[:3] == ["model", "noise", "objective"] and params[3 : 3 + len(old_core)] == old_core
    # Any (N, C, *spatial) shape; callback once per step with i, t, x, denoised.
    for shape in ((2, 3), (2, 3, 5), (1, 2, 3, 2, 2)):
        for name, objective, model in (
            ("ddpm", DIFF, gaussian_eps_model(MU, S, learned=True)),
            ("ddim", DIFF, gaussian_eps_model(MU, S, learned=True)),
            ("dpmpp_2m", DIFF, gaussian_eps_model(MU, S, learned=True)),
            ("euler", FLOW, gaussian_velocity_model(MU, S)),
            ("heun", FLOW, gaussian_velocity_model(MU, S)),
            ("euler_sde", FLOW, gaussian_velocity_model(MU, S)),
        ):
            seen = []
            out = run_sampler(name, model, _noise(*shape), objective, steps=4, callback=seen.append)
            assert out.shape == shape and out.dtype == torch.float64
            assert [d["i"] for d in seen] == [0, 1, 2, 3] and set(seen[0]) == {"i", "t", "x", "denoised"}


def test_samplers_take_explicit_timesteps_extra_args_and_reject_bad_ones():
    noise = _noise(3, 2, 2)
    model = gaussian_eps_model(MU, S)
    # A subset of chain steps, noisiest first, is the respaced chain: equal to the respacing string's run.
    kept = np.asarray(space_timesteps(1000, "ddim10"))[::-1]
    for name in ("ddpm", "ddim"):
        direct = SAMPLERS[name](
            model, noise, kept, objective=FIXED, generator=torch.Generator().manual_seed(0)
        )
        by_steps = run_sampler(
            name, model, noise, FIXED, steps="ddim10", generator=torch.Generator().manual_seed(0)
        )
        torch.testing.assert_close(direct, by_steps, rtol=0, atol=0)
    chain, indices = sampler_timesteps("dpmpp_2m", FIXED, 7)
    assert chain is FIXED and indices.tolist() == dpm_solver_timesteps(1000, 7).tolist()
    # Flow times, e.g. a shifted grid, and the flow schedule option of run_sampler.
    velocity = gaussian_velocity_model(MU, S)
    times = FlowMatching.sampling_times(8, 3.0)
    torch.testing.assert_close(
        SAMPLERS["heun"](velocity, noise, times, objective=FLOW),
        run_sampler("heun", velocity, noise, FLOW, steps=8, shift=3.0),
        rtol=0,
        atol=0,
    )
    # extra_args reach the model on every call (the k-diffusion convention).
    y = torch.tensor([1, 2, 0])
    counting = CountingModel()
    with_y = SAMPLERS["ddim"](
        counting, _noise(3, 4, 2, 2), [999, 500, 0], objective=FIXED, extra_args={"y": y}
    )
    assert len(counting.calls) == 3 and all(torch.equal(c[1], y) for c in counting.calls)
    torch.testing.assert_close(
        with_y,
        run_sampler(
            "ddim",
            GuidedModel(CountingModel(), {"y": y}),
            _noise(3, 4, 2, 2),
            FIXED,
            steps=[999, 500, 0][::-1],
        ),
    )
    with pytest.raises(ValueError, match="strictly decreasing"):
        SAMPLERS["ddim"](model, noise, [0, 500, 999], objective=FIXED)
    with pytest.raises(ValueError, match="step indices"):
        SAMPLERS["ddpm"](model, noise, [0.5, 0.1], objective=FIXED)
    with pytest.raises(ValueError, match="strictly decreasing"):
        SAMPLERS["dpmpp_2m"](model, noise, [1000, 3], objective=FIXED)
    with pytest.raises(ValueError, match="flow times"):
        SAMPLERS["euler"](velocity, noise, [1.0], objective=FLOW)
    with pytest.raises(TypeError, match="no schedule option"):
        sampler_timesteps("ddim", FIXED, 10, shift=2.0)
    with pytest.raises(TypeError, match="eta"):
        run_sampler("euler", velocity, noise, FLOW, steps=2, eta=1.0)


def test_guidance_interval_reads_the_time_from_the_model_times():
    # The guided model is built once, outside the sampler; inside its interval (model time, inclusive) it
    # runs one 2N-row forward, outside one N-row forward, under flow matching as under DDPM.
    y, null = torch.tensor([1, 2]), torch.tensor([0, 0])
    model = CountingModel()
    guided = GuidedModel(model, {"y": y}, {"y": null}, scale=2.0, interval=(0, 500))
    run_sampler("euler", guided, _noise(2, 4, 2, 2).float(), FLOW, steps=4)  # times 1000, 750, 500, 250
    assert [c[0] for c in model.calls] == [2, 2, 4, 4]


def test_generator_makes_stochastic_samplers_reproducible():
    model = gaussian_eps_model(MU, S, learned=True)
    noise = _noise(2, 2, 3)

    def run(seed, **kw):
        return run_sampler(
            "ddpm", model, noise, DIFF, steps=10, generator=torch.Generator().manual_seed(seed), **kw
        )

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))
    a = run_sampler("ddim", model, noise, DIFF, steps=10, eta=1.0, generator=torch.Generator().manual_seed(1))
    b = run_sampler("ddim", model, noise, DIFF, steps=10, eta=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    velocity = gaussian_velocity_model(MU, S)

    def sde(seed, **kw):
        return run_sampler(
            "euler_sde", velocity, noise, FLOW, steps=10, generator=torch.Generator().manual_seed(seed), **kw
        )

    assert torch.equal(sde(1), sde(1)) and not torch.equal(sde(1), sde(2))
    # η = 0 draws no noise: the Euler ODE step for step.
    torch.testing.assert_close(
        sde(1, eta=0.0), run_sampler("euler", velocity, noise, FLOW, steps=10), rtol=0, atol=0
    )
    with pytest.raises(ValueError, match="eta"):
        sde(1, eta=-0.5)


def test_progress_bar_off_by_default(capsys):
    run_sampler("ddim", gaussian_eps_model(MU, S, True), _noise(1, 1), DIFF, steps=3)
    assert capsys.readouterr().err == ""
    run_sampler("ddim", gaussian_eps_model(MU, S, True), _noise(1, 1), DIFF, steps=3, progress=True)
    assert "ddim" in capsys.readouterr().err


def test_dispatcher_and_bad_sampler_input():
    model = gaussian_eps_model(MU, S, learned=True)
    noise = _noise(2, 1)
    # One default per objective, declared on it: DDIM for a GaussianDiffusion, Euler for flow matching.
    torch.testing.assert_close(
        run_sampler(None, model, noise, DIFF, steps=5),
        run_sampler("ddim", model, noise, DIFF, steps=5),
        rtol=0,
        atol=0,
    )
    assert DIFF.default_sampler == "ddim" and FLOW.default_sampler == "euler"
    # The deprecated dispatcher keeps its old default (ancestral DDPM) for its last release.
    with pytest.deprecated_call():
        torch.testing.assert_close(
            sample(model, noise, DIFF, steps=5, generator=torch.Generator().manual_seed(0)),
            run_sampler("ddpm", model, noise, DIFF, steps=5, generator=torch.Generator().manual_seed(0)),
        )
    with pytest.raises(ValueError, match="unknown sampler 'plms'; valid: ddpm, ddim, dpmpp_2m, euler, heun"):
        run_sampler("plms", model, noise, DIFF)
    with pytest.raises(
        TypeError, match="needs a FlowMatching objective.*samplers for it: ddpm, ddim, dpmpp_2m"
    ):
        run_sampler("euler", model, noise, DIFF)
    with pytest.raises(TypeError, match="needs a GaussianDiffusion objective.*euler, heun"):
        run_sampler("ddim", model, noise, FLOW)
    with pytest.deprecated_call(), pytest.raises(ValueError, match="unknown sampler 'plms'"):
        sample(model, noise, DIFF, "plms")
    with pytest.raises(ValueError, match="too many"):
        run_sampler("dpmpp_2m", model, noise, DIFF.respace("10"), steps=10)
    with pytest.raises(ValueError, match="flow matching needs a velocity.*learn_sigma=False"):
        run_sampler("euler", lambda x, t: torch.cat([x, x], 1), noise, FLOW, steps=2)
    with pytest.raises(ValueError, match="needs 2·C"):
        run_sampler("ddim", lambda x, t: x, noise, DIFF, steps=2)
