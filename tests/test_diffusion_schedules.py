"""Noise schedules and timestep respacing: values, official index sets, diffusers tables, bad input."""

import math

import numpy as np
import pytest
import torch

from ditlab.diffusion import GaussianDiffusion, get_beta_schedule, space_timesteps


def test_linear_schedule_dit_default_and_step_scaling():
    betas = get_beta_schedule("linear", 1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    assert betas[0] == 1e-4 and betas[-1] == 0.02
    # ᾱ_T of the DiT chain (notes: ≈ 4.04e-5).
    assert np.cumprod(1 - betas)[-1] == pytest.approx(4.04e-5, rel=1e-2)
    # Other step counts stretch the endpoints by 1000/T, keeping ᾱ_T in the same range.
    short = get_beta_schedule("linear", 250)
    assert short[0] == pytest.approx(4e-4) and short[-1] == pytest.approx(0.08)
    assert np.cumprod(1 - short)[-1] < 1e-4


def test_scaled_linear_and_cosine_schedules():
    sl = get_beta_schedule("scaled_linear", 1000)
    assert np.sqrt(sl) == pytest.approx(np.linspace(0.00085**0.5, 0.012**0.5, 1000))
    cos = get_beta_schedule("cosine", 1000)
    alpha_bar = np.cumprod(1 - cos)
    f = [math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2 for u in np.arange(1, 1001) / 1000]
    # ᾱ_t = f(t)/f(0) until the 0.999 cap bites at the very end.
    np.testing.assert_allclose(
        alpha_bar[:990], (np.array(f) / math.cos(0.008 / 1.008 * math.pi / 2) ** 2)[:990]
    )
    assert cos.max() == 0.999
    np.testing.assert_array_equal(get_beta_schedule("squaredcos_cap_v2", 50), get_beta_schedule("cosine", 50))


def test_schedules_match_diffusers_tables():
    diffusers = pytest.importorskip("diffusers")
    # diffusers builds its tables in float32 (torch.linspace, sqrt/square, cumprod in float32); ours are float64.
    # Measured distance of diffusers' float32 β from our exact β, in float32 ulps: linear 1.17, scaled_linear 2.97,
    # cosine 0.5 (= ours rounded, bit for bit); ᾱ relative: 3.8e-7, 9.5e-7, 1.3e-5 (its float32 cumprod).
    for name, kwargs, max_ulps, alpha_bar_rtol in (
        ("linear", dict(beta_start=1e-4, beta_end=0.02), 1.2, 4e-7),
        ("scaled_linear", dict(beta_start=0.00085, beta_end=0.012), 3.0, 1e-6),
        ("squaredcos_cap_v2", {}, 0.5, 1.5e-5),
    ):
        ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=name, **kwargs)
        ours = GaussianDiffusion(get_beta_schedule(name, 1000))
        assert _float32_ulps(ours.betas, ref.betas) <= max_ulps, name
        torch.testing.assert_close(
            ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=alpha_bar_rtol, atol=0
        )
    cosine = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    assert torch.equal(GaussianDiffusion(get_beta_schedule("cosine")).betas.float(), cosine.betas)


def _float32_ulps(exact: torch.Tensor, approx32: torch.Tensor) -> float:
    # Distance in units of the float32 spacing at each value.
    spacing = torch.nextafter(approx32, torch.full_like(approx32, math.inf)) - approx32
    return ((exact - approx32.double()).abs() / spacing.double()).max().item()


def test_unknown_schedule_lists_valid_names():
    with pytest.raises(ValueError, match="linear, scaled_linear, cosine"):
        get_beta_schedule("quadratic", 1000)
    with pytest.raises(ValueError, match="positive integer"):
        get_beta_schedule("linear", 0)


def test_space_timesteps_official_index_sets():
    s250 = space_timesteps(1000, "250")
    assert len(s250) == 250 and s250[:4] == [0, 4, 8, 12] and s250[-4:] == [987, 991, 995, 999]
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim250") == list(range(0, 1000, 4))
    assert space_timesteps(1000, 10) == space_timesteps(1000, "10")
    assert space_timesteps(1000, "") == list(range(1000))
    sections = space_timesteps(300, "2,3,5")
    # Sections of 100: strides 99, 49.5, 24.75; Python rounds halves to even (49.5 → 50).
    assert sections == [0, 99, 100, 150, 199, 200, 225, 250, 274, 299]


def test_space_timesteps_accumulates_the_stride_like_the_official_code():
    # With 21 steps the stride is 49.95: ten additions give 499.49999999999994 → 499, while 10·49.95 = 499.5
    # rounds (half to even) to 500. The official indices are the accumulated ones.
    position, expected = 0.0, []
    for _ in range(21):
        expected.append(round(position))
        position += 999 / 20
    assert space_timesteps(1000, "21") == expected
    assert space_timesteps(1000, "21") != [round(k * 999 / 20) for k in range(21)]


def test_bad_respacing_says_why():
    with pytest.raises(ValueError, match="cannot hold 300 steps"):
        space_timesteps(1000, "300,300,300,300")
    with pytest.raises(ValueError, match="integer stride"):
        space_timesteps(1000, "ddim999")
    with pytest.raises(ValueError, match="invalid respacing"):
        space_timesteps(1000, "fifty")
    with pytest.raises(ValueError, match="cannot hold 2000"):
        space_timesteps(1000, 2000)


def test_respaced_process_keeps_model_timesteps_and_alpha_bar():
    base = GaussianDiffusion.from_schedule("linear", 1000)
    spaced = base.respace("ddim50")
    assert len(spaced) == 50
    assert spaced.timestep_map.tolist() == list(range(0, 1000, 20))
    torch.testing.assert_close(spaced.alphas_cumprod, base.alphas_cumprod[::20], rtol=1e-13, atol=0)
    # β of a respaced chain: 1 − ᾱ_i / ᾱ_prev over the kept steps.
    assert spaced.betas[1].item() == pytest.approx(
        1 - base.alphas_cumprod[20].item() / base.alphas_cumprod[0].item()
    )
    # Respacing a respaced process composes: its indices refer to its own steps.
    twice = spaced.respace("ddim10")
    assert twice.timestep_map.tolist() == list(range(0, 1000, 100))
    assert base.respace("ddim50") is spaced  # cached
