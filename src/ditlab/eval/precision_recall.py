"""Improved precision and recall (Kynkäänniemi et al., 2019) with k-nearest-neighbour manifolds.

Each set's manifold is the union of balls around its points, each ball reaching the k-th nearest other point
of the same set (k = 3 by default, as in the paper and ADM's evaluator). Precision = the share of generated
samples inside the real manifold (fidelity); recall = the share of real samples inside the generated manifold
(coverage). Distances are Euclidean in float64, computed in row chunks so 10k x 10k sets fit in memory.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_tensor(x, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    if t.ndim != 2 or t.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty (N, D) feature array, got shape {tuple(t.shape)}")
    return t


def knn_radii(points: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point of the same set (N,)."""
    if points.shape[0] <= k:
        raise ValueError(f"k={k} nearest neighbours need more than {k} points, got {points.shape[0]}")
    radii = []
    for start in range(0, points.shape[0], chunk):
        d = torch.cdist(points[start : start + chunk], points)  # (B, N), includes the point itself at 0
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, -1])
    return torch.cat(radii)


def manifold_coverage(queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor, chunk: int = 1024):
    """Share of `queries` inside at least one ball (points[i], radii[i])."""
    inside = []
    for start in range(0, queries.shape[0], chunk):
        d = torch.cdist(queries[start : start + chunk], points)  # (B, N)
        inside.append((d <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(real_features, fake_features, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of generated features against real features, both (N, D)."""
    real = _as_tensor(real_features, "real features")
    fake = _as_tensor(fake_features, "generated features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: real {real.shape[1]}, generated {fake.shape[1]}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    precision = manifold_coverage(fake, real, knn_radii(real, k))
    recall = manifold_coverage(real, fake, knn_radii(fake, k))
    return precision, recall
