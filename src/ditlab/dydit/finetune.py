"""Fine-tuning a trained DiT into a DyDiT: the Trainer with DyDiT's loss.

    L = L_diff(dynamic model) + w_c · L_diff(complete model, same x_t and t) + w_f · (mean_batch(r) − λ_t)²

r is the per-sample FLOPs ratio of the blocks (dynamic / dense attention + MLP MACs). λ_t stays 1 for
`hold_steps`, then falls linearly to `target_flops` over `anneal_steps` (author code: 100 and 1000 steps for
λ = 0.5). The complete-model term (every unit on, the same weights) stabilises the start; `complete_steps`
limits it to the first steps (the paper's stage 1), 0 keeps it for the whole run.

    from ditlab.dydit.finetune import DyDiTTrainer, DyDiTTrainOptions
    DyDiTTrainer(TrainConfig(data="fashion-mnist", steps=2000, ...), base="runs/fm/model.safetensors",
                 options=DyDiTTrainOptions(target_flops=0.5)).run()
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from ditlab.dydit.checkpoint import is_dydit_file, load_dydit, save_dydit
from ditlab.dydit.model import DyDiT, DyDiTOptions
from ditlab.train.config import TrainConfig
from ditlab.train.trainer import Trainer, step_generator

ROUTER_SEED_OFFSET = 104_729  # router noise gets its own per-step stream, independent of the data's


@dataclass
class DyDiTTrainOptions:
    target_flops: float = 0.5  # λ: the FLOPs ratio to reach
    flops_weight: float = 2.0  # weight of (mean ratio − λ_t)² (author code: 2)
    complete_weight: float = 1.0  # weight of the complete-model loss (0 = off)
    complete_steps: int = 0  # use the complete-model loss for the first N steps only (0 = always)
    hold_steps: int = 100  # λ_t = 1 for these first steps
    anneal_steps: int = 1000  # then linear from 1 to target_flops over these steps
    reorder: bool = True  # sort heads/channels by magnitude before fine-tuning a plain DiT

    def __post_init__(self):
        if not 0 < self.target_flops <= 1:
            raise ValueError(f"target_flops must be in (0, 1], got {self.target_flops}")
        for name in ("flops_weight", "complete_weight", "complete_steps", "hold_steps", "anneal_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def target_at(self, step: int) -> float:
        """λ_t: 1 during the hold, then linear to target_flops over anneal_steps, then target_flops."""
        if step < self.hold_steps:
            return 1.0
        done = 1.0 if self.anneal_steps == 0 else min(1.0, (step - self.hold_steps) / self.anneal_steps)
        return 1.0 - (1.0 - self.target_flops) * done

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DyDiTTrainOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DyDiT training option(s) {unknown}; valid: {', '.join(sorted(known))}")
        return cls(**d)


class DyDiTTrainer(Trainer):
    """`Trainer` that starts from the DiT (or DyDiT) checkpoint `base` and trains it with DyDiT's loss.

    `cfg.model`/`variant`/`model_args` are ignored: the architecture is the checkpoint's. The run's objective
    (cfg.objective, schedule, learn_sigma, ...) must be the one the base was trained with.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        base: str | Path,
        options: DyDiTTrainOptions | None = None,
        model_options: DyDiTOptions | None = None,
        resume: str | Path | None = None,
    ):
        self.base = Path(base)
        self.options = options or DyDiTTrainOptions()
        self.model_options = model_options
        super().__init__(cfg, resume=resume)

    def build_model(self) -> DyDiT:
        if not self.base.exists():
            raise FileNotFoundError(
                f"base checkpoint {self.base} does not exist; train a DiT first (ditlab train)"
            )
        dydit = is_dydit_file(self.base)  # continuing a DyDiT (e.g. stage 2) keeps its options and order
        model = load_dydit(
            self.base, options=None if dydit else self.model_options, reorder=self.options.reorder
        )
        if model.objective_spec is not None and model.objective_spec != self.spec.to_dict():
            raise ValueError(
                f"{self.base} was trained with objective {model.objective_spec}, but this run uses "
                f"{self.spec.to_dict()}; set the objective options (objective, schedule, diffusion_steps, "
                "learn_sigma) to the base's"
            )
        return model.train()

    def compute_loss(self, x0, model_kwargs, t, noise) -> dict:
        opts = self.options
        aux: dict = {}
        gen = step_generator(self.cfg.seed + ROUTER_SEED_OFFSET, self.step)
        dynamic = {**model_kwargs, "generator": gen, "aux": aux}
        terms = dict(self.objective.loss(self.net, x0, model_kwargs=dynamic, t=t, noise=noise))
        loss = terms["loss"]  # (N,)
        if opts.complete_weight > 0 and (opts.complete_steps == 0 or self.step < opts.complete_steps):
            full = self.objective.loss(
                self.net, x0, model_kwargs={**model_kwargs, "complete": True}, t=t, noise=noise
            )
            loss = loss + opts.complete_weight * full["loss"]
            terms["complete_loss"] = full["loss"].detach()
        ratio = aux["flops_ratio"]  # (N,)
        target = opts.target_at(self.step)
        flops_loss = (ratio.mean() - target) ** 2
        terms["loss"] = loss + opts.flops_weight * flops_loss
        terms["flops_ratio"] = ratio.detach()
        terms["flops_target"] = torch.tensor(target)
        terms["flops_loss"] = flops_loss.detach()
        return terms

    def state(self) -> dict:
        state = super().state()
        state["dydit"] = {"model": self.model.options.to_dict(), "train": self.options.to_dict()}
        return state

    def run(self) -> dict:
        summary = super().run()
        if (
            self.dist.is_main
        ):  # the base class saved the EMA as a DiT file; a DyDiT needs its routers described
            save_dydit(self.ema.model, self.out / "model.safetensors", objective=self.spec.to_dict())
        return summary


def finetune_dydit(
    cfg: TrainConfig,
    base: str | Path,
    options: DyDiTTrainOptions | None = None,
    model_options: DyDiTOptions | None = None,
    resume: str | Path | None = None,
) -> dict:
    """Fine-tune `base` into a DyDiT; returns the run summary (`model` is the DyDiT file, `load_dydit` reads it)."""
    return DyDiTTrainer(cfg, base, options, model_options, resume=resume).run()


__all__ = ["DyDiTTrainOptions", "DyDiTTrainer", "finetune_dydit"]
