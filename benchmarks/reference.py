"""AdaIN reference-style conditioning on `shapes` (issue 21, item 3): does a model with
`reference_condition="adain"` (ditlab.nn.reference) follow its reference image's colours, against the same
model without the part? Results: benchmarks/spatial.md.

    python benchmarks/reference.py --train-steps 600 --batch-size 32 --samples 64 --threads 1 --out runs/reference
    python benchmarks/reference.py --variants adain --out runs/reference    # one arm (e.g. one per process)
    python benchmarks/reference.py --report runs/reference                  # the table of finished arms

Both arms train `--model` (default DiT-Ti/4, 32 px, unconditional) with flow matching on the same seed, data
order and steps; the adain arm (`ditlab train --condition reference`) sees each training image as its own
reference. Evaluation: `--samples` fresh scenes (train-split scenes past the 50k training images) as
references, one sample each from the same noise in both arms, scored by `ditlab.eval.shapes.reference_agreement`
(correlation of the sample's mean RGB with the reference's; share of samples with the reference's set of
object colours). The plain arm gets the same references only in the scoring: its numbers are the chance level.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ditlab.data.shapes import SPLIT_SIZES, render_scenes, scene_for
from ditlab.eval.shapes import reference_agreement
from ditlab.models.flops import flops
from ditlab.sampling import generate
from ditlab.train import TrainConfig
from ditlab.train.trainer import Trainer

VARIANTS = ("adain", "none")


def eval_references(n: int) -> np.ndarray:
    """uint8 (n, 32, 32, 3) images of fresh scenes: train-split scene ids past the training set."""
    start = SPLIT_SIZES["train"]
    return render_scenes([scene_for("train", start + i) for i in range(n)]).images


def run_arm(variant: str, args) -> dict:
    out = Path(args.out) / variant
    cfg = TrainConfig(
        data="shapes",
        unconditional=True,
        condition="reference" if variant == "adain" else "none",
        model=args.model,
        model_args=dict(learn_sigma=False),
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
    )
    trainer = Trainer(cfg, overwrite=True)
    summary = trainer.run()
    references = eval_references(args.samples)
    as_input = torch.from_numpy(references).permute(0, 3, 1, 2).float() / 127.5 - 1  # [-1, 1], NCHW
    images, _ = generate(
        trainer.ema.model,
        num_samples=len(references),
        references=as_input if variant == "adain" else None,
        steps=args.sample_steps,
        seed=args.seed + 1,
    )
    np.savez_compressed(out / "eval.npz", images=images, references=references)
    result = {
        "variant": variant,
        "gflops": flops(trainer.model),
        "params": trainer.model.num_parameters(),
        "train_steps": args.train_steps,
        "batch_size": args.batch_size,
        "final_loss": summary.get("loss"),
        "train_seconds": summary["seconds"],
        "agreement": reference_agreement(images, references),
    }
    (out / "reference.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def report(folder: Path) -> str:
    rows = []
    for path in sorted(folder.glob("*/reference.json")):
        r = json.loads(path.read_text())
        a = r["agreement"]
        rgb = " / ".join(f"{a['per_channel_correlation'][c]:.2f}" for c in "RGB")
        rows.append(
            f"| {r['variant']} | {r['gflops']:.4f} | {r['params'] / 1e6:.2f}M | {r['train_steps']} | "
            f"{r['final_loss']:.3f} | {a['mean_colour_correlation']:.3f} ({rgb}) | {a['colour_set_match']:.3f} | "
            f"{a['mean_colour_abs_error']:.2f} |"
        )
    head = (
        "| arm | Gflops | params | steps | final loss | mean-colour correlation (R / G / B) | colour set = "
        "reference's | mean-colour abs. error (0-255) |\n|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([head, *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--model", default="DiT-Ti/4")
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--samples", type=int, default=64, help="evaluation references (one sample each)")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/reference")
    parser.add_argument("--report", metavar="DIR", help="print the table of the finished arms under DIR")
    args = parser.parse_args()
    if args.report:
        print(report(Path(args.report)))
        return
    for variant in args.variants:
        print(json.dumps(run_arm(variant, args)))
    print(report(Path(args.out)))


if __name__ == "__main__":
    main()
