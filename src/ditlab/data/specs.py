"""Dataset specs and `load_dataset`: one string names any image set ditlab can train or evaluate on.

    digits                      scikit-learn's 8x8 digits (ditlab's fixed stratified 80/20 split)
    digits:test                 ... its held-out split
    fashion-mnist               Fashion-MNIST from /usr/share/datasets/fashion-mnist
    fashion-mnist:/some/dir     ... from another folder of IDX files
    fashion-mnist:/dir:test     ... with a split
    /path/to/folder             an ImageFolder tree (class per sub-folder, or unconditional)
    /path/to/folder:test        ... its `test` sub-folder (a folder's splits are sub-folders named after them)
    fashion-mnist[5-9]:test     ... only some classes: a list of ids and ranges ("0-4", "0,2,7-9") in brackets
                                after the name (or path), before any split
    shapes                      procedural coloured shapes with captions, 32x32 RGB (ditlab.data.shapes)
    shapes[64]:test             ... rendered at 64x64 (the bracket is the size in px), held-out split
    emoji                       Noto Color Emoji rendered at 32x32 RGB, unconditional, with captions
    emoji[64]:test              ... at 64x64 (for emoji the bracket is the size in px), held-out split

Splits are "train" (the default), "test" and "all". A class subset keeps the original label ids and class names
(num_classes stays the full count), so models, references and classifiers of the subsets of one dataset share
one label space: pretrain on `fashion-mnist[0-4]`, fine-tune on `fashion-mnist[5-9]`, judge both with one
classifier.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ditlab.data.builtin import (
    DIGITS_CLASSES,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    NATIVE_SHAPES,
    SPLITS,
    load_digits_arrays,
    load_fashion_mnist_arrays,
)
from ditlab.data.captions import FASHION_MNIST_CAPTIONS, class_captions
from ditlab.data.dataset import ImageDataset
from ditlab.data.emoji import EMOJI_DEFAULT_SIZE, check_emoji_size, load_emoji_arrays
from ditlab.data.image_folder import folder_image_shape, load_image_folder_arrays
from ditlab.data.shapes import (
    is_shapes_spec,
    make_shapes,
    parse_shapes_spec,
    parse_sized_spec,
    shapes_render_size,
)
from ditlab.data.transforms import convert_channels, resize_images, size_pair

NAMED_DATASETS = ("digits", "fashion-mnist", "shapes", "emoji")
_FOLDER_PREFIXES = ("folder", "imagefolder")


# "[0-4]" or "[0,2,7-9]" right after the name/path, optionally followed by ":SPLIT".
_CLASSES_SUFFIX = re.compile(r"^(?P<head>.+?)\[(?P<classes>[0-9,\s-]*)\](?P<split>:[a-z]+)?$")


def parse_classes(text: str) -> tuple[int, ...]:
    """ "0-4" / "0,2,7-9" -> sorted unique class ids (0, 1, 2, 3, 4) / (0, 2, 7, 8, 9)."""
    ids: set[int] = set()
    for part in text.replace(" ", "").split(","):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad class list {text!r}: use ids and ranges such as 0-4 or 0,2,7-9")
        if sep and int(hi) < int(lo):
            raise ValueError(f"bad class range {part!r} in {text!r}: the end is below the start")
        ids.update(range(int(lo), int(hi if sep else lo) + 1))
    return tuple(sorted(ids))


def format_classes(classes: Iterable[int]) -> str:
    """(0, 1, 2, 7, 9) -> "0-2,7,9": the canonical text of a class list (inverse of parse_classes)."""
    ids = sorted({int(c) for c in classes})
    runs: list[list[int]] = []
    for c in ids:
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed dataset spec: kind ("digits", "fashion-mnist", "folder"), path, split (None = unset) and
    classes (a sorted tuple of the class ids kept; None = all)."""

    kind: str
    path: str | None = None
    split: str | None = None
    classes: tuple[int, ...] | None = None
    resolution: int | None = None

    def with_split(self, split: str | None) -> DatasetSpec:
        """This spec with its split resolved against an explicit `split` argument (they must agree)."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        if self.split is not None and split is not None and split != self.split:
            raise ValueError(f"the spec names split {self.split!r} but split={split!r} was passed; give one")
        return dataclasses.replace(self, split=self.split or split or "train")

    def with_classes(self, classes: Iterable[int] | None) -> DatasetSpec:
        """This spec restricted to `classes` (None: unchanged); a spec that already names classes must agree."""
        if classes is None:
            return self
        if isinstance(classes, str):
            ids = parse_classes(classes)
        else:
            ids = tuple(sorted({int(c) for c in classes}))
            if not ids or ids[0] < 0:
                raise ValueError(f"classes must be non-empty class ids >= 0, got {list(classes)!r}")
        if self.classes is not None and ids != self.classes:
            raise ValueError(
                f"the spec names classes [{format_classes(self.classes)}] but classes=[{format_classes(ids)}] "
                "was passed; give one"
            )
        return dataclasses.replace(self, classes=ids)

    def __str__(self) -> str:
        parts = [self.kind if self.kind != "folder" else str(self.path)]
        if self.kind == "fashion-mnist" and self.path is not None:
            parts.append(str(self.path))
        text = ":".join(parts)
        if self.resolution is not None:
            text += f"[{self.resolution}]"
        if self.classes is not None:
            text += f"[{format_classes(self.classes)}]"
        if self.split is not None:
            text += f":{self.split}"
        return text


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
    if is_shapes_spec(spec) and not Path(spec).is_dir():
        resolution, split = parse_shapes_spec(spec, SPLITS)
        return DatasetSpec("shapes", None, split, resolution=resolution)
    if (spec == "emoji" or spec.startswith(("emoji[", "emoji:"))) and not Path(spec).is_dir():
        return _parse_emoji(spec)
    m = _CLASSES_SUFFIX.match(spec)
    # A class list in brackets, unless the whole string is an existing folder whose name ends in brackets.
    if m and not Path(spec).is_dir() and (m["split"] is None or m["split"][1:] in SPLITS):
        base = parse_spec(m["head"] + (m["split"] or ""))
        return dataclasses.replace(base, classes=parse_classes(m["classes"]))
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
        "pass digits, fashion-mnist[:DIR][:SPLIT], emoji[SIZE][:SPLIT] or the path of an image folder"
    )


def _parse_emoji(spec: str) -> DatasetSpec:
    """ "emoji", "emoji[64]", "emoji:test", "emoji[64]:test" (the bracket is the size in px, not classes)."""
    size, split = parse_sized_spec("emoji", spec, SPLITS)
    return DatasetSpec("emoji", None, split, resolution=None if size is None else check_emoji_size(size))


def folder_for_split(root: Path, split: str) -> Path:
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


def dataset_shape(
    spec: str | os.PathLike | DatasetSpec, split: str | None = None
) -> tuple[int, int, int] | None:
    """(H, W, C) of a dataset's images as stored, before any resize (None: a folder of mixed sizes).

    Cheap: named sets have a fixed shape and folders are read from file headers, so callers can say what a
    load will resize before paying for it.
    """
    parsed = parse_spec(spec).with_split(split)
    if parsed.kind == "folder":
        return folder_image_shape(folder_for_split(Path(parsed.path), parsed.split))
    if parsed.kind == "shapes":
        side = shapes_render_size(parsed.resolution, None)
        return side, side, 3
    if parsed.kind == "emoji":
        side = parsed.resolution or EMOJI_DEFAULT_SIZE
        return side, side, 3
    return NATIVE_SHAPES[parsed.kind]


def describe_shape(shape: tuple[int, int, int] | None) -> str:
    """(28, 28, 1) -> "28x28 grey", (32, 32, 3) -> "32x32 RGB"; None -> "of mixed sizes"."""
    if shape is None:
        return "of mixed sizes"
    height, width, channels = shape
    return (
        f"{height}x{width} {'grey' if channels == 1 else 'RGB' if channels == 3 else f'{channels}-channel'}"
    )


def keep_classes(items: np.ndarray, labels: np.ndarray, class_names: list, classes: tuple[int, ...], what):
    """The items (images, or file paths) and labels of `classes` only (original ids kept); `what` names the
    dataset in errors."""
    if not class_names:
        raise ValueError(f"{what}: a class subset needs a labelled dataset, but this one is unconditional")
    bad = [c for c in classes if c >= len(class_names)]
    if bad:
        raise ValueError(
            f"{what}: class id(s) {bad} out of range; this dataset has classes 0-{len(class_names) - 1}"
        )
    keep = np.isin(labels, np.asarray(classes))
    return items[keep], labels[keep]


def _emoji_render_size(spec: DatasetSpec, image_size) -> int:
    """The size to render emoji at: the spec's, else a square image_size up to the maximum, else 32."""
    if spec.resolution is not None:
        return spec.resolution
    if image_size is not None:
        height, width = size_pair(image_size)
        if height == width and height <= 128:
            return height
    return EMOJI_DEFAULT_SIZE


def load_dataset(
    spec: str | os.PathLike | DatasetSpec,
    split: str | None = None,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    center_crop: bool = True,
    flip: bool = False,
    unconditional: bool | None = None,
    bad_images: str = "raise",
    classes: Iterable[int] | str | None = None,
) -> ImageDataset:
    """Load an image set into memory as an `ImageDataset` (uint8 (N, C, H, W); items as floats in [-1, 1]).

    Args:
        spec: "digits", "fashion-mnist", "fashion-mnist:/dir", "emoji", "emoji[64]", a folder path, optionally
            ending in ":SPLIT".
        split: "train" (default), "test" or "all"; may instead be part of the spec.
        image_size: `n` or `(height, width)`; None keeps the native size. Resizing uses the one filter of
            `ditlab.data.transforms.resize_images` (PIL bicubic, antialiased).
        channels: 1 or 3; None keeps the native count (grey data repeated to 3 channels when 3 is asked).
        center_crop: when aspect ratios differ, fit the short side and crop the centre (ADM style) instead of
            stretching.
        flip: random horizontal flips (p = 1/2) when items or batches are read.
        unconditional: drop the labels (num_classes = 0); None = auto for folders (no class sub-folders),
            False for the named sets (shapes and emoji have no labels: their texts are `captions`;
            Fashion-MNIST's labels also give it templated `captions`, dropped with the labels).
        bad_images: for folders, "raise" (stop at an unreadable file, naming it) or "skip" (count and warn).
        classes: keep only these class ids ("0-4", [5, 6]); may instead be part of the spec
            (`fashion-mnist[0-4]`). Labels keep their original ids and `class_names` stays the full list.
    """
    parsed = parse_spec(spec).with_split(split).with_classes(classes)
    if parsed.kind == "shapes" and flip:
        raise ValueError(
            "shapes cannot be flipped: a mirror image contradicts 'left of' / 'right of' captions"
        )
    captions: list[str] = []
    if parsed.kind == "folder":
        images, labels, class_names = load_image_folder_arrays(
            folder_for_split(Path(parsed.path), parsed.split),
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
        elif parsed.kind == "shapes":
            rendered = make_shapes(parsed.split, image_size=shapes_render_size(parsed.resolution, image_size))
            images, captions = rendered.images, rendered.captions
            labels, class_names = np.zeros(len(images), np.int64), []
        elif parsed.kind == "emoji":
            images, captions = load_emoji_arrays(_emoji_render_size(parsed, image_size), parsed.split)
            labels, class_names = np.zeros(len(images), np.int64), []
        else:
            images, labels = load_fashion_mnist_arrays(parsed.path or FASHION_MNIST_DIR, parsed.split)
            class_names = list(FASHION_MNIST_CLASSES)
        if image_size is not None:
            images = resize_images(images, image_size, center_crop=center_crop)
        if channels is not None:
            images = convert_channels(images, channels)
        if unconditional:
            labels, class_names = np.zeros_like(labels), []
    if parsed.classes is not None:
        images, labels = keep_classes(images, labels, class_names, parsed.classes, parsed)
    if parsed.kind == "fashion-mnist" and class_names:
        captions = class_captions(labels, FASHION_MNIST_CAPTIONS)
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    return ImageDataset(
        tensor, torch.from_numpy(labels), class_names, flip=flip, name=str(parsed), captions=captions
    )
