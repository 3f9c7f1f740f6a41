"""`ditlab.sample`: class-conditional (or unconditional) images from a trained DiT in one call.

    images, labels = ditlab.sample(model, classes=[0, 3], per_class=8, sampler="ddim", steps=50,
                                   guidance_scale=1.5, seed=0)        # uint8 (16, H, W, C), int64 (16,)

The objective (DDPM schedule or flow matching) comes from the model's `objective_spec`, which ditlab's
checkpoints carry; official DiT checkpoints default to their linear 1000-step DDPM. Latent models decode
through an autoencoder (`vae=ditlab.autoencoders.load_autoencoder(path)`); a latent model trained by
ditlab records its autoencoder and decodes through it with no `vae`. The same seed and arguments give the
same images: all initial noise is drawn up front from one seeded generator on the CPU, and each batch's
stochastic sampler noise from a generator seeded by (seed, batch index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ditlab.autoencoders.checkpoint import load_autoencoder
from ditlab.data.images import to_uint8
from ditlab.diffusion.objective import ObjectiveSpec
from ditlab.diffusion.samplers import SAMPLERS
from ditlab.diffusion.samplers import sample as run_sampler


@dataclass
class Samples:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,); -1 for unconditional samples

    def __iter__(self):  # images, labels = ditlab.sample(...)
        return iter((self.images, self.labels))


def objective_of(model) -> ObjectiveSpec:
    spec = getattr(model, "objective_spec", None)
    if spec is None:  # official checkpoints: the DiT paper's DDPM (learned variance iff 2C outputs)
        return ObjectiveSpec(kind="ddpm", learn_sigma=model.config.learn_sigma)
    return ObjectiveSpec.from_dict(spec) if isinstance(spec, dict) else spec


def sample_labels(model, classes=None, per_class: int = 1, num_samples: int | None = None) -> torch.Tensor:
    """The label of every sample: each of `classes` (default all) repeated `per_class` times, or -1s."""
    if model.num_classes == 0:
        if classes:
            raise ValueError("this model is unconditional (num_classes=0); sample without classes")
        return torch.full((num_samples or per_class,), -1, dtype=torch.long)
    classes = list(range(model.num_classes)) if classes is None else [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < model.num_classes]
    if bad:
        raise ValueError(f"class(es) {bad} out of range: this model has classes 0..{model.num_classes - 1}")
    labels = torch.tensor(classes, dtype=torch.long).repeat_interleave(per_class)
    if num_samples is not None:  # cycle through the classes up to num_samples
        labels = labels.repeat((num_samples + len(labels) - 1) // len(labels))[:num_samples]
    return labels


def recorded_autoencoder(model, device=None):
    """The autoencoder a ditlab latent model was trained with (its `data_spec` records it), loaded on
    `device`, or None for a model that records none (pixel models, official checkpoints).

    Refuses an autoencoder whose latent scale or shift changed since training: decoding with another
    normalisation would give wrong images silently."""
    spec = (getattr(model, "data_spec", None) or {}).get("autoencoder")
    if not spec:
        return None
    try:
        vae = load_autoencoder(spec["source"], device=device or "cpu")
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"this model was trained on the latents of {spec['source']}, which no longer exists: pass "
            "--vae <autoencoder> (vae= in Python) to decode"
        ) from err
    if (float(vae.scale), float(vae.shift)) != (spec["scale"], spec["shift"]):
        raise ValueError(
            f"the autoencoder {spec['source']} now has scale/shift {vae.scale}/{vae.shift}, but the model was "
            f"trained with {spec['scale']}/{spec['shift']}: pass the autoencoder it was trained with (--vae)"
        )
    return vae


def check_decodable(model, vae=None, return_tensors: bool = False) -> None:
    """Refuse, before any sampler step, to sample a latent model into images without an autoencoder.

    A model whose channels are not 1 (grey) or 3 (RGB) works on latents (4 for the SD VAE): its raw
    outputs are not images, and without this check the failure came only after all sampling, from the
    image writer (or, in Python, as uint8 "images" of latents). `return_tensors=True` keeps raw latents.
    """
    channels = model.in_channels
    if vae is None and not return_tensors and channels not in (1, 3):
        raise ValueError(
            f"this model works on {channels}-channel latents: pass --vae <folder> (a local diffusers "
            "AutoencoderKL folder; in Python vae=ditlab.autoencoders.load_vae(folder)) to decode them into "
            "images, or return_tensors=True to keep the raw latents"
        )


@torch.no_grad()
def sample(
    model,
    classes=None,
    per_class: int = 1,
    num_samples: int | None = None,
    sampler: str | None = None,
    steps: int | str | None = 50,
    guidance_scale: float = 1.0,
    guidance_interval: tuple[float, float] | None = None,
    guidance_channels: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    vae=None,
    device=None,
    progress: bool = False,
    sampler_options: dict | None = None,
    return_tensors: bool = False,
) -> Samples:
    """Sample images; see the module docstring. `steps` may be an int or a DDPM respacing string ("250").
    A ditlab latent model decodes through the autoencoder it records unless `vae` or `return_tensors`."""
    spec = objective_of(model)
    objective = spec.build()
    sampler = sampler or spec.default_sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if vae is None and not return_tensors:
        vae = recorded_autoencoder(model, device)
    check_decodable(model, vae, return_tensors)
    was_training = model.training
    model.eval()
    labels = sample_labels(model, classes, per_class, num_samples)
    C = model.in_channels
    H, W = model.config.image_hw
    noise = torch.randn(len(labels), C, H, W, generator=torch.Generator().manual_seed(seed))
    guided = guidance_scale != 1.0
    if guided and model.null_class is None:
        raise ValueError(
            "guidance_scale != 1 needs a model trained with label dropout (class_dropout_prob > 0)"
        )
    outputs = []
    for b, start in enumerate(range(0, len(labels), batch_size)):
        x = noise[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        cond = {"y": y} if model.num_classes else {}
        uncond = {"y": torch.full_like(y, model.null_class)} if guided else None
        gen = torch.Generator(device).manual_seed(seed * 1_000_003 + b + 1)
        out = run_sampler(
            model,
            x,
            objective,
            sampler,
            cond,
            uncond=uncond,
            steps=steps,
            guidance_scale=guidance_scale,
            guidance_interval=guidance_interval,
            guidance_channels=guidance_channels,
            progress=progress,
            generator=gen,
            **(sampler_options or {}),
        )
        if vae is not None:
            out = vae.decode(out)
        outputs.append(out.float().cpu())
    model.train(was_training)
    images = torch.cat(outputs)
    if return_tensors:
        return images, labels
    return Samples(to_uint8(images).numpy(), labels.numpy())
