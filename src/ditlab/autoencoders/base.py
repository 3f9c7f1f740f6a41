"""The autoencoder interface: how the rest of ditlab moves between images in [-1, 1] and model inputs.

A pixel-space model uses :class:`IdentityAutoencoder`; a latent model uses a VAE (see ``diffusers_vae``).
Both expose the same attributes and methods, so trainers, samplers and caches never branch on which it is.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Autoencoder", "IdentityAutoencoder", "sample_from_moments"]


def sample_from_moments(mean: Tensor, std: Tensor | None, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``mean + std * eps`` with eps ~ N(0, I); a None std means a deterministic encoder.

    The noise is drawn on the generator's device when it differs from the moments' (a CPU generator for
    reproducible draws on any device), then moved, as diffusers does.
    """
    if std is None:
        return mean
    noise_device = generator.device if generator is not None else mean.device
    eps = torch.randn(mean.shape, generator=generator, device=noise_device, dtype=mean.dtype)
    return mean + std * eps.to(mean.device)


class Autoencoder(nn.Module):
    """Maps images (N, image_channels, H, W) in [-1, 1] to latents (N, latent_channels, H/f, W/f) and back.

    Latents are already scaled for diffusion: ``z = (raw - shift) * scale`` on the way in, the inverse on the
    way out (DiT: scale 0.18215, shift 0), so a model always sees roughly unit-variance inputs.

    Subclasses set the attributes below and implement :meth:`encode_moments` and :meth:`decode`.
    ``source`` names the weights (a resolved folder path, or ``"identity"``) so latent caches can tell
    whether they were built by the same autoencoder.
    """

    image_channels: int
    latent_channels: int
    downsample_factor: int
    scale: float
    shift: float
    sample: bool  # whether encode() draws from the posterior (True) or returns its mean (False)
    source: str

    def encode_moments(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Scaled posterior mean and std, each (N, latent_channels, h, w); std None when deterministic."""
        raise NotImplementedError

    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents (N, latent_channels, h, w) -> images (N, image_channels, h*f, w*f) near [-1, 1]."""
        raise NotImplementedError

    def encode(
        self, images: Tensor, generator: torch.Generator | None = None, sample: bool | None = None
    ) -> Tensor:
        """Images in [-1, 1] -> scaled latents: a posterior draw when ``sample`` (default ``self.sample``)."""
        mean, std = self.encode_moments(images)
        draw = self.sample if sample is None else sample
        return sample_from_moments(mean, std, generator) if draw else mean

    def forward(self, images: Tensor) -> Tensor:
        return self.encode(images)

    def latent_shape(self, image_shape: tuple[int, ...] | torch.Size) -> tuple[int, int, int]:
        """(C, H, W) or (N, C, H, W) of images -> (latent_channels, H/f, W/f)."""
        *_, channels, height, width = image_shape
        self._check_image_geometry(channels, height, width)
        f = self.downsample_factor
        return self.latent_channels, height // f, width // f

    # ----------------------------------------------------------------------------- validation shared by all
    def _check_image_geometry(self, channels: int, height: int, width: int) -> None:
        name = type(self).__name__
        if channels != self.image_channels:
            raise ValueError(
                f"{name}: expected {self.image_channels}-channel images, got {channels} channels"
            )
        f = self.downsample_factor
        if height % f or width % f:
            raise ValueError(
                f"{name}: image size {height}x{width} is not divisible by the downsample factor {f}; "
                f"resize or crop to a multiple of {f}"
            )

    def _check_images(self, images: Tensor) -> None:
        name = type(self).__name__
        if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
            what = f"shape {tuple(images.shape)}, dtype {images.dtype}" if isinstance(images, Tensor) else ""
            raise ValueError(f"{name}: images must be a float (N, C, H, W) tensor in [-1, 1], got {what}")
        self._check_image_geometry(*images.shape[1:])

    def _check_latents(self, latents: Tensor) -> None:
        name = type(self).__name__
        if not isinstance(latents, Tensor) or latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            shape = tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
            raise ValueError(f"{name}: latents must be (N, {self.latent_channels}, h, w), got {shape}")


class IdentityAutoencoder(Autoencoder):
    """No autoencoder: pixel-space models see the images themselves (scale 1, factor 1, deterministic)."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        if not isinstance(channels, int) or channels <= 0:
            raise ValueError(f"IdentityAutoencoder: channels must be a positive int, got {channels!r}")
        self.image_channels = self.latent_channels = channels
        self.downsample_factor = 1
        self.scale, self.shift = 1.0, 0.0
        self.sample = False
        self.source = "identity"

    def encode_moments(self, images: Tensor) -> tuple[Tensor, None]:
        self._check_images(images)
        return images, None  # (N, C, H, W)

    def decode(self, latents: Tensor) -> Tensor:
        self._check_latents(latents)
        return latents  # (N, C, H, W)

    def extra_repr(self) -> str:
        return f"channels={self.image_channels}"
