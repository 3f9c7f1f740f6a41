"""Saving and loading DiT weights: ditlab's native safetensors (config inside), official DiT `.pt` files
(bare state dicts or train.py checkpoints with `model`/`ema`), and diffusers folders.

    save_model(model, "dit.safetensors")
    model = load_model("dit.safetensors")                        # config comes from the file
    model = load_model("DiT-XL-2-256x256.pt")                    # official release: sizes inferred from tensors
    model = load_model("0050000.pt", model="DiT-XL/2")           # official train.py checkpoint: EMA weights

Loading never executes code from a file: `.pt` files go through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ditlab.atomic import atomic_write
from ditlab.models.config import DiTConfig
from ditlab.models.dit import DiT
from ditlab.models.zoo import MODELS, SIZES, model_config

CONFIG_KEY = "ditlab_config"
OBJECTIVE_KEY = "ditlab_objective"  # the training objective (see ditlab.diffusion.objective), as JSON


def save_model(model: DiT, path: str | os.PathLike, objective: dict | None = None) -> None:
    """Save weights, config and (if known) the training objective to one safetensors file, atomically.

    `objective` defaults to the model's `objective_spec` attribute (set by the trainer and by load_model).
    """
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {CONFIG_KEY: model.config.to_json()}
    objective = objective if objective is not None else getattr(model, "objective_spec", None)
    if objective is not None:
        metadata[OBJECTIVE_KEY] = json.dumps(objective, sort_keys=True)
    atomic_write(path, lambda f: save_file(tensors, f.name, metadata=metadata))


def load_state_dict_checked(model: torch.nn.Module, state_dict: dict, source: str = "checkpoint") -> None:
    """`load_state_dict(strict=True)` with one clear error listing missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:

        def show(items):
            return ", ".join(items[:8]) + (f" … ({len(items)} in all)" if len(items) > 8 else "")

        lines = [f"{source} does not fit the model ({model.__class__.__name__}):"]
        if missing:
            lines.append(f"  missing keys: {show(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys: {show(unexpected)}")
        if wrong:
            lines.append(f"  wrong shapes: {show(wrong)}")
        lines.append("  check the model name and overrides (e.g. num_classes, input_size, conditioning).")
        raise ValueError("\n".join(lines))
    model.load_state_dict(state_dict, strict=True)


def _load_native(path: Path, device) -> DiT:
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        if CONFIG_KEY not in meta:
            raise ValueError(
                f"{path} is a safetensors file without a ditlab config; it was not written by ditlab.save_model. "
                "For an official DiT state dict use the .pt file; for diffusers pass the model folder."
            )
        config = DiTConfig.from_dict(json.loads(meta[CONFIG_KEY]))
        state = {k: f.get_tensor(k) for k in f.keys()}
    model = DiT(config)
    load_state_dict_checked(model, state, source=str(path))
    if OBJECTIVE_KEY in meta:
        model.objective_spec = json.loads(meta[OBJECTIVE_KEY])
    return model.to(device).eval()


def read_torch_file(path: Path) -> dict:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated/corrupt files and pickles with code both land here
        raise ValueError(
            f"cannot read checkpoint {path}: {e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
            "The file may be truncated or corrupt (re-download or use an earlier checkpoint), or it holds "
            "objects other than tensors, which ditlab refuses to unpickle."
        ) from e


def official_state_dict(obj: dict, path: str = "checkpoint") -> dict:
    """The model weights inside an official file: a bare state dict, or train.py's {"model", "ema", ...} (EMA)."""
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    for key in ("ema", "model"):
        if key in obj and isinstance(obj[key], dict):
            return obj[key]
    if "pos_embed" in obj or any(k.startswith("blocks.") for k in obj):
        return obj
    raise ValueError(
        f"{path} has no DiT weights: expected a state dict with pos_embed/blocks.* keys or model/ema entries"
    )


def infer_config(state: dict, model: str | None = None, **overrides) -> DiTConfig:
    """Read a DiT's geometry off its tensors (sizes, classes, sigma) and fill the rest from `model` or the zoo."""
    try:
        D, C, p, _ = state["x_embedder.proj.weight"].shape
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        out = state["final_layer.linear.weight"].shape[0] // (p * p)
        T = state["pos_embed"].shape[1]
    except (KeyError, ValueError) as e:
        raise ValueError(f"not an official DiT state dict (missing or odd tensor: {e})") from None
    side = int(round(T**0.5)) * p
    fields: dict = dict(hidden_size=D, in_channels=C, patch_size=p, depth=depth, learn_sigma=out == 2 * C)
    if side * side != T * p * p:
        raise ValueError(f"position table has {T} tokens, not a square grid: pass input_size=(H, W)")
    fields["input_size"] = side
    if "y_embedder.embedding_table.weight" in state:
        rows = state["y_embedder.embedding_table.weight"].shape[0]
        dropout = overrides.get("class_dropout_prob", 0.1)
        fields["num_classes"] = rows - 1 if dropout > 0 else rows
    else:
        fields["num_classes"] = 0
    if model is not None:
        base = model_config(model)
        fields["num_heads"] = base.num_heads
    else:  # the zoo's head count for this width (all official sizes have distinct widths)
        heads = {h: n for (_, h, n) in SIZES.values()}
        if D not in heads and "num_heads" not in overrides:
            raise ValueError(f"cannot infer num_heads for hidden size {D}: pass model=NAME or num_heads=")
        fields["num_heads"] = heads.get(D)
    fields.update(overrides)
    return DiTConfig().replace(**fields)


def _extension_format(path: Path, state_keys=None) -> str | None:
    """ "adapter" (a fine-tuning adapter file), "dydit" (a DyDiT with routers) or None (a plain DiT)."""
    if state_keys is None:  # a safetensors file: its metadata and key names, without reading tensors
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta, state_keys = f.metadata() or {}, list(f.keys())
        if "ditlab_adapter" in meta:
            return "adapter"
        if "ditlab_dydit" in meta:
            return "dydit"
    return "dydit" if any(k.startswith("routers.") for k in state_keys) else None


def load_model(path: str | os.PathLike, model: str | None = None, device="cpu", **overrides) -> DiT:
    """Load a DiT from a native .safetensors file, an official DiT .pt file, or a diffusers folder; also
    the files of ditlab's extensions: a fine-tuning adapter (loaded onto its base, merged) and a DyDiT.

    For official files `model` (a zoo name such as "DiT-XL/2") and `overrides` set what the tensors do not
    say; sizes and class counts are inferred from the tensors. Weights land on `device` (default CPU) and
    the model is returned in eval mode (no label dropout), ready to sample.
    """
    path = Path(path)
    if model is not None and model not in MODELS:
        raise ValueError(f"unknown model {model!r}; valid names: {', '.join(MODELS)}")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        from ditlab.models.interop import load_diffusers

        return load_diffusers(path, device=device, **overrides)
    if path.suffix == ".safetensors":
        if overrides:
            raise ValueError("a native ditlab checkpoint carries its config; overrides are not accepted")
        kind = _extension_format(path)
        if kind == "adapter":
            from ditlab.finetune.adapter import load_adapter

            return load_adapter(path, merge_weights=True, device=device)
        if kind == "dydit":
            from ditlab.dydit import load_dydit

            return load_dydit(path, device=device)
        return _load_native(path, device)
    obj = read_torch_file(path)
    objective = None
    if isinstance(obj, dict) and isinstance(obj.get("config"), dict):  # a ditlab training checkpoint
        config = DiTConfig.from_dict(obj["config"])
        state = official_state_dict(obj, str(path))
        objective = obj.get("objective")
        if _extension_format(path, state) == "dydit":
            from ditlab.dydit import load_dydit

            return load_dydit(path, device=device)
    else:
        state = official_state_dict(obj, str(path))
        config = infer_config(state, model, **overrides)
    net = DiT(config)
    load_state_dict_checked(net, state, source=str(path))
    if objective is not None:
        net.objective_spec = objective
    return net.to(device).eval()
