"""ImageFolder trees: one sub-folder of images per class, or a folder of images for an unconditional set.

Layout rules (documented for users in `load_image_folder_arrays`):
- class folders are the non-hidden sub-folders of the root, sorted by name; label i = i-th name. Each is
  searched recursively.
- with `unconditional=None` (auto), a root whose sub-folders hold images is class-conditional; a root with
  images only directly inside it is unconditional. `unconditional=True` takes every image below the root
  (label 0).
- an unreadable image stops loading with its path (default, `bad_images="raise"`); `bad_images="skip"` leaves
  such files out and warns once with their count and the first few paths.
- transparency is composited onto black; the set is grey (1 channel) when every image is grey, else RGB.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ditlab.data.transforms import resize_images, size_pair

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
BAD_IMAGE_POLICIES = ("raise", "skip")
# what Pillow raises for a file that is not an image, is truncated or is too large to decode safely
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# Images larger than this (in pixels, read from the header) are refused before decoding: a small file that
# claims huge dimensions (a decompression bomb) must not take the machine's memory. 64M = 8192 x 8192;
# DITLAB_MAX_IMAGE_PIXELS raises it for genuinely large images.
MAX_IMAGE_PIXELS = int(os.environ.get("DITLAB_MAX_IMAGE_PIXELS", 64 * 2**20))


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _is_image(path: Path) -> bool:
    return path.is_file() and _is_image_name(path.name)


def _images_below(folder: str | os.PathLike) -> list[str]:
    """The image files below `folder`, recursively in sorted order, as path strings (not `Path` objects:
    at a million files those cost several times the memory and the time of the strings)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # skip .ipynb_checkpoints etc.
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if _is_image_name(name) and os.path.isfile(path):  # isfile: no broken links, sockets, ...
                found.append(path)
    return found


def scan_image_folder(
    root: str | os.PathLike, unconditional: bool | None = None
) -> tuple[list[str], list[int], list[str]]:
    """List an ImageFolder tree -> (paths, labels, class_names); class_names is empty if unconditional."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder not found: {root}; pass a folder of images, or one sub-folder of images per class"
        )
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = sorted(p for p in root.iterdir() if _is_image(p))
    per_class = {d.name: _images_below(d) for d in subdirs}
    if unconditional is None:
        unconditional = not any(per_class.values())
    if unconditional:
        paths = _images_below(root)
        if not paths:
            raise ValueError(
                f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)}); "
                "put images in it, or one sub-folder of images per class"
            )
        return paths, [0] * len(paths), []
    if not subdirs:
        raise ValueError(f"{root} has no class sub-folders; add one per class or pass unconditional=True")
    empty = [name for name, files in per_class.items() if not files]
    if empty:
        raise ValueError(
            f"class folder {root / empty[0]} has no images ({len(empty)} empty class folder(s)); "
            "add images to it or remove it"
        )
    if loose:
        warnings.warn(
            f"{len(loose)} image(s) directly in {root} belong to no class folder and are ignored "
            "(pass unconditional=True to use every image)",
            stacklevel=2,
        )
    paths, labels = [], []
    for label, files in enumerate(per_class.values()):
        paths.extend(files)
        labels.extend([label] * len(files))
    return paths, labels, list(per_class)


def read_header(path: str | os.PathLike) -> tuple[tuple[int, int], bool]:
    """((width, height), grey) of one image from its header, without decoding pixels; OSError family if the
    file is no image Pillow can open."""
    with Image.open(path) as im:  # lazy: the header gives size and mode without decoding pixels
        return im.size, im.mode in _GREY_MODES


def folder_image_shape(root: str | os.PathLike) -> tuple[int, int, int] | None:
    """(H, W, C) of every image below `root`, read from file headers only; None when the sizes differ.

    C follows the loader: 1 when every image is grey, else 3. Unreadable files are left out here (loading
    reports them).
    """
    sizes, grey = set(), True
    for path in _images_below(root):
        try:
            size, is_grey = read_header(path)
        except UNREADABLE:
            continue
        sizes.add(size)
        grey = grey and is_grey
    if len(sizes) != 1:
        return None
    (width, height) = sizes.pop()
    return height, width, 1 if grey else 3


def unreadable_error(path, err: Exception) -> ValueError:
    """The error for an unreadable image under bad_images="raise": the file, the cause and the way out."""
    return ValueError(
        f"cannot read image {path}: {err}; remove or replace the file, or leave unreadable files out "
        "with --bad-images skip (ditlab train / finetune; in Python bad_images='skip')"
    )


def warn_skipped(root, bad: list[str]) -> None:
    """One warning line for the unreadable images left out of a set: their count and the first few."""
    warnings.warn(
        f"skipped {len(bad)} unreadable image(s) in {root}: "
        + "; ".join(bad[:3])
        + (" ..." if len(bad) > 3 else ""),
        stacklevel=3,
    )


def _decode(path: str | os.PathLike) -> Image.Image:
    with Image.open(path) as im:
        width, height = im.size
        if width * height > MAX_IMAGE_PIXELS:
            raise ValueError(
                f"{width}x{height} pixels is more than ditlab decodes ({MAX_IMAGE_PIXELS} pixels; a decompression "
                "bomb, or a huge image: resize it, or raise DITLAB_MAX_IMAGE_PIXELS)"
            )
        im.load()  # decode now, so a truncated file fails here with its path
        return im.copy()


def _to_mode(im: Image.Image, channels: int) -> Image.Image:
    if im.mode in ("RGBA", "LA", "PA", "P", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)  # transparent -> black
    if im.mode.startswith("I;16") or im.mode == "I":
        # 16/32-bit grey: scale to 8 bits instead of letting Pillow clip at 255.
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.rint(arr * (255.0 / top)).astype(np.uint8))
    return im.convert("L" if channels == 1 else "RGB")


def image_array(
    im: Image.Image, channels: int, target: tuple[int, int] | None, center_crop: bool = True
) -> np.ndarray:
    """A decoded image -> uint8 (H, W, C) with `channels`, resized to `target` (None: native size) by the one
    filter. The in-memory loader and the streaming loader both go through here, so their pixels agree."""
    arr = np.asarray(_to_mode(im, channels), dtype=np.uint8)
    arr = arr[None, ..., None] if arr.ndim == 2 else arr[None]  # (1, H, W, C)
    return (arr if target is None else resize_images(arr, target, center_crop=center_crop))[0]


def load_image(
    path: str | os.PathLike, channels: int, target: tuple[int, int] | None, center_crop: bool = True
) -> np.ndarray:
    """Decode one image file -> uint8 (H, W, C) (see `image_array`); raises the UNREADABLE family."""
    return image_array(_decode(path), channels, target, center_crop)


def load_image_folder_arrays(
    root: str | os.PathLike,
    *,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    center_crop: bool = True,
    unconditional: bool | None = None,
    bad_images: str = "raise",
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode an ImageFolder tree -> (images uint8 (N, H, W, C), labels int64 (N,), class_names).

    Args:
        image_size: resize every image to this size (`ditlab.data.transforms.resize_images`); None keeps
            the native size, which must then be the same for every image.
        channels: 1 or 3; None = 1 if every image is grey, else 3.
        center_crop: fit the short side and crop the long one (True) or stretch (False) for other aspects.
        unconditional: None = auto (class sub-folders present -> conditional), True/False to force.
        bad_images: "raise" (default) stops at the first unreadable file with its path; "skip" leaves
            unreadable files out and warns once with their count.
    """
    if bad_images not in BAD_IMAGE_POLICIES:
        raise ValueError(f"bad_images must be one of {BAD_IMAGE_POLICIES}, got {bad_images!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    target = size_pair(image_size) if image_size is not None else None
    paths, labels, class_names = scan_image_folder(root, unconditional)
    decoded, kept, bad = [], [], []
    for path, label in zip(paths, labels):
        try:
            decoded.append(_decode(path))
        except UNREADABLE as e:
            if bad_images == "raise":
                raise unreadable_error(path, e) from e
            bad.append(f"{path} ({e})")
            continue
        kept.append(label)
    if bad:
        warn_skipped(root, bad)
    if not decoded:
        raise ValueError(f"no readable images in {root} ({len(bad)} unreadable); replace the broken files")
    if channels is None:
        channels = 1 if all(im.mode in _GREY_MODES for im in decoded) else 3
    if target is None:
        sizes = {im.size for im in decoded}
        if len(sizes) > 1:
            (w1, h1), (w2, h2) = sorted(sizes)[:2]
            raise ValueError(
                f"images in {root} have {len(sizes)} different sizes (e.g. {h1}x{w1} and {h2}x{w2}); "
                "pass image_size (CLI: --image-size) to resize them to one size"
            )
    arrays = [image_array(im, channels, target, center_crop) for im in decoded]
    return np.stack(arrays), np.asarray(kept, dtype=np.int64), class_names
