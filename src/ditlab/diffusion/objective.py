"""ObjectiveSpec: which training objective a model was trained with, saved beside its weights so that
sampling a checkpoint never needs the user to repeat it (DDPM schedule and variance, or flow matching).
"""

from __future__ import annotations

from dataclasses import dataclass

from ditlab.configs import DictConfig
from ditlab.diffusion.flow import FlowMatching
from ditlab.diffusion.gaussian import GaussianDiffusion

KINDS = ("ddpm", "flow")
LATER_DEFAULTS = {
    "timestep_shift": 1.0,
    "loss_weighting": "velocity",
    "prediction": "velocity",
}  # fields added after files were written: omitted at the default


@dataclass(frozen=True)
class ObjectiveSpec(DictConfig):
    _what = "objective field"

    kind: str = "ddpm"  # ddpm | flow
    schedule: str = "linear"  # ddpm: β schedule
    steps: int = 1000  # ddpm: trained chain length
    learn_sigma: bool = True  # ddpm: learned-range variance + hybrid loss; else fixed variance, MSE on ε
    timestep_sampling: str = "uniform"  # flow: uniform | logit_normal | mode
    timestep_shift: float = 1.0  # flow: training-time warp t -> s·t / (1 + (s − 1)·t)
    loss_weighting: str = "velocity"  # flow: velocity | x0 | epsilon (ditlab.diffusion.flow)
    prediction: str = "velocity"  # flow: what the network outputs, velocity | x0 (ditlab.diffusion.flow)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown objective {self.kind!r}; choose one of: {', '.join(KINDS)}")

    def to_dict(self) -> dict:
        """The fields, without those added later while at their default: a default run's record (and the
        metadata of its model file) stays what earlier releases wrote."""
        d = super().to_dict()
        return {k: v for k, v in d.items() if not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}

    def build(self) -> GaussianDiffusion | FlowMatching:
        if self.kind == "flow":
            return FlowMatching(
                timestep_sampler=self.timestep_sampling,
                shift=self.timestep_shift,
                loss_weighting=self.loss_weighting,
                prediction=self.prediction,
            )
        var_type = "learned_range" if self.learn_sigma else "fixed_large"  # as the official create_diffusion
        return GaussianDiffusion.from_schedule(self.schedule, self.steps, var_type=var_type)

    @property
    def default_sampler(self) -> str:
        """The objective's default sampler, declared on its class (DDIM for DDPM, Euler for flow)."""
        return (FlowMatching if self.kind == "flow" else GaussianDiffusion).default_sampler
