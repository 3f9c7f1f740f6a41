"""Conversion between ditlab's DiT and diffusers' `DiTTransformer2DModel` (folders and in-memory models).

What converts: the paper's DiT, i.e. adaLN-Zero conditioning, LayerNorm tokens, shift + identity gates, class
labels with a null class, mlp_ratio 4 and a square latent, in both directions; diffusers folders written by
`save_pretrained` (also the legacy `Transformer2DModel` with `norm_type="ada_norm_zero"`) or a `DiTPipeline`
root with a `transformer/` subfolder. Weights map one to one except that diffusers keeps a copy of the
timestep + label embedder in every block (`transformer_blocks.i.norm1.emb`) where ditlab has one: on import
all copies must be equal (they are in every checkpoint converted from the official release), on export the
one embedder is copied into every block. Reading a folder needs no diffusers install; building a diffusers
model in memory (`to_diffusers`) needs `pip install "ditlab[diffusers]"`.

Numerics: diffusers' DiT does not compute the official DiT's function. Its timestep sinusoid uses frequencies
exp(-ln(10⁴)·i/127) where the official one uses i/128 (the 256-d embeddings differ by up to 1.94 in a
component), and its MLP-branch LayerNorm uses `norm_eps` (default 1e-5) while its attention-branch and final
norms are fixed at 1e-6 (the official model uses 1e-6 everywhere). Imports therefore set
`timestep_freq_shift=1`, `norm_eps=1e-6` and `mlp_norm_eps` = the folder's `norm_eps` (None when that is
1e-6), so ditlab computes exactly the diffusers model; pass `OFFICIAL_NUMERICS` (timestep_freq_shift=0,
norm_eps=1e-6, mlp_norm_eps=None) as overrides to read a hub checkpoint (official weights) as the official
model instead. Exports write the model's MLP-branch eps as diffusers' `norm_eps`. What diffusers cannot
express is written with a one-line warning quantifying the change: the official sinusoid (diffusers' own hub
checkpoints carry exactly this deviation from the official model) and an attention-branch `norm_eps` ≠ 1e-6
(that norm's output moves by |Δeps|/(2·Var(x)) relative, ~5e-6 for unit-variance tokens).

Round trips are exact: an export also writes ditlab's own record of the model (`model_metadata`: the full
DiTConfig, numerics included, the training objective — DDPM or flow — and the training data with its class
names) under the private key `_ditlab` in config.json, which diffusers skips when it builds the model (and
keeps when it saves it again). Reading a folder with that record restores exactly the exported model; only
a folder without it (e.g. a hub checkpoint) is read through the diffusers-numerics rule above.

    model = load_diffusers("DiT-XL-2-256/")                 # pipeline root or its transformer/ folder
    save_diffusers(model, "out/transformer")                # DiTTransformer2DModel.from_pretrained loads it
    transformer = to_diffusers(model); model2 = from_diffusers(transformer)
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from types import MappingProxyType

import torch
from safetensors.torch import load_file, save_file

from ditlab.atomic import atomic_write
from ditlab.models.checkpoint import (
    CONFIG_KEY,
    check_fits,
    load_state_dict_checked,
    model_metadata,
    restore_metadata,
)
from ditlab.models.config import DiTConfig
from ditlab.models.dit import DiT
from ditlab.models.formats import CheckpointFormat, read_torch_file, register_format
from ditlab.nn.embed import timestep_sinusoid

DIFFUSERS_CLASS = "DiTTransformer2DModel"
LEGACY_CLASS = "Transformer2DModel"  # diffusers' pre-0.28 generic class; DiT folders on the Hub still use it
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model"
# diffusers' attention-branch (AdaLayerNormZero) and final norms have this eps hard-coded; `norm_eps` only
# reaches the MLP-branch norm (BasicTransformerBlock.norm3). ditlab's final norm is fixed at 1e-6 as well.
DIFFUSERS_FIXED_EPS = 1e-6
# Overrides that read diffusers-format weights (e.g. the hub's DiT checkpoints, converted from the official
# release) as the official DiT rather than as diffusers' port of it.
OFFICIAL_NUMERICS = MappingProxyType(
    dict(timestep_freq_shift=0, norm_eps=DIFFUSERS_FIXED_EPS, mlp_norm_eps=None)
)  # read-only: shared
# CombinedTimestepLabelEmbeddings always builds its label table with dropout 0.1 (hence a null row).
DIFFUSERS_CLASS_DROPOUT = 0.1
# config.json key of ditlab's own record of an exported model (see ditlab.models.checkpoint.model_metadata).
# Private (leading "_"): diffusers drops such keys before building the model, silently, and saves them again.
DITLAB_KEY = "_ditlab"
# The fields a diffusers config fixes; a folder's ditlab record must agree with them.
GEOMETRY = (
    "image_hw",  # (H, W): an int and a square tuple are the same size
    "patch_size",
    "in_channels",
    "hidden_size",
    "depth",
    "num_heads",
    "num_classes",
    "learn_sigma",
)

# The diffusers classes' constructor defaults (and, for the text classes, the DiTConfig fields each fixes):
# a table of data, read once (see its "_about").
_CLASS_TABLE = json.loads(Path(__file__).with_name("diffusers_classes.json").read_text(encoding="utf-8"))


def diffusers_class(name: str) -> dict:
    """A diffusers class's entry in ditlab's table: defaults, and for a text class its fixed fields (the
    plain block's included) and the fields that identify it (see the table's "_about")."""
    entry = dict(_CLASS_TABLE[name])
    if entry.pop("plain_block", False):
        entry["fixed"] = {**entry["fixed"], **_CLASS_TABLE["plain_block"]}
    return entry


_DEFAULTS = {cls: diffusers_class(cls)["defaults"] for cls in (DIFFUSERS_CLASS, LEGACY_CLASS)}

INSTALL_HINT = 'diffusers is not installed; install the optional extra with: pip install "ditlab[diffusers]"'


def _import_diffusers_class():
    try:
        from diffusers import DiTTransformer2DModel
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from e
    return DiTTransformer2DModel


# ---------------------------------------------------------------------------------------------- configs
# What reading and writing any diffusers transformer config needs (the DiT here, the text classes in
# ditlab.models.interop_text): defaults filled in, refusals that name the field.
def _with_defaults(dconf: Mapping, defaults: Mapping) -> dict:
    """A diffusers config with its class's constructor defaults filled in (private "_" keys dropped)."""
    return {**defaults, **{k: v for k, v in dconf.items() if not k.startswith("_")}}


def _need(c: Mapping, what: str, field: str, wanted, why: str, needs: str = "ditlab") -> None:
    """Refuse a diffusers config (`what`: its class) whose `field` is not the one value ditlab reads."""
    if c.get(field) != wanted:
        raise ValueError(
            f"{what} config has {field}={c.get(field)!r}; {needs} needs {field}={wanted!r} ({why})"
        )


def _learns_sigma(c: Mapping, what: str) -> bool:
    """learn_sigma from in/out channels (out = in: one prediction; 2·in: ε and the variance)."""
    in_ch = int(c["in_channels"])
    out_ch = in_ch if c["out_channels"] is None else int(c["out_channels"])
    if out_ch not in (in_ch, 2 * in_ch):
        raise ValueError(
            f"{what} config has out_channels={out_ch} with in_channels={in_ch}; ditlab supports out_channels "
            "equal to in_channels (ε only) or twice it (ε and learned variance)"
        )
    return out_ch == 2 * in_ch


def _grid_fields(c: Mapping, what: str) -> dict:
    """The DiTConfig fields that diffusers' DiT, SD3 and PixArt configs spell alike: a sample grid, heads ×
    head size, layers, and out_channels (learn_sigma)."""
    return dict(
        input_size=int(c["sample_size"]),
        patch_size=int(c["patch_size"]),
        in_channels=int(c["in_channels"]),
        hidden_size=int(c["num_attention_heads"]) * int(c["attention_head_dim"]),
        depth=int(c["num_layers"]),
        num_heads=int(c["num_attention_heads"]),
        learn_sigma=_learns_sigma(c, what),
    )


def _grid_export(cfg: DiTConfig) -> dict:
    """`_grid_fields` the other way (a square input: sample_size is one int)."""
    return dict(
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.hidden_size // cfg.num_heads,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        num_layers=cfg.depth,
        sample_size=cfg.image_hw[0],
        patch_size=cfg.patch_size,
    )


def _require(cfg: DiTConfig, cls: str, wanted: Mapping, target: str = "", why: str = "") -> None:
    """Refuse an export (to `target`, default diffusers `cls`) whose config has a field that diffusers'
    class `cls` cannot express: `wanted` holds the one value it implements of each."""
    for field, value in wanted.items():
        if getattr(cfg, field) != value:
            raise ValueError(
                f"cannot export to {target or f'diffusers {cls}'}: {field}={getattr(cfg, field)!r}, but {cls} "
                f"only implements {field}={value!r}{why}"
            )


def config_from_diffusers(dconf: Mapping, **overrides) -> DiTConfig:
    """The DiTConfig that computes what a diffusers DiT config computes (see the module docstring)."""
    cls = dconf.get("_class_name", DIFFUSERS_CLASS)
    if cls not in _DEFAULTS:
        raise ValueError(
            f"diffusers class {cls!r} is not a DiT; expected {DIFFUSERS_CLASS} (or {LEGACY_CLASS} with "
            "norm_type='ada_norm_zero')"
        )
    c = _with_defaults(dconf, _DEFAULTS[cls])
    need = partial(_need, c, "diffusers", needs="ditlab's DiT")
    need("norm_type", "ada_norm_zero", "adaLN-Zero conditioning")
    need("activation_fn", "gelu-approximate", "the MLP's tanh-approximate GELU")
    need("attention_bias", True, "q/k/v projections with bias")
    need("norm_elementwise_affine", False, "token norms without learned affine")
    if cls == LEGACY_CLASS:
        need("cross_attention_dim", None, "no text cross-attention")
        need("num_vector_embeds", None, "continuous latents")
        need("only_cross_attention", False, "self-attention blocks")
        need("double_self_attention", False, "one attention per block")
        need("attention_type", "default", "plain attention")
        if c["patch_size"] is None or c["sample_size"] is None:
            raise ValueError(
                "diffusers Transformer2DModel config without patch_size/sample_size is not a DiT"
            )
        scale = (
            c["interpolation_scale"]
            if c["interpolation_scale"] is not None
            else max(c["sample_size"] // 64, 1)
        )
        if scale != 1:
            raise ValueError(
                f"diffusers config has interpolation_scale={scale}: its position table is rescaled, which "
                "ditlab's DiT does not support"
            )
    if c["num_embeds_ada_norm"] is None:
        raise ValueError("diffusers config has num_embeds_ada_norm=None; a DiT needs a class count")
    fields = dict(
        _grid_fields(c, "diffusers"),
        mlp_ratio=4.0,  # diffusers' FeedForward default (DiTTransformer2DModel passes no inner dim)
        class_dropout_prob=DIFFUSERS_CLASS_DROPOUT,
        num_classes=int(c["num_embeds_ada_norm"]),
        conditioning="adaln-zero",
        norm="layernorm",
        norm_eps=DIFFUSERS_FIXED_EPS,  # the attention-branch norm (AdaLayerNormZero)
        mlp_norm_eps=None if float(c["norm_eps"]) == DIFFUSERS_FIXED_EPS else float(c["norm_eps"]),
        timestep_freq_shift=1,  # diffusers' Timesteps(downscale_freq_shift=1)
    )
    return DiTConfig().replace(**{**fields, **overrides})


def ditlab_config(dconf: Mapping, source: str = "diffusers config", **overrides) -> DiTConfig:
    """The DiTConfig a diffusers config stands for: its ditlab record's config when it has one (the exact
    exported model), else `config_from_diffusers`; `overrides` replace fields either way."""
    described = config_from_diffusers(dconf)  # refuses what is not a DiT, with or without a record
    own = _recorded_config(dconf, source, described, GEOMETRY)
    if own is None:
        return config_from_diffusers(dconf, **overrides)
    return own.replace(**overrides)


def _recorded_config(dconf: Mapping, source: str, described: DiTConfig, geometry) -> DiTConfig | None:
    """The config in `dconf`'s ditlab record (None without one), refused when one of its `geometry` fields
    differs from what the diffusers fields describe (shared by the DiT and the text imports)."""
    recorded = _record(dconf, source)
    if recorded is None:
        return None
    own = DiTConfig.from_dict(recorded[CONFIG_KEY])
    differ = [
        f"{k} {getattr(own, k)!r} vs {getattr(described, k)!r}"
        for k in geometry
        if getattr(own, k) != getattr(described, k)
    ]
    if differ:
        raise ValueError(
            f"{source}: its ditlab record ({DITLAB_KEY!r}) and its diffusers fields disagree ({', '.join(differ)}); "
            f"the config was edited after export. Delete the {DITLAB_KEY!r} entry to read it as diffusers describes it"
        )
    return own


def _record(dconf: Mapping, source: str) -> dict | None:
    """The ditlab record of a diffusers config, or None when it has none."""
    recorded = dconf.get(DITLAB_KEY)
    if recorded is None:
        return None
    if not isinstance(recorded, Mapping) or not isinstance(recorded.get(CONFIG_KEY), Mapping):
        raise ValueError(
            f"{source}: {DITLAB_KEY!r} is not a ditlab record (a dict with {CONFIG_KEY!r}); delete it to read "
            "the folder as diffusers describes it"
        )
    return dict(recorded)


def diffusers_config(cfg: DiTConfig) -> dict:
    """The `DiTTransformer2DModel` constructor arguments for a ditlab config, or ValueError naming the field
    that diffusers' DiT cannot express."""
    required = dict(
        conditioning="adaln-zero",
        norm="layernorm",
        shift=True,
        gate_fn="identity",
        sandwich_norm=False,
        pooled_dim=0,
        arrangement="sequential",
        mlp="gelu",  # the later DiTs' block options have no place in DiTTransformer2DModel either
        qk_norm=False,
        rope=False,
        pos_embed="sincos",
    )
    _require(cfg, DIFFUSERS_CLASS, required, "diffusers", " (the paper's adaLN-Zero DiT)")
    if cfg.mlp_ratio != 4.0:
        raise ValueError(
            f"cannot export to diffusers: mlp_ratio={cfg.mlp_ratio}; DiTTransformer2DModel fixes it at 4"
        )
    h, w = cfg.image_hw
    if h != w:
        raise ValueError(
            f"cannot export to diffusers: input_size={cfg.input_size} is not square (sample_size is one int)"
        )
    if cfg.num_classes < 1:
        raise ValueError(
            f"cannot export to diffusers: num_classes={cfg.num_classes}; DiTTransformer2DModel is class-conditional"
        )
    if cfg.class_dropout_prob <= 0:
        raise ValueError(
            f"cannot export to diffusers: class_dropout_prob={cfg.class_dropout_prob}, so the model has no null-class "
            "row; DiTTransformer2DModel always has one (its label table has num_classes + 1 rows)"
        )
    return dict(
        _grid_export(cfg),
        dropout=0.0,
        norm_num_groups=32,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=cfg.num_classes,
        upcast_attention=False,
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
        norm_eps=_mlp_norm_eps(cfg),  # reaches only the MLP-branch norm (see DIFFUSERS_FIXED_EPS)
    )


def _mlp_norm_eps(cfg: DiTConfig) -> float:
    """The eps of the norm before the MLP (DiTBlock.norm2)."""
    return cfg.norm_eps if cfg.mlp_norm_eps is None else cfg.mlp_norm_eps


# ---------------------------------------------------------------------------------------------- weights
def _embedder_keys(i: int) -> dict[str, str]:
    """ditlab key -> diffusers key of block i's copy of the timestep + label embedder."""
    e = f"transformer_blocks.{i}.norm1.emb"
    return {
        "t_embedder.mlp.0.weight": f"{e}.timestep_embedder.linear_1.weight",
        "t_embedder.mlp.0.bias": f"{e}.timestep_embedder.linear_1.bias",
        "t_embedder.mlp.2.weight": f"{e}.timestep_embedder.linear_2.weight",
        "t_embedder.mlp.2.bias": f"{e}.timestep_embedder.linear_2.bias",
        "y_embedder.embedding_table.weight": f"{e}.class_embedder.embedding_table.weight",
    }


def _one_to_one_keys(depth: int) -> dict[str, str]:
    """ditlab key -> diffusers key for every tensor that maps unchanged (all but qkv and the embedders)."""
    keys = {
        "x_embedder.proj": "pos_embed.proj",
        "final_layer.linear": "proj_out_2",
        "final_layer.adaLN_modulation.1": "proj_out_1",  # both chunk as (shift, scale)
    }
    for i in range(depth):
        b, d = f"blocks.{i}", f"transformer_blocks.{i}"
        keys[f"{b}.attn.proj"] = f"{d}.attn1.to_out.0"
        keys[f"{b}.mlp.fc1"] = f"{d}.ff.net.0.proj"
        keys[f"{b}.mlp.fc2"] = f"{d}.ff.net.2"
        # Same chunk order on both sides: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp.
        keys[f"{b}.adaLN_modulation.1"] = f"{d}.norm1.linear"
    return {f"{k}.{s}": f"{v}.{s}" for k, v in keys.items() for s in ("weight", "bias")}


def _check_embedder_copies(state: Mapping, depth: int) -> list[int]:
    """Indices of the blocks whose embedder copy is not bitwise equal to block 0's."""
    ref = _embedder_keys(0)
    differ = []
    for i in range(1, depth):
        keys = _embedder_keys(i)
        if any(not torch.equal(state[keys[k]], state[ref[k]]) for k in ref):
            differ.append(i)
    return differ


def state_dict_from_diffusers(state: Mapping, depth: int, embedder_block: int | None = None) -> dict:
    """A diffusers DiT state dict -> ditlab keys (without `pos_embed`, which diffusers computes, not stores).

    diffusers keeps one timestep + label embedder per block; ditlab shares one. With `embedder_block=None`
    all copies must be identical (else ValueError); `embedder_block=i` takes block i's copy for every block,
    a lossy choice for a model trained in diffusers (the other copies are discarded).
    """
    missing = [k for k in [*_embedder_keys(0).values(), *_one_to_one_keys(depth).values()] if k not in state]
    if missing:
        raise ValueError(
            f"diffusers state dict lacks {len(missing)} DiT tensor(s), e.g. {missing[:3]}; is it a "
            f"DiTTransformer2DModel with num_layers={depth}?"
        )
    if embedder_block is None:
        differ = _check_embedder_copies(state, depth)
        if differ:
            raise ValueError(
                f"the timestep/label embedder copies of blocks {differ} differ from block 0's. diffusers keeps one "
                "copy per block (all equal in checkpoints converted from the official DiT, so this model was "
                "trained in diffusers); ditlab's DiT shares one embedder. To convert anyway pass embedder_block=i "
                "(0 is the copy diffusers' final layer uses): every block then uses that copy, so the converted "
                "model's outputs differ from the diffusers model's."
            )
        embedder_block = 0
    elif not 0 <= embedder_block < depth:
        raise ValueError(f"embedder_block={embedder_block} is out of range for a model with {depth} blocks")
    out = {k: state[v] for k, v in _embedder_keys(embedder_block).items()}
    out.update({k: state[v] for k, v in _one_to_one_keys(depth).items()})
    for i in range(depth):
        d = f"transformer_blocks.{i}.attn1"
        for s in ("weight", "bias"):
            # timm's fused projection: rows [q | k | v], each head-major, as diffusers' separate to_q/to_k/to_v.
            out[f"blocks.{i}.attn.qkv.{s}"] = torch.cat([state[f"{d}.to_{n}.{s}"] for n in "qkv"], dim=0)
    used = {*_one_to_one_keys(depth).values()}
    used |= {v for i in range(depth) for v in _embedder_keys(i).values()}
    used |= {
        f"transformer_blocks.{i}.attn1.to_{n}.{s}"
        for i in range(depth)
        for n in "qkv"
        for s in ("weight", "bias")
    }
    extra = sorted(set(state) - used - {"pos_embed.pos_embed"})
    if extra:
        raise ValueError(
            f"diffusers state dict has tensors a DiT does not use: {extra[:5]} ({len(extra)} in all)"
        )
    return out


def state_dict_to_diffusers(model: DiT) -> dict[str, torch.Tensor]:
    """ditlab weights -> the `DiTTransformer2DModel` state dict (the embedder copied into every block)."""
    diffusers_config(model.config)  # refuses what diffusers' DiT cannot express
    state = {k: v.detach() for k, v in model.state_dict().items()}
    depth = model.config.depth
    out = {v: state[k] for k, v in _one_to_one_keys(depth).items()}
    for i in range(depth):
        # Separate tensors per block (safetensors refuses aliased storage, and diffusers may train them apart).
        out.update({v: state[k].clone() for k, v in _embedder_keys(i).items()})
        weights = state[f"blocks.{i}.attn.qkv.weight"].chunk(3, dim=0)  # rows [q | k | v]
        biases = state[f"blocks.{i}.attn.qkv.bias"].chunk(3, dim=0)
        for n, w, b in zip("qkv", weights, biases, strict=True):
            out[f"transformer_blocks.{i}.attn1.to_{n}.weight"] = w.contiguous()
            out[f"transformer_blocks.{i}.attn1.to_{n}.bias"] = b.contiguous()
    return out


# ---------------------------------------------------------------------------------------------- mismatch
def timestep_embedding_change(model: DiT, num_timesteps: int = 1000) -> float:
    """Largest relative change ‖Δe‖/‖e‖ of the model's timestep embedding e(t), t = 0…num_timesteps-1, when its
    sinusoid is swapped between the official (shift 0) and diffusers' (shift 1) convention."""
    mlp = model.t_embedder.mlp
    t = torch.arange(num_timesteps, device=mlp[0].weight.device)
    dim = model.t_embedder.frequency_embedding_size
    with torch.no_grad():
        a = mlp(timestep_sinusoid(t, dim, freq_shift=0).to(mlp[0].weight.dtype))
        b = mlp(timestep_sinusoid(t, dim, freq_shift=1).to(mlp[0].weight.dtype))
        rel = (a - b).norm(dim=1) / a.norm(dim=1).clamp_min(1e-12)
    return float(rel.max())


def warn_x0_prediction(model: DiT) -> None:
    """Warn when the model outputs x̂₀ (a flow run with prediction="x0"): diffusers' flow schedulers read a
    transformer's output as the velocity, so they must be given v = (x_t − output)/t instead."""
    if (getattr(model, "objective_spec", None) or {}).get("prediction", "velocity") != "velocity":
        warnings.warn(
            "this model was trained to output the clean image x0 (prediction='x0'), not the velocity diffusers' "
            "flow schedulers expect: convert its output with v = (x_t - output) / t before a diffusers scheduler "
            "step (ditlab's samplers, which read the record kept in config.json, do this themselves)",
            UserWarning,
            stacklevel=3,
        )


def _warn_export_mismatch(model: DiT) -> None:
    """One warning line saying what diffusers' model will compute differently, and that ditlab will not."""
    warn_x0_prediction(model)
    cfg = model.config
    notes = []
    if cfg.timestep_freq_shift != 1:
        notes.append(
            f"it uses the official timestep sinusoid (timestep_freq_shift={cfg.timestep_freq_shift}) where diffusers "
            "hard-codes downscale_freq_shift=1, so its timestep embedding changes by up to "
            f"{100 * timestep_embedding_change(model):.0f}% (relative L2 over t=0…999) and diffusers' samples differ"
        )
    if cfg.norm_eps != DIFFUSERS_FIXED_EPS:
        notes.append(
            f"its attention-branch norm uses norm_eps={cfg.norm_eps:g} but diffusers fixes that norm's eps at "
            f"{DIFFUSERS_FIXED_EPS:g} (its norm_eps, written as {_mlp_norm_eps(cfg):g}, reaches only the norm "
            "before the MLP), a relative change of |Δeps|/(2·Var(x)) "
            f"(~{abs(cfg.norm_eps - DIFFUSERS_FIXED_EPS) / 2:.1e} for unit-variance tokens)"
        )
    if cfg.class_dropout_prob != DIFFUSERS_CLASS_DROPOUT:
        notes.append(
            f"diffusers trains with label dropout {DIFFUSERS_CLASS_DROPOUT}, not {cfg.class_dropout_prob} "
            "(inference is unaffected)"
        )
    if notes:
        warnings.warn(
            "the diffusers model will not compute exactly what this ditlab model computes: "
            + "; ".join(notes)
            + f". ditlab reads the folder back unchanged (its record is kept under {DITLAB_KEY!r} in config.json); "
            "a copy without that record reads as diffusers computes unless loaded with --official-numerics "
            "(OFFICIAL_NUMERICS)",
            UserWarning,
            stacklevel=3,
        )


# ---------------------------------------------------------------------------------------------- public API
def from_diffusers(transformer, embedder_block: int | None = None, **overrides) -> DiT:
    """A ditlab DiT with the weights of a diffusers `DiTTransformer2DModel` (same device and dtype, eval mode).

    `overrides` replace DiTConfig fields (e.g. `**OFFICIAL_NUMERICS` to compute as the official DiT);
    `embedder_block` picks one block's embedder copy when they differ (lossy, see state_dict_from_diffusers).
    """
    dconf = dict(transformer.config)
    dconf.setdefault("_class_name", type(transformer).__name__)
    param = next(transformer.parameters())
    model = _build(dconf, transformer.state_dict(), embedder_block, overrides, "the diffusers model")
    return model.to(param.device, param.dtype)


def _build(dconf: Mapping, dstate: Mapping, embedder_block, overrides: dict, source: str) -> DiT:
    config = ditlab_config(dconf, source, **overrides)
    blocks = {k.split(".")[1] for k in dstate if k.startswith("transformer_blocks.")}
    if config.depth != len(blocks):  # before anything loops over the config's depth
        raise ValueError(
            f"{source}: config.json says num_layers {config.depth} but the weights hold {len(blocks)} "
            "transformer blocks; the folder is inconsistent: re-save it from its source"
        )
    state = state_dict_from_diffusers(dstate, config.depth, embedder_block)
    check_fits(config, {k: getattr(v, "shape", ()) for k, v in state.items()}, source, derived=("pos_embed",))
    model = DiT(config)
    state["pos_embed"] = (
        model.pos_embed.detach().clone()
    )  # diffusers builds the same table (checked in tests)
    load_state_dict_checked(model, state, source=source)
    return restore_metadata(model, _record(dconf, source) or {}).eval()


def _resolve_folder(path: Path) -> Path:
    if (path / CONFIG_NAME).is_file():
        return path
    if (path / "transformer" / CONFIG_NAME).is_file():
        return path / "transformer"
    raise FileNotFoundError(
        f"{path} is not a diffusers model folder: expected {CONFIG_NAME} in it (a save_pretrained folder of "
        "DiTTransformer2DModel) or in its transformer/ subfolder (a DiTPipeline root)"
    )


def _read_weights(folder: Path, variant: str | None) -> dict[str, torch.Tensor]:
    stem = WEIGHTS_NAME if variant is None else f"{WEIGHTS_NAME}.{variant}"
    single_st, single_bin = folder / f"{stem}.safetensors", folder / f"{stem}.bin"
    index_st, index_bin = folder / f"{stem}.safetensors.index.json", folder / f"{stem}.bin.index.json"

    def read(file: Path) -> dict:
        if file.suffix == ".safetensors":
            return load_file(str(file), device="cpu")
        return read_torch_file(file)  # weights_only, every failure one error naming the file

    for single, index in ((single_st, index_st), (single_bin, index_bin)):
        if single.is_file():
            return read(single)
        if index.is_file():  # sharded: {"weight_map": {tensor name: shard file}}
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict = {}
            for shard in shards:
                state.update(read(folder / shard))
            return state
    present = sorted(p.name for p in folder.glob(f"{WEIGHTS_NAME}*"))
    hint = (
        f"; files present: {present} (pass variant=... for e.g. {WEIGHTS_NAME}.fp16.safetensors)"
        if present
        else ""
    )
    raise FileNotFoundError(f"no {stem}.safetensors or .bin weights in {folder}{hint}")


def load_diffusers(
    path: str | os.PathLike,
    device="cpu",
    embedder_block: int | None = None,
    variant: str | None = None,
    **overrides,
) -> DiT:
    """Load a diffusers DiT folder (a `DiTTransformer2DModel.save_pretrained` folder or a `DiTPipeline` root)
    as a ditlab DiT in eval mode. Does not need diffusers installed.

    Args:
        path: the folder.
        device: where the weights land.
        embedder_block: which block's embedder copy to use when the copies differ (lossy; see
            `state_dict_from_diffusers`). Leave None for checkpoints converted from the official DiT.
        variant: weights variant, e.g. "fp16" for `diffusion_pytorch_model.fp16.safetensors`.
        overrides: DiTConfig fields to replace, e.g. `**OFFICIAL_NUMERICS` to read a hub checkpoint (official
            weights) with the official DiT's numerics instead of diffusers'.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"diffusers model folder {path} does not exist")
    folder = _resolve_folder(path)
    dconf = json.loads((folder / CONFIG_NAME).read_text())
    ditlab_config(dconf, str(folder), **overrides)  # a bad config fails before the weights are read
    return _build(dconf, _read_weights(folder, variant), embedder_block, overrides, str(folder)).to(device)


def ditlab_record(path: str | os.PathLike) -> dict | None:
    """The ditlab record in a diffusers folder's config.json (see the module docstring), or None."""
    folder = _resolve_folder(Path(path))
    return _record(json.loads((folder / CONFIG_NAME).read_text()), str(folder))


def to_diffusers(model: DiT):
    """A diffusers `DiTTransformer2DModel` with this model's weights (same device and dtype, eval mode).

    Raises ValueError for configs diffusers' DiT cannot express, warns when its numerics will differ
    (official timestep sinusoid, attention-branch norm_eps ≠ 1e-6). Needs `pip install "ditlab[diffusers]"`.
    """
    cls = _import_diffusers_class()
    kwargs = diffusers_config(model.config)
    _warn_export_mismatch(model)
    transformer = cls(**kwargs)
    transformer.register_to_config(**{DITLAB_KEY: model_metadata(model)})  # from_diffusers restores it
    transformer.load_state_dict(state_dict_to_diffusers(model), strict=True)
    return _like_model(transformer, model)


def _like_model(transformer, model: DiT):
    """`transformer` on `model`'s device and dtype, in eval mode (shared by the DiT and the text exports)."""
    param = next(model.parameters())
    if param.dtype != torch.float32:  # diffusers logs a warning on any dtype cast, so only cast when needed
        transformer = transformer.to(dtype=param.dtype)
    return transformer.to(param.device).eval()


def save_diffusers(model: DiT, path: str | os.PathLike) -> Path:
    """Write `model` as a diffusers folder (config.json + diffusion_pytorch_model.safetensors) that
    `DiTTransformer2DModel.from_pretrained(path)` loads; returns the folder. Does not need diffusers installed.

    Same checks and warnings as `to_diffusers`. To use it in a `DiTPipeline`, write it to `<pipeline>/transformer`.
    """
    kwargs = diffusers_config(model.config)
    _warn_export_mismatch(model)
    config = {"_class_name": DIFFUSERS_CLASS, **kwargs, DITLAB_KEY: model_metadata(model)}
    return _write_folder(path, config, state_dict_to_diffusers(model))


def _write_folder(path: str | os.PathLike, config: dict, state_dict: dict) -> Path:
    """Write a diffusers folder: `config` (plus the installed diffusers version, if any) as config.json and
    `state_dict` as diffusion_pytorch_model.safetensors; returns the folder (shared by the DiT and text exports)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file; a diffusers model is written as a folder")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    config = dict(config)
    try:
        import diffusers

        config["_diffusers_version"] = diffusers.__version__
    except ImportError:
        pass
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(
        path / f"{WEIGHTS_NAME}.safetensors", lambda f: save_file(tensors, f.name, metadata={"format": "pt"})
    )
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    atomic_write(path / CONFIG_NAME, lambda f: f.write(text.encode()))
    return path


# Any folder no other format claims is read as a diffusers folder (which says clearly when it is not one).
register_format(
    CheckpointFormat(
        "diffusers",
        "folder",
        lambda probe: True,
        lambda probe, device, model=None, **overrides: load_diffusers(probe.path, device=device, **overrides),
        accepts_overrides=True,  # DiTConfig fields (e.g. OFFICIAL_NUMERICS), embedder_block, variant
    )
)

__all__ = [
    "DITLAB_KEY",
    "OFFICIAL_NUMERICS",
    "config_from_diffusers",
    "diffusers_config",
    "ditlab_config",
    "ditlab_record",
    "from_diffusers",
    "load_diffusers",
    "save_diffusers",
    "state_dict_from_diffusers",
    "state_dict_to_diffusers",
    "timestep_embedding_change",
    "to_diffusers",
]
