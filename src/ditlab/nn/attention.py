"""Attention and MLP sub-layers of a DiT block, both with the official parameter names (`attn.qkv`,
`attn.proj`, `mlp.fc1`, `mlp.fc2`). Attention runs through `F.scaled_dot_product_attention`, which picks
the fused kernel for the device (flash on CUDA, a fused CPU kernel here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, T, D = x.shape
        qkv = (
            self.qkv(x).view(N, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        )  # (3, N, H, T, hd)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (N, H, T, hd)
        return self.proj(out.transpose(1, 2).reshape(N, T, D))


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))
