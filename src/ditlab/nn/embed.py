"""Embedders that turn a DiT's inputs into vectors: image patches, fixed 2-D positions (sin-cos tables or
rotary angles), timesteps, labels, a pooled condition vector (e.g. a text embedding, SD3-style) and text
tokens (`TextEmbedder`: SD3/Flux's context embedder or PixArt-α's caption projection).

Conventions follow the official DiT so that its checkpoints load unchanged (see shared notes):
positions are MAE's sin-cos table with the column index in the first half; the timestep sinusoid is
cos-first with frequencies exp(-ln(10000)·i/half).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ditlab.nn.norms import RMSNorm


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim) table [sin(pos·ω), cos(pos·ω)] with ω_k = 1/10000^(2k/dim). Float64."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    args = pos.to(torch.float64)[:, None] * omega[None]  # (M, dim/2)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def grid_positions(size: int, base_size: int = 0, interpolation: float = 1.0) -> torch.Tensor:
    """(size,) positions of a row of tokens: the indices 0…size-1 (the official DiT), stretched to span
    `base_size` positions when it is > 0 and divided by `interpolation` (diffusers' PatchEmbed: base_size,
    interpolation_scale), computed in float32 in diffusers' order."""
    pos = torch.arange(size, dtype=torch.float32)
    if base_size:
        pos = pos / (size / base_size)
    return pos / interpolation if interpolation != 1 else pos


def sincos_2d(
    dim: int, grid_h: int, grid_w: int, base_size: int = 0, interpolation: float = 1.0
) -> torch.Tensor:
    """Fixed 2-D sin-cos positions for a grid_h × grid_w token grid -> (grid_h·grid_w, dim) float32.

    Token (i, j) sits at row-major index i·grid_w + j (the order of a conv patchify + flatten); its vector is
    [sin(jω), cos(jω), sin(iω), cos(iω)]: the column index fills the first half, exactly as the official DiT.
    `base_size`, `interpolation`: see `grid_positions` (defaults: the official table).
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos positions need a hidden size divisible by 4, got {dim}")
    rows = grid_positions(grid_h, base_size, interpolation).repeat_interleave(grid_w)  # i for every token
    cols = grid_positions(grid_w, base_size, interpolation).repeat(grid_h)  # j for every token
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1).float()


def rope_2d(
    head_dim: int,
    grid_h: int,
    grid_w: int,
    extra: int = 0,
    theta: float = 10000.0,
    lead: int = 0,
    sequence_axis: bool = False,
):
    """Rotary angles for a grid_h × grid_w token grid (row-major) followed by `extra` tokens at position 0
    (text tokens, which rotary positions leave unrotated) -> (cos, sin), each (grid_h·grid_w + extra, head_dim).

    After `lead` unrotated channels (Flux's first axis, whose id is always 0), half of the remaining channels
    of each head turn with the row index, half with the column index; channel pair k of an axis with n
    channels turns at θ^(-2k/n), and both channels of a pair carry the same angle (repeated): Flux's rotary
    embedding on ids (0, row, col) with axes_dims_rope (lead, n, n).
    `sequence_axis` (Z-Image): the lead channels turn with a sequence position instead, text token i at 1 + i
    and every image token at extra + 1 (after the caption), with the lead axis's own frequencies.
    """
    n = (head_dim - lead) // 2
    if lead < 0 or lead % 2 or n % 2 or 2 * n + lead != head_dim:
        raise ValueError(
            f"2-D rotary positions need head_dim - lead divisible by 4; got head_dim={head_dim}, lead={lead}"
        )
    freqs = 1.0 / theta ** (torch.arange(0, n, 2, dtype=torch.float64) / n)  # (n/2,)
    rows = torch.arange(grid_h, dtype=torch.float64).repeat_interleave(grid_w)
    cols = torch.arange(grid_w, dtype=torch.float64).repeat(grid_h)
    angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=1)  # (T, n)
    angles = torch.cat([angles, angles.new_zeros(extra, angles.shape[1])])  # text tokens: row = col = 0
    seq = torch.zeros(angles.shape[0], dtype=torch.float64)
    if sequence_axis:
        seq[: grid_h * grid_w] = extra + 1
        seq[grid_h * grid_w :] = torch.arange(1, extra + 1, dtype=torch.float64)
    lead_freqs = 1.0 / theta ** (torch.arange(0, lead, 2, dtype=torch.float64) / max(lead, 1))
    angles = torch.cat([seq[:, None] * lead_freqs, angles], dim=1).repeat_interleave(
        2, dim=1
    )  # (T + extra, hd)
    return angles.cos().float(), angles.sin().float()


def timestep_sinusoid(t: torch.Tensor, dim: int = 256, max_period: float = 10000, freq_shift: int = 0):
    """(N,) timesteps (may be fractional) -> (N, dim) [cos(t·f), sin(t·f)], f_i = exp(-ln(max_period)·i/(half-shift)).

    freq_shift=0 is the official DiT; freq_shift=1 is diffusers' `Timesteps(downscale_freq_shift=1)`, which
    the diffusers port of DiT uses (the two differ by up to ~2 per component, so the choice is saved in configs).
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    )
    args = t[:, None].float() * freqs[None]  # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class PatchEmbed(nn.Module):
    """(N, C, H, W) -> (N, T, D) tokens, T = (H/p)·(W/p), by a p×p stride-p convolution (`x_embedder.proj`).

    `contiguous` (default True) returns the tokens in (N, T, D) memory order. The convolution's output
    transposed is a strided view, and elementwise ops keep their first input's layout, so without the copy
    the whole residual stream stays transposed: every LayerNorm then copies it and every matmul reads it
    strided. False gives the view (the eager baseline that `benchmarks/speed.py` times the fast paths against).
    """

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)
        self.contiguous = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)  # (N, D, h, w) -> (N, T, D), strided
        return x.contiguous() if self.contiguous else x


class TimestepEmbedder(nn.Module):
    """Timestep -> D vector: a 256-d sinusoid through Linear → SiLU → Linear (`t_embedder.mlp.{0,2}`)."""

    def __init__(
        self,
        hidden_size: int,
        frequency_embedding_size: int = 256,
        freq_shift: int = 0,
        mid_size: int | None = None,
    ):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.freq_shift = freq_shift
        mid = mid_size or hidden_size  # Z-Image: a wider middle layer (1024) than its 256-d output
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, mid),
            nn.SiLU(),
            nn.Linear(mid, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (N,) -> (N, D)
        freq = timestep_sinusoid(t, self.frequency_embedding_size, freq_shift=self.freq_shift)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class label -> D vector (`y_embedder.embedding_table`), with label dropout for classifier-free guidance.

    When dropout_prob > 0 the table has one extra row, the null class, at index `num_classes`.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    @property
    def has_null_class(self) -> bool:
        return self.embedding_table.num_embeddings > self.num_classes

    def token_drop(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Replace a random dropout_prob fraction of labels (or those with force_drop_ids == 1) by the null class."""
        if force_drop_ids is None:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop = force_drop_ids == 1
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None):
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)  # (N, D)


class PooledEmbedder(nn.Module):
    """A pooled condition vector (e.g. a sentence embedding) -> D, as SD3's text projection: Linear → SiLU → Linear.

    During training a dropout_prob fraction of vectors is zeroed, the "empty prompt" used for guidance.
    """

    def __init__(self, in_dim: int, hidden_size: int, dropout_prob: float = 0.0):
        super().__init__()
        self.dropout_prob = dropout_prob
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, pooled: torch.Tensor, train: bool) -> torch.Tensor:  # (N, in_dim) -> (N, D)
        if train and self.dropout_prob > 0:
            keep = torch.rand(pooled.shape[0], 1, device=pooled.device) >= self.dropout_prob
            pooled = pooled * keep
        return self.mlp(pooled)


class TextEmbedder(nn.Module):
    """Text tokens (N, L, text_dim) -> (N, L, D): one Linear (`proj`; SD3's and Flux's context embedder) or
    Linear → GELU(tanh) → Linear (`mlp`; PixArt-α's caption projection)."""

    def __init__(self, text_dim: int, hidden_size: int, kind: str = "linear", eps: float = 1e-6):
        super().__init__()
        self.kind = kind
        if kind == "rms-linear":  # Z-Image's caption embedder: RMSNorm (learned weight), then the Linear
            self.norm = RMSNorm(text_dim, eps=eps)
        if kind in ("linear", "rms-linear"):
            self.proj = nn.Linear(text_dim, hidden_size)
        elif kind == "mlp":
            self.mlp = nn.Sequential(
                nn.Linear(text_dim, hidden_size),
                nn.GELU(approximate="tanh"),
                nn.Linear(hidden_size, hidden_size),
            )
        else:
            raise ValueError(f"unknown text embedder {kind!r}; choose one of: linear, rms-linear, mlp")

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        if self.kind == "mlp":
            return self.mlp(text)
        return self.proj(self.norm(text) if self.kind == "rms-linear" else text)
