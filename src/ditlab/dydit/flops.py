"""FLOPs accounting of a DyDiT forward, on top of `ditlab.models.flops.flop_breakdown` (MACs per image).

Every term of a block's attention (qkv, QKᵀ, AV, out-projection) is linear in the number of active heads, and
the MLP's two matmuls are linear in the active channel groups and in the tokens that run it, so

    block MACs = heads/H · attention + groups/H · kept tokens/T · mlp  (+ the token router: T·(D·r + r)).

The per-step width routers cost nothing at deployment (their decisions are precomputed per timestep) and are
not counted; norms and modulation are counted as in the dense model (well under 1% of a block).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ditlab.models.flops import _config_and_hw, flop_breakdown


def token_router_macs(cfg, hw: tuple[int, int], reduction: int) -> int:
    """MACs of one block's token router for one image: Linear(D, D/r) and Linear(D/r, 1) on every token."""
    T = (hw[0] // cfg.patch_size) * (hw[1] // cfg.patch_size)
    r = max(1, cfg.hidden_size // reduction)
    return T * (cfg.hidden_size * r + r)


def dynamic_flop_breakdown(
    model,
    heads: Sequence[float],
    groups: Sequence[float],
    tokens: Sequence[float] | None = None,
    input=None,
) -> dict[str, float]:
    """MACs per image of a DyDiT with `heads[b]` active heads, `groups[b]` active MLP groups and a fraction
    `tokens[b]` of the tokens through block b's MLP (None = all; averages over a batch are fine).

    Returns flop_breakdown's parts with attention and mlp scaled, plus `token_router`, `total`, and
    `dense_total` / `ratio` (dynamic total over the dense DiT's).
    """
    cfg, hw = _config_and_hw(model, input)
    dense = flop_breakdown(cfg, hw)
    H, depth = cfg.num_heads, cfg.depth
    tokens = [1.0] * depth if tokens is None else list(tokens)
    if not (len(heads) == len(groups) == len(tokens) == depth):
        raise ValueError(
            f"give one value per block ({depth}): got {len(heads)} heads, {len(groups)} groups, "
            f"{len(tokens)} token fractions"
        )
    out = dict(dense)
    out["attention"] = sum(float(h) / H for h in heads) * dense["per_block_attention"]
    out["mlp"] = sum(float(g) / H * float(k) for g, k in zip(groups, tokens)) * dense["per_block_mlp"]
    options = getattr(model, "options", None)  # a DyDiT's DyDiTOptions; a DiT or a config has none
    routed = options is not None and options.token_routing
    out["token_router"] = depth * token_router_macs(cfg, hw, options.token_reduction) if routed else 0
    parts = [k for k in dense if k not in ("total", "per_block_attention", "per_block_mlp")]
    out["total"] = sum(out[k] for k in parts) + out["token_router"]
    out["dense_total"] = dense["total"]
    out["ratio"] = out["total"] / dense["total"]
    return out


def block_flops_ratio(
    per_block_attention: float,
    per_block_mlp: float,
    head_frac: torch.Tensor,
    group_frac: torch.Tensor,
    token_frac: torch.Tensor,
) -> torch.Tensor:
    """Differentiable r = Σ_b (a_b·F_attn + g_b·k_b·F_mlp) / Σ_b (F_attn + F_mlp), per sample.

    The fractions are (depth, N) tensors of active heads, groups and kept tokens: DyDiT's training constraint
    (the blocks' attention and MLP only, as the paper's F_dyn / F_static)."""
    depth = head_frac.shape[0]
    dyn = per_block_attention * head_frac + per_block_mlp * group_frac * token_frac  # (depth, N)
    return dyn.sum(0) / (depth * (per_block_attention + per_block_mlp))  # (N,)
