"""Conversion between ditlab's text-to-image models and diffusers' `SD3Transformer2DModel` (MMDiT),
`PixArtTransformer2DModel` (cross-attention with adaLN-single), `FluxTransformer2DModel` (double-stream MMDiT
blocks, then single-stream parallel blocks) and `ZImageTransformer2DModel` (S3-DiT), both ways: folders
(also pipeline roots with a transformer/ folder) and in-memory models. Reading a folder needs no diffusers.

Each diffusers class is a `TextClass` in a module of its own (`sd3`, `pixart`, `flux`, `zimage`): the fields
it always has, how the rest of its config becomes a DiTConfig and back, and a table of `Link`s, each tying
ditlab tensors to the diffusers tensors they equal. A link is invertible, so one table serves both directions
(the kinds: see `common.Link`). Facts the tables encode were read off diffusers 0.42; each module names its
class's, and where ditlab differs from it on purpose (each with a test in tests/test_text_interop.py).
What all four share: AdaLayerNormContinuous chunks (scale, shift) where ditlab's modulation is (shift, scale);
diffusers stretches a grid of another size to `base_size` positions, where a ditlab model built natively
(`pos_base_size=0`) uses token indices (at the trained size they agree; an export says so in one warning).

Round trips are exact: an export writes ditlab's record of the model under `_ditlab` in config.json (as the
DiT interop does), and a folder with that record reads back as the exported model.

    model = load_model("sd3-folder/")                     # any of the four; also a pipeline root
    save_text_diffusers(model, "out/transformer")         # <Class>.from_pretrained loads it
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from ditlab.models.checkpoint import load_state_dict_checked, model_metadata, restore_metadata
from ditlab.models.config import DiTConfig
from ditlab.models.dit import DiT
from ditlab.models.formats import CheckpointFormat, register_format
from ditlab.models.interop import (
    CONFIG_NAME,
    DITLAB_KEY,
    INSTALL_HINT,
    _like_model,
    _read_weights,
    _record,
    _recorded_config,
    _resolve_folder,
    _write_folder,
    warn_x0_prediction,
)

from . import flux, pixart, sd3, zimage
from .common import TextClass
from .flux import FLUX, pack_latents, unpack_latents
from .pixart import PIXART
from .sd3 import SD3
from .zimage import ZIMAGE

CLASSES: dict[str, TextClass] = {m.NAME: TextClass.of(m) for m in (sd3, pixart, flux, zimage)}
# The fields a diffusers config fixes; a folder's ditlab record must agree with them (and with image_hw,
# where the class has a sample size).
GEOMETRY = ("patch_size", "in_channels", "hidden_size", "depth", "num_heads", "text_dim")


def text_class_for(cfg: DiTConfig) -> TextClass | None:
    """The diffusers class a ditlab config's architecture is (None: not one of these text classes)."""
    return next((tc for tc in CLASSES.values() if tc.matches(cfg)), None)


# ---------------------------------------------------------------------------------------------- configs
def text_config(dconf: Mapping, source: str = "diffusers config", **overrides) -> DiTConfig:
    """The DiTConfig of a diffusers text-to-image config: its ditlab record's when it has one, else derived."""
    tc = _class_of(dconf, source)
    described = DiTConfig().replace(**tc.config_fields(dconf))
    geometry = GEOMETRY + (("image_hw",) if tc.sized else ())  # else no size: ours is nominal
    own = _recorded_config(dconf, source, described, geometry)
    config = described if own is None else own
    return config.replace(**overrides) if overrides else config


def _class_of(dconf: Mapping, source: str) -> TextClass:
    name = dconf.get("_class_name")
    if name not in CLASSES:
        raise ValueError(f"{source}: diffusers class {name!r} is not one of {', '.join(CLASSES)}")
    return CLASSES[name]


# ---------------------------------------------------------------------------------------------- weights
def state_dict_from_text_diffusers(
    dstate: Mapping, cfg: DiTConfig, model: DiT, name: str | None = None
) -> dict:
    """A diffusers state dict of class `name` (default: the class `cfg` is) -> ditlab keys for `model` (built
    from `cfg`); refuses missing or unknown tensors."""
    tc = CLASSES[name] if name is not None else _export_class(cfg)
    links = tc.links(cfg)
    wanted = {k for link in links for k in link.theirs}
    missing = sorted(wanted - set(dstate))
    extra = sorted(set(dstate) - wanted - set(tc.unread(cfg)))
    if missing or extra:
        raise ValueError(
            f"the diffusers {tc.name} weights do not fit its config: missing {missing[:4]} ({len(missing)}), "
            f"unexpected {extra[:4]} ({len(extra)})"
        )
    own = model.state_dict()
    state = {k: v for link in links for k, v in link.to_ours(dstate, own).items()}
    if model.pos_embed is not None and "pos_embed" not in state:  # computed by diffusers, not stored
        state["pos_embed"] = model.pos_embed.detach().clone()
    return state


def state_dict_to_text_diffusers(model: DiT) -> dict[str, torch.Tensor]:
    """ditlab weights -> the diffusers class's state dict (refuses configs that class cannot express)."""
    cfg = model.config
    tc = _export_class(cfg)
    tc.export_config(cfg)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for link in tc.links(cfg):
        out.update(link.to_theirs(state))
    ref = next(iter(state.values()))
    out.update({k: v.to(ref.device, ref.dtype) for k, v in tc.unread(cfg).items()})
    return out


def _export_class(cfg: DiTConfig) -> TextClass:
    tc = text_class_for(cfg)
    if tc is None:
        raise ValueError(
            "cannot export to a diffusers text-to-image class: the model is neither an MMDiT (text_mixing="
            f"'joint' -> {SD3}), cross-attention with adaLN-single ({PIXART}), nor a single stream "
            f"(text_mixing='concat': parallel blocks -> {FLUX}, sequential -> {ZIMAGE})"
        )
    return tc


def _check_positions(cfg: DiTConfig) -> None:
    """diffusers builds a computed table with base_size = the trained grid (a stored max-size table is exported
    as it is, so it always agrees): refuse another base, warn where only other sizes differ."""
    if cfg.pos_embed_max_size or cfg.rope:
        return
    base = cfg.image_hw[0] // cfg.patch_size
    if cfg.pos_base_size not in (0, base):
        raise ValueError(
            f"cannot export to diffusers: pos_base_size={cfg.pos_base_size}, but diffusers stretches the grid to "
            f"base_size = sample_size / patch_size = {base}"
        )
    if cfg.pos_base_size == 0:
        warnings.warn(
            "the diffusers model computes the same function at the trained size; at other sizes diffusers "
            f"stretches the token grid to {base} positions (base_size) where this model uses token indices",
            UserWarning,
            stacklevel=3,
        )


# ---------------------------------------------------------------------------------------------- public API
def _build(dconf: Mapping, dstate: Mapping, overrides: dict, source: str) -> DiT:
    config = text_config(dconf, source, **overrides)
    model = DiT(config)
    state = state_dict_from_text_diffusers(dstate, config, model, _class_of(dconf, source).name)
    load_state_dict_checked(model, state, source=source)
    return restore_metadata(model, _record(dconf, source) or {}).eval()


def load_text_diffusers(
    path: str | os.PathLike, device="cpu", variant: str | None = None, **overrides
) -> DiT:
    """Load a diffusers folder of one of `CLASSES` (or a pipeline root with a transformer/ folder) as a ditlab
    model in eval mode. Does not need diffusers installed."""
    folder = _resolve_folder(Path(path))
    dconf = json.loads((folder / CONFIG_NAME).read_text())
    text_config(dconf, str(folder), **overrides)  # a bad config fails before the weights are read
    return _build(dconf, _read_weights(folder, variant), overrides, str(folder)).to(device)


def from_text_diffusers(transformer, **overrides) -> DiT:
    """A ditlab model with the weights of an in-memory diffusers transformer of one of `CLASSES`."""
    dconf = dict(transformer.config)
    dconf.setdefault("_class_name", type(transformer).__name__)
    param = next(transformer.parameters())
    return _build(dconf, transformer.state_dict(), overrides, "the diffusers model").to(
        param.device, param.dtype
    )


def text_diffusers_config(model: DiT) -> dict:
    """The diffusers constructor arguments (with `_class_name` and ditlab's record) for a text model."""
    tc = _export_class(model.config)
    kwargs = tc.export_config(model.config)
    _check_positions(model.config)
    warn_x0_prediction(model)
    return {"_class_name": tc.name, **kwargs, DITLAB_KEY: model_metadata(model)}


def to_text_diffusers(model: DiT):
    """The diffusers transformer (of the class the architecture is) with this model's weights, eval mode."""
    config = text_diffusers_config(model)
    try:
        import diffusers
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from e
    name = config.pop("_class_name")
    record = config.pop(DITLAB_KEY)
    transformer = getattr(diffusers, name)(**config)
    transformer.register_to_config(**{DITLAB_KEY: record})
    transformer.load_state_dict(state_dict_to_text_diffusers(model), strict=True)
    return _like_model(transformer, model)


def save_text_diffusers(model: DiT, path: str | os.PathLike) -> Path:
    """Write a text model as a diffusers folder (config.json + diffusion_pytorch_model.safetensors) that
    the diffusers class's `from_pretrained(path)` loads; returns the folder. Does not need diffusers."""
    return _write_folder(path, text_diffusers_config(model), state_dict_to_text_diffusers(model))


def folder_class(path: Path) -> str | None:
    """The `_class_name` in a folder's (or its transformer/ subfolder's) config.json, None if unreadable."""
    for config in (path / CONFIG_NAME, path / "transformer" / CONFIG_NAME):
        if config.is_file():
            try:
                return json.loads(config.read_text()).get("_class_name")
            except (OSError, ValueError, AttributeError):
                return None
    return None


for _name in CLASSES:
    register_format(
        CheckpointFormat(
            f"diffusers-{_name}",
            "folder",
            lambda probe, name=_name: folder_class(probe.path) == name,
            lambda probe, device, model=None, **overrides: load_text_diffusers(
                probe.path, device=device, **overrides
            ),
            priority=5,  # outranks the plain diffusers (DiT) folder, which claims every folder
            accepts_overrides=True,
        )
    )

__all__ = [
    "CLASSES",
    "FLUX",
    "ZIMAGE",
    "PIXART",
    "SD3",
    "from_text_diffusers",
    "load_text_diffusers",
    "pack_latents",
    "save_text_diffusers",
    "state_dict_from_text_diffusers",
    "state_dict_to_text_diffusers",
    "text_class_for",
    "text_config",
    "text_diffusers_config",
    "to_text_diffusers",
    "unpack_latents",
]
