"""diffusers' `ZImageTransformer2DModel` (S3-DiT) <-> ditlab's concat-text model with refiners, sandwich norms
and tanh gates (arrangement="sequential").

Z-Image patchifies channel-last, rotates with ids (sequence, row, col) — caption token i at 1 + i, image
tokens at caption length + 1 — at θ = 256, conditions on a 256-d timestep embedding (middle width 1024)
projected without SiLU, and uses SwiGLU, bias-free attention, RMSNorms with weights (eps 1e-5) and a
shift-free LayerNorm final layer; its q/k RMSNorms have eps 1e-5, fixed in its attention.

Where ditlab differs on purpose (tests/test_text_interop.py): Z-Image pads image and caption sequences to
multiples of 32 with learned pad tokens that take part in attention; ditlab pads nothing. At lengths of 32·k
both agree; the pad tokens are dropped on import and written as zeros on export. Z-Image takes no text mask;
with `text_mask=None` ditlab computes the same function. Not implemented, refused with the reason:
Z-Image-Omni's SigLIP branch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ditlab.models.config import DiTConfig
from ditlab.models.interop import _need, _require

from .common import NOMINAL_INPUT_SIZE, Link, export_rope_axes, linear, norm, rope_axes, weight

ZIMAGE = "ZImageTransformer2DModel"
ZIMAGE_ADALN_DIM = 256  # Z-Image's condition width: min(dim, 256); its timestep MLP's is a fixed field
ZIMAGE_MLP_RATIO = 8 / 3  # its SwiGLU's hidden width int(dim / 3 · 8)

NAME = ZIMAGE


def to_config(c: Mapping) -> dict:
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
    lead = rope_axes(c["axes_dims"], D // heads, ZIMAGE, "axes_dims")
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
        mlp_ratio=ZIMAGE_MLP_RATIO,  # export checks the width it gives (mlp_hidden), not the ratio
        norm_eps=float(c["norm_eps"]),
        qk_norm=bool(c["qk_norm"]),
        cond_dim=min(D, ZIMAGE_ADALN_DIM),
        text_dim=int(c["cap_feat_dim"]),
        context_refiner=refiners,
        noise_refiner=refiners,
        rope_lead=lead,
        rope_theta=float(c["rope_theta"]),
    )


def from_config(cfg: DiTConfig) -> dict:
    derived = dict(cond_width=min(cfg.hidden_size, ZIMAGE_ADALN_DIM), mlp_hidden=int(cfg.hidden_size / 3 * 8))
    _require(cfg, ZIMAGE, derived)
    if cfg.context_refiner != cfg.noise_refiner:
        raise ValueError(
            f"cannot export to diffusers {ZIMAGE}: its n_refiner_layers sets both refiners, but this model has "
            f"context_refiner={cfg.context_refiner}, noise_refiner={cfg.noise_refiner}"
        )
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
        axes_dims=export_rope_axes(cfg),
    )


def _block(ours: str, theirs: str, cfg: DiTConfig, modulated: bool) -> list[Link]:
    """One ZImageTransformerBlock = a sequential Block with sandwich norms, no attention biases, SwiGLU."""
    a = f"{theirs}.attention"
    links = [
        norm(f"{ours}.norm1", f"{theirs}.attention_norm1"),
        weight(f"{ours}.attn.qkv", f"{a}.to_q", f"{a}.to_k", f"{a}.to_v"),
        weight(f"{ours}.attn.proj", f"{a}.to_out.0"),
        norm(f"{ours}.post_norm1", f"{theirs}.attention_norm2"),
        norm(f"{ours}.norm2", f"{theirs}.ffn_norm1"),
        *(weight(f"{ours}.mlp.{w}", f"{theirs}.feed_forward.{w}") for w in ("w1", "w2", "w3")),
        norm(f"{ours}.post_norm2", f"{theirs}.ffn_norm2"),
    ]
    if cfg.qk_norm:
        links += [norm(f"{ours}.attn.q_norm", f"{a}.norm_q"), norm(f"{ours}.attn.k_norm", f"{a}.norm_k")]
    if modulated:  # scale, gate × 2 from c as it is (no SiLU): ditlab's Identity + Linear keeps `.1`
        links += linear(f"{ours}.adaLN_modulation.1", f"{theirs}.adaLN_modulation.0")
    return links


def links(cfg: DiTConfig) -> list[Link]:
    key = f"{cfg.patch_size}-1"
    links = linear("x_embedder.proj", f"all_x_embedder.{key}", kind="patch_last")
    links += [
        Link((f"t_embedder.mlp.{i}.{s}",), (f"t_embedder.mlp.{i}.{s}",))
        for i in (0, 2)
        for s in ("weight", "bias")
    ]
    links.append(norm("text_embedder.norm", "cap_embedder.0"))
    links += linear("text_embedder.proj", "cap_embedder.1")
    for j in range(cfg.noise_refiner):
        links += _block(f"noise_refiner.{j}", f"noise_refiner.{j}", cfg, modulated=True)
    for j in range(cfg.context_refiner):
        links += _block(f"context_refiner.{j}", f"context_refiner.{j}", cfg, modulated=False)
    for i in range(cfg.depth):
        links += _block(f"blocks.{i}", f"layers.{i}", cfg, modulated=True)
    links += linear("final_layer.adaLN_modulation.1", f"all_final_layer.{key}.adaLN_modulation.1")  # scale
    links += linear("final_layer.linear", f"all_final_layer.{key}.linear")  # (py, px, c) as ditlab
    return links


def unread(cfg: DiTConfig) -> dict[str, torch.Tensor]:
    """The learned pad tokens Z-Image puts where it pads sequences to multiples of 32 (which then take part in
    attention); ditlab pads nothing (padding is masked), so these change nothing at lengths of 32·k."""
    return {"x_pad_token": torch.zeros(1, cfg.hidden_size), "cap_pad_token": torch.zeros(1, cfg.hidden_size)}
