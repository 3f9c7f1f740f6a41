"""diffusers' `FluxTransformer2DModel` <-> ditlab's concat-text model: MMDiT double-stream blocks
(`double_blocks`), then the parallel arrangement (single-stream blocks).

Flux's joint attention concatenates the text tokens first (attention does not care: the rotary angles travel
with their tokens). It reads 2×2-packed latents (channel slowest) with ids (0, row, col), rotary axes
(lead, n, n), and multiplies its σ ∈ [0, 1] timestep by 1000 (ditlab takes the 0…1000 scale).

Where ditlab differs on purpose (tests/test_text_interop.py): Flux's single block projects cat(attention,
MLP) with one Linear; ditlab's parallel Block has attn.proj and mlp.fc2 (the same function): import puts the
bias in attn.proj, export sums the two. Flux takes no text mask; with `text_mask=None` ditlab computes the
same function. Not implemented, refused with the reason: FLUX.1-dev's guidance embedder.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import torch

from ditlab.models.config import DiTConfig
from ditlab.models.interop import _learns_sigma, _need

from .common import (
    NOMINAL_INPUT_SIZE,
    Link,
    export_rope_axes,
    linear,
    mmdit_block,
    need_pooled,
    no_unread_tensors,
    norm,
    rope_axes,
    time_text_embedders,
)

FLUX = "FluxTransformer2DModel"
# Flux's transformer reads latents the pipeline packed into 2×2 patches (patch_size=1 on packed tokens);
# ditlab patchifies itself.
FLUX_PACK = 2

NAME = FLUX


unread = no_unread_tensors  # every tensor of the class is read


def to_config(c: Mapping) -> dict:
    need = partial(_need, c, FLUX)
    need("patch_size", 1, "the pipeline packs 2×2 latent patches into tokens")
    need("guidance_embeds", False, "FLUX.1-dev's distilled-guidance embedder is not implemented")
    head_dim = int(c["attention_head_dim"])
    lead = rope_axes(c["axes_dims_rope"], head_dim, FLUX, "axes_dims_rope")
    in_ch = int(c["in_channels"])
    out_ch = in_ch if c["out_channels"] is None else int(c["out_channels"])
    pp = FLUX_PACK * FLUX_PACK
    if in_ch % pp or out_ch % pp:
        raise ValueError(f"{FLUX} config has in/out_channels {in_ch}/{out_ch}, not packed 2×2 patches (÷4)")
    heads = int(c["num_attention_heads"])
    return dict(
        input_size=NOMINAL_INPUT_SIZE,
        in_channels=in_ch // pp,
        hidden_size=heads * head_dim,
        depth=int(c["num_layers"]) + int(c["num_single_layers"]),
        num_heads=heads,
        learn_sigma=_learns_sigma(c, FLUX),
        pooled_dim=int(c["pooled_projection_dim"]),
        text_dim=int(c["joint_attention_dim"]),
        rope_lead=lead,
        double_blocks=int(c["num_layers"]),
    )


def from_config(cfg: DiTConfig) -> dict:
    need_pooled(cfg, FLUX)
    pp = FLUX_PACK * FLUX_PACK
    return dict(
        patch_size=1,
        in_channels=cfg.in_channels * pp,
        out_channels=cfg.out_channels * pp,
        num_layers=cfg.double_blocks,
        num_single_layers=cfg.depth - cfg.double_blocks,
        attention_head_dim=cfg.hidden_size // cfg.num_heads,
        num_attention_heads=cfg.num_heads,
        joint_attention_dim=cfg.text_dim,
        pooled_projection_dim=cfg.pooled_dim,
        guidance_embeds=False,
        axes_dims_rope=export_rope_axes(cfg),
    )


def links(cfg: DiTConfig) -> list[Link]:
    links = linear("x_embedder.proj", "x_embedder", kind="patch_in")
    links += time_text_embedders()
    for i in range(cfg.double_blocks):  # MMDiT blocks, as SD3's but never context-pre-only
        links += mmdit_block(f"blocks.{i}", f"transformer_blocks.{i}", qk_norm=True)
    for j in range(cfg.depth - cfg.double_blocks):  # single blocks: the parallel arrangement
        b, d = f"blocks.{cfg.double_blocks + j}", f"single_transformer_blocks.{j}"
        links += linear(f"{b}.adaLN_modulation.1", f"{d}.norm.linear")  # shift, scale, gate
        links += linear(f"{b}.attn.qkv", *(f"{d}.attn.to_{n}" for n in "qkv"))
        links += [norm(f"{b}.attn.q_norm", f"{d}.attn.norm_q"), norm(f"{b}.attn.k_norm", f"{d}.attn.norm_k")]
        links += linear(f"{b}.mlp.fc1", f"{d}.proj_mlp")
        # proj_out(cat(attention, mlp)) = attn.proj(attention) + fc2(mlp): its columns split, its bias in proj
        links.append(
            Link((f"{b}.attn.proj.weight", f"{b}.mlp.fc2.weight"), (f"{d}.proj_out.weight",), "cols")
        )
        links.append(Link((f"{b}.attn.proj.bias", f"{b}.mlp.fc2.bias"), (f"{d}.proj_out.bias",), "bias_sum"))
    links += linear("final_layer.adaLN_modulation.1", "norm_out.linear", kind="swap")  # (scale, shift)
    links += linear("final_layer.linear", "proj_out", kind="patch_out", arg=cfg.patch_size**2)
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
