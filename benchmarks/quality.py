"""Sample-quality table of trained models (issue 5): every metric with the settings that produced it.

    python benchmarks/quality.py --run demo=ditlab-demo --run fashion-mnist=runs/fashion-mnist \\
        --samples demo=500 --samples fashion-mnist=10000 --guidance 1.0 --guidance 1.5 \\
        --write benchmarks/quality.md

For each run folder (its model.safetensors and config.json) and guidance scale, samples the given number of
images (classes cycled evenly) with the run's own sampler settings or --sampler/--steps, scores them with
`ditlab.eval.evaluate` against the data's test split (FD-EffNetLite0, classifier FD, class accuracy,
precision/recall, Inception Score from the classifier) and reports the data's own floor: the FD of as many
real training images against the same test split. Ends with one JSON line per row.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

import ditlab
from ditlab.eval import evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402


def parse_pairs(items: list[str], cast=str) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"expected NAME=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = cast(value)
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, help="NAME=RUN_FOLDER (repeatable)")
    p.add_argument("--samples", action="append", help="NAME=N images (default 1000)")
    p.add_argument("--guidance", action="append", type=float, help="guidance scale(s) (default 1.0)")
    p.add_argument("--sampler", help="override the runs' sampler")
    p.add_argument("--steps", type=int, help="override the runs' sampling steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--write", help="write the Markdown table here")
    return p.parse_args(argv)


def score_run(name: str, folder: Path, n: int, guidance: float, args) -> dict:
    cfg = json.loads((folder / "config.json").read_text())
    model = ditlab.load_model(folder / "model.safetensors")
    sampler = args.sampler or cfg.get("sampler") or None
    steps = args.steps or cfg.get("sample_steps") or 50
    start = time.perf_counter()
    images, labels = ditlab.generate(
        model, num_samples=n, sampler=sampler, steps=steps, guidance_scale=guidance, seed=args.seed,
        batch_size=args.batch_size,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    ref = f"{cfg['data']}:test"
    result = evaluate(images, labels if model.num_classes else None, ref=ref)
    row = {
        "run": name,
        "data": cfg["data"],
        "model": cfg["model"],
        "objective": (model.objective_spec or {}).get("kind", "ddpm"),
        "samples": n,
        "sampler": sampler or ditlab.sampling.objective_of(model).default_sampler,
        "steps": steps,
        "guidance": guidance,
        "sample_seconds": round(seconds, 1),
        "ref": result["ref"],
    }
    for extractor, m in result["metrics"].items():
        key = "effnet" if extractor.startswith("effnet") else "classifier"
        row[f"fd_{key}"] = m["fd"]
        row[f"floor_{key}"] = (m.get("floor") or {}).get("fd")
        row[f"precision_{key}"] = m.get("precision")
        row[f"recall_{key}"] = m.get("recall")
        if "class_accuracy" in m:
            row["class_accuracy"] = m["class_accuracy"]
            row["inception_score"] = m.get("inception_score")
    return row


def markdown(rows: list[dict], argv: list[str]) -> str:
    def f(v, digits=2):
        return "–" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))

    lines = [
        "# Sample quality (issue 5)",
        "",
        f"Command: `python benchmarks/{Path(__file__).name} {' '.join(shlex.quote(a) for a in argv)}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}. Reference: the test split; floor: the same number of real training "
        "images against it (no model can beat it on that test set). FD-EffNetLite0 uses ImageNet-pretrained "
        "EfficientNet-Lite0 features (64×64, 1280-d); it is not FID. Classifier: ditlab's small CNN trained "
        "on the real training split (128-d features).",
        "",
        "| run | model | objective | samples | sampler | guidance | FD-EffNetLite0 (floor) | ×floor "
        "| classifier FD (floor) | class acc. | precision / recall (EffNet) | IS | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["fd_effnet"] / r["floor_effnet"] if r.get("floor_effnet") else None
        lines.append(
            f"| {r['run']} | {r['model']} | {r['objective']} | {r['samples']} | {r['sampler']}-{r['steps']} "
            f"| {r['guidance']} | {f(r['fd_effnet'], 1)} ({f(r['floor_effnet'], 1)}) | {f(ratio, 1)} "
            f"| {f(r.get('fd_classifier'))} ({f(r.get('floor_classifier'))}) | {f(r.get('class_accuracy'), 3)} "
            f"| {f(r.get('precision_effnet'), 3)} / {f(r.get('recall_effnet'), 3)} "
            f"| {f(r.get('inception_score'))} | {r['sample_seconds']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = parse_pairs(args.run, Path)
    counts = parse_pairs(args.samples, int)
    rows = []
    for name, folder in runs.items():
        for guidance in args.guidance or [1.0]:
            row = score_run(name, folder, counts.get(name, 1000), guidance, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
    _timing.publish(markdown(rows, argv), args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
