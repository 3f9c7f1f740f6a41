"""What benchmarks/ time: issue 6's configs, a ditlab DiT and diffusers' `DiTTransformer2DModel` holding the
same weights, and one forward / guided sampling step / training step of either, built alike for every variant.

The training step is the Trainer's `train_step` without data loading and logging: DDPM hybrid loss (learned
variance, as the paper and the demo), zero_grad, backward, gradient norm, AdamW, EMA update. The guided
sampling step is one DDPM-250 step with classifier-free guidance (cond and null rows batched, scale 4).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ditlab.demo import DEMO_RECIPE
from ditlab.diffusion.guidance import GuidedModel
from ditlab.diffusion.objective import ObjectiveSpec
from ditlab.models import create_model
from ditlab.models.flops import flops
from ditlab.train.ema import EMA
from ditlab.train.trainer import adamw


@dataclass(frozen=True)
class Workload:
    name: str
    model: str  # zoo name
    input_size: int
    in_channels: int
    num_classes: int
    batch: int
    overrides: tuple = ()  # extra DiTConfig fields, e.g. (("depth", 2),) for --quick

    def describe(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.overrides)
        return (
            f"{self.model} on {self.input_size}×{self.input_size}×{self.in_channels}, "
            f"{self.num_classes} classes, batch {self.batch}{extra}"
        )


def demo_workload(batch: int | None = None, **overrides) -> Workload:
    """The demo's model on the demo's data geometry (`ditlab demo`: DEMO_RECIPE on the bundled digits)."""
    from ditlab.data import load_dataset

    data = load_dataset(DEMO_RECIPE["data"])
    return Workload(
        "demo",
        DEMO_RECIPE["model"],
        data.image_size[0],
        data.channels,
        data.num_classes,
        batch or DEMO_RECIPE["batch_size"],
        tuple(overrides.items()),
    )


def latent_workload(model: str, batch: int = 8, **overrides) -> Workload:
    """A zoo model on the paper's 256 px setting: 32×32×4 latents, 1000 classes."""
    return Workload(model, model, 32, 4, 1000, batch, tuple(overrides.items()))


def build_model(w: Workload, seed: int = 0):
    """The ditlab model of a workload with random weights (every tensor N(0, 0.02) but the fixed positions,
    so no branch is the zero-initialised identity). `timestep_freq_shift=1` is diffusers' timestep
    sinusoid: the diffusers twin then computes the same function (`ditlab.models.interop`)."""
    torch.manual_seed(seed)
    model = create_model(
        w.model,
        input_size=w.input_size,
        in_channels=w.in_channels,
        num_classes=w.num_classes,
        learn_sigma=True,
        timestep_freq_shift=1,
        **dict(w.overrides),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0, 0.02)
    return model


class DiffusersDiT(nn.Module):
    """diffusers' `DiTTransformer2DModel` called like a ditlab DiT: `model(x, t, y, force_drop_ids)`."""

    def __init__(self, transformer, null_class: int):
        super().__init__()
        self.transformer = transformer
        self.null_class = null_class

    def forward(self, x, t, y=None, force_drop_ids=None):
        if force_drop_ids is not None:  # ditlab's label dropout, applied before diffusers sees the labels
            y = torch.where(force_drop_ids == 1, torch.full_like(y, self.null_class), y)
        return self.transformer(x, timestep=t, class_labels=y).sample  # (N, 2C, H, W)


def diffusers_twin(model) -> DiffusersDiT:
    """A diffusers `DiTTransformer2DModel` with the model's weights (its own copy), wrapped like a DiT."""
    from ditlab.models.interop import to_diffusers

    return DiffusersDiT(to_diffusers(model), model.null_class)


@dataclass
class Batch:
    x0: torch.Tensor  # (B, C, H, W) clean images/latents
    y: torch.Tensor  # (B,) labels
    t: torch.Tensor  # (B,) training timesteps
    noise: torch.Tensor
    drop: torch.Tensor  # (B,) label-dropout flags (1 = null class)


def make_batch(w: Workload, seed: int = 0, rows: int | None = None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    n = rows or w.batch
    shape = (n, w.in_channels, w.input_size, w.input_size)
    return Batch(
        torch.randn(shape, generator=g),
        torch.randint(0, w.num_classes, (n,), generator=g),
        torch.randint(0, 1000, (n,), generator=g),
        torch.randn(shape, generator=g),
        (torch.rand(n, generator=g) < 0.1).long(),
    )


def objective():
    return ObjectiveSpec(kind="ddpm", learn_sigma=True).build()


@dataclass
class Trainee:
    """What a training step updates: the model, an AdamW over its trainable parameters, and its EMA."""

    model: nn.Module
    opt: torch.optim.Optimizer
    ema: EMA

    @classmethod
    def of(cls, model: nn.Module, lr: float = 1e-4) -> Trainee:
        params = [p for p in model.parameters() if p.requires_grad]
        return cls(model, adamw(params, lr=lr), EMA(model, 0.9999))

    def use_fused_optimizer(self, fused: bool) -> None:
        """Switch the shared optimizer between the one-kernel and the per-tensor-loop AdamW (same state)."""
        for group in self.opt.param_groups:
            group["fused"], group["foreach"] = (True, None) if fused else (None, False)


def train_step(trainee: Trainee, net, batch: Batch, bf16: bool = False):
    """One optimisation step of `net` (the model, or a compiled/wrapped form of it) on `batch`."""
    diffusion = objective()
    kwargs = {"y": batch.y, "force_drop_ids": batch.drop}
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step():
        with ctx:
            terms = diffusion.loss(net, batch.x0, model_kwargs=kwargs, t=batch.t, noise=batch.noise)
        loss = terms["loss"].float().mean()
        trainee.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainee.model.parameters(), float("inf"))  # the logged norm
        trainee.opt.step()
        trainee.ema.update(trainee.model, 0)
        return loss

    return step


def forward(net, batch: Batch, bf16: bool = False):
    """A no-grad forward of `net` on the batch's rows."""
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    @torch.no_grad()
    def run():
        with ctx:
            return net(batch.noise, batch.t, batch.y)

    return run


def guided_step(net, batch: Batch, null_class: int, scale: float = 4.0, bf16: bool = False):
    """One DDPM step of the 250-step respaced chain, halfway down, with classifier-free guidance: the model
    runs once on 2·rows (cond and null labels batched by `GuidedModel`), then the DDPM update."""
    diffusion = objective().respace(250)
    index = len(diffusion) // 2
    n = batch.noise.shape[0]
    t_index = torch.full((n,), index, dtype=torch.long)
    t_model = torch.full((n,), int(diffusion.timestep_map[index]), dtype=torch.long)
    guided = GuidedModel(net, {"y": batch.y}, {"y": torch.full_like(batch.y, null_class)}, scale=scale)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    @torch.no_grad()
    def run():
        with ctx:
            out = guided(batch.noise, t_model, float(t_model[0]))
        return diffusion.ddpm_step(out.float(), batch.noise, t_index, batch.x0)["sample"]

    return run


def flop_counts(model, w: Workload) -> dict[str, float]:
    """FLOPs (2 per multiply-add, the paper's analytic count) of one call of each timed function."""
    per_image = 2e9 * flops(model)
    return {
        "forward": per_image * w.batch,
        "guided": per_image * 2 * w.batch,
        "train": 3 * per_image * w.batch,  # backward ≈ 2 forwards, as the Trainer's MFU
    }


def max_relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))
