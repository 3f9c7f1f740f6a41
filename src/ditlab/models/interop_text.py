"""Conversion between ditlab's text-to-image models and diffusers' `SD3Transformer2DModel` (MMDiT),
`PixArtTransformer2DModel` (cross-attention with adaLN-single), `FluxTransformer2DModel` (double-stream MMDiT
blocks, then single-stream parallel blocks) and `ZImageTransformer2DModel` (S3-DiT), both ways: folders
(also pipeline roots with a transformer/ folder) and in-memory models. Reading a folder needs no diffusers.

Each diffusers class is a `TextClass`: how its config becomes a DiTConfig and back, and a table of `Link`s,
each tying ditlab tensors to the diffusers tensors they equal. A link is invertible, so one table serves both
directions (the kinds: see `Link`).

Facts the tables encode (read off diffusers 0.42): SD3's joint attention concatenates the image tokens first,
Flux's the text first (attention does not care: the rotary angles travel with their tokens); SD3's last block
is context-pre-only; SD3 stores its max-size position table (`pos_embed.pos_embed`) and crops the input's grid
from its centre, PixArt computes its table with base_size = sample_size / patch_size and interpolation_scale;
Flux reads 2×2-packed latents (channel slowest) with ids (0, row, col), rotary axes (lead, n, n), and
multiplies its σ ∈ [0, 1] timestep by 1000 (ditlab takes the 0…1000 scale); Z-Image patchifies channel-last,
rotates with ids (sequence, row, col) — caption token i at 1 + i, image tokens at caption length + 1 — at
θ = 256, conditions on a 256-d timestep embedding (middle width 1024) projected without SiLU, and uses
SwiGLU, bias-free attention, RMSNorms with weights (eps 1e-5) and a shift-free LayerNorm final layer.
AdaLayerNormContinuous chunks (scale, shift) where ditlab's modulation is (shift, scale).

Where ditlab differs on purpose (each has a test in tests/test_text_interop.py):
- SD3's last block computes context queries (`attn.add_q_proj`, `attn.norm_added_q`) whose attention output it
  discards; ditlab does not build them (`JointAttention(context_pre_only=True)`), so every parameter reaches
  the output. On import they are dropped (they cannot change the output), on export written as zeros / ones.
- SD3, Flux and Z-Image take no text mask (they attend to every text token given, padding included); ditlab
  does when given `text_mask`. With `text_mask=None` both compute the same function.
- Flux's single block projects cat(attention, MLP) with one Linear; ditlab's parallel Block has attn.proj and
  mlp.fc2 (the same function): import puts the bias in attn.proj, export sums the two.
- Z-Image pads image and caption sequences to multiples of 32 with learned pad tokens that take part in
  attention; ditlab pads nothing. At lengths of 32·k both agree; the pad tokens are dropped on import and
  written as zeros on export.
- diffusers stretches a grid of another size to `base_size` positions; a ditlab model built natively
  (`pos_base_size=0`) uses token indices. At the trained size they agree; an export says so in one warning.
- Not implemented, refused with the reason: PixArt-α's resolution / aspect-ratio conditioning (its 1024 px
  models), SD3.5's dual attention layers, FLUX.1-dev's guidance embedder, Z-Image-Omni's SigLIP branch.

Round trips are exact: an export writes ditlab's record of the model under `_ditlab` in config.json (as the
DiT interop does), and a folder with that record reads back as the exported model.

    model = load_model("sd3-folder/")                     # any of the four; also a pipeline root
    save_text_diffusers(model, "out/transformer")         # <Class>.from_pretrained loads it
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
)

SD3 = "SD3Transformer2DModel"
PIXART = "PixArtTransformer2DModel"
FLUX = "FluxTransformer2DModel"
ZIMAGE = "ZImageTransformer2DModel"
# Flux's transformer reads latents the pipeline packed into 2×2 patches (patch_size=1 on packed tokens) and
# has no sample size (rotary positions); ditlab patchifies itself and records a nominal latent size.
FLUX_PACK = 2
NOMINAL_INPUT_SIZE = 128  # Flux, Z-Image: no sample size; 1024 px latents, for Gflops only (override freely)
ZIMAGE_ADALN_DIM = 256  # Z-Image's condition width: min(dim, 256)
ZIMAGE_TIMESTEP_MID = 1024  # and its timestep MLP's middle width


@dataclass(frozen=True)
class Link:
    """ditlab tensor(s) `ours` = the diffusers tensor(s) `theirs`, as `kind` says:

    same       one tensor as it is
    cat        one ditlab tensor = the diffusers tensors stacked along rows (qkv = [to_q; to_k; to_v])
    cols       the ditlab tensors side by side = one diffusers tensor (Flux's proj_out = [attn.proj | fc2])
    bias_sum   ditlab's two biases add up to one diffusers bias (import: all in the first, 0 in the second)
    swap       one tensor, its two row halves exchanged ((scale, shift) vs (shift, scale))
    patch_in   a conv patch embedding (D, C, p, p) = a Linear on packed patches (D, C·p·p), channel slowest
    patch_out  output rows: ditlab's token layout (py, px, c) vs Flux's packed (c, py, px), `arg` = p·p
    patch_last a conv patch embedding (D, C, p, p) = a Linear on patches laid out (py, px, c) (Z-Image)
    """

    ours: tuple[str, ...]
    theirs: tuple[str, ...]
    kind: str = "same"
    arg: int = 0

    def to_ours(self, state: Mapping, own: Mapping) -> dict[str, torch.Tensor]:
        """ditlab tensors from a diffusers state (`own`: the ditlab model's state, for shapes)."""
        t = [state[k] for k in self.theirs]
        if self.kind == "cat":
            return {self.ours[0]: torch.cat(t, dim=0)}
        if self.kind == "cols":
            widths = [own[k].shape[1] for k in self.ours]
            return dict(zip(self.ours, (p.contiguous() for p in t[0].split(widths, dim=1)), strict=True))
        if self.kind == "bias_sum":
            return {self.ours[0]: t[0], self.ours[1]: torch.zeros_like(own[self.ours[1]])}
        if self.kind == "swap":
            return {self.ours[0]: _swap_halves(t[0])}
        if self.kind == "patch_in":
            return {self.ours[0]: t[0].reshape(own[self.ours[0]].shape)}
        if self.kind == "patch_out":  # rows (c, q) -> (q, c), q = the arg = p·p positions in a patch
            return {self.ours[0]: _swap_row_axes(t[0], -1, self.arg)}
        if self.kind == "patch_last":  # (D, p·p·C), channel fastest -> (D, C, p, p)
            D, C, p, _ = own[self.ours[0]].shape
            return {self.ours[0]: t[0].reshape(D, p, p, C).permute(0, 3, 1, 2).contiguous()}
        return {self.ours[0]: t[0]}

    def to_theirs(self, state: Mapping) -> dict[str, torch.Tensor]:
        """diffusers tensors (each with its own storage) from a ditlab state."""
        t = [state[k] for k in self.ours]
        if self.kind == "cat":
            return {
                k: p.clone() for k, p in zip(self.theirs, t[0].chunk(len(self.theirs), dim=0), strict=True)
            }
        if self.kind == "cols":
            return {self.theirs[0]: torch.cat(t, dim=1)}
        if self.kind == "bias_sum":
            return {self.theirs[0]: t[0] + t[1]}
        if self.kind == "swap":
            return {self.theirs[0]: _swap_halves(t[0])}
        if self.kind == "patch_in":
            return {self.theirs[0]: t[0].reshape(t[0].shape[0], -1).clone()}
        if self.kind == "patch_out":  # rows (q, c) -> (c, q)
            return {self.theirs[0]: _swap_row_axes(t[0], self.arg, -1)}
        if self.kind == "patch_last":
            return {self.theirs[0]: t[0].permute(0, 2, 3, 1).reshape(t[0].shape[0], -1).contiguous()}
        return {self.theirs[0]: t[0].clone()}


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _swap_row_axes(t: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Rows viewed as an (a, b) grid (one of them -1), transposed to (b, a): a permutation of the rows."""
    return t.reshape(a, b, *t.shape[1:]).transpose(0, 1).reshape(t.shape).contiguous()


def _linear(ours: str, *theirs: str, kind: str | None = None, arg: int = 0) -> list[Link]:
    """The weight and bias links of a Linear (several diffusers Linears: cat)."""
    kind = kind or ("cat" if len(theirs) > 1 else "same")
    bias_kind = "same" if kind in ("patch_in", "patch_last") else kind
    return [
        Link((f"{ours}.weight",), tuple(f"{t}.weight" for t in theirs), kind, arg),
        Link((f"{ours}.bias",), tuple(f"{t}.bias" for t in theirs), bias_kind, arg),
    ]


def _weight(ours: str, *theirs: str) -> Link:
    """A bias-free Linear (several diffusers Linears: cat)."""
    return Link(
        (f"{ours}.weight",), tuple(f"{t}.weight" for t in theirs), "cat" if len(theirs) > 1 else "same"
    )


def _norm(ours: str, theirs: str) -> Link:
    return Link((f"{ours}.weight",), (f"{theirs}.weight",))


def _mlp(ours: str, theirs: str) -> list[Link]:
    """ditlab's Mlp (fc1, GELU, fc2) = diffusers' FeedForward (net.0.proj, GELU, net.2)."""
    return _linear(f"{ours}.fc1", f"{theirs}.net.0.proj") + _linear(f"{ours}.fc2", f"{theirs}.net.2")


def _timestep(theirs: str) -> list[Link]:
    return _linear("t_embedder.mlp.0", f"{theirs}.linear_1") + _linear(
        "t_embedder.mlp.2", f"{theirs}.linear_2"
    )


@dataclass(frozen=True)
class TextClass:
    """One diffusers class: config both ways, the tensor links and the diffusers-only tensors.

    unread(cfg): diffusers tensors that cannot change its output (dropped on import) -> the value an export
    writes for each."""

    name: str
    to_config: Callable[[Mapping], dict]
    from_config: Callable[[DiTConfig], dict]
    links: Callable[[DiTConfig], list[Link]]
    unread: Callable[[DiTConfig], dict[str, torch.Tensor]]
    matches: Callable[[DiTConfig], bool]


# ---------------------------------------------------------------------------------------------- helpers
def _defaults(dconf: Mapping, defaults: dict) -> dict:
    return {**defaults, **{k: v for k, v in dconf.items() if not k.startswith("_")}}


def _need(c: Mapping, cls: str, field: str, wanted, why: str) -> None:
    if c.get(field) != wanted:
        raise ValueError(
            f"{cls} config has {field}={c.get(field)!r}; ditlab needs {field}={wanted!r} ({why})"
        )


def _out_channels(c: Mapping, cls: str) -> bool:
    """learn_sigma from in/out channels (out = in: one prediction; 2·in: ε and the variance)."""
    in_ch = int(c["in_channels"])
    out_ch = in_ch if c["out_channels"] is None else int(c["out_channels"])
    if out_ch not in (in_ch, 2 * in_ch):
        raise ValueError(
            f"{cls} config has out_channels={out_ch} with in_channels={in_ch}; ditlab supports out_channels "
            "equal to in_channels or twice it"
        )
    return out_ch == 2 * in_ch


def _require(cfg: DiTConfig, cls: str, **wanted) -> None:
    """Refuse an export whose config has a field diffusers' class cannot express."""
    for field, value in wanted.items():
        if getattr(cfg, field) != value:
            raise ValueError(
                f"cannot export to diffusers {cls}: {field}={getattr(cfg, field)!r}, but {cls} only implements "
                f"{field}={value!r}"
            )
    h, w = cfg.image_hw
    if h != w:
        raise ValueError(f"cannot export to diffusers {cls}: input_size={cfg.input_size} is not square")


# What SD3's, PixArt's and Flux's blocks share (Z-Image's differ): a pre-norm block whose MLP norm uses the
# attention norm's eps, adaLN shift and identity gates, a 4x MLP, no label table, the official sinusoid and
# no context refiner. A model must have all of these to export to one of the three.
_PLAIN_BLOCK = dict(
    mlp_norm_eps=None,
    shift=True,
    gate_fn="identity",
    mlp_ratio=4.0,
    num_classes=0,
    timestep_freq_shift=0,
    context_refiner=0,
)


def _common_fields(c: Mapping, cls: str) -> dict:
    return dict(
        input_size=int(c["sample_size"]),
        patch_size=int(c["patch_size"]),
        in_channels=int(c["in_channels"]),
        hidden_size=int(c["num_attention_heads"]) * int(c["attention_head_dim"]),
        depth=int(c["num_layers"]),
        num_heads=int(c["num_attention_heads"]),
        mlp_ratio=4.0,  # diffusers' FeedForward default
        class_dropout_prob=0.0,  # diffusers models hold no label table and drop no condition themselves
        num_classes=0,
        learn_sigma=_out_channels(c, cls),
        timestep_freq_shift=0,  # Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)
        pos_base_size=int(c["sample_size"]) // int(c["patch_size"]),
    )


def _common_export(cfg: DiTConfig) -> dict:
    return dict(
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.hidden_size // cfg.num_heads,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        num_layers=cfg.depth,
        sample_size=cfg.image_hw[0],
        patch_size=cfg.patch_size,
    )


# ---------------------------------------------------------------------------------------------- SD3
_SD3_DEFAULTS = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=18,
    attention_head_dim=64,
    num_attention_heads=18,
    joint_attention_dim=4096,
    caption_projection_dim=1152,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=96,
    dual_attention_layers=(),
    qk_norm=None,
)


def _sd3_to_config(dconf: Mapping) -> dict:
    c = _defaults(dconf, _SD3_DEFAULTS)
    if tuple(c["dual_attention_layers"] or ()):
        raise ValueError(
            f"{SD3} config has dual_attention_layers={c['dual_attention_layers']} (SD3.5's second attention "
            "per block), which ditlab's MMDiT does not implement"
        )
    if c["qk_norm"] not in (None, "rms_norm"):
        raise ValueError(f"{SD3} config has qk_norm={c['qk_norm']!r}; ditlab implements None or 'rms_norm'")
    fields = _common_fields(c, SD3)
    if int(c["caption_projection_dim"]) != fields["hidden_size"]:
        raise ValueError(
            f"{SD3} config has caption_projection_dim={c['caption_projection_dim']} ≠ the hidden size "
            f"{fields['hidden_size']}; the text stream must have the image stream's width"
        )
    return dict(
        fields,
        conditioning="adaln-zero",
        norm="layernorm",
        norm_eps=1e-6,
        pooled_dim=int(c["pooled_projection_dim"]),
        text_dim=int(c["joint_attention_dim"]),
        text_mixing="joint",
        text_embedder="linear",
        qk_norm=c["qk_norm"] == "rms_norm",
        pos_embed_max_size=int(c["pos_embed_max_size"] or 0),
    )


def _sd3_from_config(cfg: DiTConfig) -> dict:
    _require(
        cfg,
        SD3,
        conditioning="adaln-zero",
        text_mixing="joint",
        text_embedder="linear",
        norm="layernorm",
        norm_eps=1e-6,
        rope=False,
        pos_interpolation=1.0,
        **_PLAIN_BLOCK,
    )
    if cfg.pooled_dim < 1:
        raise ValueError(
            f"cannot export to diffusers {SD3}: it always takes a pooled text vector (pooled_dim=0)"
        )
    return dict(
        _common_export(cfg),
        joint_attention_dim=cfg.text_dim,
        caption_projection_dim=cfg.hidden_size,
        pooled_projection_dim=cfg.pooled_dim,
        pos_embed_max_size=cfg.pos_embed_max_size or None,
        dual_attention_layers=(),
        qk_norm="rms_norm" if cfg.qk_norm else None,
    )


def _sd3_links(cfg: DiTConfig) -> list[Link]:
    links = _linear("x_embedder.proj", "pos_embed.proj")
    if cfg.pos_embed_max_size:  # persistent only with a max size; else diffusers computes it
        links.append(Link(("pos_embed",), ("pos_embed.pos_embed",)))
    links += _timestep("time_text_embed.timestep_embedder")
    links += _linear("pooled_embedder.mlp.0", "time_text_embed.text_embedder.linear_1")
    links += _linear("pooled_embedder.mlp.2", "time_text_embed.text_embedder.linear_2")
    links += _linear("text_embedder.proj", "context_embedder")
    for i in range(cfg.depth):
        b, d = f"blocks.{i}", f"transformer_blocks.{i}"
        last = i == cfg.depth - 1
        links += _linear(f"{b}.adaLN_modulation.1", f"{d}.norm1.linear")  # both: shift, scale, gate × 2
        links += _linear(f"{b}.attn.qkv", *(f"{d}.attn.to_{n}" for n in "qkv"))
        links += _linear(f"{b}.attn.proj", f"{d}.attn.to_out.0")
        links += _mlp(f"{b}.mlp", f"{d}.ff")
        heads = [("q_norm", "norm_q"), ("k_norm", "norm_k"), ("context_k_norm", "norm_added_k")]
        if last:
            links += _linear(f"{b}.attn.context_kv", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj")
            # AdaLayerNormContinuous: (scale, shift) where ditlab's one-branch modulation is (shift, scale)
            ctx = f"{b}.context_stream.adaLN_modulation.1"
            links += _linear(ctx, f"{d}.norm1_context.linear", kind="swap")
        else:
            links += _linear(f"{b}.attn.context_qkv", *(f"{d}.attn.add_{n}_proj" for n in "qkv"))
            links += _linear(f"{b}.attn.context_proj", f"{d}.attn.to_add_out")
            links += _linear(f"{b}.context_stream.adaLN_modulation.1", f"{d}.norm1_context.linear")
            links += _mlp(f"{b}.context_stream.mlp", f"{d}.ff_context")
            heads.append(("context_q_norm", "norm_added_q"))
        if cfg.qk_norm:
            links += [_norm(f"{b}.attn.{o}", f"{d}.attn.{t}") for o, t in heads]
    links += _linear("final_layer.adaLN_modulation.1", "norm_out.linear", kind="swap")
    links += _linear("final_layer.linear", "proj_out")
    return links


def _sd3_unread(cfg: DiTConfig) -> dict[str, torch.Tensor]:
    """The last block's context queries: computed by diffusers, never read (their output is discarded)."""
    D, d = cfg.hidden_size, f"transformer_blocks.{cfg.depth - 1}.attn"
    out = {f"{d}.add_q_proj.weight": torch.zeros(D, D), f"{d}.add_q_proj.bias": torch.zeros(D)}
    if cfg.qk_norm:
        out[f"{d}.norm_added_q.weight"] = torch.ones(D // cfg.num_heads)
    return out


# ---------------------------------------------------------------------------------------------- PixArt
_PIXART_DEFAULTS = dict(
    num_attention_heads=16,
    attention_head_dim=72,
    in_channels=4,
    out_channels=8,
    num_layers=28,
    dropout=0.0,
    cross_attention_dim=1152,
    attention_bias=True,
    sample_size=128,
    patch_size=2,
    activation_fn="gelu-approximate",
    norm_type="ada_norm_single",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    interpolation_scale=None,
    use_additional_conditions=None,
    caption_channels=None,
    attention_type="default",
)


def _pixart_to_config(dconf: Mapping) -> dict:
    c = _defaults(dconf, _PIXART_DEFAULTS)
    _need(c, PIXART, "norm_type", "ada_norm_single", "adaLN-single conditioning")
    _need(c, PIXART, "activation_fn", "gelu-approximate", "the MLP's tanh-approximate GELU")
    _need(c, PIXART, "attention_bias", True, "q/k/v projections with bias")
    _need(c, PIXART, "norm_elementwise_affine", False, "token norms without learned affine")
    _need(c, PIXART, "attention_type", "default", "plain attention")
    additional = c["use_additional_conditions"]
    if additional is None:
        additional = int(c["sample_size"]) == 128  # diffusers' rule
    if additional:
        raise ValueError(
            f"{PIXART} config uses additional conditions (resolution and aspect-ratio embeddings of PixArt-α's "
            "1024 px models, on by default for sample_size=128), which ditlab does not implement"
        )
    if c["caption_channels"] is None:
        raise ValueError(
            f"{PIXART} config has caption_channels=None: ditlab's PixArt embeds captions (set it)"
        )
    fields = _common_fields(c, PIXART)
    if c["cross_attention_dim"] is not None and int(c["cross_attention_dim"]) != fields["hidden_size"]:
        raise ValueError(
            f"{PIXART} config has cross_attention_dim={c['cross_attention_dim']} ≠ the hidden size "
            f"{fields['hidden_size']}: the caption projection outputs the hidden size"
        )
    scale = c["interpolation_scale"]
    scale = float(scale) if scale is not None else float(max(int(c["sample_size"]) // 64, 1))
    return dict(
        fields,
        conditioning="adaln-single",
        norm="layernorm",
        norm_eps=float(c["norm_eps"]),
        text_dim=int(c["caption_channels"]),
        text_mixing="cross-attention",
        text_embedder="mlp",
        cross_norm=False,  # PixArt feeds the residual stream to its cross-attention as it is
        pos_interpolation=scale,
    )


def _pixart_from_config(cfg: DiTConfig) -> dict:
    _require(
        cfg,
        PIXART,
        conditioning="adaln-single",
        text_mixing="cross-attention",
        text_embedder="mlp",
        cross_norm=False,
        norm="layernorm",
        sandwich_norm=False,
        arrangement="sequential",
        pooled_dim=0,
        qk_norm=False,
        rope=False,
        pos_embed_max_size=0,
        **_PLAIN_BLOCK,
    )
    return dict(
        _common_export(cfg),
        cross_attention_dim=cfg.hidden_size,
        caption_channels=cfg.text_dim,
        norm_eps=cfg.norm_eps,
        interpolation_scale=cfg.pos_interpolation,
        use_additional_conditions=False,
        attention_bias=True,
        activation_fn="gelu-approximate",
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
    )


def _pixart_links(cfg: DiTConfig) -> list[Link]:
    links = _linear("x_embedder.proj", "pos_embed.proj")
    links += _timestep("adaln_single.emb.timestep_embedder")
    links += _linear("adaLN_single.t_block.1", "adaln_single.linear")  # rows: shift, scale, gate × 2
    links += _linear("text_embedder.mlp.0", "caption_projection.linear_1")
    links += _linear("text_embedder.mlp.2", "caption_projection.linear_2")
    for i in range(cfg.depth):
        b, d = f"blocks.{i}", f"transformer_blocks.{i}"
        links.append(Link((f"{b}.adaLN_table.scale_shift_table",), (f"{d}.scale_shift_table",)))
        links += _linear(f"{b}.attn.qkv", *(f"{d}.attn1.to_{n}" for n in "qkv"))
        links += _linear(f"{b}.attn.proj", f"{d}.attn1.to_out.0")
        links += _linear(f"{b}.cross_attn.q", f"{d}.attn2.to_q")
        links += _linear(f"{b}.cross_attn.kv", f"{d}.attn2.to_k", f"{d}.attn2.to_v")
        links += _linear(f"{b}.cross_attn.proj", f"{d}.attn2.to_out.0")
        links += _mlp(f"{b}.mlp", f"{d}.ff")
    links.append(Link(("final_layer.adaLN_table.scale_shift_table",), ("scale_shift_table",)))  # shift, scale
    links += _linear("final_layer.linear", "proj_out")
    return links


# ---------------------------------------------------------------------------------------------- Flux
_FLUX_DEFAULTS = dict(
    patch_size=1,
    in_channels=64,
    out_channels=None,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=False,
    axes_dims_rope=(16, 56, 56),
)


def _flux_to_config(dconf: Mapping) -> dict:
    c = _defaults(dconf, _FLUX_DEFAULTS)
    _need(c, FLUX, "patch_size", 1, "the pipeline packs 2×2 latent patches into tokens")
    _need(c, FLUX, "guidance_embeds", False, "FLUX.1-dev's distilled-guidance embedder is not implemented")
    axes = tuple(int(a) for a in c["axes_dims_rope"])
    head_dim = int(c["attention_head_dim"])
    if len(axes) != 3 or axes[1] != axes[2] or sum(axes) != head_dim:
        raise ValueError(
            f"{FLUX} config has axes_dims_rope={axes}; ditlab's 2-D rotary positions need (lead, n, n) summing "
            f"to attention_head_dim={head_dim}"
        )
    in_ch = int(c["in_channels"])
    out_ch = in_ch if c["out_channels"] is None else int(c["out_channels"])
    pp = FLUX_PACK * FLUX_PACK
    if in_ch % pp or out_ch % pp:
        raise ValueError(f"{FLUX} config has in/out_channels {in_ch}/{out_ch}, not packed 2×2 patches (÷4)")
    heads = int(c["num_attention_heads"])
    return dict(
        input_size=NOMINAL_INPUT_SIZE,
        patch_size=FLUX_PACK,
        in_channels=in_ch // pp,
        hidden_size=heads * head_dim,
        depth=int(c["num_layers"]) + int(c["num_single_layers"]),
        num_heads=heads,
        mlp_ratio=4.0,
        class_dropout_prob=0.0,
        num_classes=0,
        learn_sigma=_out_channels({"in_channels": in_ch, "out_channels": out_ch}, FLUX),
        timestep_freq_shift=0,
        conditioning="adaln-zero",
        arrangement="parallel",
        norm="layernorm",
        norm_eps=1e-6,
        pooled_dim=int(c["pooled_projection_dim"]),
        text_dim=int(c["joint_attention_dim"]),
        text_mixing="concat",
        text_embedder="linear",
        qk_norm=True,
        rope=True,
        rope_lead=axes[0],
        double_blocks=int(c["num_layers"]),
    )


def _flux_from_config(cfg: DiTConfig) -> dict:
    _require(
        cfg,
        FLUX,
        conditioning="adaln-zero",
        arrangement="parallel",
        text_mixing="concat",
        text_embedder="linear",
        patch_size=FLUX_PACK,
        norm="layernorm",
        norm_eps=1e-6,
        sandwich_norm=False,
        qk_norm=True,
        rope=True,
        **_PLAIN_BLOCK,
    )
    if cfg.pooled_dim < 1:
        raise ValueError(
            f"cannot export to diffusers {FLUX}: it always takes a pooled text vector (pooled_dim=0)"
        )
    pp = FLUX_PACK * FLUX_PACK
    head_dim = cfg.hidden_size // cfg.num_heads
    n = (head_dim - cfg.rope_lead) // 2
    return dict(
        patch_size=1,
        in_channels=cfg.in_channels * pp,
        out_channels=cfg.out_channels * pp,
        num_layers=cfg.double_blocks,
        num_single_layers=cfg.depth - cfg.double_blocks,
        attention_head_dim=head_dim,
        num_attention_heads=cfg.num_heads,
        joint_attention_dim=cfg.text_dim,
        pooled_projection_dim=cfg.pooled_dim,
        guidance_embeds=False,
        axes_dims_rope=(cfg.rope_lead, n, n),
    )


def _flux_links(cfg: DiTConfig) -> list[Link]:
    links = _linear("x_embedder.proj", "x_embedder", kind="patch_in")
    links += _timestep("time_text_embed.timestep_embedder")
    links += _linear("pooled_embedder.mlp.0", "time_text_embed.text_embedder.linear_1")
    links += _linear("pooled_embedder.mlp.2", "time_text_embed.text_embedder.linear_2")
    links += _linear("text_embedder.proj", "context_embedder")
    for i in range(cfg.double_blocks):  # MMDiT blocks, as SD3's but never context-pre-only
        b, d = f"blocks.{i}", f"transformer_blocks.{i}"
        links += _linear(f"{b}.adaLN_modulation.1", f"{d}.norm1.linear")
        links += _linear(f"{b}.attn.qkv", *(f"{d}.attn.to_{n}" for n in "qkv"))
        links += _linear(f"{b}.attn.proj", f"{d}.attn.to_out.0")
        links += _linear(f"{b}.attn.context_qkv", *(f"{d}.attn.add_{n}_proj" for n in "qkv"))
        links += _linear(f"{b}.attn.context_proj", f"{d}.attn.to_add_out")
        links += _linear(f"{b}.context_stream.adaLN_modulation.1", f"{d}.norm1_context.linear")
        links += _mlp(f"{b}.mlp", f"{d}.ff")
        links += _mlp(f"{b}.context_stream.mlp", f"{d}.ff_context")
        for o, t in (("q", "q"), ("k", "k"), ("context_q", "added_q"), ("context_k", "added_k")):
            links.append(_norm(f"{b}.attn.{o}_norm", f"{d}.attn.norm_{t}"))
    for j in range(cfg.depth - cfg.double_blocks):  # single blocks: the parallel arrangement
        b, d = f"blocks.{cfg.double_blocks + j}", f"single_transformer_blocks.{j}"
        links += _linear(f"{b}.adaLN_modulation.1", f"{d}.norm.linear")  # shift, scale, gate
        links += _linear(f"{b}.attn.qkv", *(f"{d}.attn.to_{n}" for n in "qkv"))
        links += [
            _norm(f"{b}.attn.q_norm", f"{d}.attn.norm_q"),
            _norm(f"{b}.attn.k_norm", f"{d}.attn.norm_k"),
        ]
        links += _linear(f"{b}.mlp.fc1", f"{d}.proj_mlp")
        # proj_out(cat(attention, mlp)) = attn.proj(attention) + fc2(mlp): its columns split, its bias in proj
        links.append(
            Link((f"{b}.attn.proj.weight", f"{b}.mlp.fc2.weight"), (f"{d}.proj_out.weight",), "cols")
        )
        links.append(Link((f"{b}.attn.proj.bias", f"{b}.mlp.fc2.bias"), (f"{d}.proj_out.bias",), "bias_sum"))
    links += _linear("final_layer.adaLN_modulation.1", "norm_out.linear", kind="swap")
    links += _linear("final_layer.linear", "proj_out", kind="patch_out", arg=cfg.patch_size**2)
    return links


def pack_latents(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) latents -> what FluxTransformer2DModel reads: packed tokens (N, H/2·W/2, 4C), channel
    slowest within a patch, and their ids (H/2·W/2, 3) = (0, row, col) (FluxPipeline's packing)."""
    N, C, H, W = x.shape
    p = FLUX_PACK
    tokens = x.view(N, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).reshape(N, -1, C * p * p)
    ids = torch.zeros(H // p, W // p, 3)
    ids[..., 1] = torch.arange(H // p)[:, None]
    ids[..., 2] = torch.arange(W // p)[None, :]
    return tokens, ids.reshape(-1, 3).to(x.device)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Packed Flux output tokens (N, H/2·W/2, 4C) -> (N, C, H, W) (the inverse of `pack_latents`)."""
    N, _, D = tokens.shape
    p = FLUX_PACK
    x = tokens.view(N, height // p, width // p, D // (p * p), p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(N, D // (p * p), height, width)


# ---------------------------------------------------------------------------------------------- Z-Image
_ZIMAGE_DEFAULTS = dict(
    all_patch_size=(2,),
    all_f_patch_size=(1,),
    in_channels=16,
    dim=3840,
    n_layers=30,
    n_refiner_layers=2,
    n_heads=30,
    n_kv_heads=30,
    norm_eps=1e-5,
    qk_norm=True,
    cap_feat_dim=2560,
    siglip_feat_dim=None,
    rope_theta=256.0,
    t_scale=1000.0,
    axes_dims=(32, 48, 48),
    axes_lens=(1024, 512, 512),
)
ZIMAGE_MLP_RATIO = 8 / 3  # its SwiGLU's hidden width int(dim / 3 · 8)


def _zimage_to_config(dconf: Mapping) -> dict:
    c = _defaults(dconf, _ZIMAGE_DEFAULTS)
    if tuple(c["all_patch_size"]) != (c["all_patch_size"][0],) or tuple(c["all_f_patch_size"]) != (1,):
        raise ValueError(
            f"{ZIMAGE} config has all_patch_size={c['all_patch_size']}, all_f_patch_size={c['all_f_patch_size']}; "
            "ditlab reads one spatial patch size and single frames (all_f_patch_size=(1,))"
        )
    _need(c, ZIMAGE, "siglip_feat_dim", None, "Z-Image-Omni's SigLIP image conditioning is not implemented")
    if int(c["n_kv_heads"]) != int(c["n_heads"]):
        raise ValueError(
            f"{ZIMAGE} config has n_kv_heads={c['n_kv_heads']} ≠ n_heads: grouped-query attention"
        )
    D, heads = int(c["dim"]), int(c["n_heads"])
    axes = tuple(int(a) for a in c["axes_dims"])
    if len(axes) != 3 or axes[1] != axes[2] or sum(axes) != D // heads:
        raise ValueError(
            f"{ZIMAGE} config has axes_dims={axes}; ditlab's rotary positions need (lead, n, n) summing to the "
            f"head size {D // heads}"
        )
    if int(D * ZIMAGE_MLP_RATIO) != int(D / 3 * 8):
        raise ValueError(
            f"{ZIMAGE} config has dim={D}, whose SwiGLU width int(dim/3·8) ditlab cannot reproduce"
        )
    refiners = int(c["n_refiner_layers"])
    return dict(
        input_size=NOMINAL_INPUT_SIZE,  # no sample size: rotary positions only (nominal, for Gflops)
        patch_size=int(c["all_patch_size"][0]),
        in_channels=int(c["in_channels"]),
        hidden_size=D,
        depth=int(c["n_layers"]),
        num_heads=heads,
        mlp_ratio=ZIMAGE_MLP_RATIO,
        mlp="swiglu",
        class_dropout_prob=0.0,
        num_classes=0,
        learn_sigma=False,
        timestep_freq_shift=0,
        conditioning="adaln-zero",
        norm="rmsnorm",
        norm_affine=True,
        norm_eps=float(c["norm_eps"]),
        shift=False,
        gate_fn="tanh",
        sandwich_norm=True,
        attn_bias=False,
        qk_norm=bool(c["qk_norm"]),
        qk_norm_eps=1e-5,  # fixed in its attention
        cond_dim=min(D, ZIMAGE_ADALN_DIM),
        timestep_mid=ZIMAGE_TIMESTEP_MID,
        adaln_act=False,
        final_norm="layernorm",
        text_dim=int(c["cap_feat_dim"]),
        text_mixing="concat",
        text_embedder="rms-linear",
        context_refiner=refiners,
        noise_refiner=refiners,
        rope=True,
        rope_lead=axes[0],
        rope_theta=float(c["rope_theta"]),
        rope_sequence_axis=True,
    )


def _zimage_from_config(cfg: DiTConfig) -> dict:
    _require(
        cfg,
        ZIMAGE,
        conditioning="adaln-zero",
        arrangement="sequential",
        text_mixing="concat",
        text_embedder="rms-linear",
        mlp="swiglu",
        norm="rmsnorm",
        norm_affine=True,
        shift=False,
        gate_fn="tanh",
        sandwich_norm=True,
        attn_bias=False,
        qk_norm_eps=1e-5,
        adaln_act=False,
        final_norm="layernorm",
        learn_sigma=False,
        num_classes=0,
        pooled_dim=0,
        timestep_freq_shift=0,
        rope=True,
        rope_sequence_axis=True,
        double_blocks=0,
        cond_width=min(cfg.hidden_size, ZIMAGE_ADALN_DIM),
        timestep_mid=ZIMAGE_TIMESTEP_MID,
        mlp_hidden=int(cfg.hidden_size / 3 * 8),
    )
    if cfg.context_refiner != cfg.noise_refiner:
        raise ValueError(
            f"cannot export to diffusers {ZIMAGE}: its n_refiner_layers sets both refiners, but this model has "
            f"context_refiner={cfg.context_refiner}, noise_refiner={cfg.noise_refiner}"
        )
    head_dim = cfg.hidden_size // cfg.num_heads
    n = (head_dim - cfg.rope_lead) // 2
    return dict(
        all_patch_size=(cfg.patch_size,),
        all_f_patch_size=(1,),
        in_channels=cfg.in_channels,
        dim=cfg.hidden_size,
        n_layers=cfg.depth,
        n_refiner_layers=cfg.context_refiner,
        n_heads=cfg.num_heads,
        n_kv_heads=cfg.num_heads,
        norm_eps=cfg.norm_eps,
        qk_norm=cfg.qk_norm,
        cap_feat_dim=cfg.text_dim,
        rope_theta=cfg.rope_theta,
        axes_dims=(cfg.rope_lead, n, n),
    )


def _zimage_block(ours: str, theirs: str, cfg: DiTConfig, modulated: bool) -> list[Link]:
    """One ZImageTransformerBlock = a sequential Block with sandwich norms, no attention biases, SwiGLU."""
    a = f"{theirs}.attention"
    links = [
        _norm(f"{ours}.norm1", f"{theirs}.attention_norm1"),
        _weight(f"{ours}.attn.qkv", f"{a}.to_q", f"{a}.to_k", f"{a}.to_v"),
        _weight(f"{ours}.attn.proj", f"{a}.to_out.0"),
        _norm(f"{ours}.post_norm1", f"{theirs}.attention_norm2"),
        _norm(f"{ours}.norm2", f"{theirs}.ffn_norm1"),
        *(_weight(f"{ours}.mlp.{w}", f"{theirs}.feed_forward.{w}") for w in ("w1", "w2", "w3")),
        _norm(f"{ours}.post_norm2", f"{theirs}.ffn_norm2"),
    ]
    if cfg.qk_norm:
        links += [_norm(f"{ours}.attn.q_norm", f"{a}.norm_q"), _norm(f"{ours}.attn.k_norm", f"{a}.norm_k")]
    if modulated:  # scale, gate × 2 from c as it is (no SiLU): ditlab's Identity + Linear keeps `.1`
        links += _linear(f"{ours}.adaLN_modulation.1", f"{theirs}.adaLN_modulation.0")
    return links


def _zimage_links(cfg: DiTConfig) -> list[Link]:
    key = f"{cfg.patch_size}-1"
    links = _linear("x_embedder.proj", f"all_x_embedder.{key}", kind="patch_last")
    links += [
        Link((f"t_embedder.mlp.{i}.{s}",), (f"t_embedder.mlp.{i}.{s}",))
        for i in (0, 2)
        for s in ("weight", "bias")
    ]
    links.append(_norm("text_embedder.norm", "cap_embedder.0"))
    links += _linear("text_embedder.proj", "cap_embedder.1")
    for j in range(cfg.noise_refiner):
        links += _zimage_block(f"noise_refiner.{j}", f"noise_refiner.{j}", cfg, modulated=True)
    for j in range(cfg.context_refiner):
        links += _zimage_block(f"context_refiner.{j}", f"context_refiner.{j}", cfg, modulated=False)
    for i in range(cfg.depth):
        links += _zimage_block(f"blocks.{i}", f"layers.{i}", cfg, modulated=True)
    links += _linear("final_layer.adaLN_modulation.1", f"all_final_layer.{key}.adaLN_modulation.1")  # scale
    links += _linear("final_layer.linear", f"all_final_layer.{key}.linear")  # (py, px, c) as ditlab
    return links


def _zimage_unread(cfg: DiTConfig) -> dict[str, torch.Tensor]:
    """The learned pad tokens Z-Image puts where it pads sequences to multiples of 32 (which then take part in
    attention); ditlab pads nothing (padding is masked), so these change nothing at lengths of 32·k."""
    return {"x_pad_token": torch.zeros(1, cfg.hidden_size), "cap_pad_token": torch.zeros(1, cfg.hidden_size)}


CLASSES: dict[str, TextClass] = {
    SD3: TextClass(
        SD3, _sd3_to_config, _sd3_from_config, _sd3_links, _sd3_unread, lambda cfg: cfg.text_mixing == "joint"
    ),
    PIXART: TextClass(
        PIXART,
        _pixart_to_config,
        _pixart_from_config,
        _pixart_links,
        lambda cfg: {},
        lambda cfg: cfg.text_mixing == "cross-attention" and cfg.conditioning == "adaln-single",
    ),
    FLUX: TextClass(
        FLUX,
        _flux_to_config,
        _flux_from_config,
        _flux_links,
        lambda cfg: {},
        lambda cfg: cfg.text_mixing == "concat" and cfg.arrangement == "parallel",
    ),
    ZIMAGE: TextClass(
        ZIMAGE,
        _zimage_to_config,
        _zimage_from_config,
        _zimage_links,
        _zimage_unread,
        lambda cfg: cfg.text_mixing == "concat" and cfg.arrangement == "sequential",
    ),
}


def text_class_for(cfg: DiTConfig) -> TextClass | None:
    """The diffusers class a ditlab config's architecture is (None: not one of these text classes)."""
    return next((tc for tc in CLASSES.values() if tc.matches(cfg)), None)


# ---------------------------------------------------------------------------------------------- configs
def text_config(dconf: Mapping, source: str = "diffusers config", **overrides) -> DiTConfig:
    """The DiTConfig of a diffusers text-to-image config: its ditlab record's when it has one, else derived."""
    tc = _class_of(dconf, source)
    described = DiTConfig().replace(**tc.to_config(dconf))
    geometry = ("patch_size", "in_channels", "hidden_size", "depth", "num_heads", "text_dim")
    geometry += () if tc.name in (FLUX, ZIMAGE) else ("image_hw",)  # theirs have no size: ours is nominal
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
    tc.from_config(cfg)
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
    kwargs = tc.from_config(model.config)
    _check_positions(model.config)
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
