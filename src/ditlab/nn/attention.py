"""Attention and MLP sub-layers of a DiT block, both with the official parameter names (`attn.qkv`,
`attn.proj`, `mlp.fc1`, `mlp.fc2`). Attention runs through `F.scaled_dot_product_attention`, which picks
the fused kernel for the device (flash on CUDA, a fused CPU kernel here).

Both accept what a dynamic-width model (DyDiT) asks of them, so it runs through these same forwards: a mask
that multiplies each head's output (`head_mask`) or each MLP channel group (`group_mask`), or a sliced weight
view (`AttentionSlice`, `MlpSlice`: the rows/columns of some heads or groups, from `sliced(...)`) that runs a
smaller layer. Without them each computes exactly the plain layer. Layout the slicing relies on: qkv rows are
[q | k | v], each third head-major (head h of q = rows h·hd:(h+1)·hd); the MLP's hidden width is cut into
equal consecutive groups.

The text-to-image parts: a key mask (N, S) of the tokens that exist (False = padding, which then gets exactly
zero attention weight), optional per-head RMSNorm of queries and keys (`qk_norm`, SD3.5 / Flux / Z-Image),
optional rotary positions (`rope`, a (cos, sin) pair of (S, hd) tables from `ditlab.nn.embed.rope_2d`), and
`JointAttention`, SD3's MMDiT mixer: two token streams with their own projections, one attention over both.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ditlab.nn.norms import RMSNorm


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


def key_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(N, S) bool key mask -> (N, 1, 1, S) additive bias: 0 where a key exists, the dtype's lowest value where
    it is padding. exp(lowest − max) is exactly 0, so padding keys get zero weight (their values cannot leak
    in); a query whose keys are all padding attends uniformly instead of producing NaN."""
    if mask is None:
        return None
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return bias.masked_fill_(~mask.bool(), torch.finfo(dtype).min)[:, None, None, :]


def rotate(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Rotary positions on x (N, h, S, hd): channel pairs (2i, 2i+1) rotated by the angles in (cos, sin) (S, hd),
    whose entries repeat per pair (Flux's convention)."""
    if rope is None:
        return x
    cos, sin = rope
    pairs = x.unflatten(-1, (-1, 2))  # (N, h, S, hd/2, 2)
    if _complex_view(pairs):
        # a pair (x₁, x₂) is x₁ + i·x₂ and its rotation the product with cos + i·sin: one kernel instead of
        # five, the same products and sums (x₁cos − x₂sin, x₂cos + x₁sin); some layouts' kernels fuse a
        # multiply-add, so it equals the form below to the last bit of float32 (often exactly)
        turn = torch.complex(cos[..., ::2].to(x.dtype), sin[..., ::2].to(x.dtype))  # (S, hd/2)
        return torch.view_as_real(torch.view_as_complex(pairs) * turn).flatten(-2)
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)  # (-x₂, x₁) per pair
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def _complex_view(pairs: torch.Tensor) -> bool:
    """Whether (..., 2) pairs can be viewed as complex numbers: a float dtype with a complex twin (not bf16,
    which autocast gives) and the memory layout `view_as_complex` needs (pairs adjacent, even strides).
    Not under torch.compile, which fuses the real form itself and handles complex tensors poorly."""
    return (
        pairs.dtype in (torch.float32, torch.float64)
        and not torch.compiler.is_compiling()
        and pairs.stride(-1) == 1
        and pairs.storage_offset() % 2 == 0
        and all(s % 2 == 0 for s in pairs.stride()[:-1])
    )


def _head_norms(head_dim: int, enabled: bool, eps: float = 1e-6) -> tuple[nn.Module | None, nn.Module | None]:
    """The optional per-head RMSNorms of queries and keys (learned weight)."""
    return (RMSNorm(head_dim, eps=eps), RMSNorm(head_dim, eps=eps)) if enabled else (None, None)


def _normed(x: torch.Tensor, norm: nn.Module | None) -> torch.Tensor:
    return x if norm is None else norm(x)


def split_heads(t: torch.Tensor, n: int, heads: int) -> tuple[torch.Tensor, ...]:
    """(N, S, n·heads·hd) projections -> n views (N, S, heads, hd), token-major.

    Callers norm queries and keys in this layout and only then transpose to (N, h, S, hd) for attention:
    a norm's output is then token-major memory too, the attention kernel writes its output in the layout of
    its queries, and the (N, S, D) output projection reads that as a view. Normed in the head-major view, the
    queries (and so the attention output) became head-major and the output needed a copy back per layer."""
    N, S, _ = t.shape
    return t.view(N, S, n, heads, -1).unbind(2)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (rows ordered [q | k | v], head-major)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        proj_bias: bool = True,
        qk_norm_eps: float = 1e-6,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.q_norm, self.k_norm = _head_norms(self.head_dim, qk_norm, qk_norm_eps)

    def forward(
        self, x: torch.Tensor, head_mask=None, weights: AttentionSlice | None = None, mask=None, rope=None
    ) -> torch.Tensor:
        """x (N, T, D) -> (N, T, D) on all heads, on the heads of `weights`, or with each head's output
        multiplied by `head_mask` (N, H) before the output projection; `mask` (N, T) marks the tokens that
        exist (keys), `rope` rotates queries and keys (see the module docstring)."""
        N, T, _ = x.shape
        q, k, v = self.heads(x, weights, rope)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias(mask, q.dtype))  # (N, h, T, hd)
        if head_mask is not None:
            out = out * head_mask[:, :, None, None].to(out.dtype)
        out = out.transpose(1, 2).reshape(N, T, q.shape[1] * self.head_dim)
        return self.proj(out) if weights is None else F.linear(out, weights.proj_weight, self.proj.bias)

    def heads(self, x: torch.Tensor, weights: AttentionSlice | None = None, rope=None):
        """x (N, T, D) -> q, k, v (N, h, T, hd): projected, q and k normed per head (`qk_norm`) and rotated."""
        N, T, _ = x.shape
        heads = self.num_heads if weights is None else weights.heads
        qkv = self.qkv(x) if weights is None else F.linear(x, weights.qkv_weight, weights.qkv_bias)
        q, k, v = split_heads(qkv, 3, heads)  # (N, T, h, hd) views
        q, k = _normed(q, self.q_norm).transpose(1, 2), _normed(k, self.k_norm).transpose(1, 2)
        return rotate(q, rope), rotate(k, rope), v.transpose(1, 2)

    def logits(self, x: torch.Tensor, rope=None) -> torch.Tensor:
        """The pre-softmax attention logits q·k/√hd (N, h, T, T) in the working precision (x's dtype, or
        autocast's): what a kernel that forms QKᵀ in that precision holds before its softmax. Without
        `qk_norm` they grow with the square of the activations' and weights' scale (fp16 overflows past
        65504, and a softmax over an inf row is NaN); with it |logit| ≤ √hd·max|w_q|·max|w_k|, the norms'
        learned weights, whatever the input."""
        q, k, _ = self.heads(x, rope=rope)
        return torch.matmul(q, k.transpose(-2, -1)) * self.head_dim**-0.5

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

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask=None) -> torch.Tensor:
        """x (N, T, D) queries, context (N, S, context_dim), mask (N, S): the context tokens that exist."""
        N, T, D = x.shape
        (q,) = split_heads(self.q(x), 1, self.num_heads)
        k, v = split_heads(self.kv(context), 2, self.num_heads)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (N, H, T or S, hd)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias(mask, q.dtype))
        return self.proj(out.transpose(1, 2).reshape(N, T, D))


class JointAttention(nn.Module):
    """SD3's MMDiT token mixer: image tokens x and context tokens c, each projected by its own weights, attend
    jointly (queries, keys and values concatenated along the token axis, image first) and are split back
    through their own output projections.

    Image-stream names are `Attention`'s (`qkv`, `proj`, `q_norm`, `k_norm`); the context stream's carry a
    `context_` prefix. `context_pre_only` (SD3's last block, whose context output nobody reads) gives the
    context only keys and values (`context_kv`) and no output projection: the parts that would compute the
    unread context output are not built, so every parameter reaches the output.
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False, context_pre_only: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.context_pre_only = context_pre_only
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm, self.k_norm = _head_norms(self.head_dim, qk_norm)
        if context_pre_only:
            self.context_kv = nn.Linear(dim, 2 * dim)
            self.context_proj = None
        else:
            self.context_qkv = nn.Linear(dim, 3 * dim)
            self.context_proj = nn.Linear(dim, dim)
        self.context_q_norm, self.context_k_norm = _head_norms(self.head_dim, qk_norm)
        if context_pre_only:
            self.context_q_norm = None  # no context queries

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask=None, rope=None):
        """x (N, T, D), context (N, S, D), mask (N, S) of the context tokens that exist; rope: (cos, sin) of
        the T + S joint tokens -> (x update (N, T, D), context update (N, S, D) or None when pre-only)."""
        N, T, D = x.shape
        h = self.num_heads
        q, k, v = split_heads(self.qkv(x), 3, h)  # (N, T, h, hd), joined with the context's on the token axis
        q, k = _normed(q, self.q_norm), _normed(k, self.k_norm)
        if self.context_pre_only:
            ck, cv = split_heads(self.context_kv(context), 2, h)
            k, v = torch.cat([k, _normed(ck, self.context_k_norm)], 1), torch.cat([v, cv], 1)
        else:
            cq, ck, cv = split_heads(self.context_qkv(context), 3, h)
            q = torch.cat([q, _normed(cq, self.context_q_norm)], 1)
            k, v = torch.cat([k, _normed(ck, self.context_k_norm)], 1), torch.cat([v, cv], 1)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (N, h, T[+S], hd)
        if rope is not None:  # the image tokens' rows of the tables are the first T
            q = rotate(q, tuple(r[: q.shape[2]] for r in rope))
            k = rotate(k, rope)
        if mask is not None:
            mask = torch.cat([mask.new_ones(N, T), mask.bool()], dim=1)  # image tokens always exist
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias(mask, q.dtype))  # (N, h, T[+S], hd)
        out = out.transpose(1, 2).flatten(2)  # (N, T[+S], D)
        x_out = self.proj(out[:, :T])
        return x_out, (None if self.context_proj is None else self.context_proj(out[:, T:]))


class SwiGLU(nn.Module):
    """w2(SiLU(w1·x) ⊙ w3·x), without biases: the gated MLP of LLaMA-style blocks (Z-Image's feed-forward)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)
        self.inplace = True  # without autograd, SiLU and the gate product overwrite w1's output (fast_paths)

    def forward(self, x: torch.Tensor, group_mask=None, weights=None) -> torch.Tensor:
        if group_mask is not None or weights is not None:
            raise ValueError("the SwiGLU MLP has no dynamic-width (DyDiT) path; use mlp='gelu'")
        if self.inplace and not torch.is_grad_enabled():  # the temporaries take the results (same values)
            return self.w2(F.silu(self.w1(x), inplace=True).mul_(self.w3(x)))
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def make_mlp(kind: str, dim: int, hidden_dim: int) -> nn.Module:
    """The MLP named `kind`: "gelu" (DiT's fc1 → GELU(tanh) → fc2) or "swiglu" (Z-Image's w1, w3 → w2)."""
    if kind == "gelu":
        return Mlp(dim, hidden_dim)
    if kind == "swiglu":
        return SwiGLU(dim, hidden_dim)
    raise ValueError(f"unknown mlp {kind!r}; choose one of: gelu, swiglu")


_gelu_inplace = torch._C._nn.gelu_  # GELU written into its input: inference reuses fc1's output buffer


class Mlp(nn.Module):
    """fc1 → GELU (tanh approximation, as DiT) → fc2."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.inplace = True  # without autograd, GELU overwrites fc1's output (DiT.fast_paths)

    def forward(self, x: torch.Tensor, group_mask=None, weights: MlpSlice | None = None) -> torch.Tensor:
        """x (N, T, D) -> (N, T, D) on all hidden channels, on the groups of `weights`, or with fc1's output
        multiplied per group by `group_mask` (N, G) before the GELU (GELU(0) = 0: a masked group is removed)."""
        h = self.fc1(x) if weights is None else F.linear(x, weights.fc1_weight, weights.fc1_bias)
        if group_mask is not None:
            G, shape = group_mask.shape[-1], h.shape
            h = (h.view(*shape[:-1], G, shape[-1] // G) * group_mask[:, None, :, None].to(h.dtype)).view(
                shape
            )
        if self.inplace and not torch.is_grad_enabled():
            h = _gelu_inplace(h, approximate="tanh")  # into fc1's output buffer: the same values
        else:
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
