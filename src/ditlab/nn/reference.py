"""Reference-style conditioning through AdaIN statistics (issue 21, item 3).

AdaIN (Huang & Belongie, 2017) carries an image's style in the per-channel mean and standard deviation of its
features. Here a reference image goes through the DiT's own patch embedding, and the per-channel mean and std
over its tokens, (N, 2·D), are projected to the condition width and ADDED to the global condition c
(timestep + class/text), so they drive every adaLN modulation as StyleGAN's style code drives its AdaIN:
norm(x) · (1 + scale(c)) + shift(c). The projection starts at zero, so a fresh model equals the same model
without a reference, and a missing reference (None) adds nothing.
"""

from __future__ import annotations

import torch
from torch import nn

REFERENCE_CONDITIONS = ("none", "adain")  # none: no reference; adain: this module


def check_reference(reference, batch: int, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """A reference argument as (N, C, H, W) float; anything else a ValueError saying what is expected."""
    if not torch.is_tensor(reference) or not reference.is_floating_point():
        got = reference.dtype if torch.is_tensor(reference) else type(reference).__name__
        raise ValueError(f"reference must be a float tensor (N, {channels}, H, W) in [-1, 1], got {got}")
    if reference.dim() != 4 or reference.shape[0] != batch or reference.shape[1] != channels:
        raise ValueError(
            f"reference must have shape (N={batch}, C={channels}, H, W) like the input; got {tuple(reference.shape)}"
        )
    if tuple(reference.shape[2:]) != tuple(size):
        raise ValueError(
            f"reference is {tuple(reference.shape[2:])} but the input is {tuple(size)}; resize it to the input's size"
        )
    return reference


def token_statistics(tokens: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(N, T, D) tokens -> (N, 2·D): AdaIN's per-channel mean and std (population) over the tokens."""
    var, mean = torch.var_mean(tokens.float(), dim=1, correction=0)
    return torch.cat([mean, (var + eps).sqrt()], dim=-1).to(tokens.dtype)


class ReferenceStyle(nn.Module):
    """Linear(2·D -> cond_dim), zero-initialised: the reference tokens' AdaIN statistics as a condition term."""

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        # built without an init (draws nothing from the RNG), on the default device (see SpatialModulation)
        self.proj = nn.Linear(2 * dim, cond_dim, device="meta").to_empty(device=torch.empty(0).device)
        self.reset_to_zero()

    def reset_to_zero(self) -> None:
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The reference's patch-embedding tokens (N, T, D) -> (N, cond_dim), added to c."""
        return self.proj(token_statistics(tokens))
