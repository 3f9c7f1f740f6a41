"""Sampling quality per second: Fréchet distance reached versus wall-clock seconds per 100 images, for the
reference sampler (DDPM-250), DDIM-50 and the fast solver (DPM-Solver++(2M)) at 10-25 steps, on one trained
model with the same labels and initial noise for every sampler.

    python benchmarks/sampling_quality.py --model runs/fmnist-ddpm/model.safetensors --samples 1000 \\
        --plot benchmarks/sampling_quality.png
    python benchmarks/sampling_quality.py --model RUN/model.safetensors --guidance 1.5 --specs ddpm:250,dpmpp_2m:20
    python benchmarks/sampling_quality.py --quick      # smoke test: trains a tiny digits model first (~1 min)

Flow-matching models get Euler-250 as the reference and Euler-50, Heun at 5-12 steps (10-24 evaluations)
as the fast samplers. Seconds are the whole `ditlab.sample` call (noise, every model evaluation, the sampler's
arithmetic, conversion to uint8) divided per 100 images; FD is `ditlab.eval.evaluate` against --ref (default:
the model's dataset test split) with each --features extractor, the first one deciding. Target (issue 6):
the fastest sampler whose FD is within 5% of the reference's needs ≥ 10× fewer seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402

from ditlab.eval import default_features, evaluate  # noqa: E402
from ditlab.models import load_model  # noqa: E402
from ditlab.sampling import generate, objective_of  # noqa: E402

DEFAULT_SPECS = {
    "ddpm": "ddpm:250,ddim:50,dpmpp_2m:10,dpmpp_2m:15,dpmpp_2m:20,dpmpp_2m:25",
    "flow": "euler:250,euler:50,heun:5,heun:8,heun:10,heun:12",
}
QUICK_SPECS = {"ddpm": "ddpm:50,ddim:10,dpmpp_2m:5,dpmpp_2m:10", "flow": "euler:50,euler:10,heun:3,heun:5"}
EVALUATIONS_PER_STEP = {"heun": 2}  # model evaluations per step (Heun corrects every step)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a trained model file (ditlab checkpoint / model.safetensors)")
    p.add_argument("--quick", action="store_true", help="smoke test: train a tiny digits model, few samples")
    p.add_argument("--specs", default=None, help="sampler:steps list, the first is the reference")
    p.add_argument("--samples", type=int, default=1000, help="images per sampler")
    p.add_argument("--batch-size", type=int, default=250, help="images per sampling batch")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    p.add_argument("--ref", default=None, help="FD reference (default: DATA:test of the model's data)")
    p.add_argument("--data", default=None, help="the model's dataset, for the default --ref")
    p.add_argument("--features", default=None, help="comma-separated extractors (default: eval's default)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=None, help="write FD-vs-seconds (PNG) here")
    p.add_argument("--write", default=None, help="also write the Markdown summary to this file")
    return p.parse_args(argv)


def parse_specs(text: str) -> list[tuple[str, int]]:
    out = []
    for part in text.split(","):
        name, _, steps = part.strip().partition(":")
        if not steps.isdigit():
            raise ValueError(f"bad sampler spec {part!r}: use SAMPLER:STEPS, e.g. ddpm:250,dpmpp_2m:20")
        out.append((name, int(steps)))
    return out


def train_quick_model(folder: Path, threads: int) -> Path:
    """A tiny DDPM DiT on the bundled digits, trained for a minute: enough for FD to rank the samplers."""
    from ditlab.train import TrainConfig, train

    cfg = TrainConfig(
        data="digits",
        model="DiT-Nano/2",
        steps=300,
        batch_size=64,
        lr=2e-3,
        warmup_steps=50,
        ema_decay=0.99,
        ema_warmup=True,
        sample_steps=10,
        ckpt_every=10_000,
        log_every=100,
        out=str(folder),
        threads=threads,
        progress=False,
    )
    return Path(train(cfg)["model"])


def plot(rows: list[dict], key: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        pts = [r for r in rows if r["sampler"] == sampler]
        ax.plot([r["seconds_per_100"] for r in pts], [r[key] for r in pts], "o-", label=sampler)
        for r in pts:
            ax.annotate(
                str(r["steps"]),
                (r["seconds_per_100"], r[key]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set_xlabel("seconds per 100 images")
    ax.set_ylabel(f"FD ({key.removeprefix('fd_')})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = _timing.setup(args.threads)
    machine = _timing.machine(threads)
    _timing.emit("machine", **machine)
    tmp = None
    if args.quick and not args.model:
        tmp = tempfile.TemporaryDirectory(prefix="ditlab-bench-")
        args.model = str(train_quick_model(Path(tmp.name) / "run", threads))
        args.data = "digits"
        args.samples = min(args.samples, 200)
    if not args.model:
        raise SystemExit("give --model PATH (a trained model), or --quick")
    model = load_model(args.model)
    spec = objective_of(model)
    specs = parse_specs(args.specs or (QUICK_SPECS if args.quick else DEFAULT_SPECS)[spec.kind])
    ref = args.ref or (f"{args.data}:test" if args.data else None)
    if ref is None:
        raise SystemExit("give --ref (e.g. fashion-mnist:test) or --data (the model's dataset)")
    features = tuple(args.features.split(",")) if args.features else default_features(ref)
    keys = [f"fd_{name.split(':')[0].replace('-', '_')}" for name in features]

    rows = []
    for name, steps in specs:
        start = time.perf_counter()
        images, labels = generate(
            model,
            num_samples=args.samples,
            sampler=name,
            steps=steps,
            guidance_scale=args.guidance,
            seed=args.seed,  # the same labels and initial noise for every sampler
            batch_size=args.batch_size,
        )
        seconds = time.perf_counter() - start
        result = evaluate(
            images, labels if model.num_classes else None, ref=ref, features=features, floor=False
        )
        fds = {key: entry["fd"] for key, entry in zip(keys, result["metrics"].values())}
        rows.append(
            _timing.emit(
                "sampling_quality",
                model=args.model,
                sampler=name,
                steps=steps,
                evaluations=steps * EVALUATIONS_PER_STEP.get(name, 1),
                guidance=args.guidance,
                samples=args.samples,
                seconds_per_100=100 * seconds / args.samples,
                **fds,
            )
        )
    key = keys[0]
    reference = rows[0]
    for r in rows:
        r["speedup"] = reference["seconds_per_100"] / r["seconds_per_100"]
        r["fd_ratio"] = r[key] / reference[key]
    within = [r for r in rows[1:] if r["fd_ratio"] <= 1.05]
    best = min(within, key=lambda r: r["seconds_per_100"]) if within else None
    title = "### Sampling quality per second (benchmarks/sampling_quality.py"
    title += " --quick: a 1-minute digits model, 5× fewer steps)" if args.quick else ")"
    lines = [
        title,
        "",
        f"{args.model} ({spec.kind}), {args.samples} samples per sampler, guidance {args.guidance}, FD against "
        f"{ref} with {', '.join(features)}; {machine['cpu']}, {threads} threads.",
        "",
        _timing.markdown_table(
            rows,
            [
                ("sampler", "sampler", ""),
                ("steps", "steps", "d"),
                ("evaluations", "evaluations", "d"),
                ("s / 100 images", "seconds_per_100", ".2f"),
                *[(k.removeprefix("fd_") + " FD", k, ".3f") for k in keys],
                (f"FD / {reference['sampler']}-{reference['steps']}", "fd_ratio", ".3f"),
                ("speed-up", "speedup", ".1f"),
            ],
        ),
        "",
    ]
    if best is None:
        lines.append(
            f"No sampler came within 5% of {reference['sampler']}-{reference['steps']}'s FD: target NOT met."
        )
    else:
        ok = best["speedup"] >= 10
        lines.append(
            f"Fastest within 5% of {reference['sampler']}-{reference['steps']}'s FD: {best['sampler']}-{best['steps']}, "
            f"{best['speedup']:.1f}× fewer seconds (target ≥ 10×: {'met' if ok else 'NOT met'})."
        )
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.plot:
        plot(rows, key, args.plot)
        print(f"plot: {args.plot}")
    if args.write:
        Path(args.write).write_text(text)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
