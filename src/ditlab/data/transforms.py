"""Image transforms shared by data loading and evaluation: the one resampler, and channel conversion.

clean-fid showed that FID moves with the resize filter and with quantisation, so every resize in ditlab goes
through `resize_images`: Pillow's bicubic filter, which widens its support when shrinking (antialiased) and is
the filter clean-fid's "clean" mode uses. Each channel is resampled as a float32 ("F" mode) image, so nothing
is rounded inside the filter; the caller chooses uint8 output (rounded, for stored data) or float32 in
[0, 255] (for feature extractors, as clean-fid does).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

RESIZE_FILTER = "PIL bicubic (antialiased), per channel in float32"


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def size_pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """An image size given as `n` or `(height, width)` -> `(height, width)` of positive ints."""
    if _is_int(size):
        pair = (int(size), int(size))
    elif isinstance(size, (tuple, list)) and len(size) == 2 and all(_is_int(s) for s in size):
        pair = (int(size[0]), int(size[1]))
    else:
        raise TypeError(f"image size must be an int or (height, width), got {size!r}")
    if min(pair) < 1:
        raise ValueError(f"image size must be positive, got {size!r}")
    return pair


def _crop_box(height: int, width: int, out_h: int, out_w: int) -> tuple[float, float, float, float]:
    """The largest centred (left, top, right, bottom) box of the source with the target's aspect ratio."""
    if width * out_h > height * out_w:  # source is wider than the target: trim left and right
        box_w = height * out_w / out_h
        left = (width - box_w) / 2
        return (left, 0.0, left + box_w, float(height))
    box_h = width * out_h / out_w  # source is taller (or equal): trim top and bottom
    top = (height - box_h) / 2
    return (0.0, top, float(width), top + box_h)


def resize_images(
    images: np.ndarray,
    size: int | tuple[int, int],
    *,
    center_crop: bool = True,
    output: str = "uint8",
) -> np.ndarray:
    """Resize uint8 images (N, H, W, C) to `size` with the one filter (PIL bicubic).

    Args:
        images: uint8 array (N, H, W, C).
        size: target `n` or `(height, width)`.
        center_crop: resample the largest centred region with the target's aspect ratio (ADM/DiT style: fit
            the short side, crop the long one); False stretches the whole image. Same result for images of
            the target's aspect ratio.
        output: "uint8" (rounded and clipped, for stored data) or "float32" (clipped to [0, 255], not rounded,
            for feature extractors).

    Returns:
        array (N, h, w, C) of the requested dtype. Images already at `size` are returned unchanged (as a copy
        in the requested dtype), so the native resolution never passes through the filter.
    """
    if output not in ("uint8", "float32"):
        raise ValueError(f"output must be 'uint8' or 'float32', got {output!r}")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise TypeError("resize_images expects a uint8 numpy array (N, H, W, C)")
    out_h, out_w = size_pair(size)
    n, height, width, channels = images.shape
    if (height, width) == (out_h, out_w):
        return images.astype(np.float32 if output == "float32" else np.uint8, copy=True)
    box = _crop_box(height, width, out_h, out_w) if center_crop else (0.0, 0.0, float(width), float(height))
    result = np.empty((n, out_h, out_w, channels), dtype=np.float32)
    for i in range(n):
        for c in range(channels):
            # Mode "F" (float32): no rounding inside the filter.
            plane = Image.fromarray(images[i, :, :, c].astype(np.float32))
            result[i, :, :, c] = np.asarray(plane.resize((out_w, out_h), Image.Resampling.BICUBIC, box=box))
    # Bicubic overshoots near edges; clip back to the valid range like clean-fid does.
    np.clip(result, 0.0, 255.0, out=result)
    if output == "uint8":
        return np.rint(result).astype(np.uint8)
    return result


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Images (N, H, W, C) with C in {1, 3} -> `channels` (1 or 3), keeping the dtype.

    Grey -> RGB repeats the channel; RGB -> grey uses ITU-R 601-2 luma (0.299 R + 0.587 G + 0.114 B, the
    formula of Pillow's "L" mode), rounded back to uint8 for uint8 input.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    have = images.shape[-1]
    if have not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels in the last axis, got shape {images.shape}")
    if have == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=-1)
    luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (N, H, W)
    if images.dtype == np.uint8:
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]
    return luma.astype(images.dtype)[..., None]
