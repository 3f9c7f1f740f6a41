"""Sample exchange formats: model outputs -> uint8 images, ADM-style `.npz` files and PNG grids.

Samples travel between ditlab and external evaluators (ADM's `evaluator.py`, clean-fid) as uint8 (N, H, W, C)
arrays: `arr_0` in an `.npz`, with optional `labels` (N,) holding the class each sample was asked for.
"""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ditlab.atomic import atomic_write


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model outputs in [-1, 1], (N, C, H, W) float -> uint8 (N, H, W, C) on the CPU.

    Uses the official DiT quantisation `clamp(127.5 * x + 128, 0, 255)` followed by truncation: adding 128
    instead of 127.5 makes the truncation round to nearest, so `to_uint8(u / 127.5 - 1) == u` for all uint8 u.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"to_uint8 expects a float tensor (N, C, H, W) in [-1, 1], got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"to_uint8 expects (N, C, H, W), got shape {tuple(x.shape)}")
    y = torch.clamp(127.5 * x.float() + 128.0, 0.0, 255.0)  # (N, C, H, W)
    return y.permute(0, 2, 3, 1).to("cpu", dtype=torch.uint8).contiguous()  # (N, H, W, C)


def check_images(images, *, what: str = "images") -> np.ndarray:
    """Validate uint8 images (N, H, W, C) with C in {1, 3} (numpy or torch) and return them as a numpy array.

    Grey images given as (N, H, W) get a channel axis. The messages name the usual mistakes: float model
    outputs (convert with `ditlab.data.to_uint8`) and channels-first arrays.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{what} must be a uint8 array or tensor (N, H, W, C), got {type(images).__name__}")
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8:
        if np.issubdtype(images.dtype, np.floating) and images.size:
            lo, hi = float(np.nanmin(images)), float(np.nanmax(images))
            hint = (
                "they look like model outputs in [-1, 1]; convert with ditlab.data.to_uint8"
                if lo >= -1.5 and hi <= 1.5
                else "scale them to 0..255 and cast to uint8"
            )
            got = f"{images.dtype} with range [{lo:.3g}, {hi:.3g}]"
            raise TypeError(f"{what} must be uint8 0..255, got {got}: {hint}")
        raise TypeError(f"{what} must be uint8 0..255, got {images.dtype}; cast them to uint8")
    if images.ndim != 4:
        raise ValueError(f"{what} must have shape (N, H, W, C), got {images.shape}")
    if images.shape[-1] not in (1, 3):
        if images.shape[1] in (1, 3):
            raise ValueError(
                f"{what} have shape {images.shape}, which looks channels-first; "
                "ditlab expects (N, H, W, C): transpose with .transpose(0, 2, 3, 1)"
            )
        raise ValueError(f"{what} must have 1 or 3 channels in the last axis, got shape {images.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{what} are empty (shape {images.shape})")
    return images


def save_npz(path: str | os.PathLike, images, labels=None, prompts=None) -> Path:
    """Write samples as an ADM-style `.npz`: `arr_0` uint8 (N, H, W, C) and, if given, `labels` int64 (N,)
    and `prompts` (N,) unicode strings, the prompt of each image (text-to-image samples)."""
    arr = check_images(images, what="samples")
    arrays = {"arr_0": arr}
    if prompts is not None:
        if isinstance(prompts, str) or len(prompts) != arr.shape[0]:
            raise ValueError(f"prompts must be {arr.shape[0]} strings, one per image")
        arrays["prompts"] = np.asarray([str(p) for p in prompts], dtype=np.str_)
    if labels is not None:
        lab = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if lab.shape != (arr.shape[0],) or not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"labels must be ints of shape ({arr.shape[0]},), got {lab.dtype} {lab.shape}")
        arrays["labels"] = lab.astype(np.int64)
    path = Path(path)
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


class SamplesTypeError(ValueError, TypeError):
    """Arrays of the wrong dtype in a samples file: bad input (a ValueError, as every flaw of a file is, which
    `ditlab` reports in one line) and the TypeError `check_images` raises for such arrays given in code."""


def _mapped_member(path: Path, member: str) -> np.ndarray | None:
    """A read-only memory map of array `member` ("arr_0.npy") of an uncompressed `.npz` (np.savez, ADM's
    batches), or None where it cannot be mapped (compressed, absent, Fortran order, objects)."""
    with zipfile.ZipFile(path) as archive:
        try:
            info = archive.getinfo(member)
        except KeyError:
            return None
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        with archive.open(info) as f:  # the .npy header, read through the zip
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
                version, np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            header_size = f.tell()
    with open(path, "rb") as raw:  # the member's data starts after its local file header
        raw.seek(info.header_offset)
        local = raw.read(30)
    if local[:4] != b"PK\x03\x04" or fortran or dtype.hasobject:
        return None
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    offset = info.header_offset + 30 + name_len + extra_len + header_size
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def load_npz(path: str | os.PathLike, mmap: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Read an ADM-style samples `.npz` -> (images uint8 (N, H, W, C), labels int64 (N,) or None).

    `mmap`: memory-map `arr_0` of an uncompressed file instead of reading it (pages are read when used:
    a torchrun rank that scores its share of 50k images reads only that share); a compressed file is read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"samples file not found: {path}")
    try:  # the arrays are read lazily: a corrupt member fails only here, with numpy's or zipfile's errors
        mapped = _mapped_member(path, "arr_0.npy") if mmap else None
        with np.load(path, allow_pickle=False) as data:
            wanted = ("labels",) if mapped is not None else ("arr_0", "labels")
            arrays = {name: np.asarray(data[name]) for name in wanted if name in data.files}
            if mapped is not None:
                arrays["arr_0"] = mapped
            names = list(data.files)
    except Exception as e:  # numpy raises several types for a corrupt or foreign file
        raise ValueError(f"cannot read {path} as .npz ({e}); write samples with ditlab.data.save_npz") from e
    if "arr_0" not in arrays:
        raise ValueError(
            f"{path} has no 'arr_0' array (it has: {', '.join(names) or 'nothing'}); samples must "
            "be stored as arr_0 uint8 (N, H, W, C) (ADM's evaluator and ditlab.data.save_npz write that)"
        )
    try:
        images = check_images(arrays["arr_0"], what=f"arr_0 of {path}")
    except TypeError as e:
        raise SamplesTypeError(str(e)) from e
    labels = arrays.get("labels")
    if labels is not None:
        if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            want = f"integers of shape ({images.shape[0]},)"
            raise ValueError(f"'labels' in {path} must be {want}, got {labels.dtype} {labels.shape}")
        labels = labels.astype(np.int64)
    return images, labels


def make_grid(images, nrow: int = 8, padding: int = 2, pad_value: int = 0) -> np.ndarray:
    """Tile images into one uint8 (H', W', C) array, `nrow` images per row.

    `images` are uint8 (N, H, W, C) or float model outputs (N, C, H, W) in [-1, 1] (through `to_uint8`).
    """
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        images = to_uint8(images)
    arr = check_images(images)
    if nrow < 1 or padding < 0:
        raise ValueError(f"nrow must be >= 1 and padding >= 0, got nrow={nrow}, padding={padding}")
    n, h, w, c = arr.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    grid = np.full((rows * h + (rows + 1) * padding, cols * w + (cols + 1) * padding, c), pad_value, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[top : top + h, left : left + w] = arr[i]
    return grid


def save_grid(images, path: str | os.PathLike, nrow: int = 8, padding: int = 2, min_side: int = 32) -> Path:
    """Save images as one PNG grid (see `make_grid` for the accepted inputs).

    Images smaller than `min_side` pixels (8×8 digits) are enlarged by an integer nearest-neighbour factor
    so the grid is viewable; the pixels themselves are unchanged (the .npz keeps the real size).
    """
    arr = check_images(
        to_uint8(images) if isinstance(images, torch.Tensor) and images.is_floating_point() else images
    )
    factor = max(1, -(-min_side // min(arr.shape[1:3])))
    if factor > 1:
        arr = arr.repeat(factor, axis=1).repeat(factor, axis=2)
    grid = make_grid(arr, nrow=nrow, padding=padding)
    picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    path = Path(path)
    atomic_write(path, lambda f: picture.save(f, format="PNG"))
    return path
