"""DyDiT's routers and their binarisation: per-block width routers on the timestep embedding and a per-token
router before the MLP, with Gumbel-sigmoid + straight-through training and a hard threshold at inference.
"""

from __future__ import annotations

import torch
from torch import nn


class TokenRouter(nn.Sequential):
    """Linear(D, D/r) → ReLU → Linear(D/r, 1): one logit per token, "run the MLP on this token"."""

    def __init__(self, dim: int, reduction: int = 16):
        hidden = max(1, dim // reduction)
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))


class BlockRouters(nn.Module):
    """The routers of one block. `heads`/`groups` see only the timestep embedding E_t and give H−1 logits:
    head 0 and MLP group 0 (the most important after `reorder_by_importance`) are always on."""

    def __init__(self, dim: int, num_heads: int, token_reduction: int = 16, token_routing: bool = True):
        super().__init__()
        self.heads = nn.Linear(dim, num_heads - 1)
        self.groups = nn.Linear(dim, num_heads - 1)
        self.tokens = TokenRouter(dim, token_reduction) if token_routing else None

    def reset_parameters(
        self, width_bias: float, token_bias: float, generator: torch.Generator | None = None
    ):
        """DiT's default init (xavier weights, zero biases), then biases that switch every unit on."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, generator=generator)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.heads.bias, width_bias)
        nn.init.constant_(self.groups.bias, width_bias)
        if self.tokens is not None:
            nn.init.constant_(self.tokens[2].bias, token_bias)

    def width_logits(self, e_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) timestep embeddings -> head and group logits, each (N, H−1)."""
        return self.heads(e_t), self.groups(e_t)


def gumbel_sigmoid(logits: torch.Tensor, uniform: torch.Tensor, tau: float) -> torch.Tensor:
    """Hard {0, 1} decisions with the gradient of σ((logit + g1 − g2)/τ), g ~ Gumbel(0, 1) (straight-through).

    The difference of two Gumbel variables is logistic, so one uniform draw per unit suffices:
    g1 − g2 = log u − log(1 − u). The forward values are exactly 0 or 1 (hard − soft + soft is exact in floating
    point for soft in [0, 1]), so a unit that is on multiplies by exactly 1.
    """
    u = uniform.clamp(1e-6, 1 - 1e-6).to(logits.dtype)
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / tau)
    hard = (soft > 0.5).to(soft.dtype)
    return hard - soft.detach() + soft


def with_unit_zero(mask: torch.Tensor) -> torch.Tensor:
    """(N, H−1) routed decisions -> (N, H) with the always-on unit 0 in front."""
    return torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
