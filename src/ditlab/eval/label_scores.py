"""Scores from a classifier's logits: Inception Score and the class accuracy of conditional samples."""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) over `splits` equal parts (the usual protocol) -> (mean, std).

    1 when every prediction is the same distribution; the number of classes when predictions are confident
    and the classes are used equally.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[0] < 1:
        raise ValueError(f"logits must have shape (N, K), got {logits.shape}")
    splits = max(1, min(int(splits), logits.shape[0]))
    log_p = log_softmax(logits, axis=1)  # (N, K) log p(y|x)
    scores = []
    for part in np.array_split(log_p, splits):
        log_marginal = np.log(np.exp(part).mean(axis=0))  # (K,) log p(y) within the split
        kl = (np.exp(part) * (part - log_marginal)).sum(axis=1)  # (n,)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def class_accuracy(logits, labels) -> float:
    """Share of samples whose predicted class is the class they were generated for."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"need logits (N, K) and labels (N,), got {logits.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(
            f"labels must be class indices in [0, {logits.shape[1]}) for this classifier, "
            f"got [{labels.min()}, {labels.max()}]; were the samples made for another dataset?"
        )
    return float((logits.argmax(axis=1) == labels).mean())
