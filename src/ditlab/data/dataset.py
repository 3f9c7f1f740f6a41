"""`ImageDataset`: a whole image set held in memory as one uint8 tensor, served as floats in [-1, 1].

The sets ditlab trains on are small (digits 1.8k x 8x8, Fashion-MNIST 70k x 28x28 = 55 MB), so keeping them as
one tensor lets a trainer index a batch directly (`dataset.batch(indices)`): data loading never stalls a step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


def uint8_to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 in [-1, 1] (u / 127.5 - 1; the inverse of `ditlab.data.to_uint8`)."""
    return images.to(torch.float32) / 127.5 - 1.0


def flip_draws(n: int, generator: torch.Generator | None) -> torch.Tensor:
    """Which of n images a random horizontal flip mirrors: bool (n,), each with probability 1/2."""
    return torch.rand(n, generator=generator) < 0.5


def to_model_batch(images: torch.Tensor, flips: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 in [-1, 1], mirrored where `flips` (bool (B,)) is True."""
    x = uint8_to_unit(images)
    if flips is None:
        return x
    return torch.where(flips[:, None, None, None], x.flip(-1), x)


class ImageDataset(Dataset):
    """Images (N, C, H, W) uint8 and integer labels (N,) in memory.

    Attributes:
        images: uint8 tensor (N, C, H, W).
        labels: int64 tensor (N,); all 0 for an unconditional set.
        class_names: one name per class; empty for an unconditional set.
        num_classes: `len(class_names)` (0 = unconditional).
        channels, image_size: C and (H, W).
        flip: random horizontal flips with probability 1/2 in `__getitem__` and `batch`.
        name: the spec it was loaded from, for messages and logs.
        captions: one text per image (the emoji set's Unicode names); empty when the set has none.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        class_names: Sequence[str] = (),
        *,
        flip: bool = False,
        name: str = "",
        captions: Sequence[str] = (),
    ) -> None:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError("images must be a uint8 tensor (N, C, H, W)")
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images.contiguous()
        self.labels = labels
        self.class_names = list(class_names)
        if self.class_names and len(labels) and int(labels.max()) >= len(self.class_names):
            raise ValueError(f"label {int(labels.max())} out of range for {len(self.class_names)} classes")
        self.flip = bool(flip)
        self.name = name
        self.captions = list(captions)
        if self.captions and len(self.captions) != len(labels):
            raise ValueError(f"{len(self.captions)} captions for {len(labels)} images; give one per image")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """(image float (C, H, W) in [-1, 1], label). Flips draw from torch's global generator."""
        x = uint8_to_unit(self.images[index])  # (C, H, W)
        if self.flip and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        return x, int(self.labels[index])

    def batch(
        self, indices: torch.Tensor | Sequence[int], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch straight from memory: (images float (B, C, H, W) in [-1, 1], labels int64 (B,)).

        Flips (when `flip` is on) draw from `generator`: a seeded generator gives the same batches every run.
        """
        idx = torch.as_tensor(indices, dtype=torch.int64).cpu()  # the set lives in CPU memory
        flips = flip_draws(idx.shape[0], generator) if self.flip else None
        return to_model_batch(self.images[idx], flips), self.labels[idx]  # (B, C, H, W), (B,)

    def numpy_images(self) -> np.ndarray:
        """The stored images as uint8 numpy (N, H, W, C), the layout of samples and evaluators (no flips)."""
        return self.images.permute(0, 2, 3, 1).numpy()

    def __repr__(self) -> str:
        h, w = self.image_size
        kind = f"{self.num_classes} classes" if self.num_classes else "unconditional"
        shape = f"{self.channels}x{h}x{w}"
        return f"ImageDataset({self.name!r}, {len(self)} images {shape}, {kind}, flip={self.flip})"
