"""Reference statistics (the real side of every FD) and the data's own floor, computed once and cached.

A reference is a dataset spec (`digits:test`, `fashion-mnist:test`, an ImageFolder; the split defaults to
`test`, the held-out images no model trained on) or an `.npz`:
- with `arr_0` uint8 images (N, H, W, C): statistics are computed from the images;
- with `mu` and `sigma` (an ADM reference batch, or a ditlab cache file): used as they are, for the extractor
  that made them (ADM batches, which do not say, are Inception-v3 pool features: `inception:PATH`); their
  `arr_0` images, if present, serve precision/recall (ADM keeps 10k images for exactly that).

Dataset references are loaded at the samples' size through the data pipeline's resize, exactly as a model
trained on them saw them. Cache files (`<cache>/reference/*.npz`) hold `mu`, `sigma`, `n`, up to 10k feature
vectors for precision/recall and the extractor name, keyed by data + split + extractor + resize settings.

The floor is the FD between the other real split (train for a test reference) and the reference, with as many
images as the samples being scored: FD is biased by sample count, and no model can beat real held-out data.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ditlab.atomic import atomic_write
from ditlab.data import DatasetSpec, check_images, dataset_shape, load_dataset, parse_spec
from ditlab.eval.cache import cache_key, cache_path, dataset_fingerprint, file_fingerprint
from ditlab.eval.distributed import from_rank_zero, is_distributed, summarize
from ditlab.eval.features import FeatureExtractor, InceptionFeatures
from ditlab.eval.frechet import frechet_distance

REFERENCE_VERSION = 1
MAX_PR_FEATURES = 10_000  # as ADM's reference batches: 10k vectors for precision/recall
SUBSET_SEED = 0


@dataclass
class Reference:
    """Statistics of the real images for one extractor."""

    source: str
    extractor: str
    n: int
    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None  # float32 (<= 10k, D) for precision/recall; None when only mu/sigma exist
    stats_from_file: bool = False


@dataclass(frozen=True)
class ReferenceSpec:
    """A parsed reference: a dataset with a resolved split, or an `.npz` file."""

    dataset: DatasetSpec | None = None
    npz: Path | None = None

    def __str__(self) -> str:
        return str(self.dataset) if self.dataset is not None else str(self.npz)


def parse_reference(ref: str | os.PathLike | ReferenceSpec) -> ReferenceSpec:
    """Parse `--ref`: an `.npz` path, or a dataset spec whose split defaults to `test`."""
    if isinstance(ref, ReferenceSpec):
        return ref
    if str(ref).endswith(".npz"):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"reference file not found: {path}; pass an existing .npz or a dataset spec"
            )
        return ReferenceSpec(npz=path)
    spec = parse_spec(ref)
    if spec.split is None:
        # Held-out images by default; a folder without a test/ sub-folder is all "train".
        has_test = spec.kind != "folder" or (Path(spec.path) / "test").is_dir()
        spec = dataclasses.replace(spec, split="test" if has_test else "train")
    return ReferenceSpec(dataset=spec)


def reference_shape(ref: str | os.PathLike | ReferenceSpec) -> tuple[int, int, int] | None:
    """(H, W, C) of the reference's images as stored, without loading them; None when unknown (a
    statistics-only `.npz`, a folder of mixed sizes)."""
    spec = parse_reference(ref)
    if spec.dataset is not None:
        return dataset_shape(spec.dataset)
    try:  # the .npy header of arr_0: the shape without reading (possibly gigabytes of) pixels
        with zipfile.ZipFile(spec.npz) as archive, archive.open("arr_0.npy") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            )
            shape = read_header(f)[0]
    except (KeyError, OSError, ValueError, zipfile.BadZipFile):
        return None
    if len(shape) == 3:
        return shape[1], shape[2], 1
    return tuple(shape[1:4]) if len(shape) == 4 else None


def _subset(n_total: int, n: int) -> torch.Tensor:
    """A fixed random subset of n indices out of n_total (sorted), the same in every run."""
    if n >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(SUBSET_SEED))[:n].sort().values


def _stats_of(
    images: np.ndarray, extractor: FeatureExtractor, dist=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keep = _subset(len(images), MAX_PR_FEATURES).numpy()
    summary = summarize(extractor, images, keep=keep, what="reference images", dist=dist)
    return summary.mu, summary.sigma, summary.kept.astype(np.float32)


def _save(path: Path, ref: Reference) -> None:
    arrays = {"mu": ref.mu, "sigma": ref.sigma, "n": np.int64(ref.n), "extractor": np.str_(ref.extractor)}
    arrays["source"] = np.str_(ref.source)
    if ref.features is not None:
        arrays["features"] = ref.features
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _load(path: Path) -> Reference:
    with np.load(path, allow_pickle=False) as d:
        return Reference(
            source=str(d["source"]),
            extractor=str(d["extractor"]),
            n=int(d["n"]),
            mu=d["mu"],
            sigma=d["sigma"],
            features=d["features"] if "features" in d.files else None,
        )


_MEMORY: dict[str, object] = {}  # in-process cache: repeated evaluate() calls during training stay cheap


def _cached(path: Path, compute, dist=None):
    """The value cached at `path`, else `compute()` (written to `path`). Under torchrun rank 0 decides and
    reads (its cache may be the only one: nodes need not share a disk), the ranks compute together, and
    rank 0 writes."""
    key = str(path)
    if key in _MEMORY:
        return _MEMORY[key]
    value = from_rank_zero(lambda: _read(path) if path.is_file() else None, dist)
    if value is None:
        value = compute()
        if not is_distributed(dist) or dist.rank == 0:
            _write(path, value)
    _MEMORY[key] = value
    return value


def _read(path: Path):
    return _load(path) if path.suffix == ".npz" else json.loads(path.read_text())


def _write(path: Path, value) -> None:
    if isinstance(value, Reference):
        _save(path, value)
    else:
        atomic_write(path, lambda f: f.write(json.dumps(value).encode()))


def _size_key(image_size) -> list | None:
    return None if image_size is None else list(image_size)


def reference_stats(
    ref: str | os.PathLike | ReferenceSpec,
    extractor: FeatureExtractor,
    *,
    image_size: tuple[int, int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    dist=None,
) -> Reference:
    """Statistics of the reference for `extractor`, from the in-process cache, the disk cache, or computed.

    `image_size` is the samples' (H, W): dataset references are loaded at that size (None = native).
    `dist` (under torchrun, every rank calls this): each rank extracts its share of the reference images
    and every rank returns the same statistics (`ditlab.eval.distributed`).
    """
    spec = parse_reference(ref)
    if spec.npz is not None:
        return _npz_reference(spec.npz, extractor, cache_dir, dist)
    data = spec.dataset
    path = _dataset_cache_path("reference", ".npz", data, extractor, image_size, cache_dir)

    def compute() -> Reference:
        ds = load_dataset(data, image_size=image_size)
        mu, sigma, feats = _stats_of(ds.numpy_images(), extractor, dist)
        return Reference(str(data), extractor.name, len(ds), mu, sigma, feats)

    return _cached(path, compute, dist)


def _dataset_cache_path(
    kind: str, suffix: str, data, extractor: FeatureExtractor, image_size, cache_dir, *extra
) -> Path:
    """The disk-cache file of a statistic (`kind`) of dataset `data` under `extractor` at `image_size`: its
    key covers the data's fingerprint, so edited data is recomputed; `extra` (e.g. a sample count) joins both
    the key and the file name."""
    key = cache_key(
        kind,
        REFERENCE_VERSION,
        str(data),
        dataset_fingerprint(data),
        extractor.cache_id(),
        _size_key(image_size),
        *extra,
    )
    stem = "-".join([str(data), extractor.name, *map(str, extra)])
    return cache_path(kind, stem, key, suffix, cache_dir)


def _npz_reference(path: Path, extractor: FeatureExtractor, cache_dir, dist=None) -> Reference:
    with np.load(path, allow_pickle=False) as d:
        files = set(d.files)
        has_stats = {"mu", "sigma"} <= files
        made_by = str(d["extractor"]) if "extractor" in files else None
    # ADM reference batches carry no extractor name: their statistics are Inception-v3 pool features.
    stats_match = has_stats and (
        made_by == extractor.name if made_by is not None else isinstance(extractor, InceptionFeatures)
    )
    if has_stats and not stats_match and "arr_0" not in files:
        by = made_by or "Inception-v3 (an ADM reference batch)"
        raise ValueError(
            f"{path} holds mu/sigma made by {by}, which cannot be compared with {extractor.name} features; "
            "use the matching --features, or a reference with images (arr_0)"
        )
    if not has_stats and "arr_0" not in files:
        raise ValueError(
            f"{path} has neither 'arr_0' images nor 'mu'/'sigma' statistics; it cannot be a reference"
        )
    key = cache_key(
        "reference-npz", REFERENCE_VERSION, file_fingerprint(path), extractor.cache_id(), stats_match
    )
    cached = cache_path("reference", f"{path.stem}-{extractor.name}", key, ".npz", cache_dir)

    def compute() -> Reference:
        with np.load(path, allow_pickle=False) as d:
            images = check_images(d["arr_0"], what=f"arr_0 of {path}") if "arr_0" in d.files else None
            if stats_match:
                mu, sigma = np.asarray(d["mu"], np.float64), np.asarray(d["sigma"], np.float64)
                n = int(d["n"]) if "n" in d.files else -1  # ADM batches do not record their count
                if "features" in d.files:  # a ditlab cache file: its own precision/recall vectors
                    feats = np.asarray(d["features"], np.float32)
                else:
                    feats = None if images is None else _stats_of(images, extractor, dist)[2]
                if mu.shape != (extractor.dim,):
                    raise ValueError(
                        f"{path}: mu has shape {mu.shape}, but {extractor.name} gives {extractor.dim}-d"
                    )
                return Reference(str(path), extractor.name, n, mu, sigma, feats, stats_from_file=True)
        mu, sigma, feats = _stats_of(images, extractor, dist)
        return Reference(str(path), extractor.name, len(images), mu, sigma, feats)

    ref = _cached(cached, compute, dist)
    ref.stats_from_file = stats_match
    return ref


def floor_fd(
    ref: str | os.PathLike | ReferenceSpec,
    extractor: FeatureExtractor,
    n: int | None = None,
    *,
    image_size: tuple[int, int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    dist=None,
) -> dict:
    """FD between `n` images of the other real split and the reference: the best score any model can get.

    `n` defaults to the reference's size. Returns {"fd", "n", "split"} or {"unavailable": reason}. `dist`:
    as `reference_stats` (the floor's images are shared out too).
    """
    spec = parse_reference(ref)
    if spec.dataset is None or spec.dataset.split not in ("train", "test"):
        return {"unavailable": "the reference has no train/test counterpart"}
    other = dataclasses.replace(spec.dataset, split="test" if spec.dataset.split == "train" else "train")
    if other.kind == "folder" and not (Path(other.path) / other.split).is_dir():
        return {"unavailable": f"{other.path} has no {other.split}/ sub-folder"}
    reference = reference_stats(spec, extractor, image_size=image_size, cache_dir=cache_dir, dist=dist)
    n = int(n or reference.n)
    path = _dataset_cache_path("floor", ".json", other, extractor, image_size, cache_dir, n)

    def compute() -> dict:
        ds = load_dataset(other, image_size=image_size)
        idx = _subset(len(ds), n)
        images = ds.numpy_images()[idx.numpy()]
        real = summarize(extractor, images, what=f"{other.split} images (floor)", dist=dist)
        return {
            "fd": frechet_distance(real.mu, real.sigma, reference.mu, reference.sigma),
            "n": len(idx),
            "split": other.split,
        }

    return _cached(path, compute, dist)
