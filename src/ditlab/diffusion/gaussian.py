"""The discrete Gaussian diffusion (DDPM) with ε-prediction and fixed or learned-range variance.

Holds the forward process (``q_sample``), the posterior q(x_{t-1} | x_t, x_0), the model's reverse step
p(x_{t-1} | x_t), one DDPM and one DDIM step, and the training losses (plain MSE on ε, or DiT's hybrid
MSE + VLB). Semantics follow the official ADM/DiT code: tables are float64, indexed per sample and cast to the
input's dtype before use; a respaced process keeps the trained model's timestep indices in ``timestep_map``.
This is the only arithmetic (no option selects another): in float32 it is the official code's order of
operations, so an official checkpoint follows the official trajectory; in float64 it stays float64 where the
official code casts its tables to float32. ``python tests/test_diffusion_parity.py`` prints the distance to
diffusers' schedulers run on float64 tables (25 DDIM / 250 DDPM steps on the official respaced chains).

Time convention: ``t`` arguments are indices into *this* process's steps (0..len-1). The model is always
called with the original trained timestep ``timestep_map[t]`` (a long tensor, 0..999 for the DiT chain).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch

from ._util import check_sample_tensor, per_sample, randn_like
from .base import TrainingObjective
from .losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .respace import space_timesteps
from .schedules import get_beta_schedule

__all__ = ["GaussianDiffusion", "VAR_TYPES", "LOSS_TYPES"]

VAR_TYPES = ("learned_range", "fixed_small", "fixed_large")
LOSS_TYPES = ("mse", "rescaled_mse", "kl", "rescaled_kl")
TIMESTEP_SAMPLERS = ("uniform",)

Model = Callable[..., torch.Tensor]


def _choice(value: str, valid: Iterable[str], what: str) -> str:
    valid = tuple(valid)
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
    return value


class GaussianDiffusion(TrainingObjective):
    """A T-step Gaussian diffusion over any tensor shape (N, C, *spatial), ε-prediction.

    ``var_type``: ``"learned_range"`` (the model outputs 2C channels, ε then v ∈ [-1, 1] interpolating log β_t
    and log β̃_t, as DiT), ``"fixed_small"`` (β̃_t) or ``"fixed_large"`` (β_t); both fixed types take a
    C-channel model.
    ``loss_type``: ``"mse"`` (MSE on ε, plus the VLB when the variance is learned: DiT's hybrid loss),
    ``"rescaled_mse"`` (VLB scaled by T/1000), ``"kl"`` / ``"rescaled_kl"`` (the VLB alone, ×T for rescaled).
    """

    default_sampler = "ddim"  # the fast default for previews and evaluation; ancestral DDPM is "ddpm"

    def __init__(
        self,
        betas,
        *,
        var_type: str = "learned_range",
        loss_type: str = "mse",
        timestep_map=None,
        timestep_sampler: str = "uniform",
    ):
        betas = np.asarray(betas.cpu() if isinstance(betas, torch.Tensor) else betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) < 1:
            raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {betas.shape}")
        if not (np.all(betas > 0) and np.all(betas <= 1)):
            raise ValueError("every beta must lie in (0, 1]")
        self.var_type = _choice(var_type, VAR_TYPES, "var_type")
        self.loss_type = _choice(loss_type, LOSS_TYPES, "loss_type")
        self.timestep_sampler = _choice(timestep_sampler, TIMESTEP_SAMPLERS, "timestep sampler")
        self.num_timesteps = len(betas)

        if timestep_map is None:
            timestep_map = np.arange(self.num_timesteps)
        timestep_map = np.asarray(
            timestep_map.cpu() if isinstance(timestep_map, torch.Tensor) else timestep_map
        )
        if (
            timestep_map.shape != (self.num_timesteps,)
            or np.any(np.diff(timestep_map) <= 0)
            or timestep_map[0] < 0
        ):
            raise ValueError("timestep_map must hold one increasing non-negative model timestep per beta")

        # Every table in float64 numpy, exactly as the official code builds them, then frozen as tensors once.
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas, axis=0)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # β̃_0 = 0, so the log is clipped by borrowing β̃_1 at t = 0 (a 1-step chain keeps β_0 there).
        first = posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        posterior_log_variance_clipped = np.log(np.append(first, posterior_variance[1:]))
        large_variance = np.append(first, betas[1:])
        tables = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "log_one_minus_alphas_cumprod": np.log(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1.0),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_log_variance_clipped,
            "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
            "log_betas": np.log(betas),
            "fixed_large_variance": large_variance,
            "fixed_large_log_variance": np.log(large_variance),
        }
        self._tables = {name: torch.from_numpy(np.ascontiguousarray(v)) for name, v in tables.items()}
        self._tables["timestep_map"] = torch.from_numpy(timestep_map.astype(np.int64))
        self._device_tables: dict[torch.device, dict[str, torch.Tensor]] = {}
        self._respaced: dict[object, GaussianDiffusion] = {}

    # ------------------------------------------------------------------ construction and tables
    @classmethod
    def from_schedule(
        cls,
        schedule: str = "linear",
        num_timesteps: int = 1000,
        *,
        respacing: str | int | None = None,
        var_type: str = "learned_range",
        loss_type: str = "mse",
        **schedule_kwargs,
    ) -> GaussianDiffusion:
        """A process from a named β schedule, optionally respaced (``"250"``, ``"ddim50"``,
        ``"25,25,50"``)."""
        diffusion = cls(
            get_beta_schedule(schedule, num_timesteps, **schedule_kwargs),
            var_type=var_type,
            loss_type=loss_type,
        )
        return diffusion.respace(respacing) if respacing not in (None, "") else diffusion

    def _new(self, betas, timestep_map) -> GaussianDiffusion:
        # type(self) so that subclasses (the official-code facade) stay themselves when respaced.
        return type(self)(
            betas,
            var_type=self.var_type,
            loss_type=self.loss_type,
            timestep_map=timestep_map,
            timestep_sampler=self.timestep_sampler,
        )

    def __len__(self) -> int:
        return self.num_timesteps

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(steps={self.num_timesteps}, var_type={self.var_type!r}, "
            f"loss_type={self.loss_type!r}, model timesteps "
            f"{int(self.timestep_map[0])}..{int(self.timestep_map[-1])})"
        )

    @property
    def betas(self) -> torch.Tensor:
        """β per step, float64 (the respaced process's own betas when respaced)."""
        return self._tables["betas"]

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._tables["alphas_cumprod"]

    @property
    def timestep_map(self) -> torch.Tensor:
        """Model timestep (long) of each of this process's steps."""
        return self._tables["timestep_map"]

    @property
    def learns_variance(self) -> bool:
        return self.var_type == "learned_range"

    def model_out_channels(self, in_channels: int) -> int:
        """How many channels the model must output for ``in_channels`` input channels."""
        return 2 * in_channels if self.learns_variance else in_channels

    def table(self, name: str, device: torch.device | str = "cpu") -> torch.Tensor:
        """A float64 table (e.g. ``"alphas_cumprod"``, ``"posterior_variance"``) on ``device``, moved there
        once."""
        device = torch.device(device)
        if device not in self._device_tables:
            self._device_tables[device] = {k: v.to(device) for k, v in self._tables.items()}
        try:
            return self._device_tables[device][name]
        except KeyError:
            raise ValueError(f"unknown table {name!r}; valid: {', '.join(self._tables)}") from None

    def _extract(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # float64 table → gather at t → cast to x's dtype → (N, 1, ..., 1): the official order of operations.
        # index_select, not table[t]: advanced indexing costs milliseconds per call on CPU, index_select µs.
        return per_sample(self.table(name, t.device).index_select(0, t), x)

    def _check_t(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if (
            not isinstance(t, torch.Tensor)
            or t.dtype not in (torch.int64, torch.int32)
            or t.shape != x.shape[:1]
        ):
            raise ValueError(
                f"t must be an integer tensor of shape ({x.shape[0]},) indexing this process's "
                f"{self.num_timesteps} steps, got "
                f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__} "
                f"{tuple(t.shape) if isinstance(t, torch.Tensor) else ''}"
            )
        return t.long()

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The trained model's timesteps for step indices t (identity unless respaced)."""
        return self.table("timestep_map", t.device).index_select(0, t)

    # ------------------------------------------------------------------ respacing
    def respace(self, spec: str | int | Iterable[int] | None) -> GaussianDiffusion:
        """A shorter process keeping the steps chosen by ``spec`` (see ``space_timesteps``), with β recomputed
        so that ᾱ at kept steps is unchanged; the model still receives the original timesteps."""
        if spec is None or spec == "":
            return self
        key = spec if isinstance(spec, (str, int)) else tuple(spec)
        if key not in self._respaced:
            kept = space_timesteps(self.num_timesteps, spec)
            # Even when every step is kept, β is recomputed from ᾱ (as the official SpacedDiffusion always
            # does), so the tables match the official ones to the last bit.
            alphas_cumprod = self._tables["alphas_cumprod"].numpy()
            previous, betas = 1.0, []
            for i in kept:
                betas.append(1.0 - alphas_cumprod[i] / previous)
                previous = alphas_cumprod[i]
            self._respaced[key] = self._new(np.asarray(betas), self._tables["timestep_map"].numpy()[kept])
        return self._respaced[key]

    # ------------------------------------------------------------------ forward process and posterior
    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor):
        """Mean, variance and log-variance of q(x_t | x_0)."""
        t = self._check_t(t, x_start)
        mean = self._extract("sqrt_alphas_cumprod", t, x_start) * x_start
        variance = 1.0 - self._extract("alphas_cumprod", t, x_start)
        log_variance = self._extract("log_one_minus_alphas_cumprod", t, x_start)
        return mean, variance, log_variance

    def q_sample(self, x_start, t, noise=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε."""
        check_sample_tensor(x_start, "x_start")
        t = self._check_t(t, x_start)
        if noise is None:
            noise = randn_like(x_start, generator)
        elif noise.shape != x_start.shape:
            raise ValueError(
                f"noise shape {tuple(noise.shape)} differs from x_start shape {tuple(x_start.shape)}"
            )
        return (
            self._extract("sqrt_alphas_cumprod", t, x_start) * x_start
            + self._extract("sqrt_one_minus_alphas_cumprod", t, x_start) * noise
        )

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        t = self._check_t(t, x_t)
        mean = (
            self._extract("posterior_mean_coef1", t, x_t) * x_start
            + self._extract("posterior_mean_coef2", t, x_t) * x_t
        )
        variance = self._extract("posterior_variance", t, x_t).expand_as(x_t)
        log_variance = self._extract("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return mean, variance, log_variance

    # ------------------------------------------------------------------ reverse process
    def split_model_output(self, model_output: torch.Tensor, x: torch.Tensor):
        """(ε, v) from a model output, v = None for fixed variance; a wrong channel count is a clear error."""
        if not isinstance(model_output, torch.Tensor):
            raise TypeError(f"the model must return a tensor, got {type(model_output).__name__}")
        channels = x.shape[1]
        expected = self.model_out_channels(channels)
        if model_output.shape[0] != x.shape[0] or model_output.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"model output shape {tuple(model_output.shape)} does not match the input {tuple(x.shape)} "
                f"(expected ({x.shape[0]}, {expected}, {', '.join(map(str, x.shape[2:]))}))"
            )
        if model_output.shape[1] != expected:
            hint = (
                f"var_type={self.var_type!r} needs 2·C = {expected} channels (ε, then variance values v); "
                "build the model with learn_sigma=True or use var_type='fixed_small'/'fixed_large'"
                if self.learns_variance
                else f"var_type={self.var_type!r} needs C = {expected} channels (ε only); build the model "
                "with learn_sigma=False or use var_type='learned_range'"
            )
            raise ValueError(
                f"model output has {model_output.shape[1]} channels for a {channels}-channel input: {hint}"
            )
        if self.learns_variance:
            return model_output[:, :channels], model_output[:, channels:]
        return model_output, None

    def predict_xstart_from_eps(self, x_t, t, eps) -> torch.Tensor:
        return (
            self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self._extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def predict_eps_from_xstart(self, x_t, t, pred_xstart) -> torch.Tensor:
        return (self._extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - pred_xstart) / self._extract(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )

    def p_mean_variance_from_output(self, model_output, x, t, clip_denoised: bool = False) -> dict:
        """p(x_{t-1} | x_t) from a model output: dict of mean, variance, log_variance, pred_xstart, eps."""
        t = self._check_t(t, x)
        eps, v = self.split_model_output(model_output, x)
        if v is not None:
            # v ∈ [-1, 1] (not squashed) interpolates between log β̃_t (v = -1) and log β_t (v = +1).
            min_log = self._extract("posterior_log_variance_clipped", t, x)
            max_log = self._extract("log_betas", t, x)
            frac = (v + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        elif self.var_type == "fixed_large":
            variance = self._extract("fixed_large_variance", t, x).expand_as(x)
            log_variance = self._extract("fixed_large_log_variance", t, x).expand_as(x)
        else:
            variance = self._extract("posterior_variance", t, x).expand_as(x)
            log_variance = self._extract("posterior_log_variance_clipped", t, x).expand_as(x)
        pred_xstart = self.predict_xstart_from_eps(x, t, eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "eps": eps,
        }

    def ddpm_step(self, model_output, x, t, noise, clip_denoised: bool = False) -> dict:
        """One ancestral step x_t → x_{t-1} = mean + σ·noise (no noise where t = 0). Returns sample,
        pred_xstart."""
        out = self.p_mean_variance_from_output(model_output, x, t, clip_denoised=clip_denoised)
        nonzero = per_sample(t != 0, x)
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_step(
        self, model_output, x, t, noise=None, eta: float = 0.0, clip_denoised: bool = False
    ) -> dict:
        """One DDIM step x_t → x_{t-1} (η = 0 deterministic; η = 1 has the DDPM posterior's variance).
        The variance channels of a learned-variance model are ignored. Returns sample, pred_xstart."""
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        t = self._check_t(t, x)
        eps, _ = self.split_model_output(model_output, x)
        pred_xstart = self.predict_xstart_from_eps(x, t, eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        eps = self.predict_eps_from_xstart(x, t, pred_xstart)
        alpha_bar = self._extract("alphas_cumprod", t, x)
        alpha_bar_prev = self._extract("alphas_cumprod_prev", t, x)
        sigma = (
            eta
            * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
            * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        )
        sample = pred_xstart * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        if eta > 0:
            if noise is None:
                raise ValueError("ddim_step with eta > 0 needs noise")
            sample = sample + per_sample(t != 0, x) * sigma * noise
        return {"sample": sample, "pred_xstart": pred_xstart}

    # ------------------------------------------------------------------ losses
    def vb_terms_bpd(self, model_output, x_start, x_t, t, clip_denoised: bool = False) -> dict:
        """Per-sample VLB term in bits: KL(q(x_{t-1}|x_t,x_0) ‖ p(x_{t-1}|x_t)) for t > 0, and the discretised
        Gaussian decoder NLL of x_0 at t = 0. Returns output (N,) and pred_xstart."""
        t = self._check_t(t, x_t)
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance_from_output(model_output, x_t, t, clip_denoised=clip_denoised)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(
            2.0
        )
        decoder_nll = -discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
        decoder_nll = mean_flat(decoder_nll) / math.log(2.0)
        return {"output": torch.where(t == 0, decoder_nll, kl), "pred_xstart": out["pred_xstart"]}

    def training_losses(self, model: Model, x_start, t, model_kwargs: dict | None = None, noise=None) -> dict:
        """Per-sample losses at step indices t: ``loss`` (N,), and ``mse``/``vb`` where they apply.

        With learned variance and an MSE loss type this is DiT's hybrid loss ``mse + vb``, the VLB computed
        with the ε channels detached so that it trains only the variance channels. ``noise`` defaults to
        ``torch.randn_like(x_start)``.
        """
        check_sample_tensor(x_start, "x_start")
        t = self._check_t(t, x_start)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(f"t holds step indices outside 0..{self.num_timesteps - 1}")
        return self._training_losses(model, x_start, t, model_kwargs, noise)

    def _training_losses(self, model: Model, x_start, t, model_kwargs, noise) -> dict:
        # Unchecked t: ``loss`` draws valid indices itself, and the range check would cost a device sync.
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        output = model(x_t, self.model_timesteps(t), **(model_kwargs or {}))

        if self.loss_type in ("kl", "rescaled_kl"):
            vb = self.vb_terms_bpd(output, x_start, x_t, t)["output"]
            scale = self.num_timesteps if self.loss_type == "rescaled_kl" else 1.0
            return {"loss": vb * scale, "vb": vb}

        eps, v = self.split_model_output(output, x_t)
        terms = {"mse": mean_flat((noise - eps) ** 2)}
        if v is not None:
            frozen = torch.cat([eps.detach(), v], dim=1)
            vb = self.vb_terms_bpd(frozen, x_start, x_t, t)["output"]
            if self.loss_type == "rescaled_mse":
                vb = vb * (self.num_timesteps / 1000.0)
            terms["vb"] = vb
            terms["loss"] = terms["mse"] + vb
        else:
            terms["loss"] = terms["mse"]
        return terms

    def sample_timesteps(
        self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """n step indices drawn uniformly from 0..T-1 (long tensor)."""
        return torch.randint(0, self.num_timesteps, (n,), device=device, generator=generator)

    # ------------------------------------------------------------------ trainer entry point (``loss``)
    def _draw_timesteps(self, x0, generator):
        return self.sample_timesteps(x0.shape[0], x0.device, generator)

    def _losses(self, model, x0, t, model_kwargs, noise, drawn: bool) -> dict:
        if drawn:  # valid by construction: skip the range check (a device sync)
            return self._training_losses(model, x0, t, model_kwargs, noise)
        return self.training_losses(model, x0, t, model_kwargs=model_kwargs, noise=noise)
