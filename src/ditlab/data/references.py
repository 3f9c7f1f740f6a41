"""Reference images for reference-style models (`ditlab sample RUN --reference IMG`): image files read as the
model's input, float (M, C, H, W) in [-1, 1], whose AdaIN statistics condition the samples
(`ditlab.nn.reference`).

A reference must already be what the model generates: as many channels (RGB for a 3-channel model, grey for
a 1-channel one) and the model's image size. Nothing is converted or resized silently; a file that differs is
a ValueError naming the conversion to make.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ditlab.data.dataset import uint8_to_unit

MODE_FOR_CHANNELS = {1: "L", 3: "RGB"}  # the image mode a pixel model's references are read in


def image_channels(im: Image.Image) -> int:
    """The channels an opened image holds (a palette image: RGB, RGBA with transparency)."""
    if im.mode == "P":
        return 4 if "transparency" in im.info else 3
    return len(im.getbands())


def read_reference(path: str | os.PathLike, channels: int, image_size: tuple[int, int]) -> torch.Tensor:
    """One image file -> float (C, H, W) in [-1, 1]; a ValueError (FileNotFoundError for a missing file) that
    names the fix when it is not a `channels`-channel image of `image_size` (H, W)."""
    path = Path(path)
    if channels not in MODE_FOR_CHANNELS:
        raise ValueError(
            f"this model works on {channels}-channel latents; reference images are for pixel models "
            "(1 or 3 channels): pass references as latents from Python, generate(model, references=...)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no reference image {path}: give the path of an image file (PNG, JPEG)")
    try:
        with Image.open(path) as im:
            got = image_channels(im)
            if got != channels:
                mode = MODE_FOR_CHANNELS[channels]
                raise ValueError(
                    f"the reference {path} has {got} channel(s) (mode {im.mode}) but the model takes "
                    f"{channels}-channel ({mode}) references; convert it, e.g. PIL's Image.convert({mode!r})"
                )
            pixels = np.asarray(im.convert(MODE_FOR_CHANNELS[channels]))
    except OSError as err:  # PIL's unidentified image too
        raise ValueError(f"cannot read the reference {path} as an image: {err}") from err
    size = tuple(pixels.shape[:2])
    if size != tuple(image_size):
        H, W = image_size
        raise ValueError(
            f"the reference {path} is {size[0]}x{size[1]} (HxW) but the model generates {H}x{W} images; "
            f"resize it to {H}x{W} first (e.g. PIL's Image.resize(({W}, {H})))"
        )
    pixels = pixels.reshape(*size, channels)  # grey: a channel axis
    return uint8_to_unit(torch.from_numpy(pixels.copy()).permute(2, 0, 1))


def read_references(paths, channels: int, image_size: tuple[int, int]) -> torch.Tensor:
    """Image files -> float (M, C, H, W) in [-1, 1], in order (see `read_reference`)."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ValueError("give at least one reference image")
    return torch.stack([read_reference(p, channels, image_size) for p in paths])
