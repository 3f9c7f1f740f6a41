"""Deployment of timestep-wise dynamic width: per-timestep architectures and their sliced weights, cached.

A DyDiT's head and group decisions depend only on t, so a sampler that shares t across its batch (every
sampler here, with or without classifier-free guidance) runs the same sub-network for a whole step. The
planner decides each block's active heads and groups once per distinct t (`plan`), or takes them from an
exported table (`install`), and slices each distinct (block, heads) / (block, groups) choice out of the full
weights once; a step then runs ordinary, smaller matmuls and SDPA on fewer heads.

The cache follows the weights: every lookup compares a stamp of all parameters (storage and in-place version
counter), so an optimizer or EMA update, `load_state_dict` or `.to()` rebuilds it instead of serving stale
slices.
"""

from __future__ import annotations

import torch

Width = tuple[tuple[int, ...], tuple[int, ...]]  # (active heads, active MLP groups) of one block


def weights_stamp(model: torch.nn.Module) -> tuple:
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


class WidthPlanner:
    def __init__(self):
        self.widths: dict[float, list[Width]] = {}  # t -> per-block active units
        self.plans: dict[
            float, list
        ] = {}  # t -> per-block (heads, groups, AttentionSlice|None, MlpSlice|None)
        self.slices: dict[tuple, object] = {}  # (block, "attn"|"mlp", units) -> sliced weights
        self._stamp: tuple | None = None

    def clear(self) -> None:
        self.widths.clear()
        self.plans.clear()
        self.slices.clear()
        self._stamp = None

    def _check(self, model) -> None:
        stamp = weights_stamp(model)
        if stamp != self._stamp:
            self.clear()
            self._stamp = stamp

    @torch.no_grad()
    def decide(self, model, e_t: torch.Tensor) -> list[Width]:
        """Each block's active heads and groups for one timestep embedding e_t (1, D): logit > 0, unit 0 always."""
        out = []
        for router in model.routers:
            head_logits, group_logits = router.width_logits(e_t)
            heads = (0, *(1 + i for i in (head_logits[0] > 0).nonzero().flatten().tolist()))
            groups = (0, *(1 + i for i in (group_logits[0] > 0).nonzero().flatten().tolist()))
            out.append((heads, groups))
        return out

    def install(self, model, table: dict[float, list[Width]]) -> None:
        """Fix the per-timestep architecture from a table (e.g. an exported one) instead of the routers."""
        self._check(model)
        H, depth = model.num_heads, len(model.blocks)
        for t, widths in table.items():
            if len(widths) != depth or any(
                not units or units[0] != 0 or max(units) >= H for w in widths for units in w
            ):
                raise ValueError(
                    f"width table entry for t={t} does not fit this model ({depth} blocks, {H} heads)"
                )
            self.widths[float(t)] = [(tuple(h), tuple(g)) for h, g in widths]
            self.plans.pop(float(t), None)

    def plan(self, model, t_value: float, e_t: torch.Tensor) -> list:
        """The per-block (heads, groups, sliced attention or None, sliced MLP or None) for timestep t_value."""
        self._check(model)
        plan = self.plans.get(t_value)
        if plan is None:
            if t_value not in self.widths:
                self.widths[t_value] = self.decide(model, e_t)
            plan = [
                (heads, groups, self._slice(model, i, "attn", heads), self._slice(model, i, "mlp", groups))
                for i, (heads, groups) in enumerate(self.widths[t_value])
            ]
            self.plans[t_value] = plan
        return plan

    @torch.no_grad()
    def _slice(self, model, i: int, kind: str, units: tuple[int, ...]):
        if len(units) == model.num_heads:  # full width: the module's own weights, no copy
            return None
        key = (i, kind, units)
        if key not in self.slices:
            block = model.blocks[i]
            self.slices[key] = (
                block.attn.sliced(units) if kind == "attn" else block.mlp.sliced(units, model.num_heads)
            )
        return self.slices[key]

    def cached_bytes(self) -> int:
        """Memory held by the sliced weight copies."""
        return sum(
            t.numel() * t.element_size() for s in self.slices.values() for t in s if torch.is_tensor(t)
        )
