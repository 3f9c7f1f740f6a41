"""Adapter files: only the parameters a fine-tuning run trained, plus what is needed to rebuild the model
on top of its base checkpoint.

    save_adapter(model, "adapter.safetensors", base="base.safetensors")   # model from prepare_model + training
    model = load_adapter("adapter.safetensors")                           # base found through the file
    model = load_adapter("adapter.safetensors", merge=True)               # γ / LoRA folded in: a plain DiT

The file is safetensors: tensors named as in the prepared model, and metadata `ditlab_adapter` (JSON: method,
its options, label mode, class count, seed, the base's path and SHA-256, the fine-tuned config) and
`ditlab_objective`. Loading checks the base's hash, so an adapter is never silently applied to other weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ditlab.atomic import atomic_write
from ditlab.finetune.methods import get_method, merge, prepare_model
from ditlab.models.checkpoint import OBJECTIVE_KEY, load_model
from ditlab.models.config import DiTConfig
from ditlab.models.formats import CheckpointFormat, register_format

ADAPTER_KEY = "ditlab_adapter"
ADAPTER_FORMAT = 1

_HASHES: dict[tuple, str] = {}  # (path, size, mtime) -> sha256: hashing a 2.7 GB base once per process


def base_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a checkpoint file, or of a folder's files (relative names and contents, sorted)."""
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"base checkpoint {path} does not exist")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _HASHES:
        h = hashlib.sha256()
        for f in files:
            if path.is_dir():
                h.update(str(f.relative_to(path)).encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def adapter_parameter_names(model) -> list[str]:
    """Names of the parameters the model's fine-tuning method trains (works on EMA copies, which are frozen)."""
    info = getattr(model, "finetune_info", None)
    if not info:
        raise ValueError("the model was not prepared for fine-tuning (ditlab.finetune.prepare_model)")
    chosen = {id(p) for p in get_method(info["method"]).trainable_parameters(model, **info["options"])}
    return [name for name, p in model.named_parameters() if id(p) in chosen and name != "pos_embed"]


def save_adapter(
    model, path: str | os.PathLike, base: str | os.PathLike, objective: dict | None = None
) -> Path:
    """Write the trained parameters of a prepared `model` and a reference to `base` (path + SHA-256)."""
    info = getattr(model, "finetune_info", None)
    if not info:
        raise ValueError("the model was not prepared for fine-tuning (ditlab.finetune.prepare_model)")
    params = dict(model.named_parameters())
    tensors = {n: params[n].detach().contiguous().cpu() for n in adapter_parameter_names(model)}
    base = Path(base).resolve()
    meta = {
        "format": ADAPTER_FORMAT,
        **info,
        "base": str(base),
        "base_sha256": base_sha256(base),
        "config": model.config.to_dict(),
    }
    metadata = {ADAPTER_KEY: json.dumps(meta, sort_keys=True)}
    objective = objective if objective is not None else getattr(model, "objective_spec", None)
    if objective is not None:
        metadata[OBJECTIVE_KEY] = json.dumps(objective, sort_keys=True)
    path = Path(path)
    atomic_write(path, lambda f: save_file(tensors, f.name, metadata=metadata))
    return path


def read_adapter(path: str | os.PathLike) -> tuple[dict, dict | None]:
    """(adapter metadata, objective or None) of an adapter file, without reading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file {path} does not exist")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
    if ADAPTER_KEY not in meta:
        raise ValueError(
            f"{path} is not a ditlab adapter file (no {ADAPTER_KEY!r} metadata); load full models with "
            "ditlab.load_model"
        )
    info = json.loads(meta[ADAPTER_KEY])
    if info.get("format") != ADAPTER_FORMAT:
        raise ValueError(
            f"{path} has adapter format {info.get('format')}; this ditlab reads {ADAPTER_FORMAT}"
        )
    return info, json.loads(meta[OBJECTIVE_KEY]) if OBJECTIVE_KEY in meta else None


def load_adapter(
    path: str | os.PathLike,
    base: str | os.PathLike | None = None,
    *,
    merge_weights: bool = False,
    check_base: bool = True,
    device="cpu",
):
    """Rebuild a fine-tuned DiT: load its base, prepare it as the run did, load the adapter's tensors.

    base: the base checkpoint (default: the path recorded in the file). check_base: refuse a base whose
    SHA-256 differs from the recorded one. merge_weights: fold γ / LoRA into the weights (a plain DiT).
    Returns the model in eval mode on `device`.
    """
    info, objective = read_adapter(path)
    base_path = Path(base if base is not None else info["base"])
    if not base_path.exists():
        raise FileNotFoundError(
            f"the base checkpoint of {path} is missing: {base_path}; pass base=PATH (--base) to point to it"
        )
    if check_base and base_sha256(base_path) != info["base_sha256"]:
        raise ValueError(
            f"{base_path} is not the base {path} was trained on (SHA-256 differs from the recorded "
            f"{info['base_sha256'][:12]}…); pass the right base, or check_base=False to apply it anyway"
        )
    model = load_model(base_path)
    prepare_model(
        model,
        info["method"],
        num_classes=info["num_classes"] if info["resized"] else None,  # replays the run's table (same seed)
        labels=info["labels"],
        seed=info.get("seed", 0),
        **info["options"],
    )
    if model.config.to_dict() != DiTConfig.from_dict(info["config"]).to_dict():
        raise ValueError(f"{path}: the prepared base does not match the adapter's recorded config")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    params = dict(model.named_parameters())
    expected = set(adapter_parameter_names(model))
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    wrong = [k for k in tensors if k in params and tuple(tensors[k].shape) != tuple(params[k].shape)]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} does not fit its base prepared for {info['method']!r}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}"
        )
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)
    if objective is not None:
        model.objective_spec = objective
    if merge_weights:
        model = merge(model)
    return model.to(device).eval()


# `ditlab.load_model` reads an adapter file as its base with the adapter merged in: a plain DiT.
register_format(
    CheckpointFormat(
        "adapter",
        "safetensors",
        lambda probe: ADAPTER_KEY in probe.metadata,
        lambda probe, device, **_: load_adapter(probe.path, merge_weights=True, device=device),
        priority=20,
    )
)

__all__ = [
    "ADAPTER_KEY",
    "adapter_parameter_names",
    "base_sha256",
    "load_adapter",
    "read_adapter",
    "save_adapter",
]
