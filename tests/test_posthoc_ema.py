"""Post-hoc EMA (EDM2): σ_rel ↔ γ, the exact discrete weights of a power EMA, and the reconstruction of an
EMA length never tracked from snapshots of two others, against that EMA tracked directly."""

import numpy as np
import pytest
import torch
from torch import nn

from ditlab.train.posthoc_ema import (
    PostHocEMA,
    gamma_to_sigma_rel,
    list_snapshots,
    power_beta,
    profile_weights,
    reconstruct,
    sigma_rel_to_gamma,
)


def test_sigma_rel_and_gamma_invert_each_other():
    for sigma in (0.01, 0.05, 0.1, 0.2, 0.28):
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(sigma)) == pytest.approx(sigma, rel=1e-9)
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)  # EDM2's two profiles
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    with pytest.raises(ValueError, match="sigma_rel"):
        sigma_rel_to_gamma(0.3)


def test_profile_weights_are_the_recursion_run_on_one_hot_weights():
    gamma, t = 3.5, 40
    simulated = np.zeros(t)
    for step in range(1, t + 1):  # avg <- β·avg + (1 − β)·θ_step, θ one-hot per step
        simulated *= power_beta(gamma, step)
        simulated[step - 1] += 1 - power_beta(gamma, step)
    weights = profile_weights(gamma, t, 1, t + 7)  # tau = 1 .. t + 6
    np.testing.assert_allclose(weights[:t], simulated, rtol=1e-12, atol=1e-15)
    assert weights[t:].tolist() == [0.0] * 6 and weights.sum() == pytest.approx(1.0)


def random_walk_run(tmp_path, steps=400, every=20, seed=0):
    """A parameter random walk with two tracked profiles (snapshots) and a directly tracked σ_rel 0.07."""
    model = nn.Linear(4, 3)
    frozen = nn.Parameter(torch.ones(2), requires_grad=False)
    model.register_parameter("frozen", frozen)
    tracked, direct = PostHocEMA(model, [0.05, 0.10]), PostHocEMA(model, [0.07])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in range(1, steps + 1):
            model.weight.add_(torch.randn(model.weight.shape, generator=g) * 0.1)
            model.bias.add_(torch.randn(model.bias.shape, generator=g) * 0.1 + 0.01)  # with a drift
            tracked.update(model, t)
            direct.update(model, t)
            if t % every == 0:
                tracked.save_snapshot(tmp_path, t)
    return model, direct


def test_reconstruction_equals_the_directly_tracked_ema_of_that_length(tmp_path):
    model, direct = random_walk_run(tmp_path)
    params, report = reconstruct(tmp_path, 0.07)
    assert report["step"] == 400 and report["snapshots"] == 40 and report["fit_error"] < 0.01
    assert "frozen" not in params  # frozen tensors are the model file's, not averaged
    for name, value in zip(direct.names, direct.profiles[0]):
        spread = (value - dict(model.named_parameters())[name]).norm()  # how far the EMA is from the weights
        assert (params[name] - value).norm() < 0.01 * spread, name
    # at an earlier step, from the snapshots up to it
    _, early = reconstruct(tmp_path, 0.07, step=200)
    assert early["step"] == 200 and early["snapshots"] == 20


def test_reconstruction_of_a_tracked_length_is_that_profile(tmp_path):
    random_walk_run(tmp_path, steps=100, every=25)
    params, report = reconstruct(tmp_path, 0.10)
    last = list_snapshots(tmp_path)[-1][0]
    from safetensors.torch import load_file

    snapshot = load_file(str(last))
    for name in ("weight", "bias"):
        torch.testing.assert_close(params[name], snapshot[f"p1.{name}"], atol=1e-5, rtol=1e-5)
    assert report["fit_error"] < 1e-6


def test_no_snapshots_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--posthoc-ema"):
        reconstruct(tmp_path, 0.1)
