"""diffusers' `PixArtTransformer2DModel` <-> ditlab's cross-attention Block with adaLN-single conditioning.

PixArt computes its position table with base_size = sample_size / patch_size and interpolation_scale, feeds the
residual stream to its cross-attention without a norm, and takes a caption mask (as ditlab does).
Not implemented, refused with the reason: PixArt-α's resolution / aspect-ratio conditioning (its 1024 px
models).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from ditlab.models.config import DiTConfig
from ditlab.models.interop import _grid_export, _need

from .common import Link, linear, mlp, no_unread_tensors, sized_fields, timestep

PIXART = "PixArtTransformer2DModel"

NAME = PIXART
# what the constructor arguments always are (written on export, required on import)
_ITS_BLOCK = dict(
    norm_type=("ada_norm_single", "adaLN-single conditioning"),
    activation_fn=("gelu-approximate", "the MLP's tanh-approximate GELU"),
    attention_bias=(True, "q/k/v projections with bias"),
    norm_elementwise_affine=(False, "token norms without learned affine"),
)


unread = no_unread_tensors  # every tensor of the class is read


def to_config(c: Mapping) -> dict:
    need = partial(_need, c, PIXART)
    for name, (value, why) in _ITS_BLOCK.items():
        need(name, value, why)
    need("attention_type", "default", "plain attention")
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
    fields = sized_fields(c, PIXART)
    if c["cross_attention_dim"] is not None and int(c["cross_attention_dim"]) != fields["hidden_size"]:
        raise ValueError(
            f"{PIXART} config has cross_attention_dim={c['cross_attention_dim']} ≠ the hidden size "
            f"{fields['hidden_size']}: the caption projection outputs the hidden size"
        )
    scale = c["interpolation_scale"]
    scale = float(scale) if scale is not None else float(max(int(c["sample_size"]) // 64, 1))
    return dict(
        fields, norm_eps=float(c["norm_eps"]), text_dim=int(c["caption_channels"]), pos_interpolation=scale
    )


def from_config(cfg: DiTConfig) -> dict:
    return dict(
        _grid_export(cfg),
        cross_attention_dim=cfg.hidden_size,
        caption_channels=cfg.text_dim,
        norm_eps=cfg.norm_eps,
        interpolation_scale=cfg.pos_interpolation,
        use_additional_conditions=False,
        **{name: value for name, (value, _) in _ITS_BLOCK.items()},
    )


def links(cfg: DiTConfig) -> list[Link]:
    links = linear("x_embedder.proj", "pos_embed.proj")
    links += timestep("adaln_single.emb.timestep_embedder")
    links += linear("adaLN_single.t_block.1", "adaln_single.linear")  # rows: shift, scale, gate × 2
    links += linear("text_embedder.mlp.0", "caption_projection.linear_1")
    links += linear("text_embedder.mlp.2", "caption_projection.linear_2")
    for i in range(cfg.depth):
        b, d = f"blocks.{i}", f"transformer_blocks.{i}"
        links.append(Link((f"{b}.adaLN_table.scale_shift_table",), (f"{d}.scale_shift_table",)))
        links += linear(f"{b}.attn.qkv", *(f"{d}.attn1.to_{n}" for n in "qkv"))
        links += linear(f"{b}.attn.proj", f"{d}.attn1.to_out.0")
        links += linear(f"{b}.cross_attn.q", f"{d}.attn2.to_q")
        links += linear(f"{b}.cross_attn.kv", f"{d}.attn2.to_k", f"{d}.attn2.to_v")
        links += linear(f"{b}.cross_attn.proj", f"{d}.attn2.to_out.0")
        links += mlp(f"{b}.mlp", f"{d}.ff")
    links.append(Link(("final_layer.adaLN_table.scale_shift_table",), ("scale_shift_table",)))  # shift, scale
    links += linear("final_layer.linear", "proj_out")
    return links
