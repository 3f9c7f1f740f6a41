"""The modules fine-tuning methods add to a trained DiT, each able to fold itself back into plain layers.

    DiffFitScale(block.attn, D)    DiffFit's per-block scale factor γ: the branch output times a learnable
                                   per-channel scale (init 1)
    LoRALinear(linear, rank=8)     W x + b + (α/r)·B A x, B initialised to zero (the model starts unchanged)
    merge_adapters(model)          replace every such module by the plain layer computing the same function

A block computes x + gate ⊙ f(·); wrapping f gives x + gate ⊙ (γ ⊙ f(·)) = x + γ ⊙ gate ⊙ f(·), DiffFit's
form, without touching the Block. Merging folds γ into the last affine map of f (attn.proj, mlp.fc2, or an
affine post-norm), which is exact in real arithmetic: the merged model has the base architecture again.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ditlab.nn.norms import RMSNorm


class MergeableAdapter(nn.Module):
    """An added module that can return the plain module computing the same function (`merged()`)."""

    def merged(self) -> nn.Module:  # pragma: no cover - interface
        raise NotImplementedError


def _output_layer(module: nn.Module) -> nn.Module:
    """The last affine map of a branch, where a per-channel output scale can be folded in."""
    if isinstance(module, (nn.Linear, RMSNorm, nn.LayerNorm)):
        return module
    for name in ("proj", "fc2"):  # Attention / CrossAttention, Mlp
        inner = getattr(module, name, None)
        if isinstance(inner, nn.Linear):
            return inner
    raise TypeError(
        f"cannot fold an output scale into {module.__class__.__name__}: expected a Linear, an affine norm, "
        "or a module whose output layer is `proj` or `fc2`"
    )


class DiffFitScale(MergeableAdapter):
    """DiffFit's scale factor γ (Xie et al. 2023): `branch(x) * gamma`, a learnable scale per output channel
    (D,) on one residual branch of a block, initialised to 1. The parameter keeps DiffFit's name, `gamma`."""

    def __init__(self, branch: nn.Module, dim: int):
        super().__init__()
        out = _output_layer(branch)  # fail now, not at merge time, if it cannot be folded
        if isinstance(out, (RMSNorm, nn.LayerNorm)) and getattr(out, "weight", None) is None:
            raise TypeError("cannot fold a scale into a norm without an affine weight")
        self.branch = branch
        ref = next(branch.parameters())
        self.gamma = nn.Parameter(torch.ones(dim, device=ref.device, dtype=ref.dtype))

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.branch(*args, **kwargs) * self.gamma  # (N, T, D) · (D,)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The branch with γ folded into its output layer: rows of W and the bias (or the norm's weight)."""
        out = _output_layer(self.branch)
        gamma = self.gamma.to(out.weight.dtype)
        if isinstance(out, nn.Linear):
            out.weight.mul_(gamma[:, None])  # y = (γ ⊙ W) x + γ ⊙ b
        else:
            out.weight.mul_(gamma)
        if getattr(out, "bias", None) is not None:
            out.bias.mul_(gamma)
        return self.branch


BranchScale = DiffFitScale  # its name before issue 15, kept for one release


class LoRALinear(MergeableAdapter):
    """A frozen `base` Linear plus a trainable low-rank update: y = base(x) + (alpha / rank) · B (A x).

    A is initialised like a Linear's weight (Kaiming-uniform, a=√5, as Hu et al.'s reference code and peft),
    B to zero, so the wrapped layer starts as exactly the base layer.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int = 8,
        alpha: float | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRA wraps nn.Linear layers, got {base.__class__.__name__}")
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        self.rank = int(rank)
        self.alpha = float(alpha if alpha is not None else rank)
        self.scaling = self.alpha / self.rank
        w = base.weight
        bound = 1.0 / math.sqrt(base.in_features)  # kaiming_uniform_(a=√5) of a (rank, in) weight
        a = (torch.rand(rank, base.in_features, generator=generator) * 2 - 1) * bound
        self.lora_A = nn.Parameter(a.to(device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        self.base.weight.add_((self.lora_B @ self.lora_A) * self.scaling)
        return self.base

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}"


def merge_adapters(model: nn.Module) -> nn.Module:
    """Replace, in place, every MergeableAdapter inside `model` by its merged plain module; returns `model`."""
    for name, child in list(model.named_children()):
        merge_adapters(child)
        if isinstance(child, MergeableAdapter):
            setattr(model, name, child.merged())
    return model


__all__ = ["BranchScale", "DiffFitScale", "LoRALinear", "MergeableAdapter", "merge_adapters"]
