"""GaussianDiffusion against closed forms: q_sample statistics, posterior, learned-range variance, VLB, losses."""

import math

import pytest
import torch
from scipy.stats import norm

from ditlab.diffusion import GaussianDiffusion, mean_flat

DIFF = GaussianDiffusion.from_schedule("linear", 1000)


def _ab(t: int) -> float:
    return DIFF.alphas_cumprod[t].item()


def test_q_sample_statistics():
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1, 2, 2), 0.7, dtype=torch.float64)
    for step in (0, 300, 999):
        t = torch.full((x0.shape[0],), step)
        xt = DIFF.q_sample(x0, t, generator=g)
        mean, var = xt.mean().item(), xt.var().item()
        n = xt.numel()
        assert abs(mean - math.sqrt(_ab(step)) * 0.7) < 5 * math.sqrt((1 - _ab(step)) / n)
        assert var == pytest.approx(1 - _ab(step), rel=0.03)
    # q_mean_variance agrees with the same formula.
    m, v, logv = DIFF.q_mean_variance(x0[:2], torch.tensor([5, 600]))
    assert m[1].flatten()[0].item() == pytest.approx(math.sqrt(_ab(600)) * 0.7, rel=1e-12)
    assert torch.allclose(logv.exp(), v)


def test_posterior_matches_bayes_rule():
    # q(x_{t-1} | x_t, x_0) ∝ N(x_t; √α_t x_{t-1}, β_t) · N(x_{t-1}; √ᾱ_{t-1} x_0, 1 − ᾱ_{t-1}):
    # precision = α_t/β_t + 1/(1 − ᾱ_{t-1}), mean = var·(√α_t x_t/β_t + √ᾱ_{t-1} x_0/(1 − ᾱ_{t-1})).
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    xt = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 250, 999])
    mean, var, logvar = DIFF.q_posterior_mean_variance(x0, xt, t)
    for row, step in enumerate(t.tolist()):
        beta = DIFF.betas[step].item()
        ab_prev = _ab(step - 1)
        precision = (1 - beta) / beta + 1 / (1 - ab_prev)
        expected_var = 1 / precision
        expected_mean = expected_var * (
            math.sqrt(1 - beta) * xt[row] / beta + math.sqrt(ab_prev) * x0[row] / (1 - ab_prev)
        )
        torch.testing.assert_close(mean[row], expected_mean, rtol=1e-10, atol=1e-12)
        assert var[row].unique().item() == pytest.approx(expected_var, rel=1e-10)
        assert logvar[row].unique().item() == pytest.approx(math.log(expected_var), rel=1e-10)
    # At t = 0 the posterior variance is 0 and the clipped log-variance borrows t = 1's.
    _, var0, logvar0 = DIFF.q_posterior_mean_variance(x0, xt, torch.tensor([0, 0, 0]))
    assert var0.abs().max().item() == 0
    assert logvar0[0, 0, 0].item() == pytest.approx(math.log(DIFF.table("posterior_variance")[1].item()))


def test_learned_range_interpolates_log_beta_and_log_posterior_variance():
    x = torch.zeros(3, 2, 3, dtype=torch.float64)
    eps = torch.zeros_like(x)
    t = torch.tensor([10, 10, 10])
    v = torch.stack([torch.full((2, 3), -1.0), torch.full((2, 3), 1.0), torch.full((2, 3), 0.0)]).double()
    out = DIFF.p_mean_variance_from_output(torch.cat([eps, v], 1), x, t)
    log_beta = math.log(DIFF.betas[10].item())
    log_tilde = math.log(DIFF.table("posterior_variance")[10].item())
    assert out["log_variance"][0].unique().item() == pytest.approx(log_tilde)
    assert out["log_variance"][1].unique().item() == pytest.approx(log_beta)
    assert out["log_variance"][2].unique().item() == pytest.approx((log_beta + log_tilde) / 2)
    # ε → x0 → posterior mean: with an exact ε the mean is the true posterior mean.
    x0 = torch.randn(3, 2, 3, dtype=torch.float64)
    noise = torch.randn_like(x0)
    xt = DIFF.q_sample(x0, t, noise)
    out = DIFF.p_mean_variance_from_output(torch.cat([noise, v], 1), xt, t)
    torch.testing.assert_close(out["pred_xstart"], x0)
    torch.testing.assert_close(out["mean"], DIFF.q_posterior_mean_variance(x0, xt, t)[0])


def test_vlb_is_a_nonnegative_kl_and_decoder_nll_at_t0():
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(4, 3, 2, 2, generator=g, dtype=torch.float64) * 1.8 - 0.9
    out = torch.randn(4, 6, 2, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 40, 500, 999])
    xt = DIFF.q_sample(x0, t, noise)
    vb = DIFF.vb_terms_bpd(out, x0, xt, t)["output"]
    assert (vb >= 0).all()
    # Against torch.distributions' KL of the two Gaussians, in bits.
    q_mean, _, q_logvar = DIFF.q_posterior_mean_variance(x0, xt, t)
    p = DIFF.p_mean_variance_from_output(out, xt, t)
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(q_mean, (0.5 * q_logvar).exp()),
        torch.distributions.Normal(p["mean"], (0.5 * p["log_variance"]).exp()),
    )
    torch.testing.assert_close(vb, mean_flat(kl) / math.log(2), rtol=1e-9, atol=1e-12)
    # An exact ε and exact variance (v = -1 → β̃_t) make the KL vanish.
    exact = torch.cat([noise, -torch.ones_like(noise)], 1)
    assert DIFF.vb_terms_bpd(exact, x0, xt, t)["output"].abs().max().item() < 1e-9

    # t = 0: −log2 of the Gaussian mass of the bin x0 ± 1/255 (tails beyond ±0.999), per element, averaged.
    t0 = torch.zeros(4, dtype=torch.long)
    xt0 = DIFF.q_sample(x0, t0, noise)
    # A decent model (ε off by 0.3, any v): the decoder mean lands within a few bins of x0.
    out0 = torch.cat([noise + 0.3 * torch.randn(x0.shape, generator=g, dtype=x0.dtype), out[:, 3:].tanh()], 1)
    nll = DIFF.vb_terms_bpd(out0, x0, xt0, t0)["output"]
    p0 = DIFF.p_mean_variance_from_output(out0, xt0, t0)
    std = (0.5 * p0["log_variance"]).exp().numpy()
    mu, xs = p0["mean"].numpy(), x0.numpy()
    mass = norm.cdf((xs + 1 / 255 - mu) / std) - norm.cdf((xs - 1 / 255 - mu) / std)
    exact_bits = torch.from_numpy(-(torch.tensor(mass).log().numpy()) / math.log(2)).mean(dim=(1, 2, 3))
    assert (nll > 0).all()
    # The official tanh approximation of Φ is used; it stays within 1e-3 relative of the exact mass here.
    torch.testing.assert_close(nll, exact_bits, rtol=1e-3, atol=0)


def test_hybrid_loss_terms_and_gradients():
    torch.manual_seed(0)
    x0 = torch.randn(8, 2, 4, 4)
    lin = torch.nn.Conv2d(2, 4, 1)
    seen = {}

    def model(x, t, scale=1.0):
        seen["t"], seen["scale"] = t, scale
        return lin(x) * scale

    t = torch.randint(0, 1000, (8,))
    noise = torch.randn_like(x0)
    terms = DIFF.training_losses(model, x0, t, model_kwargs={"scale": 0.5}, noise=noise)
    assert set(terms) == {"loss", "mse", "vb"} and terms["loss"].shape == (8,)
    assert seen["scale"] == 0.5 and torch.equal(seen["t"], t)
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    eps_hat = model(DIFF.q_sample(x0, t, noise), t, 0.5)[:, :2]
    torch.testing.assert_close(terms["mse"], mean_flat((noise - eps_hat) ** 2))
    # The VLB reaches only the variance channels (its mean input is detached): its gradient on the ε rows of
    # the 1×1 conv is zero, on the v rows it is not.
    lin.zero_grad()
    terms["vb"].sum().backward()
    assert lin.weight.grad[:2].abs().max().item() == 0 and lin.weight.grad[2:].abs().max().item() > 0


def test_loss_types_and_fixed_variance():
    torch.manual_seed(0)
    x0 = torch.randn(4, 2, 3)
    t = torch.tensor([0, 3, 500, 999])
    noise = torch.randn_like(x0)
    w = torch.randn(4, 2, 1)

    def learned(x, t):
        return torch.cat([x * 0.1, torch.tanh(x)], 1) * w[: x.shape[0], :1]

    base = DIFF.training_losses(learned, x0, t, noise=noise)
    # rescaled_mse scales the VLB by T/1000 (a no-op at T = 1000, DiT's case).
    t500 = torch.tensor([0, 3, 250, 499])
    plain = GaussianDiffusion.from_schedule("linear", 500).training_losses(learned, x0, t500, noise=noise)
    rescaled = GaussianDiffusion.from_schedule("linear", 500, loss_type="rescaled_mse")
    torch.testing.assert_close(
        rescaled.training_losses(learned, x0, t500, noise=noise)["vb"], plain["vb"] * 0.5
    )
    with pytest.raises(ValueError, match="0..499"):
        rescaled.training_losses(learned, x0, t, noise=noise)
    kl = GaussianDiffusion.from_schedule("linear", 1000, loss_type="rescaled_kl").training_losses(
        learned, x0, t, noise=noise
    )
    torch.testing.assert_close(kl["loss"], base["vb"] * 1000)  # same VLB, mean not detached, scaled by T
    fixed = GaussianDiffusion.from_schedule("linear", 1000, var_type="fixed_small")
    terms = fixed.training_losses(lambda x, t: x * 0.1, x0, t, noise=noise)
    assert set(terms) == {"loss", "mse"}
    torch.testing.assert_close(terms["loss"], terms["mse"])


def test_loss_draws_t_then_noise_from_generator_or_global_rng():
    x0 = torch.randn(6, 2, 2, 2)

    def model(x, t):
        return torch.cat([x * 0.3, torch.zeros_like(x)], 1)

    a = DIFF.loss(model, x0, generator=torch.Generator().manual_seed(5))["loss"]
    b = DIFF.loss(model, x0, generator=torch.Generator().manual_seed(5))["loss"]
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (6,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    assert torch.equal(a, DIFF.training_losses(model, x0, t, noise=noise)["loss"])
    # Global RNG: the official train.py order (randint, then randn_like inside training_losses).
    torch.manual_seed(9)
    c = DIFF.loss(model, x0)["loss"]
    torch.manual_seed(9)
    t = torch.randint(0, 1000, (6,))
    assert torch.equal(c, DIFF.training_losses(model, x0, t)["loss"])


def test_wrong_channel_count_is_a_clear_error():
    x = torch.randn(2, 4, 3, 3)
    t = torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"needs 2·C = 8 channels"):
        DIFF.p_mean_variance_from_output(torch.randn(2, 4, 3, 3), x, t)
    fixed = GaussianDiffusion.from_schedule(var_type="fixed_large")
    with pytest.raises(ValueError, match="needs C = 4 channels.*learn_sigma=False"):
        fixed.p_mean_variance_from_output(torch.randn(2, 8, 3, 3), x, t)
    with pytest.raises(ValueError, match="does not match the input"):
        DIFF.p_mean_variance_from_output(torch.randn(2, 8, 3, 4), x, t)
    with pytest.raises(ValueError, match="unknown var_type 'learned'; valid: learned_range, fixed_small"):
        GaussianDiffusion.from_schedule(var_type="learned")
    with pytest.raises(ValueError, match="integer tensor of shape"):
        DIFF.q_sample(x, torch.tensor([0.5, 0.2]))
