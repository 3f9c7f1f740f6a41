"""Saving ditlab autoencoders and loading any autoencoder ditlab reads, through the checkpoint-format registry.

    save_autoencoder(ae, "vae.safetensors")            # weights + AutoencoderConfig (scale, shift) as metadata
    ae = load_autoencoder("vae.safetensors")           # also: a `ditlab vae train` run folder, a diffusers
    ae = load_autoencoder("sd-vae-ft-ema/")            # AutoencoderKL folder, a diffusers VQModel folder

The formats register in ``ditlab.models.formats`` (as every checkpoint format does), so ``probe`` tells them
apart by what each file says about itself. A diffusers ``AutoencoderKL`` folder loads as
:class:`~ditlab.autoencoders.DiffusersVAE` (diffusers' own module: the official DiT + SD-VAE samples stay
bit-identical); a ``VQModel`` folder loads as ditlab's :class:`VQAutoencoder` (a state-dict copy).
Loaded autoencoders are frozen (eval mode, no gradients) unless ``trainable=True``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ditlab.atomic import atomic_write
from ditlab.models.formats import CheckpointFormat, Probe, find_format, probe, register_format

from .base import Autoencoder
from .diffusers_vae import load_vae
from .interop import diffusers_class, import_diffusers
from .ldm import AutoencoderConfig, KLAutoencoder, VQAutoencoder, build_autoencoder

__all__ = ["AUTOENCODER_FILE", "autoencoder_spec", "load_autoencoder", "save_autoencoder"]

FORMAT = "ditlab-autoencoder-1"
CONFIG_KEY = "ditlab_autoencoder"
AUTOENCODER_FILE = "autoencoder.safetensors"  # what `ditlab vae train` writes into its run folder
FORMAT_NAMES = ("autoencoder", "autoencoder-run", "diffusers-autoencoder-kl", "diffusers-vq-model")


def save_autoencoder(autoencoder: KLAutoencoder | VQAutoencoder, path: str | os.PathLike) -> Path:
    """Weights and config (architecture, scale, shift) in one safetensors file, written atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in autoencoder.state_dict().items()}
    metadata = {"format": FORMAT, CONFIG_KEY: json.dumps(autoencoder.config.to_dict(), sort_keys=True)}
    return atomic_write(path, lambda f: save_file(tensors, f.name, metadata=metadata))


def _load_file(path: Path, device) -> KLAutoencoder | VQAutoencoder:
    with safe_open(str(path), framework="pt", device="cpu") as f:
        cfg = AutoencoderConfig.from_dict(json.loads(f.metadata()[CONFIG_KEY]))
        state = {k: f.get_tensor(k) for k in f.keys()}
    model = build_autoencoder(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: the weights do not fit the autoencoder config it records: {err}") from err
    model.source = str(path.resolve())
    return model.to(device).eval()


def _is_file(p: Probe) -> bool:
    return p.metadata.get("format") == FORMAT


def _is_run(p: Probe) -> bool:
    return AUTOENCODER_FILE in p.keys


for _fmt in (
    CheckpointFormat(
        "autoencoder", "safetensors", _is_file, lambda p, device, **_: _load_file(p.path, device)
    ),
    CheckpointFormat(
        "autoencoder-run",
        "folder",
        _is_run,
        lambda p, device, **_: _load_file(p.path / AUTOENCODER_FILE, device),
        priority=10,
    ),
    CheckpointFormat(
        "diffusers-autoencoder-kl",
        "folder",
        lambda p: diffusers_class(p.path) == "AutoencoderKL",
        lambda p, device, **_: load_vae(p.path, device=device),
        priority=10,  # above the generic diffusers (DiT) folder
    ),
    CheckpointFormat(
        "diffusers-vq-model",
        "folder",
        lambda p: diffusers_class(p.path) == "VQModel",
        lambda p, device, **_: import_diffusers(p.path, device=device),
        priority=10,
    ),
):
    register_format(_fmt)


def load_autoencoder(
    path: str | os.PathLike, *, device="cpu", trainable: bool = False, sample: bool | None = None
) -> Autoencoder:
    """Any autoencoder ditlab reads (see the module docstring), on ``device``.

    ``sample`` overrides whether ``encode`` draws from the posterior (KL) or returns its mean.
    Raises ValueError when ``path`` holds something else (a DiT checkpoint, say).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"autoencoder {path} does not exist; pass a ditlab autoencoder (`ditlab vae train`) or a local "
            "diffusers AutoencoderKL / VQModel folder (save_pretrained layout). Nothing is downloaded."
        )
    p = probe(path)
    try:
        fmt = find_format(p)
    except ValueError as err:
        raise ValueError(f"{path} is not an autoencoder ditlab reads ({', '.join(FORMAT_NAMES)})") from err
    if fmt.name == "diffusers":  # a folder that is no autoencoder: load_vae says what it is and what to pass
        load_vae(path)
    if fmt.name not in FORMAT_NAMES:
        raise ValueError(
            f"{path} is a {fmt.name} checkpoint, not an autoencoder: pass a ditlab autoencoder file or run "
            "folder (`ditlab vae train`), or a diffusers AutoencoderKL / VQModel folder"
        )
    model = fmt.load(p, device=torch.device(device))
    if sample is not None:
        model.sample = bool(sample)
    if trainable:
        return model.train().requires_grad_(True)
    return model.eval().requires_grad_(False)


def autoencoder_spec(autoencoder: Autoencoder) -> dict:
    """What a latent model records about its autoencoder so it can decode later with no flag."""
    return {
        "source": autoencoder.source,
        "kind": type(autoencoder).__name__,
        "scale": float(autoencoder.scale),
        "shift": float(autoencoder.shift),
        "latent_channels": autoencoder.latent_channels,
        "downsample_factor": autoencoder.downsample_factor,
        "image_channels": autoencoder.image_channels,
    }
