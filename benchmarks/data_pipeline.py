"""The streaming data pipeline (issue 16): memory of `ditlab train` on image folders of growing size, loader
throughput against what the trainer consumes, and time to the first training step.

    python benchmarks/data_pipeline.py                          # the real run: 10k vs 100k PNGs (~1 GB disk)
    python benchmarks/data_pipeline.py --sizes 2000 20000       # reduced run
    python benchmarks/data_pipeline.py --quick                  # smoke test: 300 vs 1200 images, 3 steps

What it does, per folder size N: writes N PNGs of 64x64 RGB (10 class folders; each image is seeded by its
index, so a smaller folder is a prefix of a larger one) into a temporary folder, then
- runs `ditlab train --data FOLDER --image-size 64 --model DiT-S/4` in a child process and samples its process
  tree (the trainer and its DataLoader workers) every 0.1 s: the peak of the summed PSS (proportional set
  size: pages a forked worker shares with the trainer count once) and the trainer's own peak RSS (VmHWM);
- reads the trainer's consumption (img_per_s of metrics.jsonl, median over the steps after the first two)
  and the time from starting the process to its first logged step (log every step), with and without that
  step's own compute ("start-up": imports, folder scan, model, workers);
- measures what the opened stream itself holds (file list and labels, by tracemalloc: the part of the
  loader's memory that grows with N);
- times the loader alone in this process (`StreamBatches` with the same workers, no model): images/s over
  the batches after the first (worker start-up excluded).
"The model's own" memory is the same command on a 256-image folder loaded whole (`--data-loader memory`,
3 MB of pixels): model, optimizer, EMA and activations. Targets (issue 16): streaming adds <= 1.5 GB above
that and does not grow with N; loader >= 3x the trainer's consumption; first step < 30 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402

from ditlab.data import StreamBatches, open_dataset  # noqa: E402

CLASSES = 10


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke test: 300 vs 1200 images, 3 training steps")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="folder sizes (default: 10000 100000)")
    p.add_argument("--model", default="DiT-S/4")
    p.add_argument("--batch-size", type=int, default=32, help="global batch (images per step)")
    p.add_argument("--train-steps", type=int, default=None, help="training steps per run (default 20)")
    p.add_argument(
        "--loader-batches", type=int, default=None, help="batches timed for the loader (default 60)"
    )
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers (default 2)")
    p.add_argument("--threads", type=int, default=0, help="trainer torch threads (default: all cores)")
    p.add_argument("--dir", default=None, help="where to write the folders (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the generated folders")
    p.add_argument("--write", default=None, help="also write the Markdown summary to this file")
    return p.parse_args(argv)


def _image(index: int) -> np.ndarray:
    """A 64x64 RGB picture seeded by its index: a colour field with coarse texture (compresses like a photo
    thumbnail rather than like noise)."""
    rng = np.random.default_rng(index)
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((64, 64), Image.Resampling.BILINEAR))


def make_folder(root: Path, n: int) -> Path:
    """n PNGs in CLASSES sub-folders (image i in class i % CLASSES); files already there are kept."""
    for c in range(CLASSES):
        (root / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = root / f"class{i % CLASSES:02d}" / f"{i:07d}.png"
        if not path.exists():
            Image.fromarray(_image(i)).save(path)
    return root


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
    return found


def _field_kb(path: str, name: str) -> int:
    try:
        with open(path) as f:
            return sum(int(line.split()[1]) for line in f if line.startswith(name))
    except OSError:  # the process just exited
        return 0


def train_run(folder: Path, out: Path, args, extra=()) -> dict:
    """One `ditlab train` child: peak PSS of its tree, its own peak RSS, time to first step, img/s."""
    cmd = [
        sys.executable, "-m", "ditlab", "train", "--data", str(folder), "--image-size", "64",
        "--model", args.model, "--batch-size", str(args.batch_size), "--steps", str(args.train_steps),
        "--num-workers", str(args.num_workers), "--log-every", "1", "--ckpt-every", "1000000",
        "--sample-steps", "2", "--threads", str(args.threads), "--no-progress", "--overwrite",
        "--out", str(out), *extra,
    ]  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)  # an old run's metrics.jsonl would read as this run's first step
    metrics = out / "metrics.jsonl"
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak_pss = peak_rss = 0
    first_step = None
    while child.poll() is None:
        pids = _tree(child.pid)
        peak_pss = max(peak_pss, sum(_field_kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids))
        peak_rss = max(peak_rss, _field_kb(f"/proc/{child.pid}/status", "VmHWM:"))
        if first_step is None and metrics.is_file() and metrics.stat().st_size:
            first_step = time.perf_counter() - start
        time.sleep(0.1)
    if child.returncode:
        raise RuntimeError(f"ditlab train failed ({child.returncode}): {child.stderr.read()[-2000:]}")
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rates = [r["img_per_s"] for r in records[2:]] or [r["img_per_s"] for r in records]
    return {
        "peak_pss_mb": peak_pss / 1024,
        "trainer_peak_rss_mb": peak_rss / 1024,
        "first_step_s": first_step,
        "startup_s": first_step - records[0]["step_seconds"],  # launch to the first step's start
        "train_img_per_s": statistics.median(rates),
    }


def stream_held_mb(folder: Path) -> float:
    """MB the opened stream holds after its scan (file list and labels; tracemalloc, numpy included)."""
    tracemalloc.start()
    stream = open_dataset(folder, image_size=64)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del stream
    return held / 2**20


def loader_rate(folder: Path, args) -> float:
    """Images/s of the streaming loader alone (decode, resize, collate in workers), after its first batch."""
    stream = open_dataset(folder, image_size=64)
    loader = StreamBatches(
        stream, args.batch_size, 0, stop=args.loader_batches + 1, num_workers=args.num_workers
    )
    loader.images(0)  # workers started, first batch out
    start = time.perf_counter()
    for step in range(1, args.loader_batches + 1):
        loader.images(step)
    seconds = time.perf_counter() - start
    loader.close()
    return args.loader_batches * args.batch_size / seconds


def main(argv=None) -> int:
    args = parse_args(argv)
    args.sizes = args.sizes or ([300, 1200] if args.quick else [10_000, 100_000])
    args.train_steps = args.train_steps or (3 if args.quick else 20)
    args.loader_batches = args.loader_batches or (10 if args.quick else 60)
    machine = _timing.machine(_timing.setup(args.threads))
    print(json.dumps({"machine": machine}), flush=True)
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="ditlab-data-bench-"))
    rows = []
    try:
        base = train_run(
            make_folder(work / "n256", 256), work / "run-base", args, ["--data-loader", "memory"]
        )
        print(json.dumps({"run": "model's own (256 images in memory)", **base}), flush=True)
        for n in args.sizes:
            t0 = time.perf_counter()
            folder = make_folder(work / f"n{n}", n)
            made = time.perf_counter() - t0
            row = {"images": n, "folder_written_s": made, **train_run(folder, work / f"run-{n}", args)}
            row["above_model_mb"] = row["peak_pss_mb"] - base["peak_pss_mb"]
            row["stream_held_mb"] = stream_held_mb(folder)
            row["loader_img_per_s"] = loader_rate(folder, args)
            row["loader_over_trainer"] = row["loader_img_per_s"] / row["train_img_per_s"]
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    summary = markdown(args, machine, base, rows)
    print(summary)
    if args.write:
        Path(args.write).write_text(summary)
    return 0


def markdown(args, machine, base, rows) -> str:
    head = (
        f"{args.model}, 64x64 RGB, batch {args.batch_size}, {args.train_steps} steps, "
        f"{args.num_workers} workers, {machine.get('threads')} trainer threads, load {machine.get('load_average')}\n\n"
        f"model's own (256 images in memory): peak PSS {base['peak_pss_mb']:.0f} MB, "
        f"{base['train_img_per_s']:.1f} img/s, first step {base['first_step_s']:.1f} s "
        f"(start-up {base['startup_s']:.1f} s)\n\n"
        "| images | peak PSS (MB) | above model (MB) | trainer peak RSS (MB) | stream holds (MB) | first step (s) "
        "| start-up (s) | trainer img/s | loader img/s | loader / trainer |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['images']} | {r['peak_pss_mb']:.0f} | {r['above_model_mb']:.0f} | {r['trainer_peak_rss_mb']:.0f} "
        f"| {r['stream_held_mb']:.1f} | {r['first_step_s']:.1f} | {r['startup_s']:.1f} | {r['train_img_per_s']:.1f} "
        f"| {r['loader_img_per_s']:.0f} "
        f"| {r['loader_over_trainer']:.1f}x |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
