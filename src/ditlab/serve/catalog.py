"""The checkpoints a `ditlab serve` page offers: fixed when the server starts, loaded one at a time.

A visitor picks a *name* from this catalog; names map to the paths the server was started with, so nothing a
visitor types is ever opened as a file. One model is kept in memory (the last one picked): a folder of large
checkpoints does not have to fit in memory at once.
"""

from __future__ import annotations

import threading
from pathlib import Path

import ditlab
from ditlab.models.formats import find_format, probe


def find_checkpoints(directory: str | Path) -> dict[str, Path]:
    """Every entry of `directory` (not recursive) that is a checkpoint ditlab reads, by name, sorted.

    Entries of another kind (notes, sample grids) are skipped; a folder without any checkpoint is an error.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"--models {directory}: not a folder; pass a folder of checkpoints or run folders")
    found = {}
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith("."):
            continue
        try:
            find_format(probe(entry))
        except (ValueError, OSError):  # not a checkpoint: the folder may hold other files too
            continue
        found[entry.name] = entry
    if not found:
        raise ValueError(
            f"--models {directory}: no checkpoint in it (.safetensors, .pt, run folders or diffusers folders)"
        )
    return found


class Catalog:
    """Checkpoints by name; `model(name)` loads the one picked (and drops the previous one)."""

    def __init__(self, paths: dict[str, Path], device="cpu"):
        if not paths:
            raise ValueError("nothing to serve: pass a checkpoint or run folder, or --models DIR")
        self.paths = dict(paths)
        self.device = device
        self._loaded: tuple[str, object] | None = None
        self._lock = threading.Lock()  # page events run in threads; load each model once

    @classmethod
    def from_args(cls, checkpoint: str | None, models_dir: str | None, device="cpu") -> Catalog:
        """The catalog of `ditlab serve CHECKPOINT` and/or `--models DIR` (the checkpoint listed first)."""
        paths: dict[str, Path] = {}
        if checkpoint:
            path = Path(checkpoint)
            if not path.exists():
                raise ValueError(f"checkpoint {path} does not exist")
            paths[path.name or str(path)] = path
        if models_dir:
            for name, path in find_checkpoints(models_dir).items():
                paths.setdefault(name, path)
        return cls(paths, device)

    @property
    def names(self) -> list[str]:
        return list(self.paths)

    def model(self, name: str):
        """The model called `name` (a ValueError for a name this server was not started with)."""
        if name not in self.paths:
            raise ValueError(f"unknown model {name!r}; this server offers: {', '.join(self.paths)}")
        with self._lock:
            if self._loaded is None or self._loaded[0] != name:
                self._loaded = None  # free the previous model before loading the next
                self._loaded = (name, ditlab.load_model(self.paths[name], device=self.device))
            return self._loaded[1]
