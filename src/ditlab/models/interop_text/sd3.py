"""diffusers' `SD3Transformer2DModel` (MMDiT) <-> ditlab's joint-attention Block (text_mixing="joint").

SD3's joint attention concatenates the image tokens first; its last block is context-pre-only; it stores its
max-size position table (`pos_embed.pos_embed`) and crops the input's grid from its centre.

Where ditlab differs on purpose (tests/test_text_interop.py): SD3's last block computes context queries
(`attn.add_q_proj`, `attn.norm_added_q`) whose attention output it discards; ditlab does not build them
(`JointAttention(context_pre_only=True)`), so every parameter reaches the output. On import they are dropped
(they cannot change the output), on export written as zeros / ones. SD3 takes no text mask (it attends to
every text token given, padding included); with `text_mask=None` ditlab computes the same function.
Not implemented, refused with the reason: SD3.5's dual attention layers.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ditlab.models.config import DiTConfig
from ditlab.models.interop import _grid_export

from .common import (
    Link,
    linear,
    mmdit_block,
    need_pooled,
    sized_fields,
    time_text_embedders,
)

SD3 = "SD3Transformer2DModel"

NAME = SD3


def to_config(c: Mapping) -> dict:
    if tuple(c["dual_attention_layers"] or ()):
        raise ValueError(
            f"{SD3} config has dual_attention_layers={c['dual_attention_layers']} (SD3.5's second attention "
            "per block), which ditlab's MMDiT does not implement"
        )
    if c["qk_norm"] not in (None, "rms_norm"):
        raise ValueError(f"{SD3} config has qk_norm={c['qk_norm']!r}; ditlab implements None or 'rms_norm'")
    fields = sized_fields(c, SD3)
    if int(c["caption_projection_dim"]) != fields["hidden_size"]:
        raise ValueError(
            f"{SD3} config has caption_projection_dim={c['caption_projection_dim']} ≠ the hidden size "
            f"{fields['hidden_size']}; the text stream must have the image stream's width"
        )
    return dict(
        fields,
        pooled_dim=int(c["pooled_projection_dim"]),
        text_dim=int(c["joint_attention_dim"]),
        qk_norm=c["qk_norm"] == "rms_norm",
        pos_embed_max_size=int(c["pos_embed_max_size"] or 0),
    )


def from_config(cfg: DiTConfig) -> dict:
    need_pooled(cfg, SD3)
    return dict(
        _grid_export(cfg),
        joint_attention_dim=cfg.text_dim,
        caption_projection_dim=cfg.hidden_size,
        pooled_projection_dim=cfg.pooled_dim,
        pos_embed_max_size=cfg.pos_embed_max_size or None,
        dual_attention_layers=(),
        qk_norm="rms_norm" if cfg.qk_norm else None,
    )


def links(cfg: DiTConfig) -> list[Link]:
    links = linear("x_embedder.proj", "pos_embed.proj")
    if cfg.pos_embed_max_size:  # persistent only with a max size; else diffusers computes it
        links.append(Link(("pos_embed",), ("pos_embed.pos_embed",)))
    links += time_text_embedders()
    for i in range(cfg.depth):
        last = i == cfg.depth - 1
        links += mmdit_block(f"blocks.{i}", f"transformer_blocks.{i}", cfg.qk_norm, context_pre_only=last)
    # AdaLayerNormContinuous: (scale, shift)
    links += linear("final_layer.adaLN_modulation.1", "norm_out.linear", kind="swap")
    links += linear("final_layer.linear", "proj_out")
    return links


def unread(cfg: DiTConfig) -> dict[str, torch.Tensor]:
    """The last block's context queries: computed by diffusers, never read (their output is discarded)."""
    D, d = cfg.hidden_size, f"transformer_blocks.{cfg.depth - 1}.attn"
    out = {f"{d}.add_q_proj.weight": torch.zeros(D, D), f"{d}.add_q_proj.bias": torch.zeros(D)}
    if cfg.qk_norm:
        out[f"{d}.norm_added_q.weight"] = torch.ones(D // cfg.num_heads)
    return out
