"""DyDiT as a fine-tuning method: `ditlab finetune --method dydit --method-args target_flops=0.5 --base RUN ...`

The fine-tuning trainer (ditlab.finetune) loads the trained DiT and calls this method's `prepare`, which turns it
into a DyDiT in place (heads/channels sorted by importance, all-on routers, every weight trainable), and its
`compute_loss` each step:

    L = L_diff(dynamic model) + w_c · L_diff(complete model, same x_t and t) + w_f · (mean_batch(r) − λ_t)²

r is the per-sample FLOPs ratio of the blocks (dynamic / dense attention + MLP MACs). λ_t stays 1 for
`hold_steps`, then falls linearly to `target_flops` over `anneal_steps` (author code: 100 and 1000 steps for
λ = 0.5). The complete-model term (every unit on, the same weights) stabilises the start; `complete_steps`
limits it to the first steps (the paper's stage 1), 0 keeps it for the whole run. Options (method_args) are
the fields of DyDiTTrainOptions and DyDiTOptions. The run's model.safetensors is then read by
`ditlab.dydit.load_dydit`.

`DyDiTMethod` has what ditlab.finetune's registry reads (name, help, lr_scale, options, resolve_options,
prepare, trainable_parameters, merge, compute_loss) without importing that package, so the registry imports it
without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ditlab.configs import DictConfig
from ditlab.dydit.model import DyDiT, DyDiTOptions
from ditlab.train.trainer import step_generator

ROUTER_SEED_OFFSET = 104_729  # router noise gets its own per-step stream, independent of the data's


@dataclass
class DyDiTTrainOptions(DictConfig):
    _what = "DyDiT training option"

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


def dydit_loss(trainer, opts: DyDiTTrainOptions, x0, model_kwargs, t, noise) -> dict:
    """DyDiT's per-sample loss terms for one batch of `trainer` (a Trainer whose model is a DyDiT in training
    mode): "loss" (N,) = dynamic + complete-model + FLOPs terms, the dynamic model's "mse"/"vb", and
    "complete_loss", "flops_ratio", "flops_target", "flops_loss" for the logs.

    The router noise of step s comes from its own generator seeded by (seed, s), so resume stays exact."""
    aux: dict = {}
    gen = step_generator(trainer.cfg.seed + ROUTER_SEED_OFFSET, trainer.step)
    dynamic = {**model_kwargs, "generator": gen, "aux": aux}
    terms = dict(trainer.objective.loss(trainer.net, x0, model_kwargs=dynamic, t=t, noise=noise))
    if "flops_ratio" not in aux:
        raise ValueError("dydit_loss needs a DyDiT in training mode (model.train()) as the trainer's model")
    loss = terms["loss"]  # (N,)
    if opts.complete_weight > 0 and (opts.complete_steps == 0 or trainer.step < opts.complete_steps):
        # the same weights at full width on the same x_t and t: DyDiT's warm-up stabiliser
        full = trainer.objective.loss(
            trainer.net, x0, model_kwargs={**model_kwargs, "complete": True}, t=t, noise=noise
        )
        loss = loss + opts.complete_weight * full["loss"]
        terms["complete_loss"] = full["loss"].detach()
    ratio = aux["flops_ratio"]  # (N,)
    target = opts.target_at(trainer.step)
    flops_loss = (ratio.mean() - target) ** 2
    terms["loss"] = loss + opts.flops_weight * flops_loss
    terms["flops_ratio"] = ratio.detach()
    terms["flops_target"] = torch.tensor(target)
    terms["flops_loss"] = flops_loss.detach()
    return terms


FROZEN_ALWAYS = ("pos_embed",)


def _defaults(cls) -> dict:
    return {f.name: f.default for f in fields(cls)}


class DyDiTMethod:
    name = "dydit"
    help = (
        "DyDiT: timestep-wise dynamic width and dynamic tokens, trained to a FLOPs target "
        "(--method-args target_flops=0.5); load the result with ditlab.dydit.load_dydit"
    )
    lr_scale = 1.0  # the author recipe fine-tunes at the pre-training rate (1e-4)

    @property
    def options(self) -> dict:
        return {**_defaults(DyDiTTrainOptions), **_defaults(DyDiTOptions)}

    def resolve_options(self, options: dict) -> dict:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for method 'dydit'; valid options: {', '.join(self.options)}"
            )
        return {**self.options, **options}

    def split_options(self, options: dict) -> tuple[DyDiTTrainOptions, DyDiTOptions]:
        """(DyDiTTrainOptions, DyDiTOptions) from one flat dict of method options."""
        opts = self.resolve_options(options)
        train = DyDiTTrainOptions(**{k: opts[k] for k in _defaults(DyDiTTrainOptions)})
        return train, DyDiTOptions(**{k: opts[k] for k in _defaults(DyDiTOptions)})

    def prepare(self, model, generator=None, **options) -> dict:
        """Turn a DiT into a DyDiT in place (heads/channels reordered unless reorder=False, routers all on,
        initialised from `generator`), put it in training mode and make every parameter trainable (the fixed
        position table excepted). Returns the resolved options."""
        train, dynamic = self.split_options(options)
        if not isinstance(model, DyDiT):
            DyDiT.convert_(model, dynamic, reorder=train.reorder, generator=generator)
        # Training mode: the routers learn only through the training forward (an eval-mode DyDiT runs the
        # deployed, hard-decision path), and checkpoint loaders return models in eval mode.
        model.train()
        model.requires_grad_(False)
        for p in self.trainable_parameters(model):
            p.requires_grad_(True)
        return self.resolve_options(options)

    def trainable_parameters(self, model, **options):
        """Every parameter (DiT weights and routers) except the fixed position table."""
        frozen = {id(getattr(model, name)) for name in FROZEN_ALWAYS}
        return (p for p in model.parameters() if id(p) not in frozen)

    def merge(self, model):
        """Nothing to fold: a DyDiT is deployed as it is (see ditlab.dydit.checkpoint.export_dydit)."""
        return model

    def compute_loss(self, trainer, x0, model_kwargs, t, noise) -> dict:
        """DyDiT's loss for a fine-tuning trainer's batch (options from `trainer.cfg.method_args`)."""
        train, _ = self.split_options(getattr(trainer.cfg, "method_args", None) or {})
        return dydit_loss(trainer, train, x0, model_kwargs, t, noise)


__all__ = ["DyDiTMethod", "DyDiTTrainOptions", "dydit_loss"]
