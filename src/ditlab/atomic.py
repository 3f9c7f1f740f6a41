"""Atomic file writes: write to a temporary file beside the target, flush it to disk, rename it into place.

A reader (or a second process filling the same cache) never sees half a file, and a crash or a full disk
during the write leaves the previous file untouched. Every file ditlab writes goes through here:
checkpoints, models, samples, grids, caches, logs.

The result has the permissions `open(path, "w")` would give it: a new file gets 0o666 less the umask (the
temporary file is created with exactly that request, so the kernel applies the umask, and the result gets
that mode even where a writer replaced the temporary file with its own), and a replaced file keeps its own
mode. (tempfile.mkstemp, used before, made every output 0o600: unreadable to the user's group.)
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def _create_temp(path: Path) -> Path:
    """A new, empty, uniquely named hidden file beside `path`, created with mode 0o666 & ~umask."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, _FLAGS, 0o666))
            return tmp
        except FileExistsError:  # a 48-bit name taken by another writer: draw again
            continue


def _mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write(f)` on a temporary binary file beside `path`, then rename it to `path`.

    `f.name` is the temporary file's path, for writers that want a path (safetensors' save_file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path)
    try:
        mode = _mode_of(path if path.exists() else tmp)  # replacing a file keeps its mode, as open() does
        with open(tmp, "r+b") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # set after writing: a writer handed `f.name` may put its own file there (safetensors makes it 0o600)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))
