"""Flow matching: the rectified-flow path, velocity loss, timestep samplers, model time units, bad input."""

import math

import numpy as np
import pytest
import torch

from ditlab.diffusion import FlowMatching, mean_flat


def test_path_and_velocity_loss():
    flow = FlowMatching()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 2, 2, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    xt = flow.q_sample(x0, t, noise)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[3], noise[3])
    torch.testing.assert_close(xt[1], 0.75 * x0[1] + 0.25 * noise[1])
    seen = {}

    def model(x, t_model, scale):
        seen["t"] = t_model
        return (noise - x0) * scale  # the exact velocity, scaled

    terms = flow.training_losses(model, x0, t, {"scale": 1.0}, noise=noise)
    assert set(terms) == {"loss", "mse"} and terms["loss"].abs().max().item() == 0
    torch.testing.assert_close(seen["t"], t * 1000)  # the model sees t·1000, DiT's timestep range
    terms = flow.training_losses(model, x0, t, {"scale": 0.5}, noise=noise)
    torch.testing.assert_close(terms["loss"], mean_flat((0.5 * (noise - x0)) ** 2))
    torch.testing.assert_close(flow.predict_xstart(xt, t, noise - x0), x0)


def test_timestep_samplers_uniform_and_logit_normal():
    g = torch.Generator().manual_seed(3)
    uniform = FlowMatching().sample_timesteps(20000, generator=g)
    assert 0 <= uniform.min() and uniform.max() < 1
    assert uniform.mean().item() == pytest.approx(0.5, abs=0.01)
    ln = FlowMatching("logit_normal").sample_timesteps(20000, generator=g)
    u = torch.logit(ln.double())
    assert u.mean().item() == pytest.approx(0.0, abs=0.03) and u.std().item() == pytest.approx(1.0, abs=0.03)
    shifted = FlowMatching("logit_normal", logit_mean=1.0, logit_std=0.5).sample_timesteps(20000, generator=g)
    assert torch.logit(shifted.double()).mean().item() == pytest.approx(1.0, abs=0.03)
    # Density check: logit-normal(0, 1) puts 38.3 % of the mass in t ∈ [sigmoid(-0.5), sigmoid(0.5)].
    lo, hi = 1 / (1 + math.exp(0.5)), 1 / (1 + math.exp(-0.5))
    assert ((ln > lo) & (ln < hi)).float().mean().item() == pytest.approx(0.383, abs=0.01)


def test_loss_is_reproducible_from_a_generator():
    flow = FlowMatching("logit_normal")
    x0 = torch.randn(8, 2, 3, 3)

    def model(x, t):
        return x * 0.5

    a = flow.loss(model, x0, generator=torch.Generator().manual_seed(1))["loss"]
    b = flow.loss(model, x0, generator=torch.Generator().manual_seed(1))["loss"]
    assert torch.equal(a, b) and a.shape == (8,)
    g = torch.Generator().manual_seed(1)
    t = torch.sigmoid(torch.randn(8, generator=g))
    noise = torch.randn(x0.shape, generator=g)
    torch.testing.assert_close(a, flow.training_losses(model, x0, t, noise=noise)["loss"])


def test_sampling_times_and_shift():
    np.testing.assert_allclose(FlowMatching.sampling_times(4), [1, 0.75, 0.5, 0.25, 0])
    shifted = FlowMatching.sampling_times(4, shift=3.0)
    assert shifted[0] == 1 and shifted[-1] == 0 and shifted[2] == pytest.approx(0.75)  # 3·0.5/(1+2·0.5)


def test_bad_flow_input():
    with pytest.raises(ValueError, match="valid: uniform, logit_normal"):
        FlowMatching("cosmap")
    with pytest.raises(ValueError, match="logit_std"):
        FlowMatching("logit_normal", logit_std=0)
    flow = FlowMatching()
    x0 = torch.randn(2, 4, 2, 2)
    with pytest.raises(ValueError, match="learn_sigma=False"):
        flow.loss(lambda x, t: torch.cat([x, x], 1), x0)
    with pytest.raises(ValueError, match="floating tensor of shape"):
        flow.training_losses(lambda x, t: x, x0, torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="positive integer"):
        FlowMatching.sampling_times(0)
