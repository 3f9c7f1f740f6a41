"""The non-finite guard of a training run: a step whose loss or gradient is NaN/Inf changes nothing.

Such a step is skipped on the device, without a host sync: the fused AdamW kernel takes a `found_inf` flag
(the one torch's GradScaler uses) and then leaves weights, moments and its step count untouched, and the
EMA's lerp weight is multiplied by the step's "finite" flag, so the EMA never absorbs a non-finite update.
(An optimizer without the fused kernel needs the flag on the host: one sync per step, only in that case.)

The guard counts on the device: skipped steps, the current run of consecutive non-finite steps and where
it began. The trainer reads those counters where it already synchronises (when it logs and before a
checkpoint): `patience` non-finite steps in a row then either roll the run back to its last good checkpoint
with the learning rate multiplied by `lr_factor` (at most `max_rollbacks` times), or stop with an error
naming the step. A checkpoint is "good" when the step before it was finite; while a run of non-finite steps
lasts no periodic checkpoint is written (the weights are those of its start anyway).

The host-side state (lr scale, rollbacks, counters) is saved in every checkpoint, so a resumed run behaves
exactly as the uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as torch_dist

NONFINITE_ACTIONS = ("rollback", "stop")


class TrainingDivergedError(ValueError):
    """Too many non-finite steps in a row, and no rollback left (or the configured action is to stop)."""


@dataclass
class GuardReading:
    """The guard's device counters, read on the host."""

    streak: int  # consecutive non-finite steps up to now
    streak_start: int  # the step (0-based) that began the current streak
    skipped: int  # all non-finite (skipped) steps of the run


class NonFiniteGuard:
    def __init__(self, patience: int, action: str, lr_factor: float, max_rollbacks: int, device):
        self.patience, self.action = patience, action
        self.lr_factor, self.max_rollbacks = lr_factor, max_rollbacks
        # device counters (float32: one dtype for the elementwise updates)
        self._streak = torch.zeros((), device=device)
        self._start = torch.zeros((), device=device)
        self._skipped = torch.zeros((), device=device)
        self.lr_scale = 1.0  # the learning rate's multiplier after rollbacks
        self.rollbacks = 0
        self.good_checkpoint: Path | None = None  # the newest checkpoint written after a finite step

    def finite(self, loss: torch.Tensor, grad_norm: torch.Tensor, dist=None) -> torch.Tensor:
        """The step's flag (0-dim bool on the device): loss and gradient norm finite, on every rank (the
        ranks must agree to skip, or their weights would part)."""
        ok = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm.detach())
        if dist is not None and dist.enabled:
            flag = ok.float()
            torch_dist.all_reduce(flag, op=torch_dist.ReduceOp.MIN)
            ok = flag > 0
        return ok

    def observe(self, ok: torch.Tensor, step: int) -> None:
        """Count step `step` (0-based) with flag `ok`, on the device."""
        bad = (~ok).float()
        new_streak = self._streak.mul(bad).add_(bad)  # +1 on a bad step, 0 on a good one
        self._start.copy_(torch.where((new_streak == 1) & (bad > 0), float(step), self._start))
        self._streak.copy_(new_streak)
        self._skipped.add_(bad)

    def read(self) -> GuardReading:
        """The counters on the host (one small device-to-host copy: call it where the trainer syncs)."""
        streak, start, skipped = torch.stack([self._streak, self._start, self._skipped]).tolist()
        return GuardReading(int(streak), int(start), int(skipped))

    def tripped(self, reading: GuardReading) -> bool:
        return self.patience > 0 and reading.streak >= self.patience

    def reset_streak(self) -> None:
        self._streak.zero_()

    def state_dict(self, reading: GuardReading) -> dict:
        return {
            "lr_scale": self.lr_scale,
            "rollbacks": self.rollbacks,
            "streak": reading.streak,
            "streak_start": reading.streak_start,
            "skipped": reading.skipped,
        }

    def load_state_dict(self, state: dict | None) -> None:
        state = state or {}  # checkpoints written before the guard: a fresh guard
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.rollbacks = int(state.get("rollbacks", 0))
        self._streak.fill_(float(state.get("streak", 0)))
        self._start.fill_(float(state.get("streak_start", 0)))
        self._skipped.fill_(float(state.get("skipped", 0)))

    def stop_message(self, reading: GuardReading, step: int, why: str) -> str:
        return (
            f"training stopped at step {step}: {reading.streak} steps in a row (from step "
            f"{reading.streak_start + 1}) had a non-finite loss or gradient, {why}. Lower --lr, add "
            "--warmup-steps or --grad-clip, or train in --precision fp32; then continue with --resume auto "
            "(its newest checkpoint is the last good state)"
        )


def skip_if_not_finite(opt: torch.optim.Optimizer, ok: torch.Tensor) -> bool:
    """Make `opt.step()` skip the update when `ok` is False; returns whether to call `opt.step()` at all.

    Fused AdamW reads `found_inf` on the device (no sync); other optimizers need the flag on the host."""
    if all(group.get("fused") for group in opt.param_groups):
        opt.found_inf = (~ok).float()
        return True
    return bool(ok)  # the one host sync of a step, only without the fused kernel


__all__ = [
    "NONFINITE_ACTIONS",
    "GuardReading",
    "NonFiniteGuard",
    "TrainingDivergedError",
    "skip_if_not_finite",
]
