"""Templated captions for labelled image sets, so class-labelled data can train text-conditioned models.

Fashion-MNIST's class names become "a photo of a sandal", "a photo of trousers", ... (one fixed caption per
class, written out rather than generated so articles and plurals read naturally).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FASHION_MNIST_CAPTIONS = (
    "a photo of a t-shirt",
    "a photo of trousers",
    "a photo of a pullover",
    "a photo of a dress",
    "a photo of a coat",
    "a photo of a sandal",
    "a photo of a shirt",
    "a photo of a sneaker",
    "a photo of a bag",
    "a photo of an ankle boot",
)


def class_captions(labels, captions: Sequence[str]) -> list[str]:
    """One caption per label: `captions[label]` (labels are class ids into `captions`)."""
    ids = np.asarray(labels, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= len(captions)):
        raise ValueError(f"labels must be class ids in 0..{len(captions) - 1}, got {ids.min()}..{ids.max()}")
    return [captions[i] for i in ids.tolist()]
