"""Post-hoc EMA (Karras et al., EDM2, arXiv:2312.02696 §3): track a few power-function EMA profiles while
training, snapshot them every N steps, and afterwards rebuild the EMA of any length from the snapshots.

A power-function EMA with exponent γ averages the weights θ_1..θ_t of the first t optimizer steps with
weights ∝ τ^γ; its update after step t is  avg ← β_t·avg + (1 − β_t)·θ_t  with β_t = (1 − 1/t)^(γ+1)
(β_1 = 0: the first step's weights). Its length is the relative standard deviation of that weighting,
σ_rel = sqrt((γ + 1) / ((γ + 2)² (γ + 3))), independent of t (EDM2's two profiles: σ_rel 0.05 and 0.10).

Reconstruction: each snapshot is a known weighting w_i(τ) of the same θ_τ (computed exactly here, in discrete
steps, from the recursion), so the EMA of another γ at step t is approximated by Σ x_i·snapshot_i with x the
least-squares fit of Σ x_i·w_i(τ) to the target weighting w(τ) over τ = 1..t (EDM2 solves the same normal
equations on the continuous profiles). The fit's relative error is reported with the result.

Snapshots: `<run>/ema-snapshots/{step:07d}.safetensors`, one tensor per profile and trainable parameter
(`p{i}.NAME`), metadata `step` and `sigma_rels` (float32: a DiT-S/2 snapshot of two profiles is ~260 MB, so
pick `posthoc_ema_every` for the disk). `ditlab ema RUN --length 0.1 --out FILE` writes the rebuilt model.

Sharded runs (--parallel fsdp|hsdp): built after the model is sharded, each profile is sharded like the
parameters (DTensors), so an update is a local lerp of shard on shard, as the EMA's. Snapshots and training
checkpoints hold whole tensors, gathered one at a time (every rank calls `tensors`, rank 0 keeps them), so
they are the files of an unsharded run and resume into any layout (`load_trainable_state` reshards).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor, distribute_tensor

from ditlab.atomic import atomic_write

SNAPSHOT_DIR = "ema-snapshots"
_CHUNK = 1 << 16  # steps per block of the normal equations (bounds memory for long runs)


def snapshot_dir(out: str | Path) -> Path:
    return Path(out) / SNAPSHOT_DIR


def gamma_to_sigma_rel(gamma: float) -> float:
    return float(np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent γ > −1 of the power EMA of length σ_rel: the real root of
    γ³ + 7γ² + (16 − 1/σ²)γ + (12 − 1/σ²) = 0 (the σ_rel formula solved for γ)."""
    if not 0 < sigma_rel < gamma_to_sigma_rel(0.0):
        raise ValueError(
            f"EMA length sigma_rel must be in (0, {gamma_to_sigma_rel(0.0):.4f}), got {sigma_rel}"
        )
    inv = 1.0 / sigma_rel**2
    roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def power_beta(gamma: float, t: int) -> float:
    """β_t of the power EMA after optimizer step t (1-based)."""
    return (1.0 - 1.0 / t) ** (gamma + 1.0)


class PostHocEMA:
    """The power-EMA profiles of one run (one averaged copy of the parameters per σ_rel)."""

    def __init__(self, model: torch.nn.Module, sigma_rels):
        self.sigma_rels = [float(s) for s in sigma_rels]
        if not self.sigma_rels:
            raise ValueError("post-hoc EMA needs at least one sigma_rel")
        self.gammas = [sigma_rel_to_gamma(s) for s in self.sigma_rels]
        # trainable parameters only: a frozen one (the position table) is the model file's, exactly
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.profiles = [[p.detach().clone() for p in self._params(model)] for _ in self.gammas]

    @staticmethod
    def _params(model: torch.nn.Module) -> list[torch.Tensor]:
        return [p.detach() for p in model.parameters() if p.requires_grad]

    @torch.no_grad()
    def update(self, model: torch.nn.Module, t: int) -> None:
        """After optimizer step t (1-based): every profile takes its power-EMA step."""
        params = self._params(model)
        for gamma, avg in zip(self.gammas, self.profiles):
            torch._foreach_lerp_(avg, params, 1.0 - power_beta(gamma, t))

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every profile's whole tensors on the CPU (`p{i}.NAME`). Sharded profiles are gathered one tensor
        at a time: every rank must call this, and only rank 0 gets the tensors (the others an empty dict)."""
        out = {}
        for i, avg in enumerate(self.profiles):
            for name, tensor in zip(self.names, avg):
                if isinstance(tensor, DTensor):
                    tensor = tensor.full_tensor()  # a collective
                    if dist.get_rank() != 0:
                        continue
                out[f"p{i}.{name}"] = tensor.detach().cpu().contiguous()
        return out

    def save_snapshot(self, folder: str | Path, t: int, write: bool = True) -> Path | None:
        """Write the snapshot of step t; `write=False` (sharded runs, ranks other than 0) only takes part
        in gathering it."""
        tensors = self.tensors()
        if not write:
            return None
        path = Path(folder) / f"{t:07d}.safetensors"
        meta = {"step": str(t), "sigma_rels": json.dumps(self.sigma_rels)}
        atomic_write(path, lambda f: save_file(tensors, f.name, metadata=meta))
        return path

    def trainable_state(self) -> dict:
        """What a training checkpoint keeps to resume the profiles exactly."""
        return {"sigma_rels": list(self.sigma_rels), "tensors": self.tensors()}

    def load_trainable_state(self, state: dict) -> None:
        if [float(s) for s in state["sigma_rels"]] != self.sigma_rels:
            raise ValueError(
                f"the checkpoint tracked post-hoc EMA profiles {state['sigma_rels']}, this run asks "
                f"{self.sigma_rels}: resume with the same --posthoc-ema"
            )
        with torch.no_grad():
            for i, avg in enumerate(self.profiles):
                for name, tensor in zip(self.names, avg):
                    saved = state["tensors"][f"p{i}.{name}"]
                    if isinstance(tensor, DTensor):  # whole tensors (every rank read them) -> this layout
                        saved = distribute_tensor(
                            saved.to(tensor.device), tensor.device_mesh, tensor.placements
                        )
                    tensor.copy_(saved)


def profile_weights(gamma: float, t: int, start: int, stop: int) -> np.ndarray:
    """The weight the power EMA of γ holds after step t on θ_τ, for τ in [start, stop) (0 beyond t):
    (1 − β_τ)·Π_{s=τ+1..t} β_s = (1 − (1 − 1/τ)^(γ+1))·(τ/t)^(γ+1), the product telescoping."""
    tau = np.arange(start, stop, dtype=np.float64)
    weights = (1.0 - (1.0 - 1.0 / tau) ** (gamma + 1.0)) * (np.minimum(tau, t) / t) ** (gamma + 1.0)
    return np.where(tau <= t, weights, 0.0)


def solve_coefficients(snapshots: list[tuple[int, float]], gamma: float, t: int) -> tuple[np.ndarray, float]:
    """Least-squares coefficients of `snapshots` [(step, γ), ...] for the power EMA of `gamma` at step `t`,
    and the fit's relative error ||Σ x_i w_i − w|| / ||w|| over τ = 1..t."""
    if not snapshots:
        raise ValueError("no post-hoc EMA snapshots at or before the asked step")
    n = len(snapshots)
    gram, rhs, target_sq = np.zeros((n, n)), np.zeros(n), 0.0
    for start in range(1, t + 1, _CHUNK):
        stop = min(t + 1, start + _CHUNK)
        basis = np.stack([profile_weights(g, s, start, stop) for s, g in snapshots], axis=1)  # (chunk, n)
        target = profile_weights(gamma, t, start, stop)
        gram += basis.T @ basis
        rhs += basis.T @ target
        target_sq += float(target @ target)
    x = np.linalg.lstsq(gram, rhs, rcond=None)[0]
    residual_sq = max(0.0, float(x @ gram @ x - 2 * x @ rhs + target_sq))
    return x, float(np.sqrt(residual_sq / target_sq))


def list_snapshots(folder: str | Path) -> list[tuple[Path, int, list[float]]]:
    """(path, step, sigma_rels) of every snapshot in `folder`, oldest first."""
    found = []
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "step" in meta and "sigma_rels" in meta:
            found.append((path, int(meta["step"]), [float(s) for s in json.loads(meta["sigma_rels"])]))
    return sorted(found, key=lambda item: item[1])


def reconstruct(folder: str | Path, sigma_rel: float, step: int | None = None) -> tuple[dict, dict]:
    """The parameters of the power EMA of length `sigma_rel` at `step` (default: the last snapshot's), as
    {name: tensor}, and a report (step, gamma, snapshots used, relative fit error)."""
    found = list_snapshots(folder)
    if not found:
        raise FileNotFoundError(
            f"no post-hoc EMA snapshots in {folder}; train with --posthoc-ema 0.05 0.1 to write them"
        )
    step = found[-1][1] if step is None else int(step)
    used = [(path, s, i, sigma) for path, s, sigmas in found if s <= step for i, sigma in enumerate(sigmas)]
    gamma = sigma_rel_to_gamma(sigma_rel)
    x, error = solve_coefficients([(s, sigma_rel_to_gamma(sigma)) for _, s, _, sigma in used], gamma, step)
    params: dict[str, torch.Tensor] = {}
    for coeff, (path, _, i, _) in zip(x, used):
        prefix = f"p{i}."
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefix):
                    name = key[len(prefix) :]
                    value = f.get_tensor(key).double() * float(coeff)
                    params[name] = params[name] + value if name in params else value
    report = {
        "step": step,
        "sigma_rel": sigma_rel,
        "gamma": gamma,
        "snapshots": len(used),
        "fit_error": error,
    }
    return {k: v.float() for k, v in params.items()}, report


__all__ = [
    "PostHocEMA",
    "SNAPSHOT_DIR",
    "gamma_to_sigma_rel",
    "list_snapshots",
    "power_beta",
    "profile_weights",
    "reconstruct",
    "sigma_rel_to_gamma",
    "snapshot_dir",
    "solve_coefficients",
]
