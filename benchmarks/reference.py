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
import sys
from pathlib import Path

import numpy as np
import torch

from ditlab.eval.shapes import reference_agreement
from ditlab.sampling import generate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spatial import (  # noqa: E402  (the shapes studies' shared setup)
    ARM_HEAD,
    add_study_arguments,
    arm_cells,
    eval_scenes,
    run_study,
    shapes_run,
    train_arm,
)

VARIANTS = ("adain", "none")


def run_arm(variant: str, args) -> dict:
    out = Path(args.out) / variant
    condition = "reference" if variant == "adain" else "none"
    cfg = shapes_run(args, out, unconditional=True, condition=condition, model_args=dict(learn_sigma=False))
    trainer, result = train_arm(variant, cfg, args)
    references = eval_scenes(args.samples).images
    as_input = torch.from_numpy(references).permute(0, 3, 1, 2).float() / 127.5 - 1  # [-1, 1], NCHW
    images, _ = generate(
        trainer.ema.model,
        num_samples=len(references),
        references=as_input if variant == "adain" else None,
        steps=args.sample_steps,
        seed=args.seed + 1,
    )
    np.savez_compressed(out / "eval.npz", images=images, references=references)
    result["agreement"] = reference_agreement(images, references)
    (out / "reference.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def report(folder: Path) -> str:
    rows = []
    for path in sorted(folder.glob("*/reference.json")):
        r = json.loads(path.read_text())
        a = r["agreement"]
        rgb = " / ".join(f"{a['per_channel_correlation'][c]:.2f}" for c in "RGB")
        rows.append(
            f"{arm_cells(r)}{r['final_loss']:.3f} | {a['mean_colour_correlation']:.3f} ({rgb}) | {a['colour_set_match']:.3f} | "
            f"{a['mean_colour_abs_error']:.2f} |"
        )
    head = (
        f"{ARM_HEAD}final loss | mean-colour correlation (R / G / B) | colour set = "
        "reference's | mean-colour abs. error (0-255) |\n|---|---|---|---|---|---|---|---|"
    )
    return "\n".join([head, *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    add_study_arguments(
        parser, train_steps=600, lr=1e-3, sample_steps=20, samples="evaluation references (one sample each)",
        out="runs/reference",
    )  # fmt: skip
    run_study(parser.parse_args(), run_arm, report)


if __name__ == "__main__":
    main()
