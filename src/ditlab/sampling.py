"""`ditlab.generate`: class-conditional (or unconditional) images from a trained DiT in one call.

    images, labels = ditlab.generate(model, classes=[0, 3], per_class=8, sampler="ddim", steps=50,
                                     guidance_scale=1.5, seed=0)      # uint8 (16, H, W, C), int64 (16,)

The objective (DDPM schedule or flow matching) comes from the model's `objective_spec`, which ditlab's
checkpoints carry; official DiT checkpoints default to their linear 1000-step DDPM. Latent models decode
through an autoencoder (`vae=ditlab.autoencoders.load_autoencoder(path)`); a latent model trained by
ditlab records its autoencoder and decodes through it with no `vae`. The same seed and arguments give the
same images: all initial noise is drawn up front from one seeded generator on the CPU, and each batch's
stochastic sampler noise from a generator seeded by (seed, batch index). Guidance wraps the model once per
batch (`GuidedModel`: classifier-free, or autoguidance with `guide_model`, a weaker model of the same data;
`guidance_interval`, `guidance_rescale` and the 3-channel quirk `guidance_channels` are its options), then
`run_sampler` dispatches to the sampler (default: the objective's). A run's model records the sampler, steps
and guidance its training used (`preferred_sampling`), which `ditlab sample` takes for the flags not given. `part=(rank, world)` samples
only the batches b with b % world == rank, exactly as the whole call would (the same noise, batch and
generator), so torchrun processes split one call's images without changing any of them (ditlab.sample_shards).
`ditlab.sample` is the deprecated name of `generate`, kept for one release.

Text-to-image models take prompts instead of classes, encoded by the encoder they were trained with:

    enc = ditlab.text.load_text_encoder(**model.text_spec)           # the run records its encoder's spec
    images, _ = ditlab.generate(model, prompts=["a red circle left of a blue square"], per_class=8,
                                text_encoder=enc, guidance_scale=3.0)  # each prompt 8 times, in order

Guidance's unconditional branch is the encoder's null caption (`text_encoder.null`); `text_encoder` is
anything with `encode(prompts)` and `null` (a TextEncoder, or a CaptionEmbeddings table holding the prompts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ditlab.autoencoders.checkpoint import load_autoencoder
from ditlab.data.images import to_uint8
from ditlab.diffusion.guidance import GuidedModel
from ditlab.diffusion.objective import ObjectiveSpec
from ditlab.diffusion.samplers import deprecated_alias, run_sampler, sampler_timesteps
from ditlab.models.text_inputs import repeat_embedding, takes_text, text_model_kwargs
from ditlab.runtime import resolve_device


@dataclass
class Samples:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,); -1 for unconditional and text-conditioned samples
    prompts: list[str] | None = None  # text models: the prompt of each sample, in order

    def __iter__(self):  # images, labels = ditlab.generate(...)
        return iter((self.images, self.labels))


def objective_of(model) -> ObjectiveSpec:
    spec = getattr(model, "objective_spec", None)
    if spec is None:  # official checkpoints: the DiT paper's DDPM (learned variance iff 2C outputs)
        return ObjectiveSpec(kind="ddpm", learn_sigma=model.config.learn_sigma)
    return ObjectiveSpec.from_dict(spec) if isinstance(spec, dict) else spec


def preferred_sampling(model) -> dict:
    """The sampling settings recorded with a trained model ({"sampler", "sample_steps", "guidance_scale"}, the
    run's TrainConfig values; see ditlab.models.checkpoint), or {} for a model without a record."""
    return dict(getattr(model, "sampling_spec", None) or {})


def check_guide(model, guide_model) -> None:
    """Autoguidance needs a guide that maps the same inputs to the same kind of outputs."""
    same = (
        guide_model.in_channels == model.in_channels
        and guide_model.out_channels == model.out_channels
        and guide_model.num_classes == model.num_classes
        and objective_of(guide_model).kind == objective_of(model).kind
    )
    if not same:
        raise ValueError(
            "the guide model must take the model's inputs and give its outputs (channels, classes, objective); "
            "use a smaller or earlier model of the same run's data"
        )


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


def sample_prompts(prompts, per_prompt: int = 1, num_samples: int | None = None) -> list[str]:
    """The prompt of every sample: each prompt repeated `per_prompt` times, in order (cycled to num_samples)."""
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a list of strings (wrap a single prompt in a list)")
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt")
    out = [p for p in prompts for _ in range(per_prompt)]
    if num_samples is not None:
        out = (out * (-(-num_samples // len(out))))[:num_samples]
    return out


def _text_conditions(model, prompts, text_encoder, guided: bool):
    """(conditional, unconditional or None) embeddings of the prompts: the model's kwargs of each branch are
    built per batch from these. The unconditional branch is the null caption's embedding, repeated."""
    if not takes_text(model.config):
        raise ValueError("this model is not text-conditioned: sample it with classes, without prompts")
    if text_encoder is None:
        raise ValueError(
            "prompts need the text encoder the model was trained with: pass "
            "text_encoder=ditlab.text.load_text_encoder(**model.text_spec)"
        )
    cond = text_encoder.encode(list(prompts))
    return cond, (repeat_embedding(text_encoder.null, len(prompts)) if guided else None)


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


def check_takes_references(model) -> None:
    """A ValueError unless `model` takes reference images (reference_condition != "none")."""
    if model.config.reference_condition == "none":
        raise ValueError(
            "this model takes no reference image (it was not trained with --condition reference)"
        )


def sample_references(model, references, count: int) -> torch.Tensor | None:
    """References for `count` samples as float images (count, C, H, W): sample i gets reference i mod M."""
    if references is None:
        return None
    check_takes_references(model)
    references = torch.as_tensor(references)
    shape = (model.in_channels, *model.config.image_hw)
    if references.dim() != 4 or not len(references) or tuple(references.shape[1:]) != shape:
        raise ValueError(
            f"references must be (M, {', '.join(map(str, shape))}) images, got {tuple(references.shape)}"
        )
    if not references.is_floating_point():
        raise ValueError("references must be float images in [-1, 1] (x / 127.5 - 1 for uint8 pixels)")
    return references.float()[torch.arange(count) % len(references)]


def sample_layouts(model, layouts, count: int) -> torch.Tensor | None:
    """Layouts for `count` samples as float maps (count, K, H, W): sample i gets layout i mod M."""
    if layouts is None:
        return None
    if model.config.spatial_condition == "none":
        raise ValueError("this model takes no layout (it was not trained with --condition layout)")
    layouts = torch.as_tensor(layouts)
    if layouts.dim() not in (3, 4) or not len(layouts):
        raise ValueError(f"layouts must be (M, H, W) labels or (M, K, H, W) maps, got {tuple(layouts.shape)}")
    expected = model.config.image_hw
    if tuple(layouts.shape[-2:]) != tuple(expected):
        raise ValueError(
            f"layouts are {tuple(layouts.shape[-2:])} but the model generates {tuple(expected)}; draw them at "
            "the model's size"
        )
    K = model.config.layout_channels
    if not layouts.is_floating_point():
        if layouts.dim() != 3 or int(layouts.min()) < 0 or int(layouts.max()) >= K:
            raise ValueError(f"layout labels must be (M, H, W) with values 0..{K - 1}")
        layouts = torch.nn.functional.one_hot(layouts.long(), K).permute(0, 3, 1, 2)
    elif layouts.dim() != 4 or layouts.shape[1] != K:
        raise ValueError(f"layout maps must be (M, K={K}, H, W), got {tuple(layouts.shape)}")
    return layouts.float()[torch.arange(count) % len(layouts)]


def _in_batch(callback, batch: int, batches: int):
    """The sampler callback of batch `batch`: `callback` with the batch index and count added (None: none)."""
    if callback is None:
        return None
    return lambda info: callback({**info, "batch": batch, "batches": batches})


@torch.no_grad()
def generate(
    model,
    classes=None,
    per_class: int = 1,
    num_samples: int | None = None,
    sampler: str | None = None,
    steps: int | str | None = 50,
    guidance_scale: float = 1.0,
    guidance_interval: tuple[float, float] | None = None,
    guidance_channels: int | None = None,
    guidance_rescale: float = 0.0,
    guide_model=None,
    seed: int = 0,
    batch_size: int = 64,
    vae=None,
    device=None,
    progress: bool = False,
    sampler_options: dict | None = None,
    return_tensors: bool = False,
    callback=None,
    part: tuple[int, int] | None = None,
    layouts=None,
    prompts=None,
    text_encoder=None,
    references=None,
) -> Samples:
    """Sample images; see the module docstring. `steps` may be an int or a DDPM respacing string ("250").

    Text models: `prompts` (each repeated `per_class` times, in order) encoded by `text_encoder`; the
    result's `prompts` lists the prompt of every image.

    `callback(info)` runs once per sampler step of every batch: the sampler's dict(i, t, x, denoised) plus
    `batch` and `batches` (this batch's index and the batch count), enough for one progress bar over the call.
    `part` = (rank, world): only this rank's batches (`batch_indices` gives their sample indices).
    A ditlab latent model decodes through the autoencoder it records unless `vae` or `return_tensors`.
    `layouts` (layout models): label maps (M, H, W) or maps (M, K, H, W); sample i follows layout i mod M,
    guidance (guidance_scale != 1) contrasts it with the empty layout.
    `references` (reference models): images (M, C, H, W) in [-1, 1]; sample i gets reference i mod M, and
    guidance (guidance_scale != 1) contrasts it with the null reference (none: what reference dropout trains),
    together with the null label or empty layout of a model that also has those.
    """
    objective = objective_of(model).build()
    sampler = sampler or objective.default_sampler
    sampler_timesteps(sampler, objective, steps)  # a bad sampler or step count fails before any work
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    if vae is None and not return_tensors:
        vae = recorded_autoencoder(model, device)
    check_decodable(model, vae, return_tensors)
    was_training = model.training
    model.eval()
    text = prompts is not None
    if text:
        if classes:
            raise ValueError("give prompts or classes, not both")
        prompts = sample_prompts(prompts, per_class, num_samples)
        labels = torch.full((len(prompts),), -1, dtype=torch.long)
    elif takes_text(model.config):
        raise ValueError("this model is text-conditioned: pass prompts=[...] (and its text_encoder)")
    else:
        labels = sample_labels(model, classes, per_class, num_samples)
    C = model.in_channels
    H, W = model.config.image_hw
    noise = torch.randn(len(labels), C, H, W, generator=torch.Generator().manual_seed(seed))
    if guide_model is not None:
        check_guide(model, guide_model)
        guide_was_training = guide_model.training
        guide_model.eval()
    layouts = sample_layouts(model, layouts, len(labels))
    references = sample_references(model, references, len(labels))
    guided = guidance_scale != 1.0 and guide_model is None  # classifier-free: the null-label branch
    if text:  # the null caption is the unconditional branch
        text_cond, text_null = _text_conditions(model, prompts, text_encoder, guided)
    elif guided and model.null_class is None and layouts is None and references is None:
        raise ValueError(
            "guidance_scale != 1 needs a model trained with label dropout (class_dropout_prob > 0)"
        )
    outputs, mine = [], batch_indices(len(labels), batch_size, *(part or (0, 1)))
    batches = -(-len(labels) // batch_size)
    for b, start in enumerate(range(0, len(labels), batch_size)):
        if part is not None and b % part[1] != part[0]:
            continue  # another rank's batch
        x = noise[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        if text:
            rows = list(range(start, start + len(y)))
            cond = text_model_kwargs(model.config, text_cond.select(rows).to(device))
            uncond = text_model_kwargs(model.config, text_null.select(rows).to(device)) if guided else None
        else:
            cond = {"y": y} if model.num_classes else {}
            uncond = {"y": torch.full_like(y, model.null_class)} if guided and model.num_classes else {}
            if layouts is not None:  # the unconditional branch: the empty layout (what layout dropout trains)
                cond["layout"] = layouts[start : start + batch_size].to(device)
                uncond["layout"] = torch.zeros_like(cond["layout"])
            uncond = uncond if guided else None
        if references is not None:
            cond["reference"] = references[start : start + batch_size].to(device)
            # the unconditional branch: the null reference (what reference dropout trains); both branches
            # carry the images (batched as one forward) and a keep mask that drops them in this one
            if uncond is not None:
                cond["reference_keep"] = torch.ones(len(y), dtype=torch.bool, device=device)
                uncond["reference_keep"] = torch.zeros_like(cond["reference_keep"])
        gen = torch.Generator(device).manual_seed(seed * 1_000_003 + b + 1)
        guided_model = GuidedModel(
            model,
            cond,
            uncond,
            scale=guidance_scale,
            interval=guidance_interval,
            channels=guidance_channels,
            rescale=guidance_rescale,
            guide=guide_model,
        )
        out = run_sampler(
            sampler,
            guided_model,
            x,
            objective,
            steps=steps,
            progress=progress,
            generator=gen,
            callback=_in_batch(callback, b, batches),
            **(sampler_options or {}),
        )
        if vae is not None:
            out = vae.decode(out)
        outputs.append(out.float().cpu())
    model.train(was_training)
    if guide_model is not None:
        guide_model.train(guide_was_training)
    labels = labels[mine]
    images = torch.cat(outputs) if outputs else torch.empty(0, C, H, W)
    if return_tensors:
        return images, labels
    return Samples(to_uint8(images).numpy(), labels.numpy(), prompts if text else None)


def batch_indices(n: int, batch_size: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Indices of the samples that `generate(..., part=(rank, world))` returns, in its order."""
    starts = range(rank * batch_size, n, world * batch_size)
    return torch.cat(
        [torch.arange(s, min(s + batch_size, n)) for s in starts] or [torch.zeros(0, dtype=torch.long)]
    )


sample = deprecated_alias(generate, "ditlab.sample", "ditlab.generate (same arguments)")
