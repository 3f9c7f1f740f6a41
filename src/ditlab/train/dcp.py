"""Distributed checkpoints (`torch.distributed.checkpoint`) of sharded runs, resumable on any world size.

A sharded run (--parallel fsdp|hsdp) writes `checkpoints/{step:07d}.dcp/`: every rank writes its own shards
of the model, EMA and AdamW states (`__<rank>_0.distcp`, described by DCP's `.metadata`), rank 0 adds
`train.pt` (step, options, model config, objective, RNG: what `--resume auto` and `--config` read without a
model) and, last, `.complete`, which lists every file of the set with its size.

Atomic as a set: the ranks write into `checkpoints/.{step:07d}.dcp.tmp/`; after a barrier (every rank has
finished) rank 0 writes `.complete` and renames the folder into place. A step killed half-way stays a
`.tmp` folder, which `list_checkpoints` never lists; a set that later loses a file (a partial copy) is refused,
naming what is missing, rather than resumed from silently.

Loading reshards: DCP reads each saved shard into whatever layout the resuming run has (W' FSDP ranks, DDP, or
one plain process), so a run saved on N processes continues on M. Plain `.pt` checkpoints (DDP and single runs)
load into a sharded run too (`load_states`).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ditlab import distributed as D
from ditlab.models.checkpoint import read_torch_file

COMPLETE = ".complete"
META = "train.pt"


class IncompleteCheckpointError(ValueError):
    """A distributed checkpoint set that lacks one of its files (a shard, its metadata or train.pt)."""


def _sharded_states(model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The tensors DCP writes and reads, keyed by parameter names (the same in every parallel layout)."""
    return {
        "model": get_model_state_dict(model),
        "ema": get_model_state_dict(ema),
        "opt": get_optimizer_state_dict(model, opt),
    }


def save(folder: Path, step: int, meta: dict, model, ema, opt, info: D.DistInfo) -> Path:
    """Write the checkpoint set of `step` into `folder` (checkpoints/) from every rank; returns its path."""
    final = folder / f"{step:07d}.dcp"
    tmp = folder / f".{final.name}.tmp"
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # a set an earlier, killed run left half-written
        tmp.mkdir(parents=True)
    D.barrier(info)
    dcp.save(_sharded_states(model, ema, opt), checkpoint_id=str(tmp))
    if info.is_main:
        torch.save(meta, tmp / META)
    D.barrier(info)  # every rank's shards are on disk
    if info.is_main:
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        (tmp / COMPLETE).write_text(json.dumps({"world_size": info.world_size, "files": files}) + "\n")
        _replace_dir(tmp, final)
    D.barrier(info)
    return final


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; an existing `final` (the same step written again) goes only after."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def is_complete(path: Path) -> bool:
    """Was the set finished by every rank (its `.complete` marker exists)?"""
    return (Path(path) / COMPLETE).is_file()


def check_complete(path: Path) -> None:
    """Refuse a set that lacks any file its `.complete` marker lists (or the marker itself)."""
    path = Path(path)
    if not is_complete(path):
        raise IncompleteCheckpointError(
            f"{path} is not a complete distributed checkpoint (no {COMPLETE} marker: a save that did not "
            "finish on every rank); resume from an earlier checkpoint"
        )
    listed = json.loads((path / COMPLETE).read_text())
    missing = [
        name
        for name, size in listed["files"].items()
        if not (path / name).is_file() or (path / name).stat().st_size != size
    ]
    if missing:
        raise IncompleteCheckpointError(
            f"{path} is missing or has truncated file(s) {missing} of a set written by "
            f"{listed['world_size']} process(es): the checkpoint is incomplete. Copy the whole folder again, "
            "or resume from an earlier checkpoint (--resume PATH)"
        )


def read_meta(path: Path) -> dict:
    """The small part of a set (step, args, config, objective, rng), plus "dcp": the set's path."""
    check_complete(path)
    return {**read_torch_file(Path(path) / META), "dcp": str(path)}


def load_states(state: dict, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer) -> None:
    """Load a checkpoint into this run's model, EMA and optimizer, whatever their layout: `state` is
    `read_meta`'s (a DCP set, resharded on load) or a whole `.pt` checkpoint (full tensors)."""
    if "dcp" in state:
        target = _sharded_states(model, ema, opt)
        one_process = not torch.distributed.is_initialized()  # a set from N ranks read by a lone process
        with warnings.catch_warnings():  # DCP warns that it "assumes" one process: here that is the intent
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
            dcp.load(target, checkpoint_id=state["dcp"], no_dist=one_process)
        model_sd, ema_sd, opt_sd, options = target["model"], target["ema"], target["opt"], None
    else:  # every rank read the whole file: each keeps its shards
        model_sd, ema_sd = state["model"], state["ema"]
        opt_sd = _named_optimizer_state(model, opt, state["opt"])
        options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_sd, options=options)
    set_model_state_dict(ema, ema_sd, options=options)
    set_optimizer_state_dict(model, opt, opt_sd, options=options)


def _named_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, saved: dict) -> dict:
    """A `torch.optim` state dict (parameters numbered in optimizer order) keyed by parameter names, the
    form `set_optimizer_state_dict` takes. The optimizer holds the trainable parameters in model order."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in opt.param_groups for p in group["params"]]
    state = {order[i]: value for i, value in saved["state"].items()}
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in saved["param_groups"]]
    return {"state": state, "param_groups": groups}


__all__ = ["IncompleteCheckpointError", "check_complete", "is_complete", "load_states", "read_meta", "save"]
