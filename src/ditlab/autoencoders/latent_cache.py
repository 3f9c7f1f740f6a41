"""Encode a dataset once and keep its latents in safetensors, keyed by the autoencoder that made them.

The official DiT trainer re-encodes every batch at every step; caching removes the VAE from the training
loop. To keep DiT's recipe (a fresh posterior sample each step) the cache stores the scaled posterior mean
and std rather than one frozen draw, and :meth:`LatentCache.latents` samples anew on each call.

Two layouts: :func:`cache_latents` writes one file (a tensor of images in memory); :func:`build_latent_shards`
(``ditlab latents``) writes a folder of shards as fast-DiT does, for data sets of any size:

    L/shard-00000.safetensors ...   mean, std, labels (and flip_mean, flip_std: the moments of the mirrored
                                    images, so random flips survive caching), each shard written atomically
    L/latents.json                  the manifest: autoencoder (source, scale, shift), data, shard list and
                                    the per-channel mean/std of the latents; written last, when all is done

Building is resumable (a shard already on disk with matching metadata is skipped) and parallel (a DataLoader
with workers decodes the images; under torchrun each rank builds the shards i with i % world == rank).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from ditlab.atomic import atomic_write, atomic_write_text

from .base import Autoencoder, sample_from_moments

__all__ = [
    "LatentCache",
    "MANIFEST",
    "build_latent_shards",
    "cache_latents",
    "is_latent_folder",
    "load_latent_cache",
    "load_latent_shards",
    "read_manifest",
]

_FORMAT = "ditlab-latents-1"
_SHARD_FORMAT = "ditlab-latent-shard-1"
_MANIFEST_FORMAT = "ditlab-latent-shards-1"
MANIFEST = "latents.json"


@dataclass
class LatentCache:
    """Cached scaled posterior moments (N, c, h, w), optional labels (N,), and where they came from."""

    mean: Tensor
    std: Tensor | None  # None: a deterministic encoder, or one cached with sampling off
    labels: Tensor | None
    source: str
    scale: float
    shift: float
    flip_mean: Tensor | None = None  # moments of the horizontally flipped images (sharded caches with --flip)
    flip_std: Tensor | None = None

    def __len__(self) -> int:
        return self.mean.shape[0]

    def moments(self, index: Tensor, flip: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(mean, std) of the images ``index`` (B,), taken from the flipped copy where ``flip`` (B,) is True."""
        mean = self.mean[index]
        std = None if self.std is None else self.std[index]
        if flip is not None and bool(flip.any()):
            if self.flip_mean is None:
                raise ValueError("this latent cache has no flipped copy: rebuild it with --flip")
            pick = flip[:, None, None, None]
            mean = torch.where(pick, self.flip_mean[index], mean)
            if std is not None:
                std = torch.where(pick, self.flip_std[index], std)
        return mean, std

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
    _check_built_by(metadata, autoencoder, path, "delete the file or rebuild it with cache_latents()")
    return cache


def _to_cache(tensors: dict[str, Tensor], metadata: Mapping) -> LatentCache:
    """A LatentCache from its tensors and the metadata (file header or shard manifest) naming its autoencoder."""
    return LatentCache(
        mean=tensors["mean"],
        std=tensors.get("std"),
        labels=tensors.get("labels"),
        source=metadata["source"],
        scale=float(metadata["scale"]),
        shift=float(metadata["shift"]),
        flip_mean=tensors.get("flip_mean"),
        flip_std=tensors.get("flip_std"),
    )


def _check_built_by(metadata: Mapping, autoencoder: Autoencoder | None, where, fix: str) -> None:
    """Refuse latents that another autoencoder (or another scale/shift) made, as the cache's metadata (file
    header or shard manifest) names it; no-op without an autoencoder."""
    if autoencoder is None:
        return
    mine = (autoencoder.source, float(autoencoder.scale), float(autoencoder.shift))
    theirs = (metadata["source"], float(metadata["scale"]), float(metadata["shift"]))
    if mine != theirs:
        raise ValueError(
            f"latent cache {where} was built with (source, scale, shift) = {theirs}, but this autoencoder "
            f"is {mine}; {fix}"
        )


# ---------------------------------------------------------------------------------------- sharded caches
def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def _shard_metadata(autoencoder: Autoencoder, start: int, count: int, flip: bool) -> dict[str, str]:
    return {
        "format": _SHARD_FORMAT,
        "source": autoencoder.source,
        "scale": repr(float(autoencoder.scale)),
        "shift": repr(float(autoencoder.shift)),
        "start": str(start),
        "count": str(count),
        "flip": str(bool(flip)),
    }


def _shard_done(path: Path, expected: dict[str, str]) -> bool:
    """Whether ``path`` is a complete shard with exactly this metadata (else it is rebuilt)."""
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}) == expected
    except Exception:  # noqa: BLE001 - a truncated or foreign file: rebuild it
        return False


@torch.no_grad()
def _encode_shard(autoencoder, loader, device, flip: bool) -> dict[str, Tensor]:
    parts: dict[str, list[Tensor]] = {}
    for images, labels in loader:
        x = images.to(device)  # (B, C, H, W) in [-1, 1]
        views = {"": x, "flip_": x.flip(-1)} if flip else {"": x}
        for prefix, view in views.items():
            mean, std = autoencoder.encode_moments(view)  # (B, c, h, w) each
            parts.setdefault(prefix + "mean", []).append(mean.float().cpu())
            if autoencoder.sample and std is not None:
                parts.setdefault(prefix + "std", []).append(std.float().cpu())
        parts.setdefault("labels", []).append(torch.as_tensor(labels, dtype=torch.int64))
    return {k: torch.cat(v).contiguous() for k, v in parts.items()}


def build_latent_shards(
    autoencoder: Autoencoder,
    dataset,
    out: str | Path,
    *,
    flip: bool = False,
    shard_size: int = 4096,
    batch_size: int = 64,
    workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
    data_record: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path | None:
    """Encode ``dataset`` (any map-style dataset of (image (C, H, W) in [-1, 1], label)) into shards in ``out``.

    This rank builds shards ``rank, rank + world_size, ...``, skipping finished ones; after ``barrier()`` rank 0
    writes the manifest (with ``data_record``, e.g. the data set's name and class names) and returns its path.
    ``progress(done, total)`` is called after each of this rank's shards.
    """
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    if n == 0:
        raise ValueError("the data set is empty: nothing to encode")
    count = math.ceil(n / shard_size)
    param = next(autoencoder.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    mine = list(range(rank, count, world_size))
    for done, i in enumerate(mine, 1):
        start, stop = i * shard_size, min((i + 1) * shard_size, n)
        path = out / _shard_name(i)
        metadata = _shard_metadata(autoencoder, start, stop - start, flip)
        if not _shard_done(path, metadata):
            loader = DataLoader(
                Subset(dataset, range(start, stop)), batch_size=batch_size, num_workers=workers, shuffle=False
            )
            tensors = _encode_shard(autoencoder, loader, device, flip)
            atomic_write(path, lambda f, t=tensors, m=metadata: save_file(t, f.name, metadata=m))
        if progress is not None:
            progress(done, len(mine))
    barrier()
    if rank != 0:
        return None
    return _write_manifest(out, autoencoder, count, shard_size, n, flip, data_record or {})


def _write_manifest(
    out: Path, autoencoder, count: int, shard_size: int, n: int, flip: bool, data: dict
) -> Path:
    # per-channel moments of the latents z ~ N(mean, std^2): E[z] and Var[z] = Var(mean) + E[std^2]
    total, sq, var, seen = 0.0, 0.0, 0.0, 0
    shape = None
    for i in range(count):
        tensors = load_file(str(out / _shard_name(i)))
        mean = tensors["mean"].double()  # (b, c, h, w)
        shape = list(mean.shape[1:])
        total = total + mean.sum(dim=(0, 2, 3))
        sq = sq + mean.square().sum(dim=(0, 2, 3))
        if "std" in tensors:
            var = var + tensors["std"].double().square().sum(dim=(0, 2, 3))
        seen += mean.shape[0] * mean.shape[2] * mean.shape[3]
    channel_mean = total / seen
    channel_var = sq / seen - channel_mean.square() + (var / seen if torch.is_tensor(var) else 0.0)
    manifest = {
        "format": _MANIFEST_FORMAT,
        "source": autoencoder.source,
        "scale": float(autoencoder.scale),
        "shift": float(autoencoder.shift),
        "sample": bool(autoencoder.sample),
        "count": n,
        "shard_size": shard_size,
        "shards": [_shard_name(i) for i in range(count)],
        "flip": bool(flip),
        "latent_shape": shape,
        "channel_mean": channel_mean.tolist(),
        "channel_std": channel_var.clamp_min(0).sqrt().tolist(),
        "data": data,
    }
    return atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def is_latent_folder(path) -> bool:
    """Whether ``path`` is a folder of latent shards (finished or not), rather than images or a named set."""
    folder = Path(path)
    return folder.is_dir() and ((folder / MANIFEST).is_file() or any(folder.glob("shard-*.safetensors")))


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a sharded cache; FileNotFoundError when the folder has none (not built, or unfinished)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {MANIFEST}: not a latent cache, or its build did not finish (run `ditlab "
            "latents` again: finished shards are kept)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}): a damaged latent cache; delete {MANIFEST} and run `ditlab "
            "latents` again (finished shards are kept)"
        ) from err
    if not isinstance(manifest, dict) or manifest.get("format") != _MANIFEST_FORMAT:
        raise ValueError(
            f"{path} is not a ditlab latent-cache manifest (it has no format {_MANIFEST_FORMAT!r})"
        )
    return manifest


def load_latent_shards(folder: str | Path, autoencoder: Autoencoder | None = None) -> LatentCache:
    """All shards of a cache in memory as one :class:`LatentCache` (checked against ``autoencoder``)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    # checked before the shards are read (they can be large)
    _check_built_by(manifest, autoencoder, folder, "rebuild it with `ditlab latents --vae ...`")
    parts: dict[str, list[Tensor]] = {}
    missing = [name for name in manifest["shards"] if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder}: {len(missing)} of its shards are missing ({', '.join(missing[:3])}); run `ditlab "
            "latents` again to rebuild them"
        )
    for name in manifest["shards"]:
        for key, value in load_file(str(folder / name)).items():
            parts.setdefault(key, []).append(value)
    t = {k: torch.cat(v) for k, v in parts.items()}
    if t["mean"].shape[0] != manifest["count"]:
        raise ValueError(
            f"{folder}: the shards hold {t['mean'].shape[0]} latents, the manifest {manifest['count']}"
        )
    return _to_cache(t, manifest)
