"""Flow matching with the rectified-flow (linear) path of SD3 and SiT.

x_t = (1 − t)·x_0 + t·ε, t ∈ [0, 1] (t = 0 data, t = 1 noise); the model predicts the velocity
dx_t/dt = ε − x_0 and is trained with the MSE to it. Sampling integrates the ODE from t = 1 to t = 0.

Time convention: the model receives ``t * time_scale`` (default 1000) as a floating tensor, so a DiT's
sinusoidal timestep embedder sees the same 0..1000 range as under the DDPM objective and the same network
can be trained with either objective.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ._util import check_sample_tensor, per_sample, randn_like
from .base import TrainingObjective
from .losses import mean_flat

__all__ = ["FlowMatching", "FLOW_LOSS_WEIGHTINGS", "FLOW_PREDICTIONS", "FLOW_TIMESTEP_SAMPLERS"]

FLOW_TIMESTEP_SAMPLERS = ("uniform", "logit_normal", "mode")
# The loss of a velocity-predicting model, weighted per sample as the MSE of another target would be:
# x̂₀ = x_t − t·v̂ and ε̂ = x_t + (1 − t)·v̂, so ||x̂₀ − x₀||² = t²·||v̂ − v||² and ||ε̂ − ε||² = (1 − t)²·||v̂ − v||².
# The network keeps predicting v (no sampler changes, no division by t or 1 − t at the ends of the path).
FLOW_LOSS_WEIGHTINGS = ("velocity", "x0", "epsilon")
# What the network outputs. "velocity": v itself. "x0": the clean image x̂₀, read as v̂ = (x_t − x̂₀)/t, so the
# loss and the samplers still see a velocity (Li & He 2025, "Back to Basics", JiT: in pixel space with large
# patches a network that must output v has to carry the input's noise through to its output, and its x̂₀ at
# mid-noise comes out speckled; one that outputs x̂₀ only draws clean images).
FLOW_PREDICTIONS = ("velocity", "x0")
# x0 prediction divides by t: below this t (the last, nearly clean steps) the divisor is held here (JiT's 0.05)
X0_MIN_T = 0.05
# SD3's mode sampling with heavy tails: the scale of its best FID (Esser et al., 2024, §5.1)
MODE_SCALE = 1.29


def time_dtype(x: torch.Tensor) -> torch.dtype:
    """Floating dtype for times next to x: at least float32, so half-precision x does not quantise t·1000."""
    return torch.promote_types(x.dtype, torch.float32)


class FlowMatching(TrainingObjective):
    """Rectified-flow objective. ``timestep_sampler``: ``"uniform"`` on [0, 1), ``"logit_normal"``
    (t = sigmoid(u), u ~ N(logit_mean, logit_std²); SD3's best setting is m = 0, s = 1) or ``"mode"`` (SD3's
    mode sampling t = 1 − u − s·(cos²(πu/2) − 1 + u), u uniform, s = ``mode_scale``). ``shift`` warps the
    drawn times by t ↦ shift·t / (1 + (shift − 1)·t) (SD3's resolution shift; 1 = off, the draw unchanged).
    ``loss_weighting``: ``"velocity"`` (the plain MSE), ``"x0"`` or ``"epsilon"`` (see FLOW_LOSS_WEIGHTINGS).
    ``prediction``: what the network outputs, ``"velocity"`` or ``"x0"`` (see FLOW_PREDICTIONS); either way
    ``velocity()`` turns its output into v̂, which the loss and the samplers use."""

    default_sampler = "euler"

    def __init__(
        self,
        timestep_sampler: str = "uniform",
        *,
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        time_scale: float = 1000.0,
        mode_scale: float = MODE_SCALE,
        shift: float = 1.0,
        loss_weighting: str = "velocity",
        prediction: str = "velocity",
    ):
        if timestep_sampler not in FLOW_TIMESTEP_SAMPLERS:
            raise ValueError(
                f"unknown timestep sampler {timestep_sampler!r}; valid: {', '.join(FLOW_TIMESTEP_SAMPLERS)}"
            )
        if logit_std <= 0:
            raise ValueError(f"logit_std must be > 0, got {logit_std}")
        if time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        if shift <= 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        if loss_weighting not in FLOW_LOSS_WEIGHTINGS:
            raise ValueError(
                f"unknown loss weighting {loss_weighting!r}; valid: {', '.join(FLOW_LOSS_WEIGHTINGS)}"
            )
        if prediction not in FLOW_PREDICTIONS:
            raise ValueError(f"unknown flow prediction {prediction!r}; valid: {', '.join(FLOW_PREDICTIONS)}")
        self.loss_weighting = loss_weighting
        self.prediction = prediction
        self.timestep_sampler = timestep_sampler
        self.logit_mean = float(logit_mean)
        self.logit_std = float(logit_std)
        self.time_scale = float(time_scale)
        self.mode_scale = float(mode_scale)
        self.shift = float(shift)

    def __repr__(self) -> str:
        extra = (
            f", m={self.logit_mean}, s={self.logit_std}" if self.timestep_sampler == "logit_normal" else ""
        )
        extra += f", shift={self.shift}" if self.shift != 1.0 else ""
        extra += f", prediction={self.prediction!r}" if self.prediction != "velocity" else ""
        return f"FlowMatching({self.timestep_sampler!r}{extra}, time_scale={self.time_scale})"

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """What the model receives for flow times t ∈ [0, 1]: t·time_scale."""
        return t * self.time_scale

    def check_output(self, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(model_output, torch.Tensor):
            raise TypeError(f"the model must return a tensor, got {type(model_output).__name__}")
        if model_output.shape != x.shape:
            hint = (
                " (a learned-variance model outputs 2·C channels; flow matching predicts a velocity only, so "
                "build the model with learn_sigma=False)"
                if model_output.ndim == x.ndim and model_output.shape[1] == 2 * x.shape[1]
                else ""
            )
            raise ValueError(
                f"flow matching needs a {'velocity' if self.prediction == 'velocity' else 'clean image'} "
                f"shaped like the input {tuple(x.shape)}, got {tuple(model_output.shape)}{hint}"
            )
        return model_output

    def velocity(self, model_output: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
        """The velocity v̂ that a checked network output means at x_t, flow times t (a float or an (N,)
        tensor in [0, 1]): the output itself, or (x_t − x̂₀) / max(t, X0_MIN_T) for x0 prediction. Linear in
        the output, so guidance may combine either kind of output before this."""
        if self.prediction == "velocity":
            return model_output
        t = per_sample(t, x_t) if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=x_t.dtype)
        return (x_t - model_output) / t.to(x_t.dtype).clamp(min=X0_MIN_T)

    # ------------------------------------------------------------------ path
    def q_sample(self, x_start, t, noise=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t = (1 − t)·x_0 + t·ε for per-sample times t (N,) in [0, 1]."""
        check_sample_tensor(x_start, "x_start")
        if noise is None:
            noise = randn_like(x_start, generator)
        t = per_sample(t, x_start)
        return (1 - t) * x_start + t * noise

    @staticmethod
    def velocity_target(x_start, noise) -> torch.Tensor:
        return noise - x_start

    @staticmethod
    def predict_xstart(x_t, t, velocity) -> torch.Tensor:
        """x_0 = x_t − t·v (t a scalar or (N,) tensor)."""
        return x_t - (per_sample(t, x_t) if isinstance(t, torch.Tensor) else t) * velocity

    def sample_timesteps(
        self,
        n: int,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """n flow times in [0, 1] from the configured sampler."""
        if self.timestep_sampler == "logit_normal":
            u = torch.randn((n,), device=device, generator=generator, dtype=dtype)
            t = torch.sigmoid(u * self.logit_std + self.logit_mean)
        else:
            t = torch.rand((n,), device=device, generator=generator, dtype=dtype)
            if self.timestep_sampler == "mode":
                t = 1 - t - self.mode_scale * (torch.cos(torch.pi / 2 * t) ** 2 - 1 + t)
        if self.shift != 1.0:  # skipped at 1, so the default draw stays bit-identical
            t = self.shift * t / (1 + (self.shift - 1) * t)
        return t

    # ------------------------------------------------------------------ losses
    def training_losses(
        self, model: Callable[..., torch.Tensor], x_start, t, model_kwargs: dict | None = None, noise=None
    ) -> dict:
        """Per-sample velocity MSE at flow times t (N,): ``mse``, and ``loss``: the same tensor, or weighted by
        t² (``loss_weighting="x0"``) or (1 − t)² (``"epsilon"``), the MSE of that target."""
        check_sample_tensor(x_start, "x_start")
        if not isinstance(t, torch.Tensor) or t.shape != x_start.shape[:1] or not t.is_floating_point():
            raise ValueError(
                f"t must be a floating tensor of shape ({x_start.shape[0]},) with values in [0, 1]"
            )
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        output = self.check_output(model(x_t, self.model_time(t), **(model_kwargs or {})), x_t)
        velocity = self.velocity(output, x_t, t)
        mse = mean_flat((velocity - self.velocity_target(x_start, noise)) ** 2)
        if self.loss_weighting == "velocity":
            return {"loss": mse, "mse": mse}
        weight = t if self.loss_weighting == "x0" else 1 - t
        return {"loss": weight.to(mse.dtype) ** 2 * mse, "mse": mse}

    # trainer entry point: ``loss`` (TrainingObjective)
    def _draw_timesteps(self, x0, generator):
        return self.sample_timesteps(x0.shape[0], x0.device, generator, dtype=time_dtype(x0))

    def _losses(self, model, x0, t, model_kwargs, noise, drawn: bool) -> dict:
        return self.training_losses(model, x0, t, model_kwargs=model_kwargs, noise=noise)

    # ------------------------------------------------------------------ sampling grid
    @staticmethod
    def sampling_times(steps: int, shift: float = 1.0) -> np.ndarray:
        """steps + 1 times from 1 down to 0 (float64), uniform, optionally warped by SD3's resolution shift
        t ↦ shift·t / (1 + (shift − 1)·t) (shift > 1 spends more steps at high noise)."""
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if shift <= 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        t = np.linspace(1.0, 0.0, steps + 1)
        return shift * t / (1 + (shift - 1) * t)
