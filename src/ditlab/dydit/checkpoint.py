"""Saving and loading DyDiTs: ditlab's native safetensors (DiT config, objective and DyDiT options inside),
optionally with the per-timestep width table of a sampling schedule fixed at export.

    save_dydit(model, "dydit.safetensors")                              # weights + routers
    export_dydit(model, "deploy.safetensors", timesteps=steps)          # + each step's heads/groups, fixed
    model = load_dydit("deploy.safetensors")                            # eval mode, table installed
    model = load_dydit("dit.safetensors")                               # any DiT checkpoint: routers all on

`steps` are model timesteps, e.g. those of 50-step DDIM: `objective.respace(50).timestep_map.tolist()` with
`objective = ditlab.sampling.objective_of(model).build()`. Timesteps not in the table are decided by the routers
when first met, so a table is an optimisation and a fixed record, never a requirement.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ditlab.dydit.model import DyDiT, DyDiTOptions
from ditlab.models.checkpoint import (
    CONFIG_KEY,
    OBJECTIVE_KEY,
    atomic_write,
    decode_metadata,
    encode_metadata,
    is_training_checkpoint,
    load_model,
    load_state_dict_checked,
    model_metadata,
    official_state_dict,
    read_torch_file,
    restore_metadata,
)
from ditlab.models.config import DiTConfig
from ditlab.models.formats import CheckpointFormat, Probe, register_format

DYDIT_KEY = "ditlab_dydit"  # the DyDiTOptions, as JSON
WIDTHS_KEY = "ditlab_dydit_widths"  # {t: [[heads], [groups]] per block}, as JSON


def save_dydit(
    model: DyDiT,
    path: str | os.PathLike,
    objective: dict | None = None,
    widths: dict | None = None,
) -> None:
    """Weights (routers included), DiT config, DyDiT options and objective in one safetensors file, atomically."""
    if not isinstance(model, DyDiT):
        raise TypeError(
            f"save_dydit takes a DyDiT, got {type(model).__name__}; use ditlab.save_model for a DiT"
        )
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = encode_metadata(model_metadata(model, objective))
    metadata[DYDIT_KEY] = json.dumps(model.options.to_dict())
    if widths is not None:
        metadata[WIDTHS_KEY] = json.dumps(
            {repr(float(t)): [list(map(list, w)) for w in v] for t, v in widths.items()}
        )
    atomic_write(path, lambda f: save_file(tensors, f.name, metadata=metadata))


@torch.no_grad()
def width_table(model: DyDiT, timesteps: Iterable[float]) -> dict[float, list]:
    """Each block's active (heads, groups) at each model timestep, as the routers decide at inference."""
    ref = next(model.parameters())
    table = {}
    for t in timesteps:
        t32 = torch.tensor([float(t)], dtype=torch.float32)  # the key a float32 or integer t tensor gives
        e_t = model.t_embedder(t32.to(ref.device))  # (1, D)
        table[float(t32[0])] = model.planner.decide(model, e_t)
    return table


def export_dydit(model: DyDiT, path: str | os.PathLike, timesteps: Iterable[float]) -> dict[float, list]:
    """Save a deployable DyDiT: the weights plus the architecture of every step of a sampling schedule
    (model timesteps), decided now and fixed; `load_dydit` installs it so no width router runs at deployment.
    Returns the table."""
    table = width_table(model, timesteps)
    save_dydit(model, path, widths=table)
    return table


def _options_from_state(state: dict) -> dict:
    """DyDiT options a state dict implies (for files written without them, e.g. by ditlab.save_model): only
    the token router's presence and width matter once trained (tau and the init biases are training knobs)."""
    w = state.get("routers.0.tokens.0.weight")
    if w is None:
        return {"token_routing": False}
    hidden, dim = w.shape
    return {"token_routing": True, "token_reduction": dim // hidden}


def _has_routers(keys) -> bool:
    return any(k.startswith("routers.") for k in keys)


def _read(path: Path):
    """(recorded metadata (config, objective, data), DyDiT options dict, state dict, widths) of a file holding
    a DyDiT, or None.

    Recognised: `save_dydit` files, DyDiT fine-tuning checkpoints (.pt), and native files or ditlab training
    checkpoints that `ditlab.save_model` / a generic trainer wrote from a DyDiT (router tensors present)."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if CONFIG_KEY not in meta or (DYDIT_KEY not in meta and not _has_routers(f.keys())):
                return None
            state = {k: f.get_tensor(k) for k in f.keys()}
        options = json.loads(meta[DYDIT_KEY]) if DYDIT_KEY in meta else _options_from_state(state)
        widths = json.loads(meta[WIDTHS_KEY]) if WIDTHS_KEY in meta else None
        return decode_metadata(meta), options, state, widths
    if path.suffix == ".pt":  # a ditlab training checkpoint of a DyDiT run (its EMA weights)
        obj = read_torch_file(path)
        if isinstance(obj, dict) and isinstance(obj.get("config"), dict):
            state = official_state_dict(obj, str(path))
            if _has_routers(state):
                saved = obj.get("dydit")
                options = saved["model"] if isinstance(saved, dict) else _options_from_state(state)
                recorded = {CONFIG_KEY: obj["config"], OBJECTIVE_KEY: obj.get("objective")}
                return recorded, options, state, None
    return None


def is_dydit_file(path: str | os.PathLike) -> bool:
    """Whether `path` holds a DyDiT (see `load_dydit`; `ditlab.load_model` reads it the same way)."""
    path = Path(path)
    return path.is_file() and _read(path) is not None


def load_dydit(
    path: str | os.PathLike, device="cpu", options: DyDiTOptions | None = None, reorder: bool = True
) -> DyDiT:
    """Load a DyDiT: a `save_dydit`/`export_dydit` file (exported width table installed), a DyDiT run's
    checkpoint, or a native file with router tensors; or turn any checkpoint `ditlab.load_model` reads into a
    DyDiT with all-on routers (heads/channels sorted by importance unless `reorder=False`). Eval mode."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    found = _read(path) if path.is_file() else None
    if found is None:
        return DyDiT.from_dit(load_model(path), options, reorder=reorder).to(device).eval()
    if options is not None:
        raise ValueError(f"{path} is a DyDiT and carries its own options; load it without options=")
    recorded, dydit, state, widths = found
    model = DyDiT(DiTConfig.from_dict(recorded[CONFIG_KEY]), DyDiTOptions.from_dict(dydit))
    load_state_dict_checked(model, state, source=str(path))
    model = restore_metadata(model, recorded).to(device).eval()
    if widths is not None:
        model.planner.install(model, {float(t): v for t, v in widths.items()})
    return model


def _is_dydit(probe: Probe) -> bool:
    """What `_read` recognises, told from the probe alone: a DyDiT marker or router tensors."""
    if probe.kind == "safetensors":
        return CONFIG_KEY in probe.metadata and (DYDIT_KEY in probe.metadata or _has_routers(probe.keys))
    if probe.path.suffix != ".pt" or not is_training_checkpoint(probe):
        return False
    try:
        return _has_routers(official_state_dict(probe.content, str(probe.path)))
    except ValueError:  # no weights at all: the training-checkpoint format says so
        return False


# Outranks the native and training-checkpoint formats, of which a DyDiT file is a refinement.
for _kind in ("safetensors", "torch"):
    register_format(
        CheckpointFormat(
            f"dydit-{_kind}",
            _kind,
            _is_dydit,
            lambda probe, device, **_: load_dydit(probe.path, device=device),
            priority=20,
        )
    )
