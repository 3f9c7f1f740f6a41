"""Evaluation under torchrun: every rank extracts the features of its share of the images, the statistics are
merged, and every rank ends with the same numbers as one process.

    torchrun --standalone --nproc_per_node 8 -m ditlab eval --samples samples/xl.npz --ref VIRTUAL_imagenet256_labeled.npz ...

A set of N images is cut into the extractor's batches, and rank r of W extracts one contiguous run of whole
batches (`share`): each image is then computed in the very batch a single process puts it in, so its
features are the same bits whatever W. What crosses processes is small and fixed by the feature width D, not
by N: each rank's count, mean and centred scatter matrix (D x D, float64), merged exactly as one pass over all
rows would be (Chan, Golub & LeVeque's pairwise update), plus the rows precision/recall keep (at most 10k)
and the classifier logits. The merged covariance differs from `numpy.cov` of all rows only by float64
rounding (benchmarks/distributed.md states the measured bound); precision, recall, Inception Score and class
accuracy are computed from the same feature bits as one process, so they are equal.

`dist` is anything with `rank`, `world_size` and `enabled` (`ditlab.distributed.DistInfo`); `None`
or a world of 1 is the single-process path, unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch.distributed as dist_

from ditlab.eval.features import FeatureExtractor
from ditlab.eval.frechet import feature_statistics, warn_if_singular

T = TypeVar("T")


def is_distributed(dist) -> bool:
    return dist is not None and dist.enabled


def share(n: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of rank's share of n images: a contiguous run of whole batches of `batch_size`
    (ranks past the last batch get an empty share)."""
    batches = -(-n // batch_size)
    per, extra = divmod(batches, world)
    first = rank * per + min(rank, extra)
    count = per + (rank < extra)
    return min(n, first * batch_size), min(n, (first + count) * batch_size)


@dataclass
class Moments:
    """Count, mean (D,) and centred scatter matrix sum((x - mean)(x - mean)^T) (D, D) of some rows, float64."""

    n: int
    mean: np.ndarray
    scatter: np.ndarray

    @classmethod
    def of(cls, features: np.ndarray, dim: int) -> Moments:
        f = np.asarray(features, np.float64).reshape(-1, dim)
        if len(f) == 0:
            return cls(0, np.zeros(dim), np.zeros((dim, dim)))
        mean = f.mean(axis=0)
        centred = f - mean
        return cls(len(f), mean, centred.T @ centred)


def merge_moments(parts: list[Moments]) -> Moments:
    """The moments of the union of disjoint row sets: the mean weighted by counts, the scatter plus each
    part's between-part term n_i (mean_i - mean)(mean_i - mean)^T, so no large raw sums are cancelled."""
    n = sum(p.n for p in parts)
    if n == 0:
        return parts[0]
    mean = sum(p.n * p.mean for p in parts) / n
    scatter = sum(p.scatter for p in parts)
    for p in parts:
        d = p.mean - mean
        scatter = scatter + p.n * np.outer(d, d)
    return Moments(n, mean, scatter)


def statistics_of(moments: Moments, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, unbiased covariance) with `feature_statistics`' checks and warning."""
    if moments.n < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {moments.n}")
    if not (np.isfinite(moments.mean).all() and np.isfinite(moments.scatter).all()):
        raise ValueError("features contain NaN or inf; check the images and the feature extractor")
    warn_if_singular(moments.n, moments.mean.shape[0], what)
    return moments.mean, moments.scatter / (moments.n - 1)


@dataclass
class FeatureSummary:
    """What evaluation needs of one image set's features: n, mean and covariance, the rows `keep` asked for
    (precision/recall) and the logits (classifiers), all in image order."""

    n: int
    mu: np.ndarray
    sigma: np.ndarray
    kept: np.ndarray | None
    logits: np.ndarray | None


def summarize(
    extractor: FeatureExtractor,
    images: np.ndarray,
    *,
    keep: np.ndarray | None = None,
    want_logits: bool = False,
    what: str = "samples",
    dist=None,
) -> FeatureSummary:
    """Features of uint8 `images` (N, H, W, C), summarised; under `dist` each rank extracts its `share` and
    every rank returns the same merged summary. `keep`: sorted row indices whose features to return."""
    want_logits = want_logits and extractor.has_logits
    if not is_distributed(dist):
        feats, logits = extractor.run(images, want_logits=want_logits)
        mu, sigma = feature_statistics(feats, what=what)
        return FeatureSummary(len(feats), mu, sigma, None if keep is None else feats[keep], logits)
    start, stop = share(len(images), extractor.batch_size, dist.rank, dist.world_size)
    feats, logits = (None, None)
    if stop > start:
        feats, logits = extractor.run(images[start:stop], want_logits=want_logits)
    local = {"moments": Moments.of(feats if feats is not None else [], extractor.dim), "logits": logits}
    if keep is not None:
        mine = keep[(keep >= start) & (keep < stop)]
        local["kept"] = feats[mine - start] if len(mine) else np.zeros((0, extractor.dim))
    parts = all_gather(local, dist)  # in rank order = image order
    mu, sigma = statistics_of(merge_moments([p["moments"] for p in parts]), what)
    kept = None if keep is None else np.concatenate([p["kept"] for p in parts])
    logit_parts = [p["logits"] for p in parts if p["logits"] is not None]
    return FeatureSummary(len(images), mu, sigma, kept, np.concatenate(logit_parts) if logit_parts else None)


def all_gather(value, dist) -> list:
    """`value` of every rank, in rank order, on every rank (pickled; what is gathered here is small)."""
    out = [None] * dist.world_size
    dist_.all_gather_object(out, value)
    return out


def from_rank_zero(value: Callable[[], T], dist) -> T:
    """Rank 0 evaluates `value()` and every rank returns it (one reader of a cache that may exist on rank
    0's disk only)."""
    if not is_distributed(dist):
        return value()
    box = [value() if dist.rank == 0 else None]
    dist_.broadcast_object_list(box, src=0)
    return box[0]


def rank_zero_first(build: Callable[[], T], dist) -> T:
    """`build()` on rank 0, then on the others: what rank 0 trains or extracts into the cache (the in-domain
    classifier) the others then load instead of repeating. Warnings of the other ranks are dropped (rank 0
    reports them)."""
    if not is_distributed(dist):
        return build()
    if dist.rank == 0:
        value = build()
        dist_.barrier()
        return value
    dist_.barrier()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build()
