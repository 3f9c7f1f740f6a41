"""Classical conditional normalization for image feature maps (N, C, H, W): AdaIN, conditional BatchNorm,
FiLM, SPADE and ADM's AdaGN.

These are the convolutional ancestors of DiT's adaLN: each normalizes (or not) and then applies a
per-channel (or, for SPADE, per-pixel) scale and shift computed from a condition. The token-domain adaLN
family lives in ``ditlab.nn.norms``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "adain",
    "AdaIN",
    "StyleAdaIN",
    "ConditionalBatchNorm2d",
    "ClassConditionalBatchNorm2d",
    "FiLM",
    "SPADE",
    "AdaGN",
]


# ----------------------------------------------------------------------------------------------------------
# Shared checks and helpers
# ----------------------------------------------------------------------------------------------------------


def _check_feature_map(x: Tensor, channels: int | None, layer: str, name: str = "x") -> None:
    """Raise a ValueError unless ``x`` is a (N, C, H, W) tensor with ``channels`` channels."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{layer}: {name} must be a (N, C, H, W) feature map, got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{layer}: {name} has {x.shape[1]} channels but the layer was built for {channels}; "
            f"build it with num_features={x.shape[1]} or fix the input"
        )


def _check_condition(cond: Tensor, batch: int, dim: int, layer: str, name: str = "cond") -> None:
    """Raise a ValueError unless ``cond`` is a (N, dim) float tensor matching the feature batch."""
    if not isinstance(cond, Tensor):
        raise TypeError(f"{layer}: {name} must be a torch.Tensor, got {type(cond).__name__}")
    if cond.ndim != 2 or cond.shape[1] != dim:
        raise ValueError(f"{layer}: {name} must have shape (N, {dim}), got {tuple(cond.shape)}")
    if cond.shape[0] != batch:
        raise ValueError(f"{layer}: {name} has batch {cond.shape[0]} but the feature map has batch {batch}")
    if not cond.is_floating_point():
        raise TypeError(f"{layer}: {name} must be a floating-point tensor, got dtype {cond.dtype}")


def _check_positive(value: int, name: str, layer: str) -> None:
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{layer}: {name} must be a positive int, got {value!r}")


def _per_channel(params: Tensor) -> tuple[Tensor, Tensor]:
    """Split a (N, 2C) projection into two (N, C, 1, 1) maps that broadcast over H, W."""
    first, second = params.chunk(2, dim=1)  # (N, C) each
    return first[:, :, None, None], second[:, :, None, None]


def _instance_stats(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Per-instance, per-channel mean and std over H x W (population variance), each (N, C, 1, 1)."""
    var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
    return mean, torch.sqrt(var + eps)


# ----------------------------------------------------------------------------------------------------------
# AdaIN
# ----------------------------------------------------------------------------------------------------------


def adain(content: Tensor, style: Tensor, eps: float = 1e-5) -> Tensor:
    """Adaptive instance normalization (Huang & Belongie, ICCV 2017).

    ``AdaIN(x, y) = sigma(y) * (x - mu(x)) / sigma(x) + mu(y)`` with mu, sigma taken per instance and per
    channel over the spatial positions. ``style`` may have any spatial size and a batch of 1 (shared by all
    contents) or N. ``eps`` only stabilizes the division by sigma(x); the style std is used as is.
    """
    _check_feature_map(content, None, "adain", "content")
    _check_feature_map(style, content.shape[1], "adain", "style")
    if style.shape[0] not in (1, content.shape[0]):
        raise ValueError(
            f"adain: style batch must be 1 or equal the content batch {content.shape[0]}, "
            f"got {style.shape[0]}"
        )
    c_mean, c_std = _instance_stats(content, eps)  # (N, C, 1, 1)
    s_var, s_mean = torch.var_mean(style, dim=(2, 3), keepdim=True, correction=0)  # (N or 1, C, 1, 1)
    return (content - c_mean) / c_std * s_var.sqrt() + s_mean  # (N, C, H, W)


class AdaIN(nn.Module):
    """Adaptive instance normalization (Huang & Belongie, ICCV 2017); no learnable parameters.

    ``forward(x, style)``: x (N, C, H, W), style (N or 1, C, H', W'); the output has, per instance and
    channel, the mean and std of the style. See :func:`adain`.
    """

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        return adain(x, style, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class StyleAdaIN(nn.Module):
    """StyleGAN's AdaIN (Karras et al., CVPR 2019): ``y_s * (x - mu(x)) / sigma(x) + y_b``.

    ``(y_s, y_b) = affine(w)`` per channel, from a style vector w (N, w_dim). As in StyleGAN the bias of the
    y_s half starts at 1, so a zero w gives plain instance normalization.
    """

    def __init__(self, num_features: int, w_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        _check_positive(num_features, "num_features", "StyleAdaIN")
        _check_positive(w_dim, "w_dim", "StyleAdaIN")
        self.num_features, self.w_dim, self.eps = num_features, w_dim, eps
        self.affine = nn.Linear(w_dim, 2 * num_features)  # -> [y_s | y_b]
        with torch.no_grad():
            self.affine.bias[:num_features].fill_(1.0)
            self.affine.bias[num_features:].zero_()

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        _check_feature_map(x, self.num_features, "StyleAdaIN")
        _check_condition(w, x.shape[0], self.w_dim, "StyleAdaIN", "w")
        y_s, y_b = _per_channel(self.affine(w))  # (N, C, 1, 1) each
        mean, std = _instance_stats(x, self.eps)  # (N, C, 1, 1)
        return y_s * (x - mean) / std + y_b  # (N, C, H, W)

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, w_dim={self.w_dim}, eps={self.eps}"


# ----------------------------------------------------------------------------------------------------------
# Conditional BatchNorm
# ----------------------------------------------------------------------------------------------------------


class _ConditionalBatchNormBase(nn.Module):
    """BatchNorm with ``gamma_hat = gamma + dgamma(c)``, ``beta_hat = beta + dbeta(c)``.

    Subclasses implement ``_delta(cond, batch) -> (N, 2C)``; its output layer starts at zero so the layer
    begins exactly as a plain BatchNorm2d (gamma = 1, beta = 0, running statistics tracked as usual).
    """

    _layer = "ConditionalBatchNorm2d"

    def __init__(self, num_features: int, eps: float, momentum: float | None) -> None:
        super().__init__()
        _check_positive(num_features, "num_features", self._layer)
        self.num_features = num_features
        # Normalization and running statistics without affine; the conditioned affine is applied below.
        self.bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=False)
        self.weight = nn.Parameter(torch.ones(num_features))  # gamma
        self.bias = nn.Parameter(torch.zeros(num_features))  # beta

    def _delta(self, cond: Tensor, batch: int) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        _check_feature_map(x, self.num_features, self._layer)
        d_gamma, d_beta = _per_channel(self._delta(cond, x.shape[0]))  # (N, C, 1, 1) each
        gamma = self.weight[None, :, None, None] + d_gamma
        beta = self.bias[None, :, None, None] + d_beta
        return self.bn(x) * gamma + beta  # (N, C, H, W)


class ConditionalBatchNorm2d(_ConditionalBatchNormBase):
    """Conditional BatchNorm (de Vries et al., NeurIPS 2017, "Modulating early visual processing by
    language").

    ``CBN(x, e) = (gamma + dgamma(e)) * (x - E[x]) / sqrt(Var[x] + eps) + (beta + dbeta(e))``, with
    ``[dgamma, dbeta]`` an MLP (one hidden ReLU layer of ``hidden_dim``, or a single linear map when
    ``hidden_dim`` is None) of the condition vector e (N, cond_dim). The MLP's last layer is zero-initialized
    so the deltas start at 0 and the layer equals BatchNorm2d at initialization.
    """

    def __init__(
        self,
        num_features: int,
        cond_dim: int,
        hidden_dim: int | None = None,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
    ) -> None:
        super().__init__(num_features, eps, momentum)
        _check_positive(cond_dim, "cond_dim", self._layer)
        if hidden_dim is not None:
            _check_positive(hidden_dim, "hidden_dim", self._layer)
        self.cond_dim = cond_dim
        out = nn.Linear(cond_dim if hidden_dim is None else hidden_dim, 2 * num_features)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        layers = [] if hidden_dim is None else [nn.Linear(cond_dim, hidden_dim), nn.ReLU()]
        self.delta = nn.Sequential(*layers, out)  # (N, cond_dim) -> (N, 2C) = [dgamma | dbeta]

    def _delta(self, cond: Tensor, batch: int) -> Tensor:
        _check_condition(cond, batch, self.cond_dim, self._layer)
        return self.delta(cond)


class ClassConditionalBatchNorm2d(_ConditionalBatchNormBase):
    """Class-conditional BatchNorm: per-class tables of (dgamma, dbeta) added to the shared (gamma, beta).

    The one-hot special case of :class:`ConditionalBatchNorm2d` (as in Dumoulin et al.'s conditional
    instance norm, ICLR 2017, and the class-conditional BN of projection-discriminator GANs); the tables
    start at zero. ``forward(x, labels)`` with integer labels (N,) in [0, num_classes).
    """

    _layer = "ClassConditionalBatchNorm2d"

    def __init__(
        self, num_features: int, num_classes: int, eps: float = 1e-5, momentum: float | None = 0.1
    ) -> None:
        super().__init__(num_features, eps, momentum)
        _check_positive(num_classes, "num_classes", self._layer)
        self.num_classes = num_classes
        self.delta = nn.Embedding(num_classes, 2 * num_features)  # row k = [dgamma_k | dbeta_k]
        nn.init.zeros_(self.delta.weight)

    def _delta(self, labels: Tensor, batch: int) -> Tensor:
        if not isinstance(labels, Tensor) or labels.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{self._layer}: labels must be an integer (long) tensor of shape (N,)")
        if labels.shape != (batch,):
            raise ValueError(f"{self._layer}: labels must have shape ({batch},), got {tuple(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"{self._layer}: labels must lie in [0, {self.num_classes}), got {labels.tolist()}"
            )
        return self.delta(labels)  # (N, 2C)


# ----------------------------------------------------------------------------------------------------------
# FiLM
# ----------------------------------------------------------------------------------------------------------


class FiLM(nn.Module):
    """Feature-wise linear modulation (Perez et al., AAAI 2018): ``FiLM(F_c) = gamma_c * F_c + beta_c``.

    ``(gamma, beta) = Linear(cond)`` per sample and channel, broadcast over every trailing (spatial) dim of
    x (N, C, *). No normalization is included: the paper applies FiLM after a BatchNorm without affine.
    With ``identity_init`` (default) the projection starts at gamma = 1, beta = 0, i.e. the identity map;
    otherwise it keeps PyTorch's default Linear initialization.
    """

    def __init__(self, num_features: int, cond_dim: int, identity_init: bool = True) -> None:
        super().__init__()
        _check_positive(num_features, "num_features", "FiLM")
        _check_positive(cond_dim, "cond_dim", "FiLM")
        self.num_features, self.cond_dim = num_features, cond_dim
        self.proj = nn.Linear(cond_dim, 2 * num_features)  # -> [gamma | beta]
        if identity_init:
            with torch.no_grad():
                self.proj.weight.zero_()
                self.proj.bias[:num_features].fill_(1.0)
                self.proj.bias[num_features:].zero_()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim < 2 or x.shape[1] != self.num_features:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"FiLM: x must be (N, {self.num_features}, ...), got {shape}")
        _check_condition(cond, x.shape[0], self.cond_dim, "FiLM")
        gamma, beta = self.proj(cond).chunk(2, dim=1)  # (N, C) each
        trailing = (1,) * (x.ndim - 2)
        return gamma.view(*gamma.shape, *trailing) * x + beta.view(*beta.shape, *trailing)  # (N, C, *)

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, cond_dim={self.cond_dim}"


# ----------------------------------------------------------------------------------------------------------
# SPADE
# ----------------------------------------------------------------------------------------------------------


class SPADE(nn.Module):
    """Spatially-adaptive normalization (Park et al., CVPR 2019).

    ``SPADE(h, m) = norm(h) * (1 + gamma(m)) + beta(m)`` with a parameter-free ``norm`` (BatchNorm, or
    InstanceNorm with ``norm="instance"``) and spatially varying gamma, beta (N, C, H, W). The segmentation
    map m is resized (nearest) to h's size, then ``Conv(label_nc -> hidden, k) + ReLU`` feeds two
    ``Conv(hidden -> C, k)`` heads; ``hidden = 128`` and ``k = 3`` as in the official code. m is
    either a float map (N, label_nc, H', W') (one-hot or soft) or an integer label map (N, H', W'), one-hot
    encoded here.
    """

    _NORMS = ("batch", "instance")

    def __init__(
        self,
        num_features: int,
        label_nc: int,
        hidden: int = 128,
        kernel_size: int = 3,
        norm: str = "batch",
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        for name, value in (("num_features", num_features), ("label_nc", label_nc), ("hidden", hidden)):
            _check_positive(value, name, "SPADE")
        if not isinstance(kernel_size, int) or kernel_size <= 0 or kernel_size % 2 == 0:
            raise ValueError(f"SPADE: kernel_size must be a positive odd int, got {kernel_size!r}")
        if norm not in self._NORMS:
            raise ValueError(f"SPADE: unknown norm {norm!r}; valid: {', '.join(self._NORMS)}")
        self.num_features, self.label_nc, self.norm_type = num_features, label_nc, norm
        if norm == "batch":
            self.param_free_norm = nn.BatchNorm2d(num_features, eps=eps, affine=False)
        else:
            self.param_free_norm = nn.InstanceNorm2d(num_features, eps=eps, affine=False)
        pad = kernel_size // 2
        self.shared = nn.Sequential(nn.Conv2d(label_nc, hidden, kernel_size, padding=pad), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, num_features, kernel_size, padding=pad)
        self.beta = nn.Conv2d(hidden, num_features, kernel_size, padding=pad)

    def _segmap(self, segmap: Tensor, batch: int) -> Tensor:
        """Validate the map and return it as float (N, label_nc, H', W')."""
        if not isinstance(segmap, Tensor):
            raise TypeError(f"SPADE: segmap must be a torch.Tensor, got {type(segmap).__name__}")
        if segmap.shape[:1] != (batch,):
            raise ValueError(f"SPADE: segmap batch must be {batch}, got shape {tuple(segmap.shape)}")
        if not segmap.is_floating_point():
            if segmap.ndim != 3:
                raise ValueError(f"SPADE: an integer label map must be (N, H, W), got {tuple(segmap.shape)}")
            if segmap.numel() and (segmap.min() < 0 or segmap.max() >= self.label_nc):
                raise ValueError(f"SPADE: label map values must lie in [0, {self.label_nc})")
            return F.one_hot(segmap.long(), self.label_nc).permute(0, 3, 1, 2).float()  # (N, L, H', W')
        if segmap.ndim != 4 or segmap.shape[1] != self.label_nc:
            raise ValueError(
                f"SPADE: a float segmap must be (N, {self.label_nc}, H, W), got {tuple(segmap.shape)}"
            )
        return segmap

    def forward(self, x: Tensor, segmap: Tensor) -> Tensor:
        _check_feature_map(x, self.num_features, "SPADE")
        m = self._segmap(segmap, x.shape[0]).to(dtype=x.dtype)
        m = F.interpolate(m, size=x.shape[2:], mode="nearest")  # (N, L, H, W)
        actv = self.shared(m)  # (N, hidden, H, W)
        return self.param_free_norm(x) * (1 + self.gamma(actv)) + self.beta(actv)  # (N, C, H, W)

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, label_nc={self.label_nc}, norm={self.norm_type!r}"


# ----------------------------------------------------------------------------------------------------------
# AdaGN (ADM)
# ----------------------------------------------------------------------------------------------------------


class AdaGN(nn.Module):
    """Adaptive GroupNorm of ADM (Dhariwal & Nichol, NeurIPS 2021, "Diffusion Models Beat GANs").

    ``AdaGN(h, e) = GroupNorm(h) * (1 + y_s) + y_b`` with ``[y_s, y_b] = Linear(SiLU(e))`` from the timestep
    (+ class) embedding e (N, emb_dim); this is ADM's ``use_scale_shift_norm`` path. GroupNorm has 32 groups
    by default and its own affine, and is computed in float32 as in ADM. ``zero_init`` starts the projection
    at zero so the layer begins as plain GroupNorm (ADM itself keeps the default init).
    """

    def __init__(
        self,
        num_features: int,
        emb_dim: int,
        num_groups: int = 32,
        eps: float = 1e-5,
        affine: bool = True,
        zero_init: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("num_features", num_features), ("emb_dim", emb_dim), ("num_groups", num_groups)):
            _check_positive(value, name, "AdaGN")
        if num_features % num_groups:
            fit = max(g for g in range(1, num_groups + 1) if num_features % g == 0)
            raise ValueError(
                f"AdaGN: num_groups={num_groups} does not divide num_features={num_features}; "
                f"pass a divisor of {num_features}, e.g. num_groups={fit}"
            )
        self.num_features, self.emb_dim = num_features, emb_dim
        self.norm = nn.GroupNorm(num_groups, num_features, eps=eps, affine=affine)
        self.proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * num_features))  # -> [y_s | y_b]
        if zero_init:
            nn.init.zeros_(self.proj[1].weight)
            nn.init.zeros_(self.proj[1].bias)

    def forward(self, h: Tensor, emb: Tensor, pixel: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """h (N, C, H, W), emb (N, emb_dim); `pixel` = (scale, shift) maps (N, C, H, W) added to the per-channel
        ones (SPADE's spatially varying form, e.g. from a layout), or None."""
        _check_feature_map(h, self.num_features, "AdaGN", "h")
        _check_condition(emb, h.shape[0], self.emb_dim, "AdaGN", "emb")
        scale, shift = _per_channel(self.proj(emb))  # (N, C, 1, 1) each
        if pixel is not None:
            for name, part in zip(("scale", "shift"), pixel):
                if not isinstance(part, Tensor) or part.shape != h.shape:
                    got = tuple(part.shape) if isinstance(part, Tensor) else type(part).__name__
                    raise ValueError(
                        f"AdaGN: the pixel {name} must have h's shape {tuple(h.shape)}, got {got}"
                    )
            scale, shift = scale + pixel[0], shift + pixel[1]  # (N, C, H, W) each
        gn = self.norm  # float32 statistics as in ADM, whatever the dtype of h and of the module
        weight = None if gn.weight is None else gn.weight.float()
        bias = None if gn.bias is None else gn.bias.float()
        normed = F.group_norm(h.float(), gn.num_groups, weight, bias, gn.eps).to(h.dtype)  # (N, C, H, W)
        return normed * (1 + scale) + shift

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, emb_dim={self.emb_dim}"
