"""Classifier-free guidance around any model: one batched conditional + unconditional forward per step.

out = uncond + scale·(cond − uncond) on the prediction channels (ε or velocity). Variance channels of a
learned-variance model are never guided: they are taken from the conditional branch. ``channels=3``
reproduces the official DiT quirk (guide only the first 3 of 4 latent channels; the rest, too, come from the
conditional branch); it is off by default.

Options, each off by default:
- ``interval``: guide only in a range of model times (Kynkäänniemi et al., 2024), plain conditional elsewhere.
- ``rescale`` φ: CFG rescale of Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed"
  (2024, §3.4): the guided output is scaled per sample to the standard deviation of the conditional one,
  x_r = x_cfg·std(cond)/std(x_cfg), and mixed back, φ·x_r + (1 − φ)·x_cfg (they use φ = 0.7); it undoes the
  over-exposure (too large a norm) that large scales cause.
- ``guide``: autoguidance (Karras et al., 2024, "Guiding a Diffusion Model with a Bad Version of Itself"):
  a second, weaker model (smaller, or an earlier checkpoint of the same run) takes the unconditional branch's
  place, with the same conditioning: out = guide + scale·(model − guide). Two forwards of N rows per step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["GuidedModel", "rescaled"]


class GuidedModel:
    """Wraps ``model(x, t, **kwargs)`` so that calling it returns the guided output for x (N, C, *spatial).

    ``cond`` / ``uncond``: model kwargs of the two branches. Keys missing from ``uncond`` are shared with the
    conditional branch (e.g. a mask); tensor kwargs are concatenated along dim 0 once, here, not per step;
    non-tensor kwargs are passed as they are and must agree between branches.
    ``interval``: (t_lo, t_hi) in model time units (0..1000); outside it (inclusive bounds) only the
    conditional branch runs, costing one N-row forward instead of 2N.
    """

    def __init__(
        self,
        model: Callable[..., torch.Tensor],
        cond: dict | None = None,
        uncond: dict | None = None,
        *,
        scale: float = 1.0,
        interval: tuple[float, float] | None = None,
        channels: int | None = None,
        rescale: float = 0.0,
        guide: Callable[..., torch.Tensor] | None = None,
    ):
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, t, **kwargs), got {type(model).__name__}")
        for name, kwargs in (("cond", cond), ("uncond", uncond)):
            if kwargs is not None and not isinstance(kwargs, dict):
                raise TypeError(f"{name} must be a dict of model kwargs or None, got {type(kwargs).__name__}")
        self.model = model
        self.cond = dict(cond or {})
        self.scale = float(scale)
        if interval is not None:
            if len(interval) != 2 or float(interval[0]) > float(interval[1]):
                raise ValueError(
                    f"guidance_interval must be (t_lo, t_hi) with t_lo <= t_hi, got {interval!r}"
                )
            interval = (float(interval[0]), float(interval[1]))
        self.interval = interval
        if channels is not None and (
            not isinstance(channels, int) or isinstance(channels, bool) or channels < 1
        ):
            raise ValueError(f"guidance_channels must be a positive integer or None, got {channels!r}")
        self.channels = channels
        if not 0.0 <= float(rescale) <= 1.0:
            raise ValueError(
                f"guidance_rescale must be in [0, 1] (0 = off, Lin et al. use 0.7), got {rescale!r}"
            )
        self.rescale = float(rescale)
        if guide is not None and not callable(guide):
            raise TypeError(
                f"guide must be a model callable as guide(x, t, **kwargs), got {type(guide).__name__}"
            )
        self.guide = guide if self.scale != 1.0 else None

        self.both: dict | None = None
        if self.guide is not None:  # autoguidance: the guide runs on the conditional kwargs, no uncond branch
            self.both = self.cond
        elif self.scale != 1.0:
            if uncond is None:
                raise ValueError(
                    "guidance_scale != 1 needs uncond (the unconditional branch's model kwargs, e.g. "
                    "{'y': null labels})"
                )
            extra = set(uncond) - set(self.cond)
            if extra:
                raise ValueError(
                    f"uncond has keys not in cond: {sorted(extra)}; give every branch the same kwargs"
                )
            self.both = {}
            for key, value in self.cond.items():
                other = uncond.get(key, value)
                if isinstance(value, torch.Tensor) and value.ndim > 0:
                    if not isinstance(other, torch.Tensor) or other.shape != value.shape:
                        raise ValueError(
                            f"cond[{key!r}] and uncond[{key!r}] must be tensors of the same shape"
                        )
                    self.both[key] = torch.cat([value, other], dim=0)
                else:
                    if other is not value and other != value:
                        raise ValueError(
                            f"non-tensor kwarg {key!r} differs between cond and uncond; it cannot be batched"
                        )
                    self.both[key] = value

    def guides_at(self, t_value: float | None) -> bool:
        """Whether a step at model time ``t_value`` runs the guided (2N-row) forward (None: no interval)."""
        if self.both is None:
            return False
        return self.interval is None or self.interval[0] <= t_value <= self.interval[1]

    def __call__(self, x: torch.Tensor, t_model: torch.Tensor, t_value: float | None = None) -> torch.Tensor:
        """Model output for x at model times ``t_model`` (N,), the ``model_fn`` every sampler takes.
        ``t_value``, the step's time as a number, is read from ``t_model`` when not given; only a guidance
        interval needs it (one device sync per step then)."""
        if t_value is None and self.interval is not None and self.both is not None:
            t_value = float(t_model.reshape(-1)[0])
        if not self.guides_at(t_value):
            return self.model(x, t_model, **self.cond)
        channels = x.shape[1]
        cond_out, uncond_out = self._branches(x, t_model)
        k = channels if self.channels is None else self.channels
        if k > channels:
            raise ValueError(f"guidance_channels={k} exceeds the {channels} input channels")
        guided = uncond_out[:, :k] + self.scale * (cond_out[:, :k] - uncond_out[:, :k])
        if self.rescale > 0:
            guided = rescaled(guided, cond_out[:, :k], self.rescale)
        if k == cond_out.shape[1]:
            return guided
        # Unguided ε channels (the quirk) and any variance channels come from the conditional branch.
        return torch.cat([guided, cond_out[:, k:]], dim=1)

    def _branches(self, x: torch.Tensor, t_model: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(conditional output, the output it is pushed away from): the guide's, or the unconditional
        branch's from one batched 2N-row forward."""
        n = x.shape[0]
        if self.guide is not None:
            cond_out = self.model(x, t_model, **self.cond)
            guide_out = self.guide(x, t_model, **self.cond)
            if not isinstance(guide_out, torch.Tensor) or guide_out.shape != cond_out.shape:
                raise ValueError(
                    f"the guide model returned {getattr(guide_out, 'shape', type(guide_out).__name__)}, the "
                    f"model {tuple(cond_out.shape)}: autoguidance needs a guide with the same outputs"
                )
            return cond_out, guide_out
        out = self.model(torch.cat([x, x]), torch.cat([t_model, t_model]), **self.both)  # (2N, C or 2C, ...)
        if not isinstance(out, torch.Tensor) or out.shape[0] != 2 * n:
            raise ValueError(
                f"the guided forward got {2 * n} rows and returned "
                f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}"
            )
        return out[:n], out[n:]


def rescaled(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """CFG rescale (Lin et al., 2024, eq. 15-16): φ·guided·std(cond)/std(guided) + (1 − φ)·guided, the
    standard deviations per sample over all other axes."""
    dims = tuple(range(1, guided.ndim))
    ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp_min(1e-12)
    return phi * guided * ratio + (1.0 - phi) * guided
