"""A diffusers ``AutoencoderKL`` (e.g. stabilityai/sd-vae-ft-ema) behind ditlab's Autoencoder interface.

Loaded from a local folder only (nothing is downloaded). diffusers is an optional extra and slow to import,
so it is imported only when a VAE is actually loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .base import Autoencoder

__all__ = ["DIT_LATENT_SCALE", "DiffusersVAE", "load_vae"]

#: The latent scale of the SD VAE used by DiT: ``vae.encode(x).latent_dist.sample() * 0.18215``.
DIT_LATENT_SCALE = 0.18215

_INSTALL_HINT = 'pip install "ditlab[diffusers]"'


def _autoencoder_kl_class() -> type:
    try:
        from diffusers import AutoencoderKL
    except ImportError as err:
        raise ImportError(f"loading a VAE needs the optional diffusers package: {_INSTALL_HINT}") from err
    return AutoencoderKL


def _check_scale(scale: Any) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"VAE latent scale must be a positive number, got {scale!r}")
    return float(scale)


class DiffusersVAE(Autoencoder):
    """Wraps a frozen diffusers ``AutoencoderKL``.

    ``encode``: ``(latent_dist.sample(generator) - shift) * scale`` (or the posterior mean with
    ``sample=False``); ``decode``: ``vae.decode(z / scale + shift).sample``. DiT trains on samples
    (``sample=True``, the default). ``scale``/``shift`` default to the VAE config's ``scaling_factor`` /
    ``shift_factor`` (0.18215 / 0 for the SD VAEs DiT uses). The VAE is frozen and kept in eval mode.
    Latents and decoded images come back in the input's dtype; the VAE runs in its own dtype.
    """

    def __init__(
        self,
        vae: nn.Module,
        *,
        scale: float | None = None,
        shift: float | None = None,
        sample: bool = True,
        source: str = "unknown",
    ) -> None:
        super().__init__()
        config = getattr(vae, "config", None)
        if config is None or not hasattr(vae, "encode") or not hasattr(vae, "decode"):
            raise TypeError(f"DiffusersVAE wraps a diffusers AutoencoderKL, got {type(vae).__name__}")
        self.vae = vae.eval().requires_grad_(False)
        self.image_channels = int(config.in_channels)
        self.latent_channels = int(config.latent_channels)
        self.downsample_factor = 2 ** (len(config.block_out_channels) - 1)
        if scale is None:
            scale = getattr(config, "scaling_factor", None) or DIT_LATENT_SCALE
        self.scale = _check_scale(scale)
        self.shift = float(shift if shift is not None else (getattr(config, "shift_factor", None) or 0.0))
        self.sample = bool(sample)
        self.source = source

    def train(self, mode: bool = True) -> DiffusersVAE:
        super().train(mode)
        self.vae.eval()  # frozen: never switch the VAE itself to training behaviour
        return self

    @property
    def _vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def encode_moments(self, images: Tensor) -> tuple[Tensor, Tensor]:
        self._check_images(images)
        dist = self.vae.encode(images.to(self._vae_dtype)).latent_dist
        mean = (dist.mean - self.shift) * self.scale  # (N, c, H/f, W/f)
        std = dist.std * self.scale  # (N, c, H/f, W/f)
        return mean.to(images.dtype), std.to(images.dtype)

    def decode(self, latents: Tensor) -> Tensor:
        self._check_latents(latents)
        raw = latents.to(self._vae_dtype) / self.scale + self.shift  # (N, c, h, w)
        return self.vae.decode(raw).sample.to(latents.dtype)  # (N, 3, h*f, w*f)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, shift={self.shift}, sample={self.sample}, source={self.source!r}"


def _read_vae_config(folder: Path) -> dict[str, Any]:
    """Check that ``folder`` is a diffusers AutoencoderKL folder (save_pretrained layout); return config."""
    if not folder.exists():
        raise FileNotFoundError(
            f"VAE folder {folder} does not exist; pass a local diffusers AutoencoderKL folder "
            "(save_pretrained layout, e.g. a download of stabilityai/sd-vae-ft-ema). Nothing is downloaded."
        )
    if not folder.is_dir():
        raise NotADirectoryError(f"VAE path {folder} is a file; pass the folder holding config.json")
    config_file = folder / "config.json"
    if not config_file.is_file():
        hint = ""
        if (folder / "vae" / "config.json").is_file():
            hint = f"; this looks like a pipeline folder, pass {folder / 'vae'}"
        raise ValueError(f"{folder} is not a diffusers AutoencoderKL folder: it has no config.json{hint}")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON: {err}") from err
    class_name = config.get("_class_name") if isinstance(config, dict) else None
    if class_name != "AutoencoderKL":
        raise ValueError(
            f"{folder} holds a {class_name!r} (config.json _class_name), not an 'AutoencoderKL'; "
            "pass the folder of a diffusers AutoencoderKL"
        )
    if not any(folder.glob("diffusion_pytorch_model*.safetensors")) and not any(
        folder.glob("diffusion_pytorch_model*.bin")
    ):
        raise FileNotFoundError(
            f"{folder} has a config.json but no weights (diffusion_pytorch_model.safetensors or .bin)"
        )
    return config


def load_vae(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    sample: bool = True,
    scale: float | None = None,
) -> DiffusersVAE:
    """Load a diffusers ``AutoencoderKL`` from a local folder as a frozen :class:`DiffusersVAE`.

    ``scale``: the latent scale; by default the folder config's ``scaling_factor``, else DiT's 0.18215.
    ``sample``: encode draws from the posterior (DiT's training recipe) rather than returning its mean.
    Raises FileNotFoundError / ValueError for a missing or non-AutoencoderKL folder, and ImportError with
    the install command when diffusers is missing.
    """
    folder = Path(path).expanduser().resolve()
    config = _read_vae_config(folder)
    if scale is None:
        scale = config.get("scaling_factor") or DIT_LATENT_SCALE
    shift = config.get("shift_factor") or 0.0
    autoencoder_kl = _autoencoder_kl_class()
    # low_cpu_mem_usage=False: the fast path needs `accelerate`, which ditlab does not require.
    vae = autoencoder_kl.from_pretrained(
        folder, torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=False
    )
    if device is not None:
        vae = vae.to(device)
    return DiffusersVAE(vae, scale=scale, shift=shift, sample=sample, source=str(folder))
