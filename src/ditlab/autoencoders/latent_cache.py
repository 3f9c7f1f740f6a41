"""Encode a dataset once and keep its latents in a safetensors file, keyed by the autoencoder that made them.

The official DiT trainer re-encodes every batch at every step; caching removes the VAE from the training
loop. To keep DiT's recipe (a fresh posterior sample each step) the cache stores the scaled posterior mean
and std rather than one frozen draw, and :meth:`LatentCache.latents` samples anew on each call.
Augmentations applied to images (e.g. flips) must therefore happen before caching, or be skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from ditlab.atomic import atomic_write

from .base import Autoencoder, sample_from_moments

__all__ = ["LatentCache", "cache_latents", "load_latent_cache"]

_FORMAT = "ditlab-latents-1"


@dataclass
class LatentCache:
    """Cached scaled posterior moments (N, c, h, w), optional labels (N,), and where they came from."""

    mean: Tensor
    std: Tensor | None  # None: a deterministic encoder, or one cached with sampling off
    labels: Tensor | None
    source: str
    scale: float
    shift: float

    def __len__(self) -> int:
        return self.mean.shape[0]

    def latents(
        self, index: Tensor | slice | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Latents for ``index`` (all when None): a fresh posterior draw when a std is cached."""
        idx = slice(None) if index is None else index
        std = None if self.std is None else self.std[idx]
        return sample_from_moments(self.mean[idx], std, generator)


@torch.no_grad()
def cache_latents(
    autoencoder: Autoencoder,
    images: Tensor,
    path: str | Path,
    *,
    labels: Tensor | None = None,
    batch_size: int = 64,
) -> LatentCache:
    """Encode ``images`` (N, C, H, W) in [-1, 1] in batches and save the moments to ``path`` (safetensors).

    Batches run on the autoencoder's device; the file holds float32 CPU tensors. The std is kept only when
    the autoencoder samples (``autoencoder.sample``). Returns the cache as :func:`load_latent_cache` would.
    """
    if not isinstance(images, Tensor) or images.ndim != 4:
        raise ValueError("cache_latents: images must be a (N, C, H, W) tensor")
    if labels is not None and (not isinstance(labels, Tensor) or labels.shape != (images.shape[0],)):
        raise ValueError(f"cache_latents: labels must be a tensor of shape ({images.shape[0]},)")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"cache_latents: batch_size must be a positive int, got {batch_size!r}")
    param = next(autoencoder.parameters(), None)
    device = param.device if param is not None else images.device
    means, stds = [], []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(device)  # (B, C, H, W)
        mean, std = autoencoder.encode_moments(batch)  # (B, c, h, w) each
        means.append(mean.float().cpu())
        if autoencoder.sample and std is not None:
            stds.append(std.float().cpu())
    tensors = {"mean": torch.cat(means).contiguous()}  # safetensors refuses strided views
    if stds:
        tensors["std"] = torch.cat(stds).contiguous()
    if labels is not None:
        tensors["labels"] = labels.detach().cpu().contiguous()
    metadata = {
        "format": _FORMAT,
        "source": autoencoder.source,
        "scale": repr(autoencoder.scale),
        "shift": repr(autoencoder.shift),
        "image_shape": json.dumps(list(images.shape[1:])),
    }
    # atomic: a crash never leaves a half-written cache under the final name
    atomic_write(path, lambda f: save_file(tensors, f.name, metadata=metadata))
    return _to_cache(tensors, metadata)


def load_latent_cache(path: str | Path, autoencoder: Autoencoder | None = None) -> LatentCache:
    """Load a cache written by :func:`cache_latents`.

    With ``autoencoder``, check that it is the one that built the cache (same ``source`` and scale) and
    raise ValueError otherwise, so latents from another VAE are never mixed in.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"latent cache {path} does not exist; build it with cache_latents()")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a ditlab latent cache (format {metadata.get('format')!r})")
    cache = _to_cache(load_file(str(path)), metadata)
    if autoencoder is not None:
        mine = (autoencoder.source, float(autoencoder.scale), float(autoencoder.shift))
        theirs = (cache.source, cache.scale, cache.shift)
        if mine != theirs:
            raise ValueError(
                f"latent cache {path} was built with (source, scale, shift) = {theirs}, but this autoencoder "
                f"is {mine}; delete the file or rebuild it with cache_latents()"
            )
    return cache


def _to_cache(tensors: dict[str, Tensor], metadata: dict[str, str]) -> LatentCache:
    return LatentCache(
        mean=tensors["mean"],
        std=tensors.get("std"),
        labels=tensors.get("labels"),
        source=metadata["source"],
        scale=float(metadata["scale"]),
        shift=float(metadata["shift"]),
    )
