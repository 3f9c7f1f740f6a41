"""Parity with diffusers' schedulers on identical inputs: DDPM (fixed and learned-range variance), DDIM, DPM-Solver++.

Run ``python tests/test_diffusion_parity.py`` to print the measured errors.
"""

import pytest
import torch

from ditlab.diffusion import GaussianDiffusion, run_sampler

diffusers = pytest.importorskip("diffusers")
# diffusers 0.42 + numpy 2 warn inside DPMSolverMultistepScheduler.set_timesteps; not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SHAPE = (2, 3, 4, 4)


def _scheduler(cls, dtype, **config):
    """A diffusers scheduler on the DiT chain; in float64 its ᾱ table is replaced by ours (its own is float32)."""
    sched = cls(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, **config)
    if dtype == torch.float64:
        ours = GaussianDiffusion.from_schedule("linear", 1000)
        sched.betas, sched.alphas_cumprod = ours.betas.clone(), ours.alphas_cumprod.clone()
        sched.alphas = 1 - sched.betas
    return sched


_ALPHA_BAR = GaussianDiffusion.from_schedule("linear", 1000).alphas_cumprod


def toy_model(learned: bool):
    """A stand-in network: the exact ε-predictor for data ~ N(0.3, 0.5²) per element, perturbed by a smooth
    function of (x, t) so that nothing cancels; t may be a 0-dim or (N,) tensor of model timesteps."""

    def model(x, t):
        t = torch.as_tensor(t, device=x.device).reshape(-1)
        ab = _ALPHA_BAR.to(x.device).index_select(0, t).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        eps = (1 - ab).sqrt() * (x - ab.sqrt() * 0.3) / (0.25 * ab + 1 - ab)
        eps = eps + 0.05 * torch.tanh(x + 0.001 * t.reshape(ab.shape).to(x.dtype))
        if not learned:
            return eps
        return torch.cat([eps, torch.tanh(0.5 * x.flip(1) + 0.3)], dim=1)

    return model


def _step_inputs(diffusion, index, generator, dtype, learned):
    """A realistic step input: x_t of data in [-1, 1], and a model output = the true noise + 10 % error
    (random x with random ε would ask for x_0 predictions of size ~300 at t ≈ T, far off any real use)."""
    x0 = torch.rand(SHAPE, generator=generator, dtype=dtype) * 2 - 1
    noise = torch.randn(SHAPE, generator=generator, dtype=dtype)
    x = diffusion.q_sample(x0, torch.full((SHAPE[0],), index), noise)
    out = noise + 0.1 * torch.randn(SHAPE, generator=generator, dtype=dtype)
    if learned:
        out = torch.cat([out, torch.rand(SHAPE, generator=generator, dtype=dtype) * 2 - 1], 1)
    return x, out


def ddpm_step_errors(var_type: str, dtype: torch.dtype, respacing: str | None = None) -> float:
    """Max |ours − diffusers| over one DDPM step at every kept timestep (random x, model output, noise)."""
    ours = GaussianDiffusion.from_schedule("linear", 1000, var_type=var_type, respacing=respacing)
    learned = var_type == "learned_range"
    sched = _scheduler(diffusers.DDPMScheduler, dtype, variance_type=var_type, clip_sample=False)
    kept = ours.timestep_map.tolist()
    if respacing is not None:
        sched.set_timesteps(timesteps=kept[::-1])
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for index, timestep in enumerate(kept):
        x, out = _step_inputs(ours, index, g, dtype, learned)
        seed = 1000 + index
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        mine = ours.ddpm_step(out, x, torch.full((SHAPE[0],), index), noise)["sample"]
        ref = sched.step(out, timestep, x, generator=torch.Generator().manual_seed(seed)).prev_sample
        worst = max(worst, (mine - ref).abs().max().item())
    return worst


def ddim_step_errors(eta: float, dtype: torch.dtype) -> float:
    ours = GaussianDiffusion.from_schedule("linear", 1000, var_type="fixed_small", respacing="ddim50")
    sched = _scheduler(diffusers.DDIMScheduler, dtype, clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(50)
    assert sched.timesteps.tolist() == ours.timestep_map.tolist()[::-1]  # "ddim50" == diffusers' "leading" 50
    g = torch.Generator().manual_seed(1)
    worst = 0.0
    for index, timestep in enumerate(ours.timestep_map.tolist()):
        x, out = _step_inputs(ours, index, g, dtype, learned=False)
        noise = torch.randn(SHAPE, generator=g, dtype=dtype)
        mine = ours.ddim_step(out, x, torch.full((SHAPE[0],), index), noise, eta=eta)["sample"]
        ref = sched.step(out, timestep, x, eta=eta, variance_noise=noise).prev_sample
        worst = max(worst, (mine - ref).abs().max().item())
    return worst


def _diffusers_loop(sched, model, x, generator=None, **step_kwargs):
    for timestep in sched.timesteps:
        x = sched.step(model(x, timestep), timestep, x, generator=generator, **step_kwargs).prev_sample
    return x


def ddpm_loop_error(dtype: torch.dtype) -> float:
    """Full 1000-step ancestral sampling with a learned-variance toy model and the same seeded generator."""
    ours = GaussianDiffusion.from_schedule("linear", 1000)
    sched = _scheduler(diffusers.DDPMScheduler, dtype, variance_type="learned_range", clip_sample=False)
    sched.set_timesteps(1000)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3), dtype=dtype)
    model = toy_model(learned=True)
    mine = run_sampler("ddpm", model, noise, ours, generator=torch.Generator().manual_seed(4))
    ref = _diffusers_loop(sched, model, noise, generator=torch.Generator().manual_seed(4))
    return (mine - ref).abs().max().item()


def ddim_loop_error(dtype: torch.dtype, eta: float) -> float:
    ours = GaussianDiffusion.from_schedule("linear", 1000, var_type="fixed_small")
    sched = _scheduler(diffusers.DDIMScheduler, dtype, clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(50)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5), dtype=dtype)
    model = toy_model(learned=False)
    mine = run_sampler(
        "ddim", model, noise, ours, steps="ddim50", eta=eta, generator=torch.Generator().manual_seed(6)
    )
    ref = _diffusers_loop(sched, model, noise, generator=torch.Generator().manual_seed(6), eta=eta)
    return (mine - ref).abs().max().item()


def dpmpp_2m_loop_error(steps: int, dtype: torch.dtype = torch.float32) -> float:
    """DPM-Solver++(2M) against diffusers' DPMSolverMultistepScheduler at its defaults (midpoint, linspace
    spacing, first-order first and final steps, final σ = 0). diffusers computes in float32 internally."""
    ours = GaussianDiffusion.from_schedule("linear", 1000, var_type="fixed_small")
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
    )
    sched.set_timesteps(steps)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=dtype)
    model = toy_model(learned=False)
    mine = run_sampler("dpmpp_2m", model, noise, ours, steps=steps)
    ref = _diffusers_loop(sched, model, noise)
    return (mine - ref).abs().max().item()


def float32_step_accuracy() -> tuple[float, float]:
    """Max distance of a float32 DDPM step (learned range) from the float64 step on the same inputs, for ours
    and for diffusers: where the two float32 results differ, which one is off."""
    ours = GaussianDiffusion.from_schedule("linear", 1000)
    sched = _scheduler(
        diffusers.DDPMScheduler, torch.float32, variance_type="learned_range", clip_sample=False
    )
    g = torch.Generator().manual_seed(0)
    worst_ours = worst_diffusers = 0.0
    for index in range(1000):
        x, out = _step_inputs(ours, index, g, torch.float64, learned=True)
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(index))
        t = torch.full((SHAPE[0],), index)
        truth = ours.ddpm_step(out, x, t, noise.double())["sample"]
        mine = ours.ddpm_step(out.float(), x.float(), t, noise)["sample"]
        ref = sched.step(
            out.float(), index, x.float(), generator=torch.Generator().manual_seed(index)
        ).prev_sample
        worst_ours = max(worst_ours, (mine.double() - truth).abs().max().item())
        worst_diffusers = max(worst_diffusers, (ref.double() - truth).abs().max().item())
    return worst_ours, worst_diffusers


def _float64_tables(sched, chain: GaussianDiffusion):
    """Give a diffusers scheduler ``chain``'s float64 β/ᾱ tables (diffusers builds float32 ones)."""
    sched.betas, sched.alphas_cumprod = chain.betas.clone(), chain.alphas_cumprod.clone()
    sched.alphas = 1 - sched.betas
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return sched


def official_ddim25_reference(noise, model):
    """25 DDIM steps (η = 0) on the official respaced "25" chain, by diffusers' DDIMScheduler in float64: the
    respaced chain is given to it as its own 25-step training chain (β recomputed from ᾱ, as the official
    SpacedDiffusion does, which diffusers' uniform DDIM spacing cannot express), and the model is called at
    the original timesteps."""
    chain = GaussianDiffusion.from_schedule("linear", 1000).respace("25")
    sched = diffusers.DDIMScheduler(
        num_train_timesteps=25, trained_betas=chain.betas.numpy(), clip_sample=False, set_alpha_to_one=True
    )
    _float64_tables(sched, chain)
    sched.set_timesteps(25)
    assert sched.timesteps.tolist() == list(range(24, -1, -1))
    x = noise
    for index in sched.timesteps:
        eps = model(x, chain.timestep_map[index].reshape(1))[:, : x.shape[1]]
        x = sched.step(eps, index, x, eta=0.0).prev_sample
    return x


def official_ddpm250_reference(noise, model, seed: int):
    """250 ancestral steps (learned-range variance) on the official respaced "250" chain, by diffusers'
    DDPMScheduler with custom timesteps and float64 tables, noise from ``seed``."""
    base = GaussianDiffusion.from_schedule("linear", 1000)
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", variance_type="learned_range", clip_sample=False
    )
    _float64_tables(sched, base)
    sched.set_timesteps(timesteps=base.respace("250").timestep_map.tolist()[::-1])
    return _diffusers_loop(sched, model, noise, generator=torch.Generator().manual_seed(seed))


def official_schedule_errors(dtype: torch.dtype) -> tuple[float, float]:
    """Max |ours − diffusers float64 scheduler| after 25 DDIM steps and after 250 DDPM steps, inputs in
    ``dtype`` (the float32 reference shares our per-step noise: both draw float32 normals from one seed)."""
    model = toy_model(learned=True)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(8), dtype=dtype)
    base = GaussianDiffusion.from_schedule("linear", 1000)
    ddim = run_sampler("ddim", model, noise, base, steps="25")
    ddpm = run_sampler("ddpm", model, noise, base, steps="250", generator=torch.Generator().manual_seed(9))
    return (
        (ddim - official_ddim25_reference(noise, model)).abs().max().item(),
        (ddpm - official_ddpm250_reference(noise, model, 9)).abs().max().item(),
    )


def float32_ddim25_drift() -> float:
    """Max distance of float32 DDIM-25 sampling from the float64 trajectory of the same noise."""
    model = toy_model(learned=True)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    mine = run_sampler(
        "ddim", model, noise.float(), GaussianDiffusion.from_schedule("linear", 1000), steps="25"
    )
    return (mine.double() - official_ddim25_reference(noise, model)).abs().max().item()


TOL = {torch.float64: 1e-5, torch.float32: 1e-4}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("var_type", ["learned_range", "fixed_small", "fixed_large"])
def test_ddpm_step_matches_diffusers(var_type, dtype):
    assert ddpm_step_errors(var_type, dtype) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_respaced_ddpm_step_matches_diffusers_custom_timesteps(dtype):
    assert ddpm_step_errors("learned_range", dtype, respacing="25,25,50") < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_matches_diffusers(eta, dtype):
    assert ddim_step_errors(eta, dtype) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ddpm_and_ddim_sampling_loops_match_diffusers(dtype):
    assert ddpm_loop_error(dtype) < TOL[dtype]
    assert ddim_loop_error(dtype, eta=0.0) < TOL[dtype]
    assert ddim_loop_error(dtype, eta=1.0) < TOL[dtype]


def test_float32_step_stays_within_float32_rounding_of_float64():
    # Our tables are float64, cast to float32 when applied: a float32 step is ≈ 5e-7 from the float64 one
    # (diffusers, whose tables are float32, is ≈ 8e-5 off at small t; see float32_step_accuracy).
    assert float32_step_accuracy()[0] < 2e-6


@pytest.mark.parametrize("steps", [1, 2, 7, 20])
def test_dpmpp_2m_matches_diffusers(steps):
    assert dpmpp_2m_loop_error(steps) < 1e-4


def test_official_respaced_chains_follow_the_float64_schedulers():
    # Per-step coefficients come from float64 tables cast to the input's dtype at each step (the official
    # order): in float64 the trajectories agree to rounding (a float32 table anywhere would leave ~1e-7), and
    # in float32 they stay within 1e-5 of diffusers' float64-table steps after 25 DDIM / 250 DDPM steps.
    ddim64, ddpm64 = official_schedule_errors(torch.float64)
    assert ddim64 < 1e-12 and ddpm64 < 1e-12
    ddim32, ddpm32 = official_schedule_errors(torch.float32)
    assert ddim32 <= 1e-5 and ddpm32 <= 1e-5
    assert float32_ddim25_drift() <= 1e-5


if __name__ == "__main__":
    for dtype in (torch.float64, torch.float32):
        name = str(dtype).removeprefix("torch.")
        for var_type in ("learned_range", "fixed_small", "fixed_large"):
            print(f"DDPM step, {var_type:13s} {name}: {ddpm_step_errors(var_type, dtype):.2e}")
        print(
            f"DDPM step, respaced 25,25,50 {name}: {ddpm_step_errors('learned_range', dtype, '25,25,50'):.2e}"
        )
        for eta in (0.0, 0.7):
            print(f"DDIM step, eta={eta} {name}: {ddim_step_errors(eta, dtype):.2e}")
        print(f"DDPM 1000-step loop, learned_range {name}: {ddpm_loop_error(dtype):.2e}")
        print(
            f"DDIM ddim50 loop eta=0 / eta=1 {name}: {ddim_loop_error(dtype, 0.0):.2e} / {ddim_loop_error(dtype, 1.0):.2e}"
        )
    mine, theirs = float32_step_accuracy()
    print(f"float32 DDPM step vs the float64 step: ours {mine:.2e}, diffusers {theirs:.2e}")
    for dtype in (torch.float64, torch.float32):
        ddim, ddpm = official_schedule_errors(dtype)
        print(
            f"official respaced chains vs float64 schedulers, {dtype}: DDIM-25 {ddim:.2e}, DDPM-250 {ddpm:.2e}"
        )
    print(f"float32 DDIM-25 vs the float64 trajectory: {float32_ddim25_drift():.2e}")
    for steps in (1, 2, 7, 20, 50):
        print(f"DPM-Solver++(2M) {steps} steps float32: {dpmpp_2m_loop_error(steps):.2e}")
