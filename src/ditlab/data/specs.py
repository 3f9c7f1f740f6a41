"""Dataset specs and `load_dataset`: one string names any image set ditlab can train or evaluate on.

    digits                      scikit-learn's 8x8 digits (ditlab's fixed stratified 80/20 split)
    digits:test                 ... its held-out split
    fashion-mnist               Fashion-MNIST from /usr/share/datasets/fashion-mnist
    fashion-mnist:/some/dir     ... from another folder of IDX files
    fashion-mnist:/dir:test     ... with a split
    /path/to/folder             an ImageFolder tree (class per sub-folder, or unconditional)
    /path/to/folder:test        ... its `test` sub-folder (a folder's splits are sub-folders named after them)

Splits are "train" (the default), "test" and "all".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ditlab.data.builtin import (
    DIGITS_CLASSES,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    SPLITS,
    load_digits_arrays,
    load_fashion_mnist_arrays,
)
from ditlab.data.dataset import ImageDataset
from ditlab.data.image_folder import load_image_folder_arrays
from ditlab.data.transforms import convert_channels, resize_images

NAMED_DATASETS = ("digits", "fashion-mnist")
_FOLDER_PREFIXES = ("folder", "imagefolder")


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed dataset spec: kind ("digits", "fashion-mnist", "folder"), path, split (None = unset)."""

    kind: str
    path: str | None = None
    split: str | None = None

    def with_split(self, split: str | None) -> DatasetSpec:
        """This spec with its split resolved against an explicit `split` argument (they must agree)."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        if self.split is not None and split is not None and split != self.split:
            raise ValueError(f"the spec names split {self.split!r} but split={split!r} was passed; give one")
        return DatasetSpec(self.kind, self.path, self.split or split or "train")

    def __str__(self) -> str:
        parts = [self.kind if self.kind != "folder" else str(self.path)]
        if self.kind == "fashion-mnist" and self.path is not None:
            parts.append(str(self.path))
        if self.split is not None:
            parts.append(self.split)
        return ":".join(parts)


def _path_and_split(rest: str) -> tuple[str, str | None]:
    head, sep, tail = rest.rpartition(":")
    if sep and tail in SPLITS and head:
        return head, tail
    return rest, None


def parse_spec(spec: str | os.PathLike | DatasetSpec) -> DatasetSpec:
    """Parse a dataset spec string (see the module docstring) without loading anything."""
    if isinstance(spec, DatasetSpec):
        return spec
    if isinstance(spec, os.PathLike):
        return DatasetSpec("folder", str(Path(spec)))
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"dataset spec must be a non-empty string or path, got {spec!r}")
    name, sep, rest = spec.partition(":")
    if name == "digits":
        if rest and rest not in SPLITS:
            raise ValueError(f"bad digits spec {spec!r}: after 'digits:' give a split ({', '.join(SPLITS)})")
        return DatasetSpec("digits", None, rest or None)
    if name == "fashion-mnist":
        if not rest:
            return DatasetSpec("fashion-mnist")
        if rest in SPLITS:
            return DatasetSpec("fashion-mnist", None, rest)
        path, split = _path_and_split(rest)
        return DatasetSpec("fashion-mnist", path, split)
    if name in _FOLDER_PREFIXES and sep:
        path, split = _path_and_split(rest)
        return DatasetSpec("folder", path, split)
    if Path(spec).is_dir():
        return DatasetSpec("folder", spec)
    path, split = _path_and_split(spec)
    if split is not None and Path(path).is_dir():
        return DatasetSpec("folder", path, split)
    raise ValueError(
        f"unknown dataset {spec!r}: not one of {', '.join(NAMED_DATASETS)} and not an existing folder; "
        "pass digits, fashion-mnist[:DIR][:SPLIT] or the path of an image folder"
    )


def _folder_for_split(root: Path, split: str) -> Path:
    """An ImageFolder's split is a sub-folder named after it; without such sub-folders the root is 'train'."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder not found: {root}; pass a folder of images, or one sub-folder of images per class"
        )
    if split != "all" and (root / split).is_dir():
        return root / split
    has_split_dirs = any((root / s).is_dir() for s in ("train", "test"))
    if split == "train" and not has_split_dirs:
        return root
    if split == "all" and not has_split_dirs:
        return root
    raise ValueError(
        f"{root} has no {split!r} sub-folder; ImageFolder splits are sub-folders named train/ and test/ "
        "(a folder without them is all 'train')"
    )


def load_dataset(
    spec: str | os.PathLike | DatasetSpec,
    split: str | None = None,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    center_crop: bool = True,
    flip: bool = False,
    unconditional: bool | None = None,
    bad_images: str = "raise",
) -> ImageDataset:
    """Load an image set into memory as an `ImageDataset` (uint8 (N, C, H, W); items as floats in [-1, 1]).

    Args:
        spec: "digits", "fashion-mnist", "fashion-mnist:/dir", a folder path, optionally ending in ":SPLIT".
        split: "train" (default), "test" or "all"; may instead be part of the spec.
        image_size: `n` or `(height, width)`; None keeps the native size. Resizing uses the one filter of
            `ditlab.data.transforms.resize_images` (PIL bicubic, antialiased).
        channels: 1 or 3; None keeps the native count (grey data repeated to 3 channels when 3 is asked).
        center_crop: when aspect ratios differ, fit the short side and crop the centre (ADM style) instead of
            stretching.
        flip: random horizontal flips (p = 1/2) when items or batches are read.
        unconditional: drop the labels (num_classes = 0); None = auto for folders (no class sub-folders),
            False for the named sets.
        bad_images: for folders, "raise" (stop at an unreadable file, naming it) or "skip" (count and warn).
    """
    parsed = parse_spec(spec).with_split(split)
    if parsed.kind == "folder":
        images, labels, class_names = load_image_folder_arrays(
            _folder_for_split(Path(parsed.path), parsed.split),
            image_size=image_size,
            channels=channels,
            center_crop=center_crop,
            unconditional=unconditional,
            bad_images=bad_images,
        )
    else:
        if parsed.kind == "digits":
            images, labels = load_digits_arrays(parsed.split)
            class_names = list(DIGITS_CLASSES)
        else:
            images, labels = load_fashion_mnist_arrays(parsed.path or FASHION_MNIST_DIR, parsed.split)
            class_names = list(FASHION_MNIST_CLASSES)
        if image_size is not None:
            images = resize_images(images, image_size, center_crop=center_crop)
        if channels is not None:
            images = convert_channels(images, channels)
        if unconditional:
            labels, class_names = np.zeros_like(labels), []
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    return ImageDataset(tensor, torch.from_numpy(labels), class_names, flip=flip, name=str(parsed))
