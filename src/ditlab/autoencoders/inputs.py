"""What a DiT trains on when it trains on latents: a dataset whose batches are (scaled latents, labels).

``ditlab train --vae V`` swaps its image set for one of these; the trainer draws batches exactly as from an
image set (``batch(indices, generator)``), so its sampling of indices, flips and noise, and with it exact
resume, are unchanged:

    EncodedImages   encodes each batch on the fly (flips first, on the images; then a posterior draw)
    CachedLatents   reads a sharded cache of ``ditlab latents`` (the flipped copy where the flip draw says so;
                    then a posterior draw from the cached moments)

Both consume the step's generator in the same order (B flip draws, then the posterior noise), so a run from
the cache sees the same latents as a run that encodes, up to float rounding of the encoder.

``ditlab train --data L`` on a cache folder needs no images at all (:func:`folder_inputs`): what a latent set
keeps of its images (:class:`ImageRecord`: name, classes, size) comes from the cache's manifest, and the
autoencoder from the one the manifest names, so the run records it and ``ditlab sample RUN`` decodes.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ditlab.data.specs import parse_spec
from ditlab.data.transforms import size_pair

from .base import Autoencoder, sample_from_moments
from .checkpoint import autoencoder_spec, load_autoencoder
from .latent_cache import LatentCache, load_latent_shards, read_manifest

__all__ = ["CachedLatents", "EncodedImages", "ImageRecord", "folder_inputs", "latent_inputs"]


@dataclass(frozen=True)
class ImageRecord:
    """What a latent set keeps of the images its latents stand for: the trainer's data attributes."""

    name: str  # the image set's spec, e.g. "digits:train" (its test split is the FD reference)
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    channels: int
    flip: bool
    count: int

    @classmethod
    def of(cls, images) -> ImageRecord:
        """The record of an image set (`ImageDataset` or `ImageFolderStream`)."""
        size = tuple(images.image_size)
        return cls(images.name, tuple(images.class_names), size, images.channels, images.flip, len(images))

    @classmethod
    def of_manifest(cls, manifest: dict, folder) -> ImageRecord:
        """The record a cache's manifest holds (``ditlab latents`` writes it), flips off."""
        data = manifest.get("data") or {}
        missing = [k for k in ("name", "class_names", "image_size", "channels") if k not in data]
        if missing:
            raise ValueError(
                f"{folder}: the cache's manifest does not record the images' {', '.join(missing)}; rebuild it "
                "with `ditlab latents` (finished shards are kept)"
            )
        return cls(
            name=str(data["name"]),
            class_names=tuple(data["class_names"]),
            image_size=tuple(data["image_size"]),
            channels=int(data["channels"]),
            flip=False,
            count=int(manifest["count"]),
        )

    @property
    def images_spec(self) -> str:
        """The image set's spec without its split ("digits:train" -> "digits"): ``f"{spec}:test"`` is the
        held-out split, the default FD reference of a run on these latents."""
        return str(dataclasses.replace(parse_spec(self.name), split=None))


class _LatentSet:
    """The attributes a trainer reads from its data set, for latents through ``autoencoder`` of the images
    ``record`` describes."""

    def __init__(self, record: ImageRecord, autoencoder: Autoencoder) -> None:
        self.record = record
        self.autoencoder = autoencoder
        self.name = record.name
        self.class_names = list(record.class_names)
        self.pixel_size = tuple(record.image_size)
        self.pixel_channels = record.channels
        self.flip = record.flip
        c, h, w = autoencoder.latent_shape((record.channels, *record.image_size))
        self.channels, self.image_size = c, (h, w)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def autoencoder_record(self) -> dict:
        """What the model records to decode later (see ``autoencoder_spec``), with the images' own size:
        the data record's ``image_size`` / ``channels`` are the latents' (what the model sees)."""
        return {**autoencoder_spec(self.autoencoder), "image_size": list(self.pixel_size)}

    def __len__(self) -> int:
        return self.record.count


class EncodedImages(_LatentSet):
    """Latents encoded per batch, on the autoencoder's device (frozen, no gradients)."""

    def __init__(self, images, autoencoder: Autoencoder) -> None:
        super().__init__(ImageRecord.of(images), autoencoder)
        self.images_set = images

    @torch.no_grad()
    def batch(self, indices, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        x, y = self.images_set.batch(indices, generator=generator)  # (B, C, H, W), flips drawn from generator
        param = next(self.autoencoder.parameters(), None)
        x = x.to(param.device if param is not None else x.device)
        return self.autoencoder.encode(x, generator=generator), y  # (B, c, h, w)


class CachedLatents(_LatentSet):
    """Latents from a cache: the same draws as :class:`EncodedImages`, without running the encoder."""

    def __init__(self, record: ImageRecord, autoencoder: Autoencoder, cache: LatentCache) -> None:
        super().__init__(record, autoencoder)
        self.cache = cache

    def batch(self, indices, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64).cpu()
        flip = torch.rand(idx.shape[0], generator=generator) < 0.5 if self.flip else None  # as ImageDataset
        mean, std = self.cache.moments(idx, flip)
        draw = std if self.autoencoder.sample else None
        # an unconditional run (no class names) sees label 0 everywhere, as an unconditional image set gives
        labels = self.cache.labels[idx] if self.class_names else torch.zeros_like(idx)
        return sample_from_moments(mean, draw, generator), labels


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
                cache = load_latent_shards(folder, autoencoder)
                return CachedLatents(ImageRecord.of(images), autoencoder, cache), autoencoder
            warnings.warn(f"{why}; encoding on the fly", stacklevel=2)
    return EncodedImages(images, autoencoder), autoencoder


def folder_inputs(
    folder,
    device,
    *,
    vae: str | None = None,
    flip: bool = False,
    unconditional: bool = False,
    image_size: int | None = None,
    channels: int | None = None,
) -> tuple[CachedLatents, Autoencoder]:
    """The trainer's data for ``--data L``, a ``ditlab latents`` folder: its latents with no images, and the
    autoencoder its manifest names (``vae``, when given, must be that one: same file, scale and shift).

    ``image_size`` / ``channels`` (the run's flags) must be the cached images' or None; ``flip`` needs the
    cache's flipped copy. Raises ValueError / FileNotFoundError naming what is wrong and what to do.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)  # an unfinished build has none: the error says to rerun it
    record = ImageRecord.of_manifest(manifest, folder)
    (h, w), c = record.image_size, record.channels
    if image_size is not None and size_pair(image_size) != (h, w):
        raise ValueError(
            f"{folder} holds the latents of {h}x{w} images, not --image-size {image_size}: drop --image-size, "
            f"or encode the images at that size (`ditlab latents ... --image-size {image_size}`)"
        )
    if channels is not None and channels != c:
        raise ValueError(
            f"{folder} holds the latents of {c}-channel images, not --channels {channels}: drop --channels, "
            f"or encode the images with them (`ditlab latents ... --channels {channels}`)"
        )
    if flip and not manifest["flip"]:
        raise ValueError(
            f"{folder} has no flipped copy of its latents, so --flip cannot mirror them: train without --flip, "
            "or rebuild the cache with `ditlab latents ... --flip`"
        )
    source = vae or manifest["source"]
    try:
        autoencoder = load_autoencoder(source, device=device)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{folder} was encoded by the autoencoder {manifest['source']}, which no longer exists there: put "
            "it back, or encode the images again (`ditlab latents --vae V ...`)"
        ) from err
    if autoencoder.sample and not manifest.get("sample", True):
        raise ValueError(
            f"{folder} holds posterior means only, but {source} samples its posterior: rebuild the cache with "
            "`ditlab latents --vae ...` from this autoencoder"
        )
    cache = load_latent_shards(folder, autoencoder)  # refuses latents another autoencoder made
    classes = () if unconditional else record.class_names
    record = dataclasses.replace(record, flip=flip, class_names=classes)
    return CachedLatents(record, autoencoder, cache), autoencoder
