"""Fréchet distance: closed forms, numerics, and parity with torchmetrics' FrechetInceptionDistance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ditlab.eval import feature_statistics, frechet_distance, frechet_distance_from_features


def test_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-12)


def test_identical_sets_give_zero_and_distance_is_symmetric():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 16))
    b = rng.normal(size=(300, 16)) * 1.3 + 0.2
    assert abs(frechet_distance_from_features(a, a)) < 1e-8
    assert frechet_distance_from_features(a, b) == pytest.approx(
        frechet_distance_from_features(b, a), rel=1e-9
    )
    assert frechet_distance_from_features(a, b) > 1.0


def test_singular_covariance_warns_with_the_count_needed_and_stays_finite():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20, 50)), rng.normal(size=(20, 50))
    with pytest.warns(UserWarning, match="use at least 51"):
        mu1, s1 = feature_statistics(a)
    with pytest.warns(UserWarning):
        mu2, s2 = feature_statistics(b)
    fd = frechet_distance(mu1, s1, mu2, s2)
    # finite, and still a distance: 0 for a set against itself, clearly more for two different draws
    assert np.isfinite(fd) and fd > 10.0  # two draws of 20 points in 50-d: of the order of the trace, 50
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6 * np.trace(s1))  # sqrtm rounding


def test_bad_statistics_are_rejected():
    with pytest.raises(ValueError, match="same feature extractor"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4)[:3, :3].repeat(2, 0))
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="NaN"):
        feature_statistics(np.full((4, 3), np.nan))


class _TinyFeatures(nn.Module):
    """A fixed random conv net on uint8 images: the same custom feature module for both implementations."""

    num_features = 24

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 24, 3, stride=2), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float() / 255)  # (N, 3, H, W) uint8 -> (N, 24)


def test_parity_with_torchmetrics_fid():
    from torchmetrics.image.fid import FrechetInceptionDistance

    gen = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (200, 3, 16, 16), generator=gen, dtype=torch.uint8)
    fake = (real.float() * 0.7 + 40 + 20 * torch.rand(real.shape, generator=gen)).to(torch.uint8)
    module = _TinyFeatures().eval()
    metric = FrechetInceptionDistance(feature=module)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    theirs = float(metric.compute())
    with torch.no_grad():
        ours = frechet_distance_from_features(module(real).double().numpy(), module(fake).double().numpy())
    assert theirs > 0.01
    assert ours == pytest.approx(theirs, rel=1e-6)  # measured 5e-9 (theirs is cast to float32)
