"""Precision/recall (k-NN manifolds), Inception Score and class accuracy: mathematical properties."""

from __future__ import annotations

import numpy as np
import pytest

from ditlab.eval import class_accuracy, inception_score, precision_recall


def _brute_force(real, fake, k):
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def covered(q, x, r):
        return np.mean((np.linalg.norm(q[:, None] - x[None], axis=-1) <= r[None]).any(axis=1))

    return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


def test_matches_a_brute_force_definition():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(120, 5)), rng.normal(size=(90, 5)) * 1.4 + 0.3
    ours = precision_recall(real, fake, k=3)
    assert ours == pytest.approx(_brute_force(real, fake, 3), abs=1e-12)
    assert 0 < ours[0] < 1 and 0 < ours[1] < 1


def test_identical_far_and_mode_dropping_sets():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(100, 4))
    assert precision_recall(a, a) == (1.0, 1.0)
    assert precision_recall(a, a + 100) == (0.0, 0.0)
    two_modes = np.concatenate([rng.normal(size=(100, 4)), rng.normal(size=(100, 4)) + 50])
    one_mode = rng.normal(size=(100, 4))
    precision, recall = precision_recall(two_modes, one_mode)
    assert precision > 0.9 and 0.4 < recall < 0.55  # faithful samples, half the data never generated


def test_precision_recall_input_checks():
    with pytest.raises(ValueError, match="feature dims differ"):
        precision_recall(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="need more than 3 points"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))


def test_inception_score_bounds():
    assert inception_score(np.zeros((50, 10)))[0] == pytest.approx(1.0)
    confident = np.full((100, 10), -50.0)
    confident[np.arange(100), np.arange(100) % 10] = 50.0
    mean, std = inception_score(confident, splits=10)
    assert mean == pytest.approx(10.0, rel=1e-6) and std < 1e-6
    collapsed = np.full((100, 10), -50.0)
    collapsed[:, 3] = 50.0
    assert inception_score(collapsed)[0] == pytest.approx(1.0, rel=1e-6)


def test_class_accuracy():
    logits = np.eye(4)[[0, 1, 2, 3, 0]]
    assert class_accuracy(logits, [0, 1, 2, 0, 0]) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="class indices in \\[0, 4\\)"):
        class_accuracy(logits, [0, 1, 2, 3, 9])
