"""What one click on the `ditlab serve` page asks for, checked against the server's limits, then sampled.

This module knows nothing of Gradio: `app.py` turns the page's values into a `SampleRequest`, and the
ValueErrors raised here into messages on the page. Sampling itself is `ditlab.generate`; this module only
checks the request, passes it on, and writes the grid (PNG) and the samples (ADM-style .npz).

The conditioning inputs are fields (`CONDITION_FIELDS`), each shown only for the models that take it.
Today every ditlab model is class-conditional or unconditional, so the class picker is the only field; a
text prompt (text models) or a layout (layout models) will each be one more field here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ditlab.data import save_grid, save_npz
from ditlab.diffusion.samplers import SAMPLERS, sampler_timesteps
from ditlab.sampling import generate, objective_of

MAX_GUIDANCE = 20.0  # the page's guidance slider ends here; papers use 1 to 10
MAX_SEED = 2**31 - 1


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: set by the server's flags, so a visitor cannot tie up the CPU."""

    max_images: int = 16
    max_steps: int = 100

    def __post_init__(self):
        if self.max_images < 1 or self.max_steps < 1:
            raise ValueError(
                f"--max-images and --max-steps must be >= 1, got {self.max_images}, {self.max_steps}"
            )


def _whole(value, what: str, low: int, high: int) -> int:
    """`value` as an int in [low, high] (the page's number boxes send floats)."""
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a whole number, got {value!r}") from err
    if not number.is_integer():
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    if not low <= number <= high:
        raise ValueError(f"{what} must be between {low} and {high}, got {int(number)}")
    return int(number)


# ------------------------------------------------------------------------------------------ condition fields
def class_names(model) -> list[str]:
    """The training data's class names where the checkpoint records them (ditlab's digits, Fashion-MNIST,
    image folders), else [] (official checkpoints, models built in Python)."""
    spec = getattr(model, "data_spec", None) or {}
    names = [str(name) for name in spec.get("class_names") or []]
    return names if len(names) == model.num_classes else []


def class_choices(model) -> list[tuple[str, int]]:
    """(label, class id) pairs for the class picker: "Trouser (1)", "3" where the name is the id, else
    "class 3"."""
    names = class_names(model)
    if not names:
        return [(f"class {k}", k) for k in range(model.num_classes)]
    return [(name if name == str(k) else f"{name} ({k})", k) for k, name in enumerate(names)]


def _class_kwargs(model, value, num_images: int) -> dict:
    if value is None or value == "":
        raise ValueError("pick a class")
    try:
        k = _whole(value, "the class", 0, model.num_classes - 1)
    except ValueError as err:
        raise ValueError(
            f"unknown class {value!r}: pick one from the list (this model has classes 0 to "
            f"{model.num_classes - 1})"
        ) from err
    return {"classes": [k], "per_class": num_images}


@dataclass(frozen=True)
class ConditionField:
    """One conditioning input of the page: shown for the models that `takes`; `kwargs(model, value, n)`
    checks the page's value and returns ditlab.generate's arguments for n images."""

    name: str
    label: str
    takes: Callable[[object], bool]
    kwargs: Callable[[object, object, int], dict]


CONDITION_FIELDS = (ConditionField("class", "Class", lambda model: model.num_classes > 0, _class_kwargs),)


def fields_of(model) -> list[ConditionField]:
    return [field for field in CONDITION_FIELDS if field.takes(model)]


# ------------------------------------------------------------------------------------------ samplers
def samplers_of(model) -> list[str]:
    """The samplers that walk this model's objective, its default first (the registry refuses the others)."""
    objective = objective_of(model).build()
    usable = []
    for name in SAMPLERS:
        try:
            sampler_timesteps(name, objective, 2)
        except TypeError:  # a sampler of the other objective (flow vs. DDPM)
            continue
        usable.append(name)
    default = objective.default_sampler
    return sorted(usable, key=lambda name: name != default)


# ------------------------------------------------------------------------------------------ one request
@dataclass(frozen=True)
class SampleRequest:
    """The page's values; `conditions` maps a condition field's name to its value."""

    sampler: str
    steps: int
    guidance_scale: float
    seed: int
    num_images: int
    conditions: dict


def generate_kwargs(model, request: SampleRequest, limits: Limits) -> dict:
    """ditlab.generate's arguments for `request`, or a ValueError that says what to change."""
    samplers = samplers_of(model)
    if request.sampler not in samplers:
        raise ValueError(
            f"unknown sampler {request.sampler!r} for this model; choose one of: {', '.join(samplers)}"
        )
    num_images = _whole(request.num_images, "the number of images", 1, limits.max_images)
    kwargs = dict(
        sampler=request.sampler,
        steps=_whole(request.steps, "steps", 1, limits.max_steps),
        seed=_whole(request.seed, "the seed", 0, MAX_SEED),
    )
    try:
        guidance = float(request.guidance_scale)
    except (TypeError, ValueError) as err:
        raise ValueError(f"the guidance scale must be a number, got {request.guidance_scale!r}") from err
    if not (math.isfinite(guidance) and 0 <= guidance <= MAX_GUIDANCE):
        raise ValueError(f"the guidance scale must be between 0 and {MAX_GUIDANCE:g}, got {guidance:g}")
    if guidance != 1 and model.null_class is None:
        raise ValueError(
            "this model was trained without label dropout, so it cannot be guided: set guidance to 1"
        )
    kwargs["guidance_scale"] = guidance
    fields = fields_of(model)
    for field in fields:
        kwargs.update(field.kwargs(model, request.conditions.get(field.name), num_images))
    if not fields:  # unconditional
        kwargs["num_samples"] = num_images
    return kwargs


@dataclass(frozen=True)
class Result:
    grid: Path  # PNG
    npz: Path  # ADM layout: arr_0 uint8 (N, H, W, C), labels int64 (N,)
    images: int


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "model"


def works_on_latents(model) -> bool:
    """Whether the model's outputs need an autoencoder to become images (not 1 or 3 channels)."""
    return model.in_channels not in (1, 3)


def sample_request(
    model, model_name: str, request: SampleRequest, limits: Limits, out_dir: Path, on_step=None, vae=None
):
    """Check `request`, sample it with ditlab.generate, write the grid and the .npz into `out_dir`.

    `on_step(done, total)` is called after every sampler step (total = steps x batches). `vae` decodes the
    latents of latent models (pixel models ignore it, so one server can serve both)."""
    kwargs = generate_kwargs(model, request, limits)
    if works_on_latents(model):
        kwargs["vae"] = vae  # None: ditlab.generate refuses, saying what to pass

    def step(info):
        if on_step is not None:
            on_step(info["batch"] * kwargs["steps"] + info["i"] + 1, info["batches"] * kwargs["steps"])

    images, labels = generate(model, **kwargs, batch_size=limits.max_images, callback=step)
    stem = f"{_slug(model_name)}-seed{kwargs['seed']}"
    if "classes" in kwargs:
        stem = f"{_slug(model_name)}-class{kwargs['classes'][0]}-seed{kwargs['seed']}"
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = save_grid(images, out_dir / f"{stem}.png", nrow=min(len(images), 8))
    npz = save_npz(out_dir / f"{stem}.npz", images, labels)
    return Result(grid, npz, len(images))
