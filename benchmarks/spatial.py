"""Layout fidelity of layout-to-image on `shapes`: SPADE per-token modulation vs concatenating the mask to the
input channels (the ControlNet-free baseline), at equal Gflops and equal steps. Results: benchmarks/spatial.md.

    python benchmarks/spatial.py --train-steps 400 --batch-size 32 --samples 64 --threads 1 --out runs/spatial
    python benchmarks/spatial.py --variants spade --out runs/spatial      # one arm (e.g. one per process)
    python benchmarks/spatial.py --report runs/spatial                    # the table of finished arms

Each arm trains `--model` (default DiT-Ti/4, 32 px) with `ditlab train --data shapes --condition layout`'s
code path, then samples one image per layout of `--samples` fresh scenes (train-split scenes past the 50k
training images: seen objects, unseen layouts) and scores them with `ditlab.eval.shapes.layout_iou`
(per-class IoU between the requested mask and the generated image's segmentation). The concat arm gets the
SPADE arm's extra Gflops as MLP width (mlp_ratio), so both cost the same per image. The spade-head arm
adds the AdaGN pixel head (`pixel_head="adagn"`, ditlab.nn.pixel_head: the layout modulates the head per
pixel); with `--match spade-head` every other arm is widened to its Gflops:

    python benchmarks/spatial.py --variants spade spade-head concat --match spade-head --out runs/spatial3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ditlab.data.shapes import SPLIT_SIZES, ShapesArrays, render_scenes, scene_for
from ditlab.eval.shapes import layout_iou
from ditlab.models.flops import flops
from ditlab.models.zoo import create_model
from ditlab.sampling import generate
from ditlab.train import TrainConfig
from ditlab.train.trainer import Trainer

K = 13  # background + 12 object classes


VARIANTS = ("spade", "spade-entry", "spade-head", "concat")


DEPTH = None  # --depth: the model's blocks (None: the preset's), set by main()


def base_args(model: str, hidden: int) -> dict:
    args = dict(input_size=32, in_channels=3, num_classes=0, learn_sigma=False, spatial_hidden=hidden)
    return args if DEPTH is None else {**args, "depth": DEPTH}


def variant_args(variant: str, hidden: int, head_width: int) -> dict:
    """An arm's own model_args before the Gflops match: SPADE in the blocks (and, spade-head, the AdaGN pixel
    head with the layout per pixel), or the mask concatenated to the input."""
    if variant == "concat":
        return dict(spatial_condition="concat", layout_channels=K)
    spade = dict(spatial_condition="spade", layout_channels=K, spatial_hidden=hidden)
    if variant == "spade-entry":  # SPADE also modulates the embedded tokens (spatial_entry)
        spade.update(spatial_entry=True)
    if variant == "spade-head":
        spade.update(pixel_head="adagn", pixel_head_width=head_width)
    return spade


def arm_gflops(model: str, hidden: int, args: dict) -> float:
    return flops(create_model(model, **{**base_args(model, hidden), **args}).config)


def matched_mlp_ratio(model: str, target: float, hidden: int, args: dict) -> float:
    """The mlp_ratio (≥ 4, in steps of 1/64) whose Gflops for the arm `args` come closest to `target` (the
    costliest arm's); a ValueError if even a 64× MLP stays below it."""
    best = None
    for step in range(0, 60 * 64 + 1):
        ratio = 4.0 + step / 64
        g = arm_gflops(model, hidden, {**args, "mlp_ratio": ratio})
        if best is None or abs(g - target) < abs(best[1] - target):
            best = (ratio, g)
        if g > target:
            return best[0]
    raise ValueError(f"no mlp_ratio up to 64 reaches {target:.4f} Gflops for {args}; match a cheaper arm")


def arm_args(variant: str, model: str, hidden: int, head_width: int, match: str) -> dict:
    """The arm's model_args: its own, with the MLP widened until its Gflops equal the `match` arm's (the
    costliest of the compared arms; that arm keeps mlp_ratio 4)."""
    own = variant_args(variant, hidden, head_width)
    if variant == match:
        return own
    target = arm_gflops(model, hidden, variant_args(match, hidden, head_width))
    return {**own, "mlp_ratio": matched_mlp_ratio(model, target, hidden, own)}


def eval_scenes(n: int) -> ShapesArrays:
    """n fresh scenes (images and masks): train-split scene ids past the training set (seen objects only)."""
    start = SPLIT_SIZES["train"]
    return render_scenes([scene_for("train", start + i) for i in range(n)])


def shapes_run(args, out: Path, **fields) -> TrainConfig:
    """The training setup the shapes studies share (this one and benchmarks/reference.py): `args.model` with
    flow matching, AdamW at `args.lr` with 10% warm-up (at most 100 steps), EMA 0.999 with warm-up, one
    checkpoint at the end; `fields` add the study's own (condition, model_args, ...)."""
    return TrainConfig(
        data="shapes",
        model=args.model,
        objective="flow",
        steps=args.train_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=min(100, args.train_steps // 10),
        ema_decay=0.999,
        ema_warmup=True,
        threads=args.threads,
        out=str(out),
        ckpt_every=max(args.train_steps, 1),
        sample_steps=args.sample_steps,
        progress=False,
        seed=args.seed,
        **fields,
    )


def train_arm(variant: str, cfg: TrainConfig, args) -> tuple[Trainer, dict]:
    """Train one arm; -> the trainer and its record's common fields (Gflops, parameters, loss, time)."""
    trainer = Trainer(cfg, overwrite=True)
    summary = trainer.run()
    return trainer, {
        "variant": variant,
        "gflops": flops(trainer.model),
        "params": trainer.model.num_parameters(),
        "model_args": cfg.model_args,
        "train_steps": args.train_steps,
        "batch_size": args.batch_size,
        "final_loss": summary.get("loss"),
        "train_seconds": summary["seconds"],
    }


def add_study_arguments(parser, *, train_steps: int, lr: float, sample_steps: int, samples: str, out: str):
    """The flags the shapes studies share (this one and benchmarks/reference.py), with each study's defaults."""
    a = parser.add_argument
    a("--model", default="DiT-Ti/4")
    a("--train-steps", type=int, default=train_steps)
    a("--batch-size", type=int, default=32)
    a("--lr", type=float, default=lr)
    a("--samples", type=int, default=64, help=samples)
    a("--sample-steps", type=int, default=sample_steps)
    a("--threads", type=int, default=1)
    a("--seed", type=int, default=0)
    a("--out", default=out)
    a("--report", metavar="DIR", help="print the table of the finished arms under DIR")


def run_study(args, run_arm, report) -> None:
    """`--report DIR`: the table of DIR's finished arms; else each of `--variants` trained and scored (a JSON
    line each), then the table of `--out`."""
    if args.report:
        print(report(Path(args.report)))
        return
    for variant in args.variants:
        print(json.dumps(run_arm(variant, args)))
    print(report(Path(args.out)))


def arm_cells(r: dict) -> str:
    """The cells every study table row starts with: arm, Gflops, parameters, training steps (ARM_HEAD)."""
    return f"| {r['variant']} | {r['gflops']:.4f} | {r['params'] / 1e6:.2f}M | {r['train_steps']} | "


ARM_HEAD = "| arm | Gflops | params | steps | "


def run_arm(variant: str, args) -> dict:
    out = Path(args.out) / variant
    model_args = arm_args(variant, args.model, args.hidden, args.head_width, args.match)
    if DEPTH is not None:
        model_args["depth"] = DEPTH
    cfg = shapes_run(args, out, condition="layout", model_args=model_args, guidance_scale=args.guidance[0])
    trainer, result = train_arm(variant, cfg, args)
    layouts = eval_scenes(args.samples).masks
    result["by_guidance"] = {}
    for scale in args.guidance:
        images, _ = generate(
            trainer.ema.model,
            num_samples=len(layouts),
            layouts=layouts.astype(np.int64),
            steps=args.sample_steps,
            guidance_scale=scale,
            seed=args.seed + 1,
        )
        np.savez_compressed(out / f"eval_g{scale}.npz", images=images, layouts=layouts)
        result["by_guidance"][str(scale)] = layout_iou(images, layouts)
    (out / "spatial.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def report(folder: Path) -> str:
    rows = []
    for path in sorted(folder.glob("*/spatial.json")):
        r = json.loads(path.read_text())
        for scale, iou in r["by_guidance"].items():
            rows.append(
                f"{arm_cells(r)}{scale} | {iou['mean_iou']:.3f} | {iou['mean_iou_with_background']:.3f} | "
                f"{iou['pixel_accuracy']:.3f} |"
            )
    head = (
        f"{ARM_HEAD}guidance | mean IoU (12 objects) | mean IoU (+ background) | "
        "pixel acc. |\n|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([head, *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["spade", "concat"], choices=VARIANTS)
    parser.add_argument(
        "--match",
        default="spade",
        choices=VARIANTS,
        help="the arm whose Gflops the others are widened to (their MLP); pick the costliest compared arm",
    )
    parser.add_argument("--head-width", type=int, default=32, help="spade-head: pixel_head_width")
    parser.add_argument("--depth", type=int, help="blocks of the model (default: the preset's)")
    parser.add_argument("--hidden", type=int, default=16, help="SPADE's shared conv width (spatial_hidden)")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0])
    add_study_arguments(
        parser, train_steps=400, lr=5e-4, sample_steps=25, samples="evaluation layouts (one image each)",
        out="runs/spatial",
    )  # fmt: skip
    args = parser.parse_args()
    global DEPTH
    DEPTH = args.depth
    run_study(args, run_arm, report)


if __name__ == "__main__":
    main()
