"""Attention and MLP sub-layers of a DiT block, both with the official parameter names (`attn.qkv`,
`attn.proj`, `mlp.fc1`, `mlp.fc2`). Attention runs through `F.scaled_dot_product_attention`, which picks
the fused kernel for the device (flash on CUDA, a fused CPU kernel here).

Both accept what a dynamic-width model (DyDiT) asks of them, so it runs through these same forwards: a mask
that multiplies each head's output (`head_mask`) or each MLP channel group (`group_mask`), or a sliced weight
view (`AttentionSlice`, `MlpSlice`: the rows/columns of some heads or groups, from `sliced(...)`) that runs a
smaller layer. Without them each computes exactly the plain layer. Layout the slicing relies on: qkv rows are
[q | k | v], each third head-major (head h of q = rows h·hd:(h+1)·hd); the MLP's hidden width is cut into
equal consecutive groups.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class AttentionSlice(NamedTuple):
    """The weights of an attention layer restricted to `heads` heads (a smaller, ordinary attention layer)."""

    qkv_weight: torch.Tensor  # (3·heads·hd, D)
    qkv_bias: torch.Tensor | None  # (3·heads·hd,)
    proj_weight: torch.Tensor  # (D, heads·hd); proj's bias is the layer's own
    heads: int


class MlpSlice(NamedTuple):
    """The weights of an MLP restricted to some hidden-channel groups; fc2's bias is the MLP's own."""

    fc1_weight: torch.Tensor  # (F', D)
    fc1_bias: torch.Tensor  # (F',)
    fc2_weight: torch.Tensor  # (D, F')


def unit_channels(units: torch.Tensor, size: int) -> torch.Tensor:
    """Indices of the channels of `units` (K,) when a width is cut into consecutive chunks of `size`."""
    offsets = torch.arange(size, device=units.device)
    return (units[:, None] * size + offsets[None, :]).reshape(-1)  # (K·size,)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (rows ordered [q | k | v], head-major)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, head_mask=None, weights: AttentionSlice | None = None) -> torch.Tensor:
        """x (N, T, D) -> (N, T, D) on all heads, on the heads of `weights`, or with each head's output
        multiplied by `head_mask` (N, H) before the output projection."""
        N, T, _ = x.shape
        heads = self.num_heads if weights is None else weights.heads
        qkv = self.qkv(x) if weights is None else F.linear(x, weights.qkv_weight, weights.qkv_bias)
        qkv = qkv.view(N, T, 3, heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, N, h, T, hd)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (N, h, T, hd)
        if head_mask is not None:
            out = out * head_mask[:, :, None, None].to(out.dtype)
        out = out.transpose(1, 2).reshape(N, T, heads * self.head_dim)
        return self.proj(out) if weights is None else F.linear(out, weights.proj_weight, self.proj.bias)

    def sliced(self, heads: tuple[int, ...]) -> AttentionSlice:
        """Copies of the qkv rows and proj columns of `heads`, contiguous, ready for plain matmuls."""
        idx = torch.tensor(heads, dtype=torch.long, device=self.qkv.weight.device)
        cols = unit_channels(idx, self.head_dim)  # (K·hd,) inside one D-wide third of qkv
        D = self.num_heads * self.head_dim
        rows = torch.cat([cols, cols + D, cols + 2 * D])  # the same heads in q, k and v
        bias = self.qkv.bias.index_select(0, rows).contiguous() if self.qkv.bias is not None else None
        return AttentionSlice(
            self.qkv.weight.index_select(0, rows).contiguous(),
            bias,
            self.proj.weight.index_select(1, cols).contiguous(),
            len(heads),
        )


class CrossAttention(nn.Module):
    """Multi-head attention from image tokens (queries) to a short context sequence (keys, values).

    The DiT paper's "cross-attention" block attends to the [timestep, class] embeddings as a length-2 context.
    """

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        N, T, D = x.shape
        S = context.shape[1]
        q = self.q(x).view(N, T, self.num_heads, self.head_dim).transpose(1, 2)  # (N, H, T, hd)
        kv = (
            self.kv(context).view(N, S, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        )  # (2, N, H, S, hd)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])  # (N, H, T, hd)
        return self.proj(out.transpose(1, 2).reshape(N, T, D))


class Mlp(nn.Module):
    """fc1 → GELU (tanh approximation, as DiT) → fc2."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, group_mask=None, weights: MlpSlice | None = None) -> torch.Tensor:
        """x (N, T, D) -> (N, T, D) on all hidden channels, on the groups of `weights`, or with fc1's output
        multiplied per group by `group_mask` (N, G) before the GELU (GELU(0) = 0: a masked group is removed)."""
        h = self.fc1(x) if weights is None else F.linear(x, weights.fc1_weight, weights.fc1_bias)
        if group_mask is not None:
            G, shape = group_mask.shape[-1], h.shape
            h = (h.view(*shape[:-1], G, shape[-1] // G) * group_mask[:, None, :, None].to(h.dtype)).view(
                shape
            )
        h = F.gelu(h, approximate="tanh")
        return self.fc2(h) if weights is None else F.linear(h, weights.fc2_weight, self.fc2.bias)

    def sliced(self, groups: tuple[int, ...], num_groups: int) -> MlpSlice:
        """Copies of the fc1 rows and fc2 columns of `groups` (of `num_groups` equal groups), contiguous."""
        idx = torch.tensor(groups, dtype=torch.long, device=self.fc1.weight.device)
        idx = unit_channels(idx, self.fc1.out_features // num_groups)
        return MlpSlice(
            self.fc1.weight.index_select(0, idx).contiguous(),
            self.fc1.bias.index_select(0, idx).contiguous(),
            self.fc2.weight.index_select(1, idx).contiguous(),
        )
