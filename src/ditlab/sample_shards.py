"""`torchrun ... -m ditlab sample`: the requested images split across processes, merged into one ADM npz.

    torchrun --standalone --nproc_per_node 8 -m ditlab sample runs/x/model.safetensors --num-samples 50000

Rank r samples the batches b with b % world == r of the one `ditlab.generate` call a single process would
make (`part=(rank, world)`): each image keeps its noise (drawn up front from the one seeded generator), its
batch and its batch's sampler generator, seeded by (seed, global batch index), so the images are the same,
bit for bit, whatever the number of processes. Each rank writes its shard `PREFIX.rank<r>-of-<W>.npz`
(images, labels and their sample indices); after a barrier rank 0 puts them back in sample order, writes
`PREFIX.npz` and `PREFIX.png`, and deletes the shards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ditlab import distributed as D
from ditlab.atomic import atomic_write
from ditlab.sampling import Samples, batch_indices, generate, sample_labels


def shard_path(prefix: str | Path, rank: int, world: int) -> Path:
    return Path(f"{prefix}.rank{rank}-of-{world}.npz")


def generate_across_ranks(model, info: D.DistInfo, prefix: str | Path, **kwargs) -> Samples | None:
    """Every rank: sample this rank's part of `generate(model, **kwargs)` and write it as a shard; rank 0
    returns all the samples in order (the others None). One process samples directly, without shards."""
    if not info.enabled:
        return generate(model, **kwargs)
    images, labels = generate(model, part=(info.rank, info.world_size), **kwargs)
    total = len(
        sample_labels(model, kwargs.get("classes"), kwargs.get("per_class", 1), kwargs.get("num_samples"))
    )
    index = batch_indices(total, kwargs.get("batch_size", 64), info.rank, info.world_size)
    path = shard_path(prefix, info.rank, info.world_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, images=images, labels=labels, index=index.numpy()))
    D.barrier(info)  # every shard is on disk
    if not info.is_main:
        return None
    return merge_shards(prefix, info.world_size)


def merge_shards(prefix: str | Path, world: int) -> Samples:
    """Read the `world` shards of `prefix`, refuse a missing one, return the samples in index order and
    delete the shards."""
    paths = [shard_path(prefix, r, world) for r in range(world)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"sample shard(s) {missing} missing: a process did not finish its part")
    parts = [np.load(p) for p in paths]
    parts = [dict(p) for p in parts if len(p["index"])]  # a rank with no batch wrote an empty shard
    index = np.concatenate([p["index"] for p in parts])
    order = np.argsort(index, kind="stable")
    images = np.concatenate([p["images"] for p in parts])[order]
    labels = np.concatenate([p["labels"] for p in parts])[order]
    for p in paths:
        p.unlink()
    return Samples(images, labels)


__all__ = ["generate_across_ranks", "merge_shards", "shard_path"]
