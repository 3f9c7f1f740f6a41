"""Training checkpoints and the rules of a run folder.

A checkpoint is `checkpoints/{step:07d}.pt` (the official DiT layout) holding `model`, `ema`, `opt` and
`args` like the official train.py (so its `find_model` and ditlab.load_model both read it), plus ditlab's
`config` (the model), `objective`, `step` and RNG state. Every value is a tensor, number, string, list or
dict, so `torch.load(weights_only=True)` reads it without unpickling code.

A run folder belongs to one run. A new run refuses a folder that holds another one unless it continues it
(`--resume auto`) or was told to move it aside (`--overwrite`: its files go to `previous-runs/<UTC time>/`,
nothing is deleted). Retention (`keep_last`) prunes only checkpoints of the run being written, and
`--resume auto` takes the newest checkpoint that loads, renaming unreadable ones `*.pt.corrupt`.

Sharded runs (--parallel fsdp|hsdp) write distributed checkpoint sets `checkpoints/{step:07d}.dcp/` instead
(ditlab.train.dcp): listed only once complete, refused with a clear error when a file of the set is missing,
and resumable on any number of processes, like a `.pt` file.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path

import torch

from ditlab.atomic import atomic_write
from ditlab.models.checkpoint import read_torch_file
from ditlab.train import dcp
from ditlab.train.lock import refuse_if_running

CKPT_NAME = re.compile(r"^(\d{7,})\.pt$")
DCP_NAME = re.compile(r"^(\d{7,})\.dcp$")  # a folder: one distributed checkpoint set
# What a run writes into its folder (trainer, fine-tuning, demo, ablation): what `--overwrite` moves aside.
RUN_OUTPUTS = (
    "config.json",
    "runtime.json",
    "checkpoints",
    "metrics.jsonl",
    "model.safetensors",
    "adapter.safetensors",
    "autoencoder.safetensors",  # `ditlab vae train`
    "loss.png",
    "samples.png",
    "samples_*.png",
    "tensorboard",
    "grid.png",
    "samples.npz",
    "report.json",
    "train.json",
    "result.json",
    "ema-snapshots",
)
PREVIOUS_RUNS = "previous-runs"


class CorruptCheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, corrupt, or not a torch file)."""


class RunFolderInUseError(ValueError):
    """The output folder holds another run and the new run was given neither resume nor overwrite."""


def checkpoint_dir(out: str | Path) -> Path:
    return Path(out) / "checkpoints"


def list_checkpoints(out: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint of a run, oldest first (temporary files are ignored)."""
    folder = checkpoint_dir(out)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CKPT_NAME.match(p.name))]
    found += [
        (int(m.group(1)), p) for p in folder.iterdir() if (m := DCP_NAME.match(p.name)) and dcp.is_complete(p)
    ]
    return sorted(found)


def latest_checkpoint(out: str | Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1][1] if found else None


def save_training_state(out: str | Path, state: dict, keep_last: int = 0) -> Path:
    """Write `state` as the checkpoint of `state["step"]`, then prune to the newest `keep_last` (0 = keep all).

    The write goes to a temporary file that is renamed into place, so a crash or a full disk during the
    write leaves the previous checkpoints untouched; pruning happens only after the new file is complete.
    """
    step = int(state["step"])
    path = checkpoint_dir(out) / f"{step:07d}.pt"
    atomic_write(path, lambda f: torch.save(state, f))
    prune_checkpoints(out, keep_last, step)
    return path


def prune_checkpoints(out: str | Path, keep_last: int, saved_step: int) -> None:
    """Delete all but the newest `keep_last` checkpoints at or before `saved_step` (the one just written,
    which therefore always stays). A checkpoint of a later step is not this run's history: it is left alone."""
    if keep_last <= 0:
        return
    mine = [path for step, path in list_checkpoints(out) if step <= saved_step]
    for old in mine[:-keep_last]:
        if old.is_dir():  # a distributed set
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def save_distributed_state(out: str | Path, meta: dict, model, ema, opt, info, keep_last: int = 0) -> Path:
    """Every rank: write the distributed checkpoint set of `meta["step"]` (see ditlab.train.dcp), then rank 0
    prunes to the newest `keep_last`, as `save_training_state`."""
    path = dcp.save(checkpoint_dir(out), int(meta["step"]), meta, model, ema, opt, info)
    if info.is_main:
        prune_checkpoints(out, keep_last, int(meta["step"]))
    return path


def load_training_state(path: str | Path) -> dict:
    """A checkpoint's state; for a distributed set (a `.dcp` folder) only its small part and "dcp" (its
    path): the tensors load into a built model (ditlab.train.dcp.load_states)."""
    path = Path(path)
    if path.is_dir() and path.suffix == ".dcp":
        return dcp.read_meta(path)  # an incomplete set raises IncompleteCheckpointError, naming the gap
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = read_torch_file(path)
    except ValueError as err:
        raise CorruptCheckpointError(str(err)) from err
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a ditlab training checkpoint (a dict)")
    missing = [k for k in ("model", "ema", "opt", "step", "config") if k not in state]
    if missing:
        raise ValueError(
            f"{path} is not a ditlab training checkpoint (missing {missing}); to fine-tune from plain "
            "weights use `ditlab finetune`, to sample use `ditlab sample`"
        )
    kinds = {"config": dict, "args": dict, "step": int, "model": dict, "ema": dict, "opt": dict}
    odd = [k for k, kind in kinds.items() if k in state and not isinstance(state[k], kind)]
    if odd or state["step"] < 0:
        raise CorruptCheckpointError(
            f"{path} is not a readable ditlab training checkpoint: entries of the wrong kind {odd or ['step']}; "
            "it is corrupt or was edited: use an earlier checkpoint"
        )
    return state


def resume_step_guess(out: str | Path, resume: str | os.PathLike | None) -> int:
    """The step a run will most likely continue from, read from checkpoint names alone (nothing is loaded):
    the newest checkpoint's for "auto", a named file's when its name is a step; 0 for a new run or a name
    that says nothing. The trainer starts its data workers there before the model exists; a wrong guess (a
    corrupt newest checkpoint, a renamed file) only restarts them at the step the checkpoint holds."""
    if not resume:
        return 0
    if str(resume) == "auto":
        found = list_checkpoints(out)
        return found[-1][0] if found else 0
    m = CKPT_NAME.match(Path(resume).name) or DCP_NAME.match(Path(resume).name)
    return int(m.group(1)) if m else 0


def started_precision(out: str | Path) -> str | None:
    """The precision (fp32 | bf16) the run in `out` started with, from its runtime.json; None without one."""
    try:
        record = json.loads((Path(out) / "runtime.json").read_text())
    except (OSError, ValueError):  # no record (a new folder) or a damaged one: nothing to keep
        return None
    precision = record.get("precision") if isinstance(record, dict) else None
    return precision if precision in ("fp32", "bf16") else None


def resume_checkpoint(out: str | Path, resume: str | os.PathLike | None) -> tuple[Path, dict] | None:
    """The checkpoint a run continues from and its loaded state, or None to start a new run.

    `resume` is None/"" (start new), a checkpoint path (read it or fail), or "auto": the newest checkpoint
    in `out` that loads. An unreadable one (a run killed while the disk filled, a truncated copy) is renamed
    `<name>.corrupt`, with one warning, and the one before it is tried: the newest *loadable* state wins.
    """
    if not resume:
        return None
    refuse_if_running(out)  # its owner may be writing and pruning the checkpoints this would read
    if str(resume) != "auto":
        path = Path(resume)
        return path, load_training_state(path)
    for _, path in reversed(list_checkpoints(out)):
        try:
            return path, load_training_state(path)
        except CorruptCheckpointError:
            aside, n = path.with_name(path.name + ".corrupt"), 1
            while aside.exists():  # an earlier corrupt file of the same step stays too
                aside, n = path.with_name(f"{path.name}.corrupt{n}"), n + 1
            try:
                os.replace(path, aside)
            except FileNotFoundError:  # another process of the same run (torchrun) moved it first
                continue
            warnings.warn(
                f"checkpoint {path} is unreadable (truncated or corrupt): renamed it {aside.name}, "
                "trying the checkpoint before it",
                stacklevel=2,
            )
    return None


def previous_run_files(out: str | Path, ignore: tuple[str, ...] = ()) -> list[str]:
    """The signs in `out` of a run already written there: checkpoints/ (with a checkpoint in it),
    config.json, metrics.jsonl, model.safetensors; names in `ignore` do not count."""
    out = Path(out)
    found = ["checkpoints/"] if list_checkpoints(out) else []
    found += [n for n in ("config.json", "metrics.jsonl", "model.safetensors") if (out / n).exists()]
    return [n for n in found if n not in ignore]


def check_run_folder(out: str | Path, overwrite: bool, ignore: tuple[str, ...] = ()) -> None:
    """Refuse (before anything is written) a folder holding another run, unless `overwrite` was asked."""
    found = previous_run_files(out, ignore)
    if found and not overwrite:
        raise RunFolderInUseError(
            f"{out} already holds a run ({', '.join(found)}); a new run there would replace its files. "
            "Continue it with `--resume auto` (from its newest checkpoint), start a new run there with "
            f"`--overwrite` (moves the old files into {Path(out) / PREVIOUS_RUNS}/<time>/, deletes nothing), "
            "or pick another --out"
        )


def move_aside(out: str | Path, paths: list[Path]) -> Path | None:
    """Move `paths` (files or folders inside `out`) into a new `out/previous-runs/<UTC time>/`, keeping
    their places relative to `out`; returns that folder (None when there is nothing to move)."""
    if not paths:
        return None
    out = Path(out)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    for n in itertools.count():  # two runs moved aside within the same second get -1, -2, ...
        dest = out / PREVIOUS_RUNS / (f"{stamp}-{n}" if n else stamp)
        try:
            dest.mkdir(parents=True)
            break
        except FileExistsError:
            continue
    for path in paths:
        target = dest / Path(path).relative_to(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(target))
    return dest


def move_previous_run_aside(out: str | Path) -> Path | None:
    """Move every file a run writes (RUN_OUTPUTS) out of `out` into `out/previous-runs/<UTC time>/`."""
    out = Path(out)
    if not out.is_dir():
        return None
    paths = sorted({p for pattern in RUN_OUTPUTS for p in out.glob(pattern)})
    return move_aside(out, paths)
