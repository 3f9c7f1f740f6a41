"""Image folders of any size: `ImageFolderStream` keeps only the file list and labels in memory and decodes
the images a step asks for, when it asks (`ditlab.data.loader` runs that in DataLoader workers).

    stream = open_dataset("path/to/folder", image_size=64)      # an ImageFolderStream (folders stream)
    digits = open_dataset("digits")                              # an ImageDataset (named sets stay in memory)
    images, labels, bad = stream.read_batch(torch.arange(8))    # uint8 (8, C, 64, 64), int64 (8,), [(path, why)]

Pixels are those of the in-memory loader (`load_dataset`): the same decode, mode conversion, ADM centre crop
and resize filter (`ditlab.data.image_folder.load_image`), so a folder trains identically streamed or loaded.

Unreadable files: with bad_images="skip" an image that cannot be decoded is replaced by the next readable
image of the folder's list (index i+1, i+2, ... wrapping around), which keeps every batch full and the same on
every run and every rank; the caller reports the file once (`BadImageLog`). With "raise" the first one stops
the run with its path.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from ditlab.data.dataset import ImageDataset
from ditlab.data.image_folder import (
    BAD_IMAGE_POLICIES,
    UNREADABLE,
    load_image,
    read_header,
    scan_image_folder,
    unreadable_error,
)
from ditlab.data.specs import folder_for_split, keep_classes, load_dataset, parse_spec
from ditlab.data.transforms import size_pair

DATA_LOADERS = ("auto", "memory", "stream")
_LISTED = 10  # unreadable files named one by one in warnings; later ones are only counted


class ImageFolderStream:
    """An image folder read on demand: paths and labels in memory, pixels decoded per batch.

    Attributes (those of `ImageDataset` a trainer needs): labels int64 (N,), class_names, num_classes,
    channels, image_size (H, W), name, captions (always empty), flip (random horizontal flips, applied by the
    loader with the step's generator), bad_images ("skip" | "raise"), root, and
    skipped (a `BadImageLog`: `skipped.seen` maps each unreadable file found so far to the reason).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: Sequence[int] | torch.Tensor,
        class_names: Sequence[str],
        *,
        channels: int,
        image_size: int | tuple[int, int],
        center_crop: bool = True,
        flip: bool = False,
        bad_images: str = "skip",
        name: str = "",
        root: str | os.PathLike = "",
    ) -> None:
        if bad_images not in BAD_IMAGE_POLICIES:
            raise ValueError(f"bad_images must be one of {BAD_IMAGE_POLICIES}, got {bad_images!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self._prefix, self._paths = _packed_paths(paths)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        if self.labels.shape != (len(self._paths),):
            raise ValueError(f"{len(self._paths)} paths but labels of shape {tuple(self.labels.shape)}")
        if not len(self._paths):
            raise ValueError(f"no images to stream in {root or 'the given list'}")
        self.class_names = list(class_names)
        self._channels = channels
        self._size = size_pair(image_size)
        self.center_crop = bool(center_crop)
        self.flip = bool(flip)
        self.bad_images = bad_images
        self.name = name
        self.root = str(root)
        self.captions: list[str] = []
        self.skipped = BadImageLog(self.root or name)  # files found unreadable so far, each reported once

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def image_size(self) -> tuple[int, int]:
        return self._size

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, index: int) -> str:
        return self._prefix + os.fsdecode(self._paths[index])

    def load(self, index: int) -> torch.Tensor:
        """Image `index` as uint8 (C, H, W); raises the UNREADABLE family for a broken file."""
        arr = load_image(self.path(index), self._channels, self._size, self.center_crop)  # (H, W, C)
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)

    def _load_or_substitute(self, index: int, bad: list[tuple[str, str]]) -> tuple[torch.Tensor, int]:
        """(image, index it came from): `index`, or with bad_images="skip" the next readable one after it."""
        for offset in range(len(self)):
            j = (index + offset) % len(self)
            try:
                return self.load(j), j
            except UNREADABLE as e:
                if self.bad_images == "raise":
                    raise unreadable_error(self.path(j), e) from e
                bad.append((self.path(j), str(e)))
        raise ValueError(
            f"no readable image in {self.root}: every one of its {len(self)} files failed to decode"
        )

    def read_batch(self, indices: Iterable[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Images at `indices` -> (uint8 (B, C, H, W), labels int64 (B,), [(path, reason)] of files skipped)."""
        bad: list[tuple[str, str]] = []
        images, labels = [], []
        for index in torch.as_tensor(indices, dtype=torch.int64).tolist():
            image, source = self._load_or_substitute(index, bad)
            images.append(image)
            labels.append(int(self.labels[source]))
        return torch.stack(images), torch.tensor(labels, dtype=torch.int64), bad

    def __repr__(self) -> str:
        h, w = self._size
        kind = f"{self.num_classes} classes" if self.num_classes else "unconditional"
        return f"ImageFolderStream({self.name!r}, {len(self)} files {self._channels}x{h}x{w}, {kind})"


def _packed_paths(paths: Sequence[str | os.PathLike]) -> tuple[str, np.ndarray]:
    """(common folder prefix, the paths after it as one numpy bytes array) of a file list.

    The stream holds nothing per file but these bytes and a label: one byte per character (a numpy str array
    takes four, a list of str ~60 bytes of object per file) and no per-item objects, so DataLoader workers
    forked from the trainer share the list page for page (a list's reference counts would be written, and
    the pages copied, in every worker). 100,000 files in 10 class folders hold 2.6 MB (benchmarks/latent.md).
    """
    strings = [os.fspath(p) for p in paths]
    # the common prefix of all strings is that of the smallest and the largest; cut back to a folder
    common = os.path.commonprefix([min(strings), max(strings)]) if strings else ""
    prefix = common[: common.rfind(os.sep) + 1]
    return prefix, np.array([os.fsencode(p[len(prefix) :]) for p in strings], dtype=np.bytes_)


class BadImageLog:
    """Unreadable files met while streaming, each reported once: one warning line per batch that finds new
    ones, naming the first few files and the count so far."""

    def __init__(self, root: str = "") -> None:
        self.root = root
        self.seen: dict[str, str] = {}

    def note(self, bad: Iterable[tuple[str, object]]) -> None:
        """Report the files of `bad` ([(path, reason)]) not reported before."""
        new = {path: why for path, why in bad if path not in self.seen}
        if not new:
            return
        listed = max(0, _LISTED - len(self.seen))
        self.seen.update(new)
        names = "; ".join(f"{path} ({why})" for path, why in list(new.items())[:listed])
        more = len(new) - min(listed, len(new))
        warnings.warn(
            f"skipped {len(new)} unreadable image(s) in {self.root}"
            + (f": {names}" if names else "")
            + (f" and {more} more" if more and names else "")
            + f" ({len(self.seen)} so far; each is replaced by the next readable image)",
            stacklevel=3,
        )


def _header_scan(paths: Iterable[str]) -> tuple[set, bool, list[tuple[str, Exception]]]:
    """(sizes, all grey, unreadable [(path, error)]) from file headers only (no pixels decoded)."""
    sizes, grey, bad = set(), True, []
    for path in paths:
        try:
            size, is_grey = read_header(path)
        except UNREADABLE as e:
            bad.append((path, e))
            continue
        sizes.add(size)
        grey = grey and is_grey
    return sizes, grey, bad


def open_image_folder(
    root: str | os.PathLike,
    *,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    center_crop: bool = True,
    flip: bool = False,
    unconditional: bool | None = None,
    bad_images: str = "skip",
    classes: tuple[int, ...] | None = None,
    name: str = "",
) -> ImageFolderStream:
    """List an ImageFolder tree (the layout of `load_image_folder_arrays`) as an `ImageFolderStream`.

    Only file headers are read here, to settle the channel count (grey if every image is grey) and the size
    (image_size, else the one native size) and to report unreadable files once, up front.
    """
    paths, labels, class_names = scan_image_folder(root, unconditional)
    labels = np.asarray(labels, dtype=np.int64)
    if classes is not None:
        kept, labels = keep_classes(
            np.asarray(paths, dtype=object), labels, class_names, classes, name or str(root)
        )
        paths = kept.tolist()
    sizes, grey, bad = _header_scan(paths)
    if bad and bad_images == "raise":
        path, err = bad[0]
        raise unreadable_error(path, err) from err
    if len(bad) == len(paths):
        raise ValueError(f"no readable images in {root} ({len(bad)} unreadable); replace the broken files")
    if image_size is None:
        if len(sizes) > 1:
            (w1, h1), (w2, h2) = sorted(sizes)[:2]
            raise ValueError(
                f"images in {root} have {len(sizes)} different sizes (e.g. {h1}x{w1} and {h2}x{w2}); "
                "pass image_size (CLI: --image-size) to resize them to one size"
            )
        width, height = sizes.pop()
        image_size = (height, width)
    stream = ImageFolderStream(
        paths,
        labels,
        class_names,
        channels=channels or (1 if grey else 3),
        image_size=image_size,
        center_crop=center_crop,
        flip=flip,
        bad_images=bad_images,
        name=name or str(root),
        root=root,
    )
    stream.skipped.note(bad)
    return stream


def open_dataset(
    spec, split: str | None = None, *, loader: str = "auto", bad_images: str = "skip", **image_options
) -> ImageDataset | ImageFolderStream:
    """A data set for training: an `ImageFolderStream` for image folders, an in-memory `ImageDataset` for
    the named sets (digits, fashion-mnist, emoji: small enough that a batch is an index lookup).

    loader: "auto" (the above), "memory" (load a folder whole, `load_dataset`'s way: fastest for small
    folders) or "stream" (image folders only). `image_options` (image_size, channels, center_crop, flip,
    unconditional) are `load_dataset`'s, which the two loaders take alike; unreadable images are skipped
    unless `bad_images="raise"`.
    """
    if loader not in DATA_LOADERS:
        raise ValueError(f"unknown data loader {loader!r}; choose one of: {', '.join(DATA_LOADERS)}")
    parsed = parse_spec(spec).with_split(split)
    if parsed.kind != "folder" and loader == "stream":
        raise ValueError(
            f"{parsed} is held in memory (it is small); streaming is for image folders: use --data-loader auto"
        )
    options = dict(image_options, bad_images=bad_images)
    if parsed.kind != "folder" or loader == "memory":
        return load_dataset(parsed, **options)
    return open_image_folder(
        folder_for_split(Path(parsed.path), parsed.split), **options, classes=parsed.classes, name=str(parsed)
    )
