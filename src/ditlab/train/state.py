"""Training checkpoints: everything needed to resume a run exactly, written atomically.

A checkpoint is `checkpoints/{step:07d}.pt` (the official DiT layout) holding `model`, `ema`, `opt` and
`args` like the official train.py (so its `find_model` and ditlab.load_model both read it), plus ditlab's
`config` (the model), `objective`, `step` and RNG state. Every value is a tensor, number, string, list or
dict, so `torch.load(weights_only=True)` reads it without unpickling code.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ditlab.atomic import atomic_write
from ditlab.models.checkpoint import read_torch_file

CKPT_NAME = re.compile(r"^(\d{7,})\.pt$")


def checkpoint_dir(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def list_checkpoints(out: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint of a run, oldest first (temporary files are ignored)."""
    folder = checkpoint_dir(out)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CKPT_NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(out: str | Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1][1] if found else None


def save_training_state(out: str | Path, state: dict, keep_last: int = 0) -> Path:
    """Write `state` as the checkpoint of `state["step"]`, then prune to the newest `keep_last` (0 = keep all).

    The write goes to a temporary file that is renamed into place, so a crash or a full disk during the
    write leaves the previous checkpoints untouched; pruning happens only after the new file is complete.
    """
    path = checkpoint_dir(out) / f"{int(state['step']):07d}.pt"
    atomic_write(path, lambda f: torch.save(state, f))
    if keep_last > 0:
        for _, old in list_checkpoints(out)[:-keep_last]:
            old.unlink(missing_ok=True)
    return path


def load_training_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state = read_torch_file(path)
    missing = [k for k in ("model", "ema", "opt", "step", "config") if k not in state]
    if missing:
        raise ValueError(
            f"{path} is not a ditlab training checkpoint (missing {missing}); to fine-tune from plain "
            "weights use `ditlab finetune`, to sample use `ditlab sample`"
        )
    return state
