"""ditlab's own autoencoders, as Latent Diffusion trains them: a KL-regularised VAE and a VQ-VAE.

    ae = build_autoencoder(AutoencoderConfig(kind="kl", downsample=4, latent_channels=4))
    z = ae.encode(images)          # (N, 4, H/4, W/4), already (raw - shift) * scale
    x = ae.decode(z)               # (N, 3, H, W)

Both share the conv encoder/decoder of ``ditlab.autoencoders.nets`` (diffusers-compatible names). The KL-VAE's
encoder gives a diagonal Gaussian posterior (mean, log-variance; diffusers ``AutoencoderKL``); the VQ-VAE's
gives continuous latents that its decoder snaps to the nearest codebook vector (diffusers ``VQModel``: the
diffusion model works on the pre-quantisation latents, as LDM does). ``scale`` and ``shift`` live in the
config, so a saved autoencoder carries the latent normalisation it was trained with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ditlab.configs import DictConfig

from .base import Autoencoder
from .nets import Decoder, Encoder

__all__ = [
    "AUTOENCODER_KINDS",
    "AutoencoderConfig",
    "KLAutoencoder",
    "VQAutoencoder",
    "VectorQuantizer",
    "build_autoencoder",
]

AUTOENCODER_KINDS = ("kl", "vq")


def default_widths(downsample: int, base: int) -> list[int]:
    """Block widths for a downsampling factor: base, 2 base, then 4 base (LDM's 1, 2, 4, 4 multipliers)."""
    levels = int(math.log2(downsample)) + 1
    return [base * min(2**i, 4) for i in range(levels)]


@dataclass
class AutoencoderConfig(DictConfig):
    """The architecture and latent normalisation of a ditlab autoencoder (saved with its weights)."""

    _what = "autoencoder option"

    kind: str = "kl"  # kl (Gaussian posterior) | vq (codebook)
    image_channels: int = 3
    latent_channels: int = 4
    downsample: int = 8  # f: latents are (H/f, W/f); a power of 2
    block_out_channels: list[int] = field(default_factory=list)  # per level; [] = default_widths(f, 64)
    layers_per_block: int = 2
    norm_groups: int = 32
    mid_attention: bool = True
    scale: float = 1.0  # latents = (raw - shift) * scale; set from data after training
    shift: float = 0.0
    # --- VQ only ---
    codebook_size: int = 256
    codebook_ema: bool = True  # EMA codebook updates (VQ-VAE appendix); False: the codebook loss
    codebook_decay: float = 0.99
    commitment: float = 0.25  # beta of the commitment loss
    dead_code_threshold: float = 0.03  # restart codes whose usage EMA (in uses per step) falls below this

    def __post_init__(self) -> None:
        if self.kind not in AUTOENCODER_KINDS:
            raise ValueError(f"unknown autoencoder kind {self.kind!r}; choose one of: kl, vq")
        f = self.downsample
        if not isinstance(f, int) or f < 1 or f & (f - 1):
            raise ValueError(f"downsample must be a power of 2 (e.g. 4 or 8), got {f!r}")
        if not self.block_out_channels:
            self.block_out_channels = default_widths(f, 64)
        self.block_out_channels = [int(w) for w in self.block_out_channels]
        if 2 ** (len(self.block_out_channels) - 1) != f:
            raise ValueError(
                f"{len(self.block_out_channels)} block widths give a factor "
                f"{2 ** (len(self.block_out_channels) - 1)}, not downsample {f}: pass log2(f)+1 widths"
            )
        bad = [w for w in self.block_out_channels if w % self.norm_groups]
        if bad:
            raise ValueError(f"block widths {bad} are not divisible by norm_groups {self.norm_groups}")
        for name in ("image_channels", "latent_channels", "layers_per_block", "codebook_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if not self.scale > 0:
            raise ValueError(f"scale must be positive, got {self.scale!r}")


def _codec(cfg: AutoencoderConfig, encoder_out: int) -> tuple[Encoder, Decoder]:
    common = dict(
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        groups=cfg.norm_groups,
        mid_attention=cfg.mid_attention,
    )
    encoder = Encoder(cfg.image_channels, encoder_out, **common)
    decoder = Decoder(cfg.latent_channels, cfg.image_channels, **common)
    return encoder, decoder


class _LDMAutoencoder(Autoencoder):
    """What the two kinds share: geometry and normalisation from the config, the checks, the decoder."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.image_channels = cfg.image_channels
        self.latent_channels = cfg.latent_channels
        self.downsample_factor = cfg.downsample
        self.source = "unsaved"  # set to the file path when loaded

    @property
    def scale(self) -> float:
        return self.config.scale

    @scale.setter
    def scale(self, value: float) -> None:
        self.config.scale = float(value)

    @property
    def shift(self) -> float:
        return self.config.shift

    @shift.setter
    def shift(self, value: float) -> None:
        self.config.shift = float(value)

    def raw_latents(self, images: Tensor) -> Tensor:
        """What the encoder gives before scaling (KL: the posterior mean; VQ: pre-quantisation latents)."""
        raise NotImplementedError

    def decode_raw(self, raw: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, latents: Tensor) -> Tensor:
        self._check_latents(latents)
        return self.decode_raw(latents / self.scale + self.shift)  # (N, C, h*f, w*f)


class KLAutoencoder(_LDMAutoencoder):
    """LDM's KL-VAE (diffusers ``AutoencoderKL`` layout): encode draws from N(mean, std^2) by default."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__(cfg)
        c = cfg.latent_channels
        self.encoder, self.decoder = _codec(cfg, 2 * c)
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1)
        self.post_quant_conv = nn.Conv2d(c, c, 1)
        self.sample = True

    def posterior(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Raw posterior (mean, logvar), each (N, c, H/f, W/f); logvar clamped to [-30, 20] as LDM."""
        moments = self.quant_conv(self.encoder(images))  # (N, 2c, h, w)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def raw_latents(self, images: Tensor) -> Tensor:
        return self.posterior(images)[0]

    def encode_moments(self, images: Tensor) -> tuple[Tensor, Tensor]:
        self._check_images(images)
        mean, logvar = self.posterior(images)
        return (mean - self.shift) * self.scale, torch.exp(0.5 * logvar) * self.scale

    def decode_raw(self, raw: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(raw))

    def reconstruct(
        self, images: Tensor, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> tuple[Tensor, dict]:
        """Training pass: (reconstruction from a posterior draw, {"kl": per-sample KL to N(0, I) (N,)}).

        The draw uses ``noise`` (N, c, h, w) when given, else fresh normals from ``generator``."""
        mean, logvar = self.posterior(images)
        std = torch.exp(0.5 * logvar)
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        noise = noise.to(mean.device, mean.dtype)
        recon = self.decode_raw(mean + std * noise)
        kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)  # (N,)
        return recon, {"kl": kl}


class VectorQuantizer(nn.Module):
    """Nearest-codebook-vector quantisation with a straight-through gradient (VQ-VAE, van den Oord et al.).

    The codebook learns by EMA updates of the assigned vectors (``ema=True``) or by the codebook loss
    ||sg[z] - e||^2; the encoder always gets the commitment loss beta ||z - sg[e]||^2. A code whose usage
    (an EMA of uses per step) falls below ``dead_threshold`` is restarted at a random encoder output of the
    current batch. Under torchrun the EMA statistics are summed over ranks and restarts come from rank 0,
    so every rank keeps the same codebook.
    """

    def __init__(
        self, size: int, dim: int, *, ema: bool, decay: float, beta: float, dead_threshold: float
    ) -> None:
        super().__init__()
        self.size, self.dim, self.ema, self.decay, self.beta = size, dim, ema, decay, beta
        self.dead_threshold = dead_threshold
        self.embedding = nn.Embedding(size, dim)
        self.embedding.weight.data.uniform_(-1.0 / size, 1.0 / size)
        self.embedding.weight.requires_grad_(not ema)
        self.register_buffer("usage", torch.ones(size))  # EMA of uses per step; starts "alive"
        if ema:
            self.register_buffer("ema_count", torch.ones(size))
            self.register_buffer("ema_sum", self.embedding.weight.data.clone())

    def nearest(self, flat: Tensor) -> Tensor:
        """Index (M,) of the closest codebook vector to each row of ``flat`` (M, dim)."""
        codebook = self.embedding.weight  # (K, dim)
        dist2 = flat.square().sum(1, keepdim=True) - 2 * flat @ codebook.t() + codebook.square().sum(1)
        return dist2.argmin(dim=1)

    def forward(self, z: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        """z (N, dim, h, w) -> (quantised z with straight-through gradient, stats); training updates."""
        n, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)  # (M, dim)
        index = self.nearest(flat.detach())  # (M,)
        quant = self.embedding(index).view(n, h, w, c).permute(0, 3, 1, 2)  # (N, dim, h, w)
        stats: dict = {}
        if self.training:
            loss = self.beta * F.mse_loss(z, quant.detach())  # commitment: the encoder moves to its code
            if not self.ema:
                loss = loss + F.mse_loss(quant, z.detach())  # codebook: the code moves to the encoder
            onehot = F.one_hot(index, self.size).to(flat.dtype)  # (M, K)
            counts = onehot.sum(0)  # (K,)
            probs = counts / counts.sum()
            stats["vq_loss"] = loss
            stats["perplexity"] = torch.exp(-(probs * torch.log(probs + 1e-10)).sum()).detach()
            stats["codebook_usage"] = (counts > 0).float().mean().detach()
            self._update(flat.detach(), onehot, counts, generator, stats)
        quant = z + (quant - z).detach()  # straight-through: the decoder's gradient reaches the encoder
        return quant, stats

    @torch.no_grad()
    def _update(self, flat: Tensor, onehot: Tensor, counts: Tensor, generator, stats: dict) -> None:
        sums = onehot.t() @ flat  # (K, dim)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.usage.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if self.ema:
            self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            total = self.ema_count.sum()
            smoothed = (self.ema_count + 1e-5) / (total + self.size * 1e-5) * total  # Laplace smoothing
            self.embedding.weight.data.copy_(self.ema_sum / smoothed[:, None])
        stats["restarts"] = float(self.restart_dead_codes(flat, generator))

    @torch.no_grad()
    def restart_dead_codes(self, flat: Tensor, generator: torch.Generator | None = None) -> int:
        """Move every code with usage below the threshold onto a random row of ``flat`` (M, dim)."""
        dead = (self.usage < self.dead_threshold).nonzero().flatten()  # (D,)
        if dead.numel() == 0:
            return 0
        pick = torch.randint(0, flat.shape[0], (dead.numel(),), generator=generator).to(flat.device)
        fresh = flat[pick]  # (D, dim)
        weight = self.embedding.weight.data
        weight[dead] = fresh
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(weight, 0)  # one codebook everywhere: rank 0's restarts win
        self.usage[dead] = 1.0
        if self.ema:
            self.ema_count[dead] = 1.0
            self.ema_sum[dead] = weight[dead]
        return int(dead.numel())


class VQAutoencoder(_LDMAutoencoder):
    """A VQ-VAE (diffusers ``VQModel`` layout): latents are the encoder's continuous output, the decoder
    quantises them. Deterministic: ``encode`` returns them as they are (``sample`` is False)."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__(cfg)
        c = cfg.latent_channels
        self.encoder, self.decoder = _codec(cfg, c)
        self.quant_conv = nn.Conv2d(c, c, 1)
        self.quantize = VectorQuantizer(
            cfg.codebook_size,
            c,
            ema=cfg.codebook_ema,
            decay=cfg.codebook_decay,
            beta=cfg.commitment,
            dead_threshold=cfg.dead_code_threshold,
        )
        self.post_quant_conv = nn.Conv2d(c, c, 1)
        self.sample = False

    def requires_grad_(self, requires_grad: bool = True) -> VQAutoencoder:
        super().requires_grad_(requires_grad)
        if self.quantize.ema:  # an EMA codebook is updated by its statistics, never by the optimizer
            self.quantize.embedding.weight.requires_grad_(False)
        return self

    def raw_latents(self, images: Tensor) -> Tensor:
        return self.quant_conv(self.encoder(images))

    def encode_moments(self, images: Tensor) -> tuple[Tensor, None]:
        self._check_images(images)
        return (self.raw_latents(images) - self.shift) * self.scale, None

    def decode_raw(self, raw: Tensor) -> Tensor:
        quant, _ = self.quantize(raw)
        return self.decoder(self.post_quant_conv(quant))

    def reconstruct(
        self, images: Tensor, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> tuple[Tensor, dict]:
        """Training pass: (reconstruction, {"vq_loss", "perplexity", "codebook_usage", "restarts"});
        ``noise`` is unused (the encoder is deterministic)."""
        quant, stats = self.quantize(self.raw_latents(images), generator)
        return self.decoder(self.post_quant_conv(quant)), stats


def build_autoencoder(cfg: AutoencoderConfig) -> KLAutoencoder | VQAutoencoder:
    return KLAutoencoder(cfg) if cfg.kind == "kl" else VQAutoencoder(cfg)
