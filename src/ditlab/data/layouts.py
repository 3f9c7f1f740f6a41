"""Layouts for layout-to-image models: the `shapes` masks as training layouts, and mask files for sampling.

A layout is a label map (H, W) whose values index `LAYOUT_CLASSES` (the shapes set's mask classes: background
and the 12 colour x shape objects, K = 13), one-hot encoded by the model (`ditlab.nn.spatial`).

Mask PNGs (`ditlab sample RUN --layout mask.png`) paint each class in its colour of `LAYOUT_PALETTE`, exactly
(no anti-aliasing): background grey (128, 128, 128); a circle in its object colour, a square in that colour
halved (darker), a triangle in it halfway to white (lighter):

    red     circle (220, 40, 40)   square (110, 20, 20)   triangle (237, 147, 147)
    green   circle (40, 180, 60)   square (20, 90, 30)    triangle (147, 217, 157)
    blue    circle (40, 70, 220)   square (20, 35, 110)   triangle (147, 162, 237)
    yellow  circle (230, 210, 40)  square (115, 105, 20)  triangle (242, 232, 147)

A .npz holds `layout` (or `arr_0`): int labels (H, W) or (M, H, W), or a float map (K, H, W) or (M, K, H, W).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ditlab.data.shapes import BACKGROUND, COLOURS, MASK_CLASSES, OBJECTS, make_shapes, shapes_render_size
from ditlab.data.specs import parse_spec

LAYOUT_CLASSES = MASK_CLASSES
NUM_LAYOUT_CLASSES = len(LAYOUT_CLASSES)  # 13


def _shade(rgb: tuple[int, int, int], shape: str) -> tuple[int, int, int]:
    if shape == "square":
        return tuple(v // 2 for v in rgb)
    if shape == "triangle":
        return tuple((v + 255) // 2 for v in rgb)
    return tuple(rgb)


LAYOUT_PALETTE = np.array(
    [BACKGROUND, *(_shade(COLOURS[colour], shape) for colour, shape in OBJECTS)], dtype=np.uint8
)  # (13, 3), row = class


def shapes_layouts(name: str, count: int, image_size: tuple[int, int]) -> np.ndarray:
    """uint8 (count, H, W) labels: the masks of the first `count` images of the shapes set `name` (a spec such
    as "shapes" or "shapes[64]:train", as `ImageDataset.name`), at `image_size` — the layouts of its images."""
    parsed = parse_spec(name)
    if parsed.kind != "shapes":
        raise ValueError(
            f"layouts come with the shapes set (its per-pixel object masks); {name!r} has none: use --data shapes"
        )
    side = shapes_render_size(parsed.resolution, tuple(image_size))
    masks = make_shapes(parsed.split or "train", count, image_size=side).masks
    if tuple(masks.shape[1:]) != tuple(image_size):  # the loader resized the images: the same for the masks
        masks = resize_nearest(masks, image_size)
    return masks


def resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Label maps (N, H, W) to (N, h, w) by nearest neighbour (labels must stay labels)."""
    if not len(labels):
        return labels.reshape(0, *size)
    # nearest, not the images' bicubic filter: blending two labels gives a third
    return np.stack([np.asarray(Image.fromarray(m).resize(size[::-1], Image.NEAREST)) for m in labels])


def labels_to_png(labels: np.ndarray, path: str | os.PathLike) -> Path:
    """Write one label map (H, W) as a mask PNG in `LAYOUT_PALETTE` colours."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.min() < 0 or labels.max() >= NUM_LAYOUT_CLASSES:
        raise ValueError(f"a mask PNG holds one (H, W) label map with values 0..{NUM_LAYOUT_CLASSES - 1}")
    Image.fromarray(LAYOUT_PALETTE[labels]).save(path)
    return Path(path)


def png_to_labels(image: np.ndarray, source: str = "the mask") -> np.ndarray:
    """uint8 RGB (H, W, 3) in palette colours -> int64 labels (H, W); any other colour is a ValueError."""
    match = (image[:, :, None, :] == LAYOUT_PALETTE[None, None]).all(-1)  # (H, W, 13)
    known = match.any(-1)
    if not known.all():
        y, x = np.argwhere(~known)[0]
        raise ValueError(
            f"{source} has {int((~known).sum())} pixel(s) of colours outside the layout palette, first "
            f"{tuple(int(v) for v in image[y, x])} at (x={x}, y={y}); paint only the palette's exact colours "
            "(background (128, 128, 128) and the 12 classes of ditlab.data.layouts.LAYOUT_PALETTE), without "
            "anti-aliasing"
        )
    return match.argmax(-1).astype(np.int64)


def read_layout(path: str | os.PathLike, image_size: tuple[int, int]) -> np.ndarray:
    """A mask PNG or .npz -> labels int64 (M, H, W) or a float map (M, K, H, W); its size must be the model's
    `image_size`, else a ValueError naming both."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no layout file {path}")
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as data:
            key = "layout" if "layout" in data.files else "arr_0" if "arr_0" in data.files else None
            if key is None:
                raise ValueError(f"{path} holds no 'layout' (or 'arr_0') array; it has {data.files}")
            layout = data[key]
        layout = _batched_npz_layout(layout, path)
    else:
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))
        except OSError as err:
            raise ValueError(f"cannot read {path} as an image: {err}") from err
        layout = png_to_labels(rgb, str(path))[None]
    size = tuple(layout.shape[-2:])
    if size != tuple(image_size):
        raise ValueError(
            f"the layout {path} is {size[0]}x{size[1]} but the model generates {image_size[0]}x{image_size[1]} "
            "images; draw the mask at the model's image size"
        )
    return layout


def _batched_npz_layout(layout: np.ndarray, path: Path) -> np.ndarray:
    if layout.dtype.kind in "iu":
        if layout.ndim == 2:
            layout = layout[None]
        if layout.ndim != 3:
            raise ValueError(f"integer labels in {path} must be (H, W) or (M, H, W), got {layout.shape}")
        if layout.min() < 0 or layout.max() >= NUM_LAYOUT_CLASSES:
            raise ValueError(
                f"labels in {path} must lie in 0..{NUM_LAYOUT_CLASSES - 1} (LAYOUT_CLASSES), got "
                f"{layout.min()}..{layout.max()}"
            )
        return layout.astype(np.int64)
    if layout.dtype.kind == "f":
        if layout.ndim == 3:
            layout = layout[None]
        if layout.ndim != 4:
            raise ValueError(f"a float map in {path} must be (K, H, W) or (M, K, H, W), got {layout.shape}")
        return layout.astype(np.float32)
    raise ValueError(f"the layout in {path} must be integer labels or a float map, got dtype {layout.dtype}")
