"""The adaptive-layer-norm family: how a condition vector c becomes per-sample shift, scale and gate, and
how they act on tokens (`modulate`, the gated residual `Modulation.residual`).

One mechanism covers the variants the DiT paper and later models compare:

| variant                  | per branch            | gate      | where the parameters come from             |
|--------------------------|-----------------------|-----------|--------------------------------------------|
| adaLN (DiT)              | shift, scale          | none      | Linear(SiLU(c)) in every block             |
| adaLN-Zero (DiT)         | shift, scale, gate    | identity  | same, zero-initialised: blocks start as id |
| shift-free tanh (Lumina) | scale, gate           | tanh      | same, zero-initialised; RMSNorm sandwich   |
| adaLN-single (PixArt-α)  | shift, scale, gate    | identity  | one shared Linear(SiLU(c)) + a per-block   |
|                          |                       |           | learnable table                            |

A block has two branches (attention, MLP); the final layer has one branch without a gate.
Chunk order inside one projection is the official DiT's: for each branch, [shift,] scale[, gate].
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ditlab.nn.norms import make_norm


def modulate(
    x: torch.Tensor, shift: torch.Tensor | None, scale: torch.Tensor | None, inplace: bool = False
) -> torch.Tensor:
    """x * (1 + scale) + shift, with per-sample (N, D) scale and shift broadcast over the tokens of x (N, T, D).

    Either may be None: shift-free modulation (Lumina, Z-Image) passes shift=None.
    `inplace=True` says x is a temporary the caller hands over (e.g. a norm's output): without autograd both
    steps overwrite x; with autograd the shift is added into the fresh product. Same operations in the same
    order, so bit-identical to the plain path, with one or two fewer (N, T, D) buffers to allocate and fill
    (on a CPU a fresh buffer costs about as much as the arithmetic).
    """
    scale = None if scale is None else 1 + per_token(scale)  # (N, 1, D), or (N, T, D) per token
    shift = None if shift is None else per_token(shift)
    inplace = inplace and can_hold(x, *(t for t in (scale, shift) if t is not None))
    owned = inplace and not torch.is_grad_enabled()  # nothing will need x's value: overwrite it
    if scale is not None:
        x = x.mul_(scale) if owned else x * scale
        owned = inplace  # the product is a buffer of ours (saved by no backward)
    if shift is not None:
        x = x.add_(shift) if owned else x + shift
    return x


def per_token(v: torch.Tensor) -> torch.Tensor:
    """A modulation field as it broadcasts over tokens: per-sample (N, D) -> (N, 1, D); a per-token field
    (N, T, D) (spatial modulation, `ditlab.nn.spatial`) is already one value per token."""
    return v.unsqueeze(1) if v.dim() == 2 else v


def can_hold(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether x's buffer can hold the result of an elementwise op of x with `others` (same dtype after type
    promotion, same shape after broadcasting), i.e. whether the in-place form computes the same thing."""
    # Called twice per branch of every block: the broadcast test is written out on the shape tuples, since
    # torch.broadcast_shapes (Python, symbolic-shape aware) cost more than the ops it saved at small sizes.
    shape = x.shape
    for other in others:
        if other.dtype != x.dtype and torch.promote_types(x.dtype, other.dtype) != x.dtype:
            return False
        dims = other.shape
        if len(dims) > len(shape):
            return False
        for mine, theirs in zip(reversed(shape), reversed(dims)):
            if theirs != mine and theirs != 1:  # broadcasting would grow x's shape here
                return False
    return True


class Modulation(NamedTuple):
    """Modulation of one residual branch; each field per sample (N, D), per token (N, T, D) once a spatial
    modulation is added (`plus`), or None when the variant lacks it."""

    shift: torch.Tensor | None
    scale: torch.Tensor | None
    gate: torch.Tensor | None

    def apply(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """Modulate normalised tokens x (N, T, D); `inplace`: x is a temporary handed over (see `modulate`)."""
        return modulate(x, self.shift, self.scale, inplace)

    def select(self, sample_ids: torch.Tensor) -> Modulation:
        """The fields picked per row of `sample_ids` (K,): (N, D) -> (K, D), e.g. for tokens gathered from
        their samples (each then a "sample" of one token)."""
        return Modulation(*(None if f is None else f.index_select(0, sample_ids) for f in self))

    def gated(self, h: torch.Tensor, gate_fn: str = "identity") -> torch.Tensor:
        """Scale a branch output h (N, T, D) by its gate before the residual add (no gate: h itself)."""
        if self.gate is None:
            return h
        gate = torch.tanh(self.gate) if gate_fn == "tanh" else self.gate
        return per_token(gate) * h

    def plus(self, other: Modulation) -> Modulation:
        """Fieldwise sum with another branch modulation of the same variant (e.g. a per-token one)."""
        return Modulation(*(a if b is None else per_token(a) + b for a, b in zip(self, other)))

    def residual(
        self, x: torch.Tensor, h: torch.Tensor, gate_fn: str = "identity", inplace: bool = False
    ) -> torch.Tensor:
        """x + gate·h, the gated residual update of a branch output h (N, T, D).

        `inplace=True` says h is a temporary handed over: without autograd the gate multiplies h in place,
        and in every mode the sum is written into the product's buffer rather than a new one. Float
        multiplication and addition commute, so this is bit-identical to `x + self.gated(h)`.
        """
        if self.gate is None:
            return h.add_(x) if inplace and not torch.is_grad_enabled() and can_hold(h, x) else x + h
        gate = per_token(torch.tanh(self.gate) if gate_fn == "tanh" else self.gate)  # (N, 1 or T, D)
        if not (inplace and can_hold(h, gate, x)):
            return x + gate * h
        product = h.mul_(gate) if not torch.is_grad_enabled() else gate * h  # (N, T, D), a buffer of ours
        return product.add_(x)


def params_per_branch(shift: bool, gate: bool) -> int:
    """How many D-vectors one branch needs: [shift,] scale[, gate]."""
    return int(shift) + 1 + int(gate)


def split_modulation(params: torch.Tensor, branches: int, shift: bool, gate: bool) -> list[Modulation]:
    """Cut a (N, branches·k·D) projection (or (N, branches·k, D) table sum) into one Modulation per branch."""
    k = params_per_branch(shift, gate)
    # a table's rows come apart as (N, D) views directly; a projection's columns as (N, D) chunks
    chunks = params.unbind(1) if params.dim() == 3 else params.chunk(branches * k, dim=1)
    out = []
    for b in range(branches):
        part = chunks[b * k : (b + 1) * k]
        i = 0
        sh = part[i] if shift else None
        i += int(shift)
        sc = part[i]
        g = part[i + 1] if gate else None
        out.append(Modulation(sh, sc, g))
    return out


class AdaLNModulation(nn.Sequential):
    """SiLU → Linear(cond_dim, branches·k·D): the per-block adaLN projection of DiT.

    A Sequential so that its weights keep the official names (`adaLN_modulation.1.weight`).
    `zero_init=True` is the "Zero" of adaLN-Zero: every shift, scale and gate starts at 0, so with gates
    the block starts as the identity, and without gates the norm starts unmodulated.
    """

    def __init__(
        self,
        cond_dim: int,
        dim: int,
        branches: int = 2,
        shift: bool = True,
        gate: bool = True,
        zero_init: bool = True,
        act: bool = True,
    ):
        k = params_per_branch(shift, gate)
        # act=False: the condition projected as it is (Z-Image's blocks); the Linear keeps its name `.1`
        super().__init__(nn.SiLU() if act else nn.Identity(), nn.Linear(cond_dim, branches * k * dim))
        self.branches, self.shift, self.gate = branches, shift, gate
        self.zero_init = zero_init
        if zero_init:
            self.reset_to_zero()

    def reset_to_zero(self) -> None:
        nn.init.zeros_(self[1].weight)
        nn.init.zeros_(self[1].bias)

    def forward(self, c: torch.Tensor) -> list[Modulation]:  # c: (N, cond_dim)
        return split_modulation(super().forward(c), self.branches, self.shift, self.gate)


class AdaLNSingle(nn.Module):
    """adaLN-single (PixArt-α): ONE projection of the condition shared by all blocks.

    `forward(c)` gives the shared (N, n·D) vector; each block adds its own learnable `ScaleShiftTable`.
    PixArt initialises the shared projection with N(0, 0.02), not zero.
    """

    def __init__(self, cond_dim: int, dim: int, n: int = 6):
        super().__init__()
        self.n, self.dim = n, dim
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, n * dim))
        nn.init.normal_(self.t_block[1].weight, std=0.02)
        nn.init.zeros_(self.t_block[1].bias)

    def forward(self, c: torch.Tensor) -> torch.Tensor:  # (N, cond_dim) -> (N, n·D)
        return self.t_block(c)


class ScaleShiftTable(nn.Module):
    """The per-block learnable (n, D) table of adaLN-single, added to the shared projection."""

    def __init__(self, dim: int, branches: int = 2, shift: bool = True, gate: bool = True):
        super().__init__()
        self.branches, self.shift, self.gate = branches, shift, gate
        n = branches * params_per_branch(shift, gate)
        self.scale_shift_table = nn.Parameter(torch.randn(n, dim) / dim**0.5)

    def forward(self, shared: torch.Tensor) -> list[Modulation]:  # shared: (N, n·D) or (N, D)
        n, d = self.scale_shift_table.shape
        if shared.shape[-1] == n * d:
            shared = shared.view(-1, n, d)  # (N, n, D)
        else:  # a single vector added to every row (PixArt's final layer adds the raw condition)
            shared = shared.unsqueeze(1)  # (N, 1, D)
        return split_modulation(self.scale_shift_table[None] + shared, self.branches, self.shift, self.gate)


class AdaptiveNorm(nn.Module):
    """A norm followed by condition-dependent modulation, as a stand-alone layer: y = norm(x)·(1+scale(c))+shift(c).

    The building block of a DiT branch, useful outside a DiT (e.g. in your own transformer):
      AdaptiveNorm(D, cond_dim)                                 adaLN (DiT paper, "adaLN")
      AdaptiveNorm(D, cond_dim, gate=True, zero_init=True)      adaLN-Zero: also returns the gate
      AdaptiveNorm(D, cond_dim, norm="rmsnorm", shift=False, gate=True, zero_init=True)   Lumina-style
    `forward(x, c)` returns (y, gate) where gate is None when gate=False.
    """

    def __init__(
        self,
        dim: int,
        cond_dim: int,
        norm: str = "layernorm",
        shift: bool = True,
        gate: bool = False,
        zero_init: bool = False,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.norm = make_norm(norm, dim, eps=eps)
        self.modulation = AdaLNModulation(
            cond_dim, dim, branches=1, shift=shift, gate=gate, zero_init=zero_init
        )

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        (m,) = self.modulation(c)
        return m.apply(self.norm(x)), m.gate
