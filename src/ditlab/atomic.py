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
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# The temporary files `_create_temp` makes: `.<name>.<12 hex digits>.tmp`.
TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")
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
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        failure = _io_failure(err, path)
        if failure is not None:
            raise failure from err
        raise
    return path


def _io_failure(err: BaseException, path: Path) -> OSError | None:
    """The operating-system error behind a failed write, as an OSError naming `path` (None: not an I/O
    failure). Writers wrap it: torch.save raises RuntimeError with the OSError as its context, safetensors
    its own error saying "(os error 28)"; a full disk must read as a full disk, whichever library wrote."""
    if not isinstance(err, Exception):
        return None  # KeyboardInterrupt and the like pass as they are
    seen, depth = err, 0
    while seen is not None and depth < 8:  # the chain of causes, bounded (chains may loop)
        if isinstance(seen, OSError) and seen.errno:
            if seen is err and seen.filename is not None:
                return None  # already an OSError naming its file
            return OSError(seen.errno, os.strerror(seen.errno), str(path))
        seen, depth = seen.__cause__ or seen.__context__, depth + 1
    found = re.search(r"os error (\d+)", str(err))
    return OSError(int(found.group(1)), os.strerror(int(found.group(1))), str(path)) if found else None


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def remove_orphan_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that writers killed mid-write (or stopped by a full disk) left in `folder`;
    returns them. Only for a folder no other process is writing to (a run folder, under its lock)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    orphans = [p for p in folder.iterdir() if TEMP_NAME.match(p.name) and p.is_file()]
    for path in orphans:
        path.unlink(missing_ok=True)
    return orphans
