"""The demo's recipe against one change of objective (issue 18, the demo target): classifier FD and class accuracy
of the same number of samples at several guidance scales, each arm's model trained by `ditlab demo`'s recipe.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/demo_recipe.py --arm ddpm --out runs/demo-ddpm
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/demo_recipe.py --arm flow --out runs/demo-flow

Arms: `ddpm` is `ditlab.demo.DEMO_RECIPE` as it is (DDPM, learned variance, sampled with DPM-Solver++(2M) at
25 steps, as the demo samples); `flow` is the same recipe with rectified flow and logit-normal timesteps,
sampled with Heun at 13 steps (25 model evaluations, as many as the demo's sampler); `flow-uniform` is `flow`
with t drawn uniformly (logit-normal rarely draws the nearly clean t where the last strokes are decided). Each guidance scale samples
`--per-class` images of every digit from the same seed and scores them as the demo does (the in-domain
classifier's FD against the test split, its accuracy on the requested class, and the real data's own floor).
One JSON line per scale; run the arms as separate processes (side by side, one thread each, for equal load).
"""

from __future__ import annotations

import argparse
import json
import time

import ditlab
from ditlab.demo import DEMO_RECIPE
from ditlab.eval import evaluate
from ditlab.sampling import generate
from ditlab.train import train
from ditlab.train.config import TrainConfig

# arm -> (TrainConfig changes to the demo recipe, sampler, sampler steps)
ARMS = {
    "ddpm": ({}, "dpmpp_2m", 25),
    "flow": ({"objective": "flow", "timestep_sampling": "logit_normal"}, "heun", 13),
    "flow-uniform": ({"objective": "flow", "timestep_sampling": "uniform"}, "heun", 13),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arm", choices=ARMS, required=True)
    p.add_argument("--out", required=True, help="the arm's run folder (replaced)")
    p.add_argument("--train-steps", type=int, default=DEMO_RECIPE["steps"])
    p.add_argument("--per-class", type=int, default=50, help="samples per digit and scale")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--sampler", nargs=2, metavar=("NAME", "STEPS"), help="sample with this instead of the arm's"
    )
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=JSON",
        help="further TrainConfig changes, e.g. lr_schedule='\"cosine\"'",
    )
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    changes, sampler, steps = ARMS[args.arm]
    if args.sampler:
        sampler, steps = args.sampler[0], int(args.sampler[1])
    extra = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    recipe = {**DEMO_RECIPE, **changes, **extra, "steps": args.train_steps}
    cfg = TrainConfig(**recipe, out=args.out, threads=args.threads, progress=False)
    start = time.perf_counter()
    train(cfg, overwrite=True)
    train_seconds = time.perf_counter() - start
    model = ditlab.load_model(f"{args.out}/model.safetensors")
    rows = []
    for scale in args.guidance:
        images, labels = generate(
            model, per_class=args.per_class, sampler=sampler, steps=steps, guidance_scale=scale, seed=0,
            batch_size=250, progress=False,
        )  # fmt: skip
        result = evaluate(images, labels, ref="digits:test", features=["classifier:digits"])
        scores = result["metrics"]["classifier:digits"]
        row = {
            "arm": args.arm,
            "set": extra,
            "train_seconds": round(train_seconds, 1),
            "sampler": f"{sampler}-{steps}",
            "guidance": scale,
            "samples": len(images),
            "class_accuracy": scores.get("class_accuracy"),
            "classifier_fd": scores.get("fd"),
            "floor": (scores.get("floor") or {}).get("fd"),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
