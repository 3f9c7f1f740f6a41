"""Autoencoder quality (issue 16): held-out PSNR / SSIM of ditlab's KL-VAE and VQ-VAE at f4 and f8, with
their training time, each trained by `ditlab vae train` in a child process.

    python benchmarks/vae_quality.py --runs fashion-mnist:28:kl:4 fashion-mnist:32:kl:8 emoji[64]:64:kl:4
    python benchmarks/vae_quality.py --runs digits:8:kl:2 --train-steps 20 --eval-images 64    # smoke test

A run is DATA:IMAGE_SIZE:KIND:DOWNSAMPLE. Every run uses the one recipe of benchmarks/latent.md (width 32,
one ResNet block per level, 4 latent channels, batch 16, lr 2e-4, perceptual weight 0.1, KL weight 1e-6,
EMA codebook of 256 codes, 1 thread, CPU) and is evaluated once, at its last step, on the first
--eval-images images of the data's test split (`--eval-every` = the run length): PSNR and SSIM (11x11
Gaussian window, sigma 1.5) of reconstructions from the posterior mean (KL) or the quantised latents (VQ),
pixels in [0, 1]. "train s" is the sum of the logged `step_seconds` (training steps only; the evaluation,
checkpoints and the scale estimate excluded), "wall s" the child's whole run. VQ rows add the codebook
perplexity and the share of codes used in the last logged training batch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402

RECIPE = [
    "--latent-channels", "4", "--width", "32", "--layers-per-block", "1", "--batch-size", "16",
    "--lr", "2e-4", "--perceptual-weight", "0.1", "--device", "cpu", "--no-progress", "--overwrite",
]  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--runs", nargs="+", required=True, help="DATA:IMAGE_SIZE:KIND:DOWNSAMPLE, e.g. emoji[64]:64:kl:8"
    )
    p.add_argument("--train-steps", type=int, default=300, help="optimizer steps per run (default 300)")
    p.add_argument("--eval-images", type=int, default=256, help="held-out images evaluated (default 256)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each run (default 1)")
    p.add_argument("--dir", default="runs/vae-quality", help="where the run folders go")
    p.add_argument("--write", default=None, help="also write the Markdown table to this file")
    return p.parse_args(argv)


def parse_run(text: str) -> tuple[str, int, str, int]:
    data, size, kind, f = text.rsplit(":", 3)
    if kind not in ("kl", "vq") or not size.isdigit() or not f.isdigit():
        raise SystemExit(f"bad run {text!r}: use DATA:IMAGE_SIZE:KIND:DOWNSAMPLE, e.g. fashion-mnist:28:kl:4")
    return data, int(size), kind, int(f)


def run_one(text: str, args) -> dict:
    """Train and evaluate one run; `args.overrides` (optional) are flags placed after the recipe's, which
    they replace (e.g. ["--lr", "1e-3"])."""
    data, size, kind, f = parse_run(text)
    out = Path(args.dir) / f"{data.replace('[', '').replace(']', '')}-{size}-{kind}-f{f}"
    cmd = [
        sys.executable, "-m", "ditlab", "vae", "train", "--data", data, "--image-size", str(size),
        "--kind", kind, "--downsample", str(f), "--train-steps", str(args.train_steps),
        "--eval-every", str(args.train_steps), "--eval-images", str(args.eval_images),
        "--threads", str(args.threads), "--out", str(out), *RECIPE, *getattr(args, "overrides", []),
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    quality = [r for r in records if "psnr" in r][-1]
    steps = [r for r in records if "step_seconds" in r]
    row = {
        "run": text,
        "data": data,
        "image_size": size,
        "kind": kind,
        "downsample": f,
        "latents": f"4x{size // f}x{size // f}",
        "steps": args.train_steps,
        "train_s": sum(r["step_seconds"] for r in steps),
        "wall_s": wall,
        "psnr": quality["psnr"],
        "ssim": quality["ssim"],
        "scale": summary["scale"],
        "out": str(out),
    }
    if kind == "vq":
        last = [r for r in steps if "perplexity" in r][-1]
        row.update(perplexity=last["perplexity"], codebook_usage=last["codebook_usage"])
    return row


def markdown(rows, machine) -> str:
    head = (
        f"{machine.get('cpu')}, torch {machine.get('torch')}, {machine.get('threads')} thread(s), load "
        f"{machine.get('load_average')}\n\n"
        "| data | image | autoencoder | latents | steps | train s | wall s | PSNR (dB) | SSIM | scale | codebook |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        book = (
            f"perplexity {r['perplexity']:.1f}, {100 * r['codebook_usage']:.0f}% used"
            if r["kind"] == "vq"
            else ""
        )
        lines.append(
            f"| {r['data']} | {r['image_size']}x{r['image_size']} | {r['kind'].upper()} f{r['downsample']} "
            f"| {r['latents']} | {r['steps']} | {r['train_s']:.0f} | {r['wall_s']:.0f} | {r['psnr']:.2f} "
            f"| {r['ssim']:.3f} | {r['scale']:.3f} | {book} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    machine = _timing.machine(_timing.setup(args.threads))
    print(json.dumps({"machine": machine}), flush=True)
    rows = []
    for text in args.runs:
        rows.append(run_one(text, args))
        print(json.dumps(rows[-1]), flush=True)
    _timing.publish(markdown(rows, machine), args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
