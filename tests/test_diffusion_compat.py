"""The official-DiT facade: create_diffusion's defaults, training_losses, and the sampling loops' semantics."""

import pytest
import torch
from torch import nn

from ditlab.diffusion import GaussianDiffusion, SpacedDiffusion, create_diffusion, run_sampler


class ToyDiT(nn.Module):
    """Stands in for a learn_sigma DiT: 4 → 8 channels, label-dependent, with an official-style forward_with_cfg."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(4, 8, 1)
        self.emb = nn.Embedding(11, 8)
        self.seen = []

    def forward(self, x, t, y):
        self.seen.append((t.clone(), y.clone()))
        h = self.conv(x) * 0.1 + self.emb(y)[:, :, None, None] * 0.1 + (t.float() / 1e4)[:, None, None, None]
        # ε close to x (a sane denoiser for data near 0), v in [-1, 1]
        return torch.cat([0.9 * x + h[:, :4], torch.tanh(h[:, 4:])], 1)

    def forward_with_cfg(self, x, t, y, cfg_scale):
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half]), t, y)
        eps, rest = out[:, :4], out[:, 4:]
        cond, uncond = eps.chunk(2)
        guided = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([guided, guided]), rest], 1)


def test_create_diffusion_official_defaults():
    d = create_diffusion("")
    assert isinstance(d, SpacedDiffusion) and isinstance(d, GaussianDiffusion)
    assert len(d) == 1000 and d.var_type == "learned_range" and d.loss_type == "mse"
    assert d.timestep_map.tolist() == list(range(1000))
    # β recomputed from ᾱ as the official SpacedDiffusion does: equal to the linear schedule up to float64 rounding.
    torch.testing.assert_close(
        d.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), rtol=1e-12, atol=0
    )
    assert d.alphas_cumprod[-1].item() == pytest.approx(4.04e-5, rel=1e-2)
    spaced = create_diffusion("250")
    assert len(spaced) == 250 and spaced.timestep_map[-3:].tolist() == [991, 995, 999]
    assert create_diffusion("ddim50").timestep_map.tolist() == list(range(0, 1000, 20))
    assert create_diffusion("", learn_sigma=False).var_type == "fixed_large"
    assert create_diffusion("", learn_sigma=False, sigma_small=True).var_type == "fixed_small"
    assert create_diffusion("", use_kl=True).loss_type == "rescaled_kl"
    assert create_diffusion("", rescale_learned_sigmas=True).loss_type == "rescaled_mse"
    assert len(create_diffusion("", noise_schedule="squaredcos_cap_v2", diffusion_steps=100)) == 100
    with pytest.raises(ValueError, match="predict_xstart"):
        create_diffusion("", predict_xstart=True)
    with pytest.raises(ValueError, match="valid names: linear"):
        create_diffusion("", noise_schedule="quad")


def test_training_losses_passes_model_kwargs_and_spaced_timesteps():
    d = create_diffusion("250")
    model = ToyDiT()
    x0 = torch.randn(3, 4, 2, 2)
    y = torch.tensor([1, 5, 10])
    terms = d.training_losses(model, x0, torch.tensor([0, 1, 249]), model_kwargs=dict(y=y))
    assert set(terms) == {"loss", "mse", "vb"} and terms["loss"].shape == (3,)
    t_seen, y_seen = model.seen[-1]
    assert t_seen.tolist() == [0, 4, 999] and torch.equal(y_seen, y)  # spaced index → original timestep
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    x_t = d.q_sample(x0, torch.tensor([0, 1, 249]), noise=torch.zeros_like(x0))
    torch.testing.assert_close(x_t[2], x0[2] * d.alphas_cumprod[249].sqrt().float())


def test_p_sample_loop_with_forward_with_cfg_consumes_global_rng_like_the_official_loop():
    d = create_diffusion("10")
    model = ToyDiT()
    torch.manual_seed(0)
    z = torch.randn(2, 4, 3, 3)
    z = torch.cat([z, z])
    y = torch.tensor([3, 7, 10, 10])
    torch.manual_seed(1)
    out = d.p_sample_loop(
        model.forward_with_cfg,
        z.shape,
        z,
        clip_denoised=False,
        model_kwargs=dict(y=y, cfg_scale=4.0),
        progress=False,
    )
    after = torch.rand(1)
    # One randn_like(x) per step, the last included, as the official p_sample.
    torch.manual_seed(1)
    for _ in range(len(d)):
        torch.randn_like(z)
    assert torch.equal(after, torch.rand(1))
    assert out.shape == z.shape and len(model.seen) == 10
    assert [s[0][0].item() for s in model.seen] == d.timestep_map.flip(0).tolist()
    assert all(torch.equal(s[1], y) for s in model.seen)
    # Same result as ditlab's own sampler fed the same RNG.
    torch.manual_seed(1)
    ref = run_sampler("ddpm", model.forward_with_cfg, z, d, extra_args=dict(y=y, cfg_scale=4.0))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert torch.isfinite(out).all()


def test_p_sample_loop_draws_its_own_noise_on_the_model_device_and_ddim_loop():
    d = create_diffusion("ddim10")
    model = ToyDiT()
    y = torch.tensor([1, 2])
    torch.manual_seed(5)
    a = d.p_sample_loop(model, (2, 4, 2, 2), model_kwargs=dict(y=y))
    torch.manual_seed(5)
    noise = torch.randn(2, 4, 2, 2)
    b = d.p_sample_loop(model, (2, 4, 2, 2), noise, model_kwargs=dict(y=y))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    ddim = d.ddim_sample_loop(model, (2, 4, 2, 2), noise=noise, model_kwargs=dict(y=y))
    torch.testing.assert_close(
        ddim, run_sampler("ddim", model, noise, d, extra_args=dict(y=y)), rtol=0, atol=0
    )
    with pytest.raises(ValueError, match="noise shape"):
        d.p_sample_loop(model, (3, 4, 2, 2), noise, model_kwargs=dict(y=y))
