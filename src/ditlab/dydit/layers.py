"""The DyDiT block's computations, on full, masked or sliced weights: attention over a subset of heads, an MLP
over a subset of hidden-channel groups, and the MLP branch run only on the tokens a router keeps.

The weights stay in the DiT's own modules (`attn.qkv`, `attn.proj`, `mlp.fc1`, `mlp.fc2`); these functions only
choose which rows/columns to use. Layout they rely on: qkv rows are [q | k | v], each third head-major (head h
of q = rows h·hd:(h+1)·hd); the MLP's hidden width is cut into `groups` equal consecutive chunks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ditlab.nn.attention import Attention, Mlp
from ditlab.nn.modulation import Modulation


class SlicedAttention(NamedTuple):
    """The weights of an attention layer restricted to `heads` heads (a smaller, ordinary attention layer)."""

    qkv_weight: torch.Tensor  # (3·heads·hd, D)
    qkv_bias: torch.Tensor | None  # (3·heads·hd,)
    proj_weight: torch.Tensor  # (D, heads·hd)
    heads: int


class SlicedMlp(NamedTuple):
    """The weights of an MLP restricted to some hidden-channel groups; fc2's bias is the MLP's own."""

    fc1_weight: torch.Tensor  # (F', D)
    fc1_bias: torch.Tensor  # (F',)
    fc2_weight: torch.Tensor  # (D, F')


def head_rows(attn: Attention, heads: torch.Tensor) -> torch.Tensor:
    """Indices of the channels of `heads` (K,) inside one D-wide third of qkv (= the proj input columns)."""
    hd = attn.head_dim
    offsets = torch.arange(hd, device=heads.device)
    return (heads[:, None] * hd + offsets[None, :]).reshape(-1)  # (K·hd,)


def group_rows(mlp: Mlp, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Indices of the hidden channels of `groups` (K,) when fc1's output is cut into `num_groups` chunks."""
    size = mlp.fc1.out_features // num_groups
    offsets = torch.arange(size, device=groups.device)
    return (groups[:, None] * size + offsets[None, :]).reshape(-1)  # (K·size,)


def slice_attention(attn: Attention, heads: tuple[int, ...]) -> SlicedAttention:
    """Copy out the qkv rows and proj columns of `heads`, contiguous, ready for plain matmuls."""
    idx = torch.tensor(heads, dtype=torch.long, device=attn.qkv.weight.device)
    cols = head_rows(attn, idx)  # (K·hd,)
    D = attn.num_heads * attn.head_dim
    rows = torch.cat([cols, cols + D, cols + 2 * D])  # the same heads in q, k and v
    bias = attn.qkv.bias.index_select(0, rows).contiguous() if attn.qkv.bias is not None else None
    return SlicedAttention(
        attn.qkv.weight.index_select(0, rows).contiguous(),
        bias,
        attn.proj.weight.index_select(1, cols).contiguous(),
        len(heads),
    )


def slice_mlp(mlp: Mlp, groups: tuple[int, ...], num_groups: int) -> SlicedMlp:
    """Copy out the fc1 rows and fc2 columns of `groups`, contiguous."""
    idx = group_rows(mlp, torch.tensor(groups, dtype=torch.long, device=mlp.fc1.weight.device), num_groups)
    return SlicedMlp(
        mlp.fc1.weight.index_select(0, idx).contiguous(),
        mlp.fc1.bias.index_select(0, idx).contiguous(),
        mlp.fc2.weight.index_select(1, idx).contiguous(),
    )


def attention(
    attn: Attention,
    x: torch.Tensor,
    head_mask: torch.Tensor | None = None,
    weights: SlicedAttention | None = None,
) -> torch.Tensor:
    """Self-attention of x (N, T, D) -> (N, T, D) on all heads, on sliced heads (`weights`), or with each head's
    output multiplied by `head_mask` (N, H) before the output projection. With neither it computes exactly what
    `Attention.forward` computes (same ops in the same order)."""
    N, T, _ = x.shape
    if weights is None:
        qkv_w, qkv_b, proj_w, heads = attn.qkv.weight, attn.qkv.bias, attn.proj.weight, attn.num_heads
    else:
        qkv_w, qkv_b, proj_w, heads = weights
    hd = attn.head_dim
    qkv = F.linear(x, qkv_w, qkv_b).view(N, T, 3, heads, hd).permute(2, 0, 3, 1, 4)  # (3, N, h, T, hd)
    out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (N, h, T, hd)
    if head_mask is not None:
        out = out * head_mask[:, :, None, None].to(out.dtype)
    return F.linear(out.transpose(1, 2).reshape(N, T, heads * hd), proj_w, attn.proj.bias)


def mlp(
    mlp: Mlp,
    x: torch.Tensor,
    group_mask: torch.Tensor | None = None,
    weights: SlicedMlp | None = None,
) -> torch.Tensor:
    """fc1 → GELU(tanh) → fc2 of x (N, T, D) on all channels, on sliced groups (`weights`), or with fc1's output
    multiplied per group by `group_mask` (N, G) before the GELU (GELU(0) = 0, so a masked group is a removed one)."""
    if weights is None:
        w1, b1, w2 = mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight
    else:
        w1, b1, w2 = weights
    h = F.linear(x, w1, b1)  # (N, T, F')
    if group_mask is not None:
        G = group_mask.shape[-1]
        shape = h.shape
        h = (h.view(*shape[:-1], G, shape[-1] // G) * group_mask[:, None, :, None].to(h.dtype)).view(shape)
    return F.linear(F.gelu(h, approximate="tanh"), w2, mlp.fc2.bias)


def gather_modulation(m: Modulation, sample_ids: torch.Tensor) -> Modulation:
    """The per-sample modulation fields (N, D) picked for each gathered token: (K, D)."""
    return Modulation(*(None if f is None else f.index_select(0, sample_ids) for f in m))


def mlp_branch_on_kept_tokens(block, x: torch.Tensor, m_mlp: Modulation, keep: torch.Tensor, weights=None):
    """x + gate·MLP(modulate(norm2(x))) for the tokens where `keep` (N, T) is True; the others keep x.

    The kept tokens of the whole batch are gathered over the flattened (N·T) index, run as one (K, 1, D)
    batch (each token a "sample" of one token, so the per-sample modulation is gathered alongside), and added
    back in place of the masked sum. Attention never sees this: it always ran on all tokens.
    """
    N, T, D = x.shape
    flat = x.reshape(N * T, D)
    idx = keep.reshape(-1).nonzero().squeeze(1)  # (K,)
    if idx.numel() == 0:
        return x
    m = gather_modulation(m_mlp, torch.div(idx, T, rounding_mode="floor"))
    tokens = flat.index_select(0, idx).unsqueeze(1)  # (K, 1, D)
    h = mlp(block.mlp, m.apply(block.norm2(tokens)), weights=weights)  # (K, 1, D)
    if hasattr(block, "post_norm2"):
        h = block.post_norm2(h)
    h = m.gated(h, block.gate_fn)
    return flat.index_add(0, idx, h.squeeze(1)).view(N, T, D)
