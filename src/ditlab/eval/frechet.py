"""Fréchet distance between Gaussians fitted to feature sets (FID when the features are Inception-v3's).

    d² = ||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^{1/2})

Computed in float64 with `scipy.linalg.sqrtm`; when the product is near-singular (too few samples, dead
features) the square root is retried with `eps * I` added to both covariances, the fix pytorch-fid and
clean-fid use, and a tiny imaginary part from rounding is dropped.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg


def warn_if_singular(n: int, dim: int, what: str = "samples") -> None:
    """Warn when n feature vectors cannot give a full-rank (D, D) covariance, naming the count needed."""
    if 0 < n <= dim:
        warnings.warn(
            f"{n} {what} give a singular covariance of {dim}-d features, so the Fréchet distance is biased "
            f"upwards; use at least {dim + 1} (several times more for a stable value)",
            stacklevel=3,
        )


def feature_statistics(features, what: str = "samples") -> tuple[np.ndarray, np.ndarray]:
    """Features (N, D) -> (mean (D,), covariance (D, D)), float64, unbiased (N - 1) covariance.

    Warns (naming `what`) when N <= D, where the covariance is singular.
    """
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must have shape (N, D), got {f.shape}")
    n, dim = f.shape
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {n}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or inf; check the images and the feature extractor")
    warn_if_singular(n, dim, what)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64 throughout)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"means must be vectors of the same length, got {mu1.shape} and {mu2.shape}")
    dim = mu1.shape[0]
    if sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(
            f"covariances must be ({dim}, {dim}) to match the means, got {sigma1.shape} and {sigma2.shape}; "
            "were both statistics made by the same feature extractor?"
        )
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # Near-singular product: shift both covariances by eps * I (pytorch-fid / clean-fid's fix).
        offset = np.eye(dim) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        # Rounding leaves a small imaginary part; a large one means the statistics are broken.
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            imag = np.abs(covmean.imag).max()
            raise ValueError(f"matrix square root has a large imaginary part ({imag:.3g}); bad statistics")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def _sqrtm(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on singular input; the caller retries with an offset
        return linalg.sqrtm(a)


def frechet_distance_from_features(features1, features2) -> float:
    """Fréchet distance between two feature sets (N1, D) and (N2, D)."""
    mu1, sigma1 = feature_statistics(features1)
    mu2, sigma2 = feature_statistics(features2)
    return frechet_distance(mu1, sigma1, mu2, sigma2)
