"""Which images each training step reads, and how they reach the trainer.

Every batch is a pure function of (seed, step): step s of epoch e = s // batches_per_epoch is slice
s % batches_per_epoch of a permutation of the data seeded by (seed, e) (a shuffle with drop_last, as the
official loader). Under torchrun each rank reads only its own slice of that global batch, which is the role
of a DistributedSampler: N processes see the images one process with the same global batch sees. A run
resumed at any step, mid-epoch included, starts the sampler at that step and reads the same next batches as a
run never stopped.

Two sources serve `get(step, generator) -> (x float (b, C, H, W) in [-1, 1], labels (b,))`, this rank's part,
with the flips drawn from the step's generator for the whole global batch (B draws, first), so both consume
the generator alike and the trainer draws timesteps and noise after them:
- `MemoryBatches`: any set with `batch(indices, generator)` (an in-memory `ImageDataset`: digits,
  Fashion-MNIST, emoji; or a wrapper of one that returns latents): a batch is an index lookup.
- `StreamBatches`: an `ImageFolderStream`, decoded in `torch.utils.data.DataLoader` workers a few steps
  ahead of the trainer (`StepBatchSampler` hands each worker the indices of one step).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ditlab.data.dataset import ImageDataset, flip_draws, to_model_batch
from ditlab.data.streaming import ImageFolderStream


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which epoch `epoch` visits the n images: a permutation seeded by (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))


def step_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices (batch_size,) of step `step`'s global batch (drop_last: n // batch_size steps per epoch)."""
    epoch, i = divmod(step, n // batch_size)
    return epoch_order(n, seed, epoch)[i * batch_size : (i + 1) * batch_size]


def rank_part(batch_size: int, rank: int, world_size: int) -> slice:
    """The part of a global batch that process `rank` of `world_size` trains on."""
    return slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)


class StepBatchSampler(Sampler):
    """Yields (step, indices of this rank's part of the step's global batch) for steps start .. stop - 1.

    The DistributedSampler of a (seed, step) trainer: one item per optimizer step, so resuming at step s is
    `StepBatchSampler(..., start=s)`. Each epoch's permutation is drawn once, not once per step.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int, part: slice = slice(None)):
        if n < batch_size:
            raise ValueError(f"batch_size {batch_size} is larger than the dataset ({n} images)")
        self.n, self.batch_size, self.seed, self.start, self.stop, self.part = (
            n,
            batch_size,
            seed,
            start,
            stop,
            part,
        )

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        per_epoch = self.n // self.batch_size
        epoch, order = None, None
        for step in range(self.start, self.stop):
            e, i = divmod(step, per_epoch)
            if e != epoch:
                epoch, order = e, epoch_order(self.n, self.seed, e)
            yield step, order[i * self.batch_size : (i + 1) * self.batch_size][self.part]


class MemoryBatches:
    """Batches of an in-memory set (anything with `batch(indices, generator)`): index lookups, nothing runs
    ahead. Every rank builds the global batch and keeps its part (the draws stay those of one process)."""

    def __init__(self, data: ImageDataset, batch_size: int, seed: int, part: slice = slice(None)):
        self.data, self.batch_size, self.seed, self.part = data, batch_size, seed, part

    def get(self, step: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (b, C, H, W), labels (b,)) of this rank's part of step `step`'s global batch."""
        index = step_indices(len(self.data), self.batch_size, self.seed, step)
        x, y = self.data.batch(index, generator=generator)  # flips (if on) drawn from the generator
        return x[self.part], y[self.part]

    def start(self, step: int = 0) -> None:
        pass  # nothing runs ahead

    def close(self) -> None:
        pass


class _StepReads(Dataset):
    """What a DataLoader worker does with one sampler item (step, indices): decode that step's images."""

    def __init__(self, stream: ImageFolderStream):
        self.stream = stream

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, item):
        step, indices = item
        images, labels, bad = self.stream.read_batch(indices)
        return step, images, labels, bad


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)  # workers decode with Pillow; torch threads there would only fight the trainer


class StreamBatches:
    """Batches of an `ImageFolderStream`, decoded by `num_workers` DataLoader worker processes (0: in this
    process) up to `prefetch` steps ahead per worker. Steps are asked for in order; asking for another step
    (a resumed run, a re-run of a step) restarts the sampler there."""

    def __init__(
        self,
        stream: ImageFolderStream,
        batch_size: int,
        seed: int,
        stop: int,
        part: slice = slice(None),
        num_workers: int = 2,
        prefetch: int = 2,
    ):
        if num_workers < 0 or prefetch < 1:
            raise ValueError(f"num_workers must be >= 0 and prefetch >= 1, got {num_workers} and {prefetch}")
        self.stream, self.batch_size, self.seed, self.stop, self.part = stream, batch_size, seed, stop, part
        self.num_workers, self.prefetch = num_workers, prefetch
        self._it = None
        self._next = None
        self._last = (None, None)

    def start(self, step: int = 0) -> None:
        """Fork the workers now, reading ahead from `step`. The trainer calls this before it builds the model:
        forked workers share the parent's pages copy-on-write, so workers forked after the model would keep
        the old copy of every weight and EMA page the trainer then updates (about twice the weights' size).
        A first `get` of another step restarts them there (correct, but with that cost)."""
        if step < self.stop:  # past the end there is nothing to read ahead
            self._start(step)

    def _start(self, step: int) -> None:
        self.close()
        sampler = StepBatchSampler(len(self.stream), self.batch_size, self.seed, step, self.stop, self.part)
        workers = dict(prefetch_factor=self.prefetch, worker_init_fn=_one_thread) if self.num_workers else {}
        loader = DataLoader(
            _StepReads(self.stream),
            batch_size=None,
            sampler=sampler,
            num_workers=self.num_workers,
            # its own generator: the loader's base seed is then never drawn from the global RNG, which the
            # trainer's model initialisation (after `start`) must find untouched
            generator=torch.Generator().manual_seed(self.seed),
            **workers,
        )
        self._it, self._next = iter(loader), step

    def get(self, step: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x float (b, C, H, W) in [-1, 1], labels (b,)) of this rank's part of step `step`'s global batch;
        flips (when the stream's `flip` is on) drawn from `generator` for the global batch, as `MemoryBatches`."""
        images, labels = self.images(step)
        flips = flip_draws(self.batch_size, generator)[self.part] if self.stream.flip else None
        return to_model_batch(images, flips), labels

    def images(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 (b, C, H, W), labels (b,)) of this rank's part of step `step`'s global batch, as decoded."""
        if self._last[0] == step:
            return self._last[1]
        if step >= self.stop:
            raise ValueError(f"step {step} is past this loader's last step {self.stop - 1}")
        if self._it is None or step != self._next:
            self._start(step)
        got, images, labels, bad = next(self._it)
        if got != step:  # cannot happen with a sequential sampler; a loud stop beats training on wrong data
            raise RuntimeError(f"data loader out of step: asked for step {step}, got {got}")
        self.stream.skipped.note(bad)
        self._next = step + 1
        self._last = (step, (images, labels))
        if self._next == self.stop:
            self.close()  # the last batch is out: let the workers exit now
        return images, labels

    def close(self) -> None:
        """Stop the workers (they restart on the next `get`)."""
        self._it, self._next = None, None  # dropping the iterator shuts its worker processes down


def batch_source(
    data: ImageDataset | ImageFolderStream,
    batch_size: int,
    seed: int,
    stop: int,
    part: slice = slice(None),
    num_workers: int = 2,
) -> MemoryBatches | StreamBatches:
    """The batch source for a training set: in-memory index lookups or streamed, decoded by workers."""
    if len(data) < batch_size:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset ({len(data)} images)")
    if isinstance(data, ImageFolderStream):
        return StreamBatches(data, batch_size, seed, stop, part, num_workers=num_workers)
    return MemoryBatches(data, batch_size, seed, part)
