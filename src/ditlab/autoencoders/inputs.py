"""What a DiT trains on when it trains on latents: a dataset whose batches are (scaled latents, labels).

``ditlab train --vae V`` swaps its image set for one of these; the trainer draws batches exactly as from an
image set (``batch(indices, generator)``), so its sampling of indices, flips and noise, and with it exact
resume, are unchanged:

    EncodedImages   encodes each batch on the fly (flips first, on the images; then a posterior draw)
    CachedLatents   reads a sharded cache of ``ditlab latents`` (the flipped copy where the flip draw says so;
                    then a posterior draw from the cached moments)

Both consume the step's generator in the same order (B flip draws, then the posterior noise), so a run from
the cache sees the same latents as a run that encodes, up to float rounding of the encoder.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor

from .base import Autoencoder, sample_from_moments
from .checkpoint import autoencoder_spec, load_autoencoder
from .latent_cache import LatentCache, load_latent_shards, read_manifest

__all__ = ["CachedLatents", "EncodedImages", "latent_inputs"]


class _LatentSet:
    """The attributes a trainer reads from its data set, for latents of ``images`` through ``autoencoder``."""

    def __init__(self, images, autoencoder: Autoencoder) -> None:
        self.images_set = images
        self.autoencoder = autoencoder
        self.name = images.name
        self.class_names = list(images.class_names)
        self.pixel_size = tuple(images.image_size)
        self.pixel_channels = images.channels
        self.flip = images.flip
        c, h, w = autoencoder.latent_shape((images.channels, *images.image_size))
        self.channels, self.image_size = c, (h, w)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def autoencoder_record(self) -> dict:
        """What the model records to decode later (see ``autoencoder_spec``), with the images' own size:
        the data record's ``image_size`` / ``channels`` are the latents' (what the model sees)."""
        return {**autoencoder_spec(self.autoencoder), "image_size": list(self.pixel_size)}

    def __len__(self) -> int:
        return len(self.images_set)


class EncodedImages(_LatentSet):
    """Latents encoded per batch, on the autoencoder's device (frozen, no gradients)."""

    @torch.no_grad()
    def batch(self, indices, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        x, y = self.images_set.batch(indices, generator=generator)  # (B, C, H, W), flips drawn from generator
        param = next(self.autoencoder.parameters(), None)
        x = x.to(param.device if param is not None else x.device)
        return self.autoencoder.encode(x, generator=generator), y  # (B, c, h, w)


class CachedLatents(_LatentSet):
    """Latents from a cache: the same draws as :class:`EncodedImages`, without running the encoder."""

    def __init__(self, images, autoencoder: Autoencoder, cache: LatentCache) -> None:
        super().__init__(images, autoencoder)
        self.cache = cache

    def batch(self, indices, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64).cpu()
        flip = torch.rand(idx.shape[0], generator=generator) < 0.5 if self.flip else None  # as ImageDataset
        mean, std = self.cache.moments(idx, flip)
        draw = std if self.autoencoder.sample else None
        return sample_from_moments(mean, draw, generator), self.cache.labels[idx]


def _cache_mismatch(folder: Path, manifest: dict, images, autoencoder: Autoencoder) -> str | None:
    """Why the cache in ``folder`` cannot stand in for encoding ``images`` (None: it can)."""
    checks = {
        "autoencoder": (manifest["source"], autoencoder.source),
        "scale": (manifest["scale"], float(autoencoder.scale)),
        "shift": (manifest["shift"], float(autoencoder.shift)),
        "images": (manifest["count"], len(images)),
        "data": (manifest.get("data", {}).get("name"), images.name),
        "image size": (manifest.get("data", {}).get("image_size"), list(images.image_size)),
    }
    wrong = [f"{k} {theirs!r} (this run: {ours!r})" for k, (theirs, ours) in checks.items() if theirs != ours]
    if images.flip and not manifest["flip"]:
        wrong.append("no flipped copy (this run flips: rebuild with --flip)")
    if autoencoder.sample and not manifest.get("sample", True):
        wrong.append("no posterior std (this run samples the posterior)")
    return f"{folder} does not match: " + "; ".join(wrong) if wrong else None


def latent_inputs(images, vae: str, device, latents: str | None = None) -> tuple[_LatentSet, Autoencoder]:
    """The trainer's data for ``--vae`` (and ``--latents``): cached latents when the cache matches the
    autoencoder and the images, else latents encoded on the fly (with a warning naming the mismatch)."""
    autoencoder = load_autoencoder(vae, device=device)
    if latents:
        folder = Path(latents)
        try:
            manifest = read_manifest(folder)
        except (FileNotFoundError, ValueError) as err:
            warnings.warn(f"{err}; encoding on the fly", stacklevel=2)
        else:
            why = _cache_mismatch(folder, manifest, images, autoencoder)
            if why is None:
                return CachedLatents(
                    images, autoencoder, load_latent_shards(folder, autoencoder)
                ), autoencoder
            warnings.warn(f"{why}; encoding on the fly", stacklevel=2)
    return EncodedImages(images, autoencoder), autoencoder
