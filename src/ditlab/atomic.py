"""Atomic file writes: write to a temporary file beside the target, flush it to disk, rename it into place.

A reader (or a second process filling the same cache) never sees half a file, and a crash or a full disk
during the write leaves the previous file untouched. Every file ditlab writes goes through here:
checkpoints, models, samples, grids, caches, logs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(f)` on a temporary binary file beside `path`, then rename it to `path`.

    `f.name` is the temporary file's path, for writers that want a path (safetensors' save_file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, "r+b") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))
