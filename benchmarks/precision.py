"""bf16 vs fp32 training at equal wall-clock (issue 18 item 5): does bf16 autocast keep the quality per
CPU-hour on a CPU with native bf16? The measurement behind `--precision auto` (ditlab.runtime), and, with
--startup-ratios, the start-up timing auto decides by for the bundled recipes and the demo.

    python benchmarks/precision.py --recipe recipes/fashion-mnist.json --minutes 30 --samples 2000 \\
        --threads 2 --write benchmarks/precision.md
    python benchmarks/precision.py --quick        # smoke test: tiny digits runs, numbers mean nothing
    python benchmarks/precision.py --startup-ratios --threads 2   # what auto measures per recipe (~1 min)

For each precision, trains the recipe (a fresh run in --out/<precision>) for the same wall-clock budget
(training steps only: stopped at the first step past the budget; the recipe's own step count is a ceiling),
then samples its EMA model with the recipe's sampler and scores the samples against the data's test split
(FD-EffNetLite0, classifier FD, class accuracy). Prints the CPU's bf16 detection with the table, and one JSON
line per precision. Needs a quiet machine: a busy one times the two runs differently. Measured in
benchmarks/precision.md (bf16 better at equal wall-clock on an AMX CPU); auto takes bf16 on such a CPU where
a training step of the run's model times BF16_MIN_SPEEDUP faster (see that file).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402

from ditlab.demo import DEMO_RECIPE
from ditlab.eval.evaluate import evaluate_model, fd_record, parse_features
from ditlab.runtime import BF16_MIN_SPEEDUP, native_bf16
from ditlab.train import TrainConfig, Trainer


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="recipes/fashion-mnist.json", help="TrainConfig JSON to train")
    p.add_argument(
        "--minutes", type=float, default=30.0, help="training wall-clock per precision, in minutes"
    )
    p.add_argument("--samples", type=int, default=2000, help="samples scored per run, in images")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="override a recipe field")
    p.add_argument("--out", default="runs/precision", help="folder of the runs")
    p.add_argument("--write", help="write the Markdown table here")
    p.add_argument("--quick", action="store_true", help="smoke test: DiT-Nano/2 on digits, seconds per run")
    p.add_argument(
        "--startup-ratios",
        action="store_true",
        help="instead: the start-up bf16 timing --precision auto decides by, for the demo and the recipes",
    )
    p.add_argument("--repeats", type=int, default=5, help="--startup-ratios: start-ups timed per run")
    args = p.parse_args(argv)
    if args.quick:
        args.minutes, args.samples, args.out = 0.05, 100, "/tmp/ditlab-precision-quick"
        args.set = [*QUICK, *args.set]
    return args


# --quick: a tiny digits run instead of the recipe's model and data, scored with EfficientNet-Lite0 only
QUICK = [
    'data="digits"',
    'model="DiT-Nano/2"',
    "batch_size=16",
    "sample_steps=4",
    'eval_features="effnet-lite0"',
]


def recipe_config(args, precision: str) -> TrainConfig:
    fields = json.loads(Path(args.recipe).read_text())
    for item in args.set:
        key, _, value = item.partition("=")
        fields[key] = json.loads(value)
    fields.update(
        precision=precision,
        threads=args.threads,
        out=str(Path(args.out) / precision),
        progress=False,
        eval_every=0,
        sample_every=0,
        ckpt_every=10**9,
    )
    return TrainConfig.from_dict(fields)


def train_for(cfg: TrainConfig, seconds: float) -> tuple[Trainer, int, float]:
    """Train until `seconds` of training steps have run (or the recipe's steps are done)."""
    trainer = Trainer(cfg, overwrite=True)
    start = time.perf_counter()
    while trainer.step < trainer.total_steps and time.perf_counter() - start < seconds:
        trainer.train_step()
    return trainer, trainer.step, time.perf_counter() - start


def measure(args, precision: str) -> dict:
    cfg = recipe_config(args, precision)
    trainer, steps, seconds = train_for(cfg, 60.0 * args.minutes)
    result = evaluate_model(
        trainer.ema.model,
        args.samples,
        ref=cfg.eval_ref or f"{cfg.data}:test",
        features=parse_features(cfg.eval_features),
        sampler=cfg.sampler,
        steps=cfg.sample_steps,
        guidance_scale=cfg.guidance_scale,
        seed=cfg.seed + 12345,
        device=trainer.device,
        floor=False,
        resize_ref=True,
    )
    return {
        "precision": trainer.precision,
        "steps": steps,
        "train_seconds": round(seconds, 1),
        "steps_per_s": round(steps / max(seconds, 1e-9), 3),
        **fd_record(result),
    }


def table(rows: list[dict], detection: dict, args) -> str:
    keys = [k for k in rows[0] if k != "precision"]
    lines = [
        f"bf16 vs fp32 at {args.minutes:g} min of training each, {args.recipe}, {args.samples} samples",
        f"machine: {json.dumps(_timing.machine(args.threads))}",
        f"CPU bf16: {json.dumps(detection)}",
        f"command: python benchmarks/precision.py {' '.join(sys.argv[1:])}",
        "",
        "| precision | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    lines += [f"| {r['precision']} | " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# --startup-ratios: what `--precision auto` times at start-up, for the runs users start most
STARTUP_RUNS = {
    "a test's tiny config (DiT-Nano/2, digits)": dict(
        data="digits", model="DiT-Nano/2", batch_size=16, steps=4
    ),
    "ditlab demo (DiT-Ti/2, digits 8x8)": DEMO_RECIPE,
    "recipes/fashion-mnist.json": "recipes/fashion-mnist.json",
    "recipes/shapes-t2i.json": "recipes/shapes-t2i.json",
}


def startup_ratios(args) -> str:
    """Build each STARTUP_RUNS trainer `args.repeats` times with --precision auto and collect the bf16
    speedup its start-up timing measured (on a CPU with native bf16; elsewhere auto times nothing)."""
    lines = [
        f"start-up bf16 speedup (fp32 / bf16 step time), {args.repeats} start-ups each; auto takes bf16 from "
        f"{BF16_MIN_SPEEDUP}x",
        f"machine: {json.dumps(_timing.machine(args.threads))}",
        "",
        "| run | min | max | auto picks |",
        "|---|---:|---:|---|",
    ]
    for name, fields in STARTUP_RUNS.items():
        fields = json.loads(Path(fields).read_text()) if isinstance(fields, str) else dict(fields)
        ratios, picks = [], set()
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as out:
                cfg = {**fields, "precision": "auto", "threads": args.threads, "out": out, "progress": False}
                trainer = Trainer(TrainConfig.from_dict(cfg))
                ratios.append(trainer.bf16_speedup)
                picks.add(trainer.precision)
        if None in ratios:
            return (
                f"this CPU has no native bf16: auto keeps fp32 without timing ({json.dumps(native_bf16())})\n"
            )
        lines.append(f"| {name} | {min(ratios):.2f}x | {max(ratios):.2f}x | {', '.join(sorted(picks))} |")
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    args.threads = _timing.setup(args.threads)
    if args.startup_ratios:
        print(startup_ratios(args))
        return 0
    detection = native_bf16()
    if "bf16" in args.precisions and not detection["native"]:
        print("warning: this CPU has no native bf16: bf16 will be slow here", file=sys.stderr)
    rows = [measure(args, precision) for precision in args.precisions]
    text = table(rows, detection, args)
    print(text)
    if args.write:
        Path(args.write).write_text(text)
    for row in rows:
        _timing.emit("precision", **row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
