"""The demo's recipe against one change of objective or sampler (issue 18, the demo target): classifier FD and
class accuracy of the same number of samples at several guidance scales and sampling seeds, each arm's model
trained by `ditlab demo`'s recipe.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/demo_recipe.py --arm demo --out runs/demo-flow
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/demo_recipe.py --arm ddpm --out runs/demo-ddpm
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/demo_recipe.py --score ditlab-demo/model.safetensors \
        --sampler euler 50 --guidance 1.0 1.25 --seeds 0 1 2 3     # score a trained model, no training

Arms: `demo` is `ditlab.demo.DEMO_RECIPE` as it is (rectified flow, t drawn uniformly, sampled by `euler_sde`
at 50 steps); `ddpm` is the demo's recipe before it (the DiT objective: DDPM, learned variance, sampled with
DPM-Solver++(2M) at 25 steps); `flow` is the demo with logit-normal timesteps, sampled with Heun at 13 steps.
Each guidance scale and sampling seed samples `--per-class` images of every digit and scores them as the demo
does (the in-domain classifier's FD against the test split, its accuracy on the requested class, and the real
data's own floor). One JSON line per scale and seed; run the arms as separate processes (side by side, one
thread each, for equal load).
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
    "demo": ({}, DEMO_RECIPE["sampler"], DEMO_RECIPE["sample_steps"]),
    "ddpm": ({"objective": "ddpm", "sampler": None, "guidance_scale": 1.0}, "dpmpp_2m", 25),
    "flow": ({"timestep_sampling": "logit_normal"}, "heun", 13),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arm", choices=ARMS, default="demo")
    p.add_argument("--out", help="the arm's run folder (replaced)")
    p.add_argument("--score", metavar="MODEL", help="score this trained model instead of training an arm")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="sampling seeds, one row each")
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
    args = p.parse_args(argv)
    if not args.score and not args.out:
        p.error("give --out (train an arm there) or --score MODEL")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    changes, sampler, steps = ARMS[args.arm]
    if args.sampler:
        sampler, steps = args.sampler[0], int(args.sampler[1])
    extra = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    train_seconds = None
    if args.score:
        model = ditlab.load_model(args.score)
    else:
        recipe = {**DEMO_RECIPE, **changes, **extra, "steps": args.train_steps}
        cfg = TrainConfig(**recipe, out=args.out, threads=args.threads, progress=False)
        start = time.perf_counter()
        train(cfg, overwrite=True)
        train_seconds = round(time.perf_counter() - start, 1)
        model = ditlab.load_model(f"{args.out}/model.safetensors")
    rows = []
    for scale in args.guidance:
        for seed in args.seeds:
            images, labels = generate(
                model, per_class=args.per_class, sampler=sampler, steps=steps, guidance_scale=scale, seed=seed,
                batch_size=250, progress=False,
            )  # fmt: skip
            result = evaluate(images, labels, ref="digits:test", features=["classifier:digits"])
            scores = result["metrics"]["classifier:digits"]
            floor = (scores.get("floor") or {}).get("fd")
            row = {
                "arm": args.score or args.arm,
                "set": extra,
                "train_seconds": train_seconds,
                "sampler": f"{sampler}-{steps}",
                "guidance": scale,
                "seed": seed,
                "samples": len(images),
                "class_accuracy": scores.get("class_accuracy"),
                "classifier_fd": scores.get("fd"),
                "floor": floor,
                "fd_over_floor": round(scores["fd"] / floor, 3) if floor else None,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
