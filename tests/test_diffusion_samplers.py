"""Samplers on models with known answers, classifier-free guidance, the common signature and the dispatcher."""

import inspect
import math

import pytest
import torch

from ditlab.diffusion import (
    SAMPLERS,
    FlowMatching,
    GaussianDiffusion,
    GuidedModel,
    run_sampler,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
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
        ):
            seen = []
            out = run_sampler(name, model, _noise(*shape), objective, steps=4, callback=seen.append)
            assert out.shape == shape and out.dtype == torch.float64
            assert [d["i"] for d in seen] == [0, 1, 2, 3] and set(seen[0]) == {"i", "t", "x", "denoised"}


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
