"""diffusers interop for ditlab's autoencoders: ``AutoencoderKL`` / ``VQModel`` folders in and out.

    ae = import_diffusers("sd-vae-ft-ema/")        # a KLAutoencoder holding the folder's weights
    export_diffusers(ae, "my-vae/")                # diffusers.AutoencoderKL.from_pretrained("my-vae/") loads it

The architectures share module names and shapes (``ditlab.autoencoders.nets``), so a conversion is a copy of
the state dict plus a translation of the config. Reading a folder needs no diffusers install (its config is
JSON, its weights safetensors or a torch file read with ``weights_only``); only loading our export into
diffusers needs diffusers itself.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ditlab.atomic import atomic_write, atomic_write_text

from .ldm import AutoencoderConfig, KLAutoencoder, VQAutoencoder, build_autoencoder

__all__ = [
    "DIFFUSERS_CLASSES",
    "diffusers_class",
    "estimate_scale",
    "export_diffusers",
    "import_diffusers",
]

DIFFUSERS_CLASSES = {"AutoencoderKL": "kl", "VQModel": "vq"}
_WEIGHTS = "diffusion_pytorch_model"
_ENCODER_BLOCK, _DECODER_BLOCK = "DownEncoderBlock2D", "UpDecoderBlock2D"
_FALLBACK_SCALE = 0.18215  # LDM's SD-VAE value, used when a folder states none and no data is given
# buffers of our VQ codebook that diffusers' VectorQuantizer does not have (training state only)
_TRAINING_ONLY = ("quantize.usage", "quantize.ema_count", "quantize.ema_sum")


def diffusers_class(folder: str | Path) -> str | None:
    """The ``_class_name`` of a folder's config.json, or None when it has none / is not JSON."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text()).get("_class_name")
    except (json.JSONDecodeError, AttributeError):
        return None


def _config_from_diffusers(dconf: dict, folder: Path) -> AutoencoderConfig:
    cls = dconf.get("_class_name")
    if cls not in DIFFUSERS_CLASSES:
        raise ValueError(f"{folder} holds a {cls!r}, not one of: {', '.join(DIFFUSERS_CLASSES)}")
    levels = len(dconf.get("block_out_channels", ()))
    unsupported = {
        "act_fn": (dconf.get("act_fn", "silu"), "silu"),
        "down_block_types": (list(dconf.get("down_block_types", [])), [_ENCODER_BLOCK] * levels),
        "up_block_types": (list(dconf.get("up_block_types", [])), [_DECODER_BLOCK] * levels),
        "norm_type": (dconf.get("norm_type", "group"), "group"),
        "use_quant_conv": (dconf.get("use_quant_conv", True), True),
        "use_post_quant_conv": (dconf.get("use_post_quant_conv", True), True),
        "out_channels": (dconf.get("out_channels", 3), dconf.get("in_channels", 3)),
    }
    if cls == "VQModel":
        unsupported["vq_embed_dim"] = (
            dconf.get("vq_embed_dim") or dconf.get("latent_channels", 3),
            dconf.get("latent_channels", 3),
        )
    wrong = [f"{k}={got!r} (ditlab has {want!r})" for k, (got, want) in unsupported.items() if got != want]
    if wrong:
        raise ValueError(f"{folder}: this {cls} is not an architecture ditlab's autoencoders have: {wrong}")
    return AutoencoderConfig(
        kind=DIFFUSERS_CLASSES[cls],
        image_channels=int(dconf.get("in_channels", 3)),
        latent_channels=int(dconf.get("latent_channels", 4 if cls == "AutoencoderKL" else 3)),
        downsample=2 ** (levels - 1),
        block_out_channels=list(dconf["block_out_channels"]),
        layers_per_block=int(dconf.get("layers_per_block", 1)),
        norm_groups=int(dconf.get("norm_num_groups", 32)),
        mid_attention=bool(dconf.get("mid_block_add_attention", True)),
        codebook_size=int(dconf.get("num_vq_embeddings", 256)),
        codebook_ema=False,  # a diffusers codebook is plain weights; fine-tuning it uses the codebook loss
        shift=float(dconf.get("shift_factor") or 0.0),
    )


def _read_weights(folder: Path) -> dict[str, Tensor]:
    st = folder / f"{_WEIGHTS}.safetensors"
    if st.is_file():
        return load_file(str(st))
    pt = folder / f"{_WEIGHTS}.bin"
    if pt.is_file():
        return torch.load(str(pt), map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder} has a config.json but no {_WEIGHTS}.safetensors (or .bin)")


@torch.no_grad()
def estimate_scale(autoencoder, images: Tensor, batch_size: int = 32) -> float:
    """1 / std of the raw latents over ``images`` (N, C, H, W) in [-1, 1]: how LDM got 0.18215.

    KL: latents drawn from the posterior, as the diffusion model will see them; VQ: the encoder output.
    The draws use a fixed seed, so the estimate is reproducible.
    """
    gen = torch.Generator().manual_seed(0)
    device = next(autoencoder.parameters()).device
    values = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device)
        if isinstance(autoencoder, KLAutoencoder):
            mean, logvar = autoencoder.posterior(x)
            eps = torch.randn(mean.shape, generator=gen).to(device)
            values.append((mean + torch.exp(0.5 * logvar) * eps).float().cpu())
        else:
            values.append(autoencoder.raw_latents(x).float().cpu())
    std = torch.cat(values).std().item()
    if not std > 0:
        raise ValueError("the latents of these images have zero spread: cannot estimate a scale from them")
    return 1.0 / std


def import_diffusers(
    folder: str | Path, *, images: Tensor | None = None, device=None
) -> KLAutoencoder | VQAutoencoder:
    """A diffusers ``AutoencoderKL`` / ``VQModel`` folder (save_pretrained layout) as ditlab's autoencoder.

    The scale is the folder's ``scaling_factor``; a folder that states none gets the estimate of
    :func:`estimate_scale` over ``images`` when they are given (else LDM's 0.18215, with a warning).
    """
    folder = Path(folder).expanduser().resolve()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a diffusers model folder: it has no config.json")
    try:
        dconf = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{folder / 'config.json'} is not valid JSON: {err}") from err
    cfg = _config_from_diffusers(dconf, folder)
    model = build_autoencoder(cfg)
    state = _read_weights(folder)
    own = model.state_dict()
    for key in _TRAINING_ONLY:  # our codebook's training statistics: fresh
        if key in own:
            state.setdefault(key, own[key])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{folder}: the weights do not fit the config's architecture: {err}") from err
    if device is not None:
        model = model.to(device)
    if dconf.get("scaling_factor"):
        model.scale = float(dconf["scaling_factor"])
    elif images is not None:
        model.scale = estimate_scale(model, images)
    else:
        warnings.warn(
            f"{folder} states no scaling_factor and no images were given to estimate one: using 0.18215",
            stacklevel=2,
        )
        model.scale = _FALLBACK_SCALE
    model.source = str(folder)
    return model.eval()


def _diffusers_config(cfg: AutoencoderConfig) -> dict:
    levels = len(cfg.block_out_channels)
    config = {
        "_class_name": "AutoencoderKL" if cfg.kind == "kl" else "VQModel",
        "in_channels": cfg.image_channels,
        "out_channels": cfg.image_channels,
        "down_block_types": [_ENCODER_BLOCK] * levels,
        "up_block_types": [_DECODER_BLOCK] * levels,
        "block_out_channels": list(cfg.block_out_channels),
        "layers_per_block": cfg.layers_per_block,
        "act_fn": "silu",
        "latent_channels": cfg.latent_channels,
        "norm_num_groups": cfg.norm_groups,
        "mid_block_add_attention": cfg.mid_attention,
        "scaling_factor": cfg.scale,
    }
    if cfg.kind == "kl":
        config.update(use_quant_conv=True, use_post_quant_conv=True)
        if cfg.shift:
            config["shift_factor"] = cfg.shift
    else:
        config.update(
            num_vq_embeddings=cfg.codebook_size, vq_embed_dim=cfg.latent_channels, norm_type="group"
        )
    return config


def export_diffusers(autoencoder: KLAutoencoder | VQAutoencoder, folder: str | Path) -> Path:
    """Write ``autoencoder`` as a diffusers folder (config.json + diffusion_pytorch_model.safetensors)."""
    if not isinstance(autoencoder, (KLAutoencoder, VQAutoencoder)):
        raise TypeError(
            f"export_diffusers takes ditlab's KL or VQ autoencoder, got {type(autoencoder).__name__}"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: v.detach().contiguous().cpu()
        for k, v in autoencoder.state_dict().items()
        if k not in _TRAINING_ONLY
    }
    atomic_write(folder / f"{_WEIGHTS}.safetensors", lambda f: save_file(tensors, f.name, {"format": "pt"}))
    config = json.dumps(_diffusers_config(autoencoder.config), indent=2) + "\n"
    atomic_write_text(folder / "config.json", config)
    return folder
