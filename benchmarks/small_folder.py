"""Small-data check: a generated two-class image folder (circles, squares), the small-folder recipe, and a
shape test that says whether the samples are recognisable.

The folder: 32×32 RGB PNGs on black, one filled shape each (side 12-18 px, up to 3 px off centre, random
colour); class `circle` (label 0) and class `square` (label 1, axis-aligned). The two differ only in
shape, not colour, so class-coloured blobs do not pass.

The measure (`shape_scores`): a sample is *recognised* when it holds one clean shape (the largest region of
bright pixels, its outline smoothed at one pixel's scale, of a shape's size and aspect, with few stray
pixels elsewhere) whose fill ratio (region pixels / bounding-box area: about 0.79 for these discs, 1 for a
square) is on the side of 0.9 of the class it was asked for. Real images score 100 % (at least 90 % of
squares with one-pixel spurs on a tenth of their outline); noise and empty images are not clean; a round blob
counts as a circle, so a model that has not learnt shapes scores about 50 % or less.

    python benchmarks/small_folder.py                          # write the folder, train the recipe, score
    python benchmarks/small_folder.py --steps 600              # a shorter run, for comparison
    python benchmarks/small_folder.py --checkpoints            # also score the run's earlier checkpoints
    python benchmarks/small_folder.py --write-only data/shapes # just write the folder
    python benchmarks/small_folder.py --score runs/small-folder/model.safetensors --sampler euler \
        --sample-steps 50 --guidance 3                         # score a trained model, other sampling

Prints one JSON line (recipe, steps, threads, accuracy, clean-shape rate, seconds; with --checkpoints the
accuracy of each earlier checkpoint by step) and writes the sample grid to OUT/samples-scored.png (one row
per class).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

CLASSES = ("circle", "square")
SQUARE_FILL = 0.9  # fill ratio threshold: a disc fills π/4 ≈ 0.785 of its box, a square all of it
MIN_COLOUR = 160  # the brightest channel of every shape colour is at least this (background is 0)
SIDE_RANGE = (12, 18)  # the shapes' diameter / side in pixels
STRAY = 0.1  # bright pixels outside the shape, as a fraction of it, that still count as clean
SMOOTH = np.ones((3, 3), bool)  # the outline smoothing of the measure (see shape_fill)
SHIFT = 3  # the largest offset of a shape from the centre, in pixels
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "small-folder.json"


# ---------------------------------------------------------------------------- the folder
def draw_shape(kind: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One (size, size, 3) uint8 image: a filled `kind` ("circle" or "square") of random colour, side and
    position on a black background."""
    side = int(rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1))
    x0, y0 = (int(v) for v in (size - side) // 2 + rng.integers(-SHIFT, SHIFT + 1, size=2))
    colour = rng.integers(0, 256, size=3)
    colour[rng.integers(3)] = rng.integers(MIN_COLOUR, 256)  # bright enough to tell from the background
    yy, xx = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    if kind == "circle":
        r = side / 2
        mask = (xx - x0 - r) ** 2 + (yy - y0 - r) ** 2 <= r * r
    elif kind == "square":
        mask = (xx >= x0) & (xx < x0 + side) & (yy >= y0) & (yy < y0 + side)
    else:
        raise ValueError(f"unknown shape {kind!r}; choose one of: {', '.join(CLASSES)}")
    image = np.zeros((size, size, 3), np.uint8)
    image[mask] = colour
    return image


def write_shapes_folder(root: str | Path, per_class: int = 200, size: int = 32, seed: int = 0) -> Path:
    """Write ROOT/circle/*.png and ROOT/square/*.png (`per_class` each); the same seed, the same files."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(draw_shape(kind, rng, size)).save(root / kind / f"{i:04d}.png")
    return root


# ---------------------------------------------------------------------------- the measure
def shape_fill(image: np.ndarray) -> float | None:
    """The fill ratio of the one shape in an (H, W, C) uint8 image, or None when it holds no clean shape.

    The shape is the largest 4-connected region of bright pixels; the image is clean when that region's
    bounding box has a shape's size and a near-square aspect, and stray bright pixels elsewhere add up to
    at most STRAY of the region (a few specks do not hide a square; noise or several blobs do)."""
    bright = image.max(axis=-1) >= MIN_COLOUR // 2
    regions, count = ndimage.label(bright)
    if count == 0:
        return None
    sizes = np.bincount(regions.ravel())[1:]
    # The outline is smoothed at the scale of one pixel (3×3 closing fills notches, then opening drops
    # spurs) before it is measured: a single pixel stuck to a square's edge would widen its bounding box
    # by a row and, twice over, drop its fill below the threshold, though by eye it is square. Squares and
    # discs of this size pass unchanged; a blob's rounded corners are far larger than a pixel and stay round.
    mask = ndimage.binary_closing(regions == 1 + int(sizes.argmax()), SMOOTH)
    mask = ndimage.binary_opening(mask, SMOOTH)
    if not mask.any() or bright.sum() - mask.sum() > STRAY * mask.sum():
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    lo, hi = SIDE_RANGE[0] - 2, SIDE_RANGE[1] + 2  # a pixel of slack on each side
    if not (lo <= h <= hi and lo <= w <= hi and max(h, w) <= 1.25 * min(h, w)):
        return None
    return float(mask.sum() / (h * w))


def shape_scores(images: np.ndarray, labels: np.ndarray) -> dict:
    """accuracy: the fraction of images that hold a clean shape of their label's class (see the module
    docstring); clean: the fraction that hold a clean shape of either class; per-class accuracy too."""
    fills = [shape_fill(im) for im in images]
    clean = np.array([f is not None for f in fills])
    said = np.array([-1 if f is None else int(f >= SQUARE_FILL) for f in fills])
    labels = np.asarray(labels)
    right = said == labels
    return {
        "accuracy": float(right.mean()),
        "clean": float(clean.mean()),
        "per_class": {name: float(right[labels == c].mean()) for c, name in enumerate(CLASSES)},
    }


# ---------------------------------------------------------------------------- the run
def score_model(model, cfg, samples_per_class: int = 50, grid: Path | None = None) -> dict:
    """Sample every class of `model` with `cfg`'s sampler, steps and guidance and score the samples; with
    `grid`, also write the first 16 samples of each class there (one row per class)."""
    from ditlab.data import save_grid
    from ditlab.sampling import generate

    images, labels = generate(
        model,
        per_class=samples_per_class,
        sampler=cfg.sampler,
        steps=cfg.sample_steps,
        guidance_scale=cfg.guidance_scale,
        seed=1,  # not the training seed: fresh noise
        batch_size=100,
    )
    if grid is not None:
        shown = images.reshape(len(CLASSES), samples_per_class, *images.shape[1:])[:, :16]
        save_grid(shown.reshape(-1, *images.shape[1:]), grid, nrow=16)
    return shape_scores(images, labels)


def train_and_score(cfg, samples_per_class: int = 50, checkpoints: bool = False) -> dict:
    """Train `cfg` (a TrainConfig on a shapes folder) and score its final EMA model (see `score_model`);
    writes OUT/samples-scored.png. With `checkpoints`, also the accuracy of every earlier checkpoint the run
    kept, by step: how far along training the shapes appear."""
    from ditlab import load_model
    from ditlab.train import train
    from ditlab.train.state import list_checkpoints

    summary = train(cfg)
    out = Path(cfg.out)
    scores = score_model(
        load_model(out / "model.safetensors"), cfg, samples_per_class, out / "samples-scored.png"
    )
    result = {"train_steps": summary["step"], "final_loss": summary.get("loss"), **scores}
    if checkpoints:
        result["checkpoint_accuracy"] = {
            step: score_model(load_model(path), cfg, samples_per_class)["accuracy"]
            for step, path in list_checkpoints(out)
            if step < summary["step"]
        }
    return result


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=str(RECIPE), help=f"TrainConfig JSON (default {RECIPE.name})")
    p.add_argument("--data", default="runs/shapes-data", help="where to write the shapes folder")
    p.add_argument("--out", default="runs/small-folder", help="run directory")
    p.add_argument("--per-class", type=int, default=200, help="training images per class (default 200)")
    p.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    p.add_argument("--samples", type=int, default=50, help="samples per class to score (default 50)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    p.add_argument("--checkpoints", action="store_true", help="also score every earlier checkpoint kept")
    p.add_argument("--write-only", metavar="DIR", help="only write the shapes folder to DIR and exit")
    p.add_argument("--score", metavar="MODEL", help="no training: score this trained model (a .safetensors)")
    p.add_argument("--sampler", help="sampler of the scored samples (default: the recipe's)")
    p.add_argument("--sample-steps", type=int, help="sampling steps (default: the recipe's)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the recipe's)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from ditlab.train import TrainConfig

    args = parse_args(argv)
    if args.write_only:
        print(write_shapes_folder(args.write_only, per_class=args.per_class))
        return 0
    cfg = TrainConfig.load(args.recipe).replace(out=args.out, threads=args.threads)
    sampling = dict(sampler=args.sampler, sample_steps=args.sample_steps, guidance_scale=args.guidance)
    cfg = cfg.replace(**{k: v for k, v in sampling.items() if v is not None})
    if args.steps:
        cfg = cfg.replace(steps=args.steps)
    start = time.perf_counter()
    if args.score:
        from ditlab import load_model
        from ditlab.runtime import configure_threads

        configure_threads(args.threads)
        result = score_model(load_model(args.score), cfg, args.samples)
        result = {
            "model": args.score,
            "sampler": cfg.sampler,
            "sample_steps": cfg.sample_steps,
            "guidance": cfg.guidance_scale,
            **result,
        }
    else:
        cfg = cfg.replace(data=str(write_shapes_folder(args.data, per_class=args.per_class)))
        result = train_and_score(cfg, samples_per_class=args.samples, checkpoints=args.checkpoints)
    line = {"recipe": args.recipe, "steps": cfg.steps, "threads": args.threads, **result}
    line["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
