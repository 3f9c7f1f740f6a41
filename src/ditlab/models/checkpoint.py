"""Saving and loading DiT weights: ditlab's native safetensors (config inside), official DiT `.pt` files
(bare state dicts or train.py checkpoints with `model`/`ema`), ditlab training checkpoints and run folders.
Each registers itself as a checkpoint format (see ditlab.models.formats), through which `load_model` dispatches.

    save_model(model, "dit.safetensors")
    model = load_model("dit.safetensors")                        # config comes from the file
    model = load_model("DiT-XL-2-256x256.pt")                    # official release: sizes inferred from tensors
    model = load_model("0050000.pt", model="DiT-XL/2")           # official train.py checkpoint: EMA weights
    model = load_model("runs/digits")                            # a run folder: its model.safetensors

Loading never executes code from a file: `.pt` files go through `torch.load(weights_only=True)`.

What a native file records beside the tensors (`model_metadata`): the DiTConfig, the training objective and
the data the model was trained on (spec, class names, image size, channels), each as JSON under its own
metadata key. Diffusers folders keep the same record in their config.json (see ditlab.models.interop), so a
model survives native -> diffusers -> native unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ditlab.atomic import atomic_write
from ditlab.models.config import DiTConfig
from ditlab.models.dit import DiT
from ditlab.models.formats import CheckpointFormat, Probe, load_model, read_torch_file, register_format
from ditlab.models.zoo import SIZES, model_config

CONFIG_KEY = "ditlab_config"
OBJECTIVE_KEY = "ditlab_objective"  # the training objective (see ditlab.diffusion.objective), as JSON
DATA_KEY = "ditlab_data"  # the training data: {"name", "class_names", "image_size", "channels"}, as JSON
# The sampling a run prefers: {"sampler", "sample_steps", "guidance_scale"} of its TrainConfig, as JSON
# (`ditlab sample RUN` uses it for the flags not given; see ditlab.sampling.preferred_sampling).
SAMPLING_KEY = "ditlab_sampling"
SAMPLING_FIELDS = ("sampler", "sample_steps", "guidance_scale")
# A text-to-image run's encoder, `TextEncoder.spec` ({"name", "max_length", ...}): `load_text_encoder(**spec)`
TEXT_KEY = "ditlab_text_encoder"
# What a model records beside its config: metadata key -> the model attribute holding it (None = unknown).
RECORDED = {
    OBJECTIVE_KEY: "objective_spec",
    DATA_KEY: "data_spec",
    SAMPLING_KEY: "sampling_spec",
    TEXT_KEY: "text_spec",
}
RUN_MODEL_FILE = "model.safetensors"  # a ditlab run folder's final (EMA) model


def model_metadata(model: DiT, objective: dict | None = None) -> dict[str, Any]:
    """Everything ditlab records about `model` beside its tensors, as JSON-ready values by metadata key.

    `objective` defaults to the model's `objective_spec` (set by the trainer and by load_model)."""
    meta: dict[str, Any] = {CONFIG_KEY: model.config.to_dict()}
    for key, attr in RECORDED.items():
        value = objective if key == OBJECTIVE_KEY and objective is not None else getattr(model, attr, None)
        if value is not None:
            meta[key] = value
    return meta


def restore_metadata(model: DiT, meta: Mapping[str, Any]) -> DiT:
    """Set the attributes `model_metadata` records from such a dict (absent keys: None); returns the model."""
    for key, attr in RECORDED.items():
        setattr(model, attr, meta.get(key))
    return model


def encode_metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    """`model_metadata` values as safetensors metadata strings (JSON, sorted keys)."""
    return {key: json.dumps(value, sort_keys=True) for key, value in meta.items()}


def decode_metadata(raw: Mapping[str, str]) -> dict[str, Any]:
    """The recorded entries (config included) of safetensors metadata, parsed; other keys are left out."""
    return {key: json.loads(raw[key]) for key in (CONFIG_KEY, *RECORDED) if key in raw}


def save_model(model: DiT, path: str | os.PathLike, objective: dict | None = None) -> None:
    """Save weights, config and what else the model records (training objective, data; see `model_metadata`)
    to one safetensors file, atomically.

    `objective` defaults to the model's `objective_spec` attribute (set by the trainer and by load_model).
    """
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = encode_metadata(model_metadata(model, objective))
    atomic_write(path, lambda f: save_file(tensors, f.name, metadata=metadata))


def load_state_dict_checked(model: torch.nn.Module, state_dict: dict, source: str = "checkpoint") -> None:
    """`load_state_dict(strict=True)` with one clear error listing missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [str(k) for k in state_dict if k not in own]

    def shape(value):  # a value that is not a tensor (a corrupt or edited file) reads as its type
        return tuple(value.shape) if torch.is_tensor(value) else type(value).__name__

    wrong = [
        f"{k}: checkpoint {shape(state_dict[k])} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and shape(state_dict[k]) != tuple(own[k].shape)
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


def check_fits(config: DiTConfig, shapes: Mapping[str, tuple], source: str, derived: tuple = ()) -> None:
    """Refuse a recorded config that does not fit the file's tensors before any memory is spent on the model
    (a corrupt or edited config claiming a billion blocks or a huge width must not allocate them): the block
    count first, then every shape, compared with the model built on the meta device (no storage).
    `derived`: parameters the loader fills from the model itself (not in `shapes`)."""
    blocks = {k.split(".")[1] for k in shapes if k.startswith("blocks.")}
    if config.depth != len(blocks):
        raise ValueError(
            f"{source}: its config says depth {config.depth} but the file holds {len(blocks)} blocks; the file "
            "is inconsistent (corrupt or edited): re-save it from its source"
        )
    with torch.device("meta"):
        model = DiT(config)
    own = model.state_dict()
    meta = {k: torch.empty(tuple(s), device="meta") for k, s in shapes.items()}
    meta.update({k: own[k] for k in derived if k in own})
    load_state_dict_checked(model, meta, source=source)


def _load_native(probe: Probe, device, **_) -> DiT:
    path = probe.path
    if CONFIG_KEY not in probe.metadata:
        raise ValueError(
            f"{path} is a safetensors file without a ditlab config; it was not written by ditlab.save_model. "
            "For an official DiT state dict use the .pt file; for diffusers pass the model folder."
        )
    meta = decode_metadata(probe.metadata)
    config = DiTConfig.from_dict(meta[CONFIG_KEY])
    with safe_open(str(path), framework="pt", device="cpu") as f:
        check_fits(config, {k: f.get_slice(k).get_shape() for k in f.keys()}, str(path))
        state = {k: f.get_tensor(k) for k in f.keys()}
    model = DiT(config)
    load_state_dict_checked(model, state, source=str(path))
    return restore_metadata(model, meta).to(device).eval()


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


def is_training_checkpoint(probe: Probe) -> bool:
    """A ditlab training checkpoint: a .pt dict with the model's `config` beside its `model`/`ema` weights."""
    return isinstance(probe.content, dict) and isinstance(probe.content.get("config"), dict)


def _load_official(probe: Probe, device, model: str | None = None, **overrides) -> DiT:
    state = official_state_dict(probe.content, str(probe.path))
    net = DiT(infer_config(state, model, **overrides))
    load_state_dict_checked(net, state, source=str(probe.path))
    return net.to(device).eval()


def _load_training_checkpoint(probe: Probe, device, **_) -> DiT:
    obj = probe.content
    config, weights = DiTConfig.from_dict(obj["config"]), official_state_dict(obj, str(probe.path))
    check_fits(config, {k: getattr(v, "shape", ()) for k, v in weights.items()}, str(probe.path))
    net = DiT(config)
    load_state_dict_checked(net, weights, source=str(probe.path))
    args = obj.get("args") if isinstance(obj.get("args"), dict) else {}
    sampling = {k: args[k] for k in SAMPLING_FIELDS if k in args} or None  # the run's TrainConfig values
    restore_metadata(
        net, {OBJECTIVE_KEY: obj.get("objective"), DATA_KEY: obj.get("data"), SAMPLING_KEY: sampling}
    )
    return net.to(device).eval()


def _load_run_folder(probe: Probe, device, model: str | None = None, **overrides):
    return load_model(probe.path / RUN_MODEL_FILE, model=model, device=device, **overrides)


# The formats this module reads. The plain ones match every file of their kind (lowest priority), so a file
# that no refinement claims gets their clear error (no ditlab config, no DiT weights).
register_format(CheckpointFormat("native", "safetensors", lambda p: True, _load_native))
register_format(
    CheckpointFormat(
        "official", "torch", lambda p: True, _load_official, accepts_overrides=True, records_config=False
    )
)
register_format(CheckpointFormat("training", "torch", is_training_checkpoint, _load_training_checkpoint, 10))
register_format(  # outranks a diffusers folder: a run folder holds a config.json too (its TrainConfig)
    CheckpointFormat(
        "run",
        "folder",
        lambda p: RUN_MODEL_FILE in p.keys,
        _load_run_folder,
        priority=10,
        accepts_overrides=True,  # passed on to the run's model file, whose format decides
        records_config=False,  # likewise checked by the model file's format
    )
)

__all__ = [
    "CONFIG_KEY",
    "DATA_KEY",
    "OBJECTIVE_KEY",
    "RUN_MODEL_FILE",
    "SAMPLING_KEY",
    "check_fits",
    "decode_metadata",
    "encode_metadata",
    "infer_config",
    "load_model",
    "load_state_dict_checked",
    "model_metadata",
    "official_state_dict",
    "read_torch_file",
    "restore_metadata",
    "save_model",
]
