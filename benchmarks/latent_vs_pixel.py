"""Latent vs pixel diffusion (issue 16): the same-width DiT trained on a KL-VAE's f4 latents and on pixels
for the same training wall-clock; FD of (decoded) samples over training time, and seconds per step.

    python benchmarks/latent_vs_pixel.py --vae-steps 300 --budget 480 --dir runs/latent-vs-pixel
    python benchmarks/latent_vs_pixel.py --vae runs/latent-vs-pixel/vae --budget 480    # reuse an autoencoder
    python benchmarks/latent_vs_pixel.py --quick --dir /tmp/lvp                         # smoke run, ~1 min

What it runs, each step a `ditlab` command in a child process (1 thread each, one at a time):
1. `ditlab vae train` (unless --vae): the KL-VAE of benchmarks/vae_quality.py's recipe, at f=--downsample;
   its held-out PSNR / SSIM come from that script's `run_one`.
2. `ditlab latents`: the training split encoded once (the cache the latent arm trains from).
3. Calibration: a few steps of each arm, timed, so that both arms get --budget seconds of training
   (steps = budget / seconds per step, rounded to whole evaluation intervals).
4. `ditlab train` on the latent cache (`--data CACHE`: the run records the autoencoder, evaluations decode)
   and on the images, same DiT width/depth and recipe, --evals FD evaluations spaced over each run.
   Patch sizes: by default the pixel patch is the latent patch x f, so both transformers see the same
   number of tokens (f4 latents 16x16 at p=2 and 64x64 pixels at p=8: 64 tokens each) and differ only in
   what a token holds; --pixel-patch chooses another.
5. Floors, with the same extractor and number of images as the evaluations: FD of real training images
   (no model can beat it) and of their VAE reconstructions (what decoded latents can at best reach).
6. `time_to_quality.analyse`: the training time at which the latent run first reaches the pixel run's final
   FD, and its ratio to the pixel run's time (target <= 0.5).

Training time is the sum of `metrics.jsonl`'s `step_seconds` (optimizer steps only: evaluations, grids and
checkpoints excluded), so an evaluation's cost (the latent arm's includes decoding) does not count as
training. Seconds per step: median over the logged windows after the first. Prints JSON lines, then Markdown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402
import time_to_quality  # noqa: E402
import vae_quality  # noqa: E402

# The DiT recipe of both arms: the project's CPU recipe for short runs (recipes/fashion-mnist.json:
# rectified flow, logit-normal times, lr 1e-3 with warm-up, clipping, warmed-up EMA, Heun sampling).
DIT_RECIPE = [
    "--objective", "flow", "--timestep-sampling", "logit_normal", "--lr", "1e-3", "--grad-clip", "1.0",
    "--ema-decay", "0.9995", "--ema-warmup", "--sampler", "heun", "--device", "cpu", "--no-progress",
    "--overwrite", "--unconditional", "--ckpt-every", "100000", "--keep-last", "1",
]  # fmt: skip
METRIC = "fd_effnet_lite0"
FEATURES = "effnet-lite0"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="emoji[64]", help="training images (default emoji[64])")
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--downsample", type=int, default=4, help="autoencoder factor f (default 4)")
    p.add_argument("--vae", default=None, help="reuse this autoencoder (run folder or file): skip step 1")
    p.add_argument("--vae-steps", type=int, default=300, help="autoencoder training steps (default 300)")
    p.add_argument("--vae-lr", type=float, default=2e-4, help="autoencoder learning rate (default 2e-4)")
    p.add_argument("--vae-batch-size", type=int, default=16, help="autoencoder batch (default 16)")
    p.add_argument("--model", default="Ti", help="DiT size of both arms: Nano, Ti, Mini, S, ... (default Ti)")
    p.add_argument("--latent-patch", type=int, default=2, help="patch size on the latents (default 2)")
    p.add_argument(
        "--pixel-patch", type=int, default=None, help="patch size on pixels (default latent patch x f)"
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per step, both arms (default 32)")
    p.add_argument("--budget", type=float, default=480.0, help="training seconds per arm (default 480)")
    p.add_argument("--warmup-steps", type=int, default=100, help="lr warm-up of both arms (default 100)")
    p.add_argument("--evals", type=int, default=4, help="FD evaluations spaced over each run (default 4)")
    p.add_argument("--eval-samples", type=int, default=200, help="samples per evaluation (default 200)")
    p.add_argument("--eval-ref", default=None, help="FD reference (default DATA:test)")
    p.add_argument("--sample-steps", type=int, default=10, help="Heun steps of the samples (default 10)")
    p.add_argument("--calibrate-steps", type=int, default=8, help="timed steps per arm (default 8)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of every child (default 1)")
    p.add_argument("--dir", default="runs/latent-vs-pixel", help="where the run folders go")
    p.add_argument("--write", default=None, help="also write the Markdown to this file")
    p.add_argument("--quick", action="store_true", help="smoke run: digits 8x8, f2, DiT-Nano, seconds")
    args = p.parse_args(argv)
    if args.quick:
        args.data, args.image_size, args.downsample, args.model = "digits", 8, 2, "Nano"
        args.latent_patch, args.batch_size, args.budget, args.warmup_steps = 1, 16, 4.0, 0
        args.vae_steps, args.evals, args.eval_samples, args.sample_steps = 10, 2, 64, 2
        args.calibrate_steps = 3
    if args.image_size % args.downsample:
        raise SystemExit(f"--image-size {args.image_size} is not divisible by --downsample {args.downsample}")
    args.pixel_patch = args.pixel_patch or args.latent_patch * args.downsample
    if (args.image_size // args.downsample) % args.latent_patch or args.image_size % args.pixel_patch:
        raise SystemExit("the patch sizes must divide the latent and the image sides")
    args.eval_ref = args.eval_ref or f"{args.data}:test"
    return args


def ditlab(*command: str) -> str:
    """Run `python -m ditlab COMMAND...` (the environment's threads settings pass through); its stdout."""
    cmd = [sys.executable, "-m", "ditlab", *command]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-3000:]}")
    return done.stdout


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def seconds_per_step(rows: list[dict]) -> float:
    """Median training seconds per step over the logged windows after the first (which holds warm-up)."""
    windows = [r for r in rows if "step_seconds" in r]
    per_step, previous = [], 0
    for r in windows:
        per_step.append(r["step_seconds"] / max(r["step"] - previous, 1))
        previous = r["step"]
    if not per_step:
        raise ValueError("no logged training windows (step_seconds) in metrics.jsonl")
    return statistics.median(per_step[1:] or per_step)


class Arms:
    """The two `ditlab train` command lines: same DiT size, recipe and batch; latents vs pixels."""

    def __init__(self, args, cache: Path):
        self.args = args
        self.data = {
            "latent": ["--data", str(cache)],
            "pixel": ["--data", args.data, "--image-size", str(args.image_size)],
        }
        self.patch = {"latent": args.latent_patch, "pixel": args.pixel_patch}
        self.side = {"latent": args.image_size // args.downsample, "pixel": args.image_size}

    def model(self, arm: str) -> str:
        return f"DiT-{self.args.model}/{self.patch[arm]}"

    def tokens(self, arm: str) -> int:
        return (self.side[arm] // self.patch[arm]) ** 2

    def train(self, arm: str, out: Path, steps: int, eval_every: int, log_every: int) -> list[dict]:
        a = self.args
        flags = [
            *self.data[arm], "--model", self.model(arm), "--train-steps", str(steps),
            "--batch-size", str(a.batch_size), "--warmup-steps", str(min(a.warmup_steps, steps // 2)),
            "--log-every", str(log_every), "--eval-every", str(eval_every), "--eval-samples",
            str(a.eval_samples), "--eval-ref", a.eval_ref, "--eval-features", FEATURES, "--sample-steps",
            str(a.sample_steps), "--threads", str(a.threads), "--out", str(out), *DIT_RECIPE,
        ]  # fmt: skip
        ditlab("train", *flags)
        return records(out)


def train_vae(args, root: Path) -> tuple[str, dict | None]:
    """Step 1: the autoencoder (or --vae), and its vae_quality row when trained here."""
    if args.vae:
        return args.vae, None
    run = f"{args.data}:{args.image_size}:kl:{args.downsample}"
    options = argparse.Namespace(
        train_steps=args.vae_steps,
        eval_images=args.eval_samples,
        threads=args.threads,
        dir=str(root),
        overrides=["--lr", str(args.vae_lr), "--batch-size", str(args.vae_batch_size)],
    )
    row = vae_quality.run_one(run, options)
    return row["out"], row


def floors(args, vae: str) -> dict:
    """Step 5: FD of real training images and of their reconstructions against the reference."""
    import torch

    from ditlab.autoencoders.checkpoint import load_autoencoder
    from ditlab.data import load_dataset, to_uint8
    from ditlab.eval import evaluate

    data = load_dataset(args.data, split="train", image_size=args.image_size)
    images = data.batch(range(min(args.eval_samples, len(data))))[0]  # in [-1, 1]
    autoencoder = load_autoencoder(vae)
    with torch.no_grad():  # from the posterior mean, as vae_quality's PSNR
        recon = torch.cat([autoencoder.decode(autoencoder.encode(b, sample=False)) for b in images.split(64)])
    result = evaluate(to_uint8(recon), ref=args.eval_ref, features=(FEATURES,), floor=True, resize_ref=True)
    entry = next(iter(result["metrics"].values()))
    return {"reconstruction_fd": entry["fd"], "real_fd": entry["floor"].get("fd"), "n": len(recon)}


def main(argv=None) -> int:
    args = parse_args(argv)
    machine = _timing.machine(_timing.setup(args.threads))
    _timing.emit("latent_vs_pixel_machine", **machine)
    root = Path(args.dir)
    start = time.perf_counter()
    vae, vae_row = train_vae(args, root)
    if vae_row:
        _timing.emit("latent_vs_pixel_vae", **vae_row)
    cache = root / "latents"
    ditlab(
        "latents", "--vae", vae, "--data", args.data, "--image-size", str(args.image_size),
        "--out", str(cache), "--no-progress", "--device", "cpu",
    )  # fmt: skip
    arms = Arms(args, cache)
    rows = []
    for arm in ("latent", "pixel"):
        calib = records_of_calibration(arms, arm, root, args.calibrate_steps)
        per_step = seconds_per_step(calib)
        eval_every = max(1, round(args.budget / per_step / args.evals))
        log_every = max(1, eval_every // 4)
        eval_every = log_every * max(1, round(eval_every / log_every))
        steps = eval_every * args.evals
        out = root / arm
        logged = arms.train(arm, out, steps, eval_every, log_every)
        curve = time_to_quality.fd_curve(logged, METRIC)
        clock = time_to_quality.training_clock(logged)
        row = {
            "arm": arm,
            "model": arms.model(arm),
            "input": (
                f"{args.downsample}x latents {arms.side[arm]}x{arms.side[arm]}"
                if arm == "latent"
                else f"pixels {args.image_size}x{args.image_size}"
            ),
            "tokens": arms.tokens(arm),
            "calibrated_s_per_step": per_step,
            "s_per_step": seconds_per_step(logged),
            "steps": steps,
            "train_s": clock[-1][1],
            "final_fd": curve[-1][1],
            "best_fd": min(fd for _, fd in curve),
            "curve": [(s, fd, time_to_quality.seconds_at(clock, s)) for s, fd in curve],
            "out": str(out),
        }
        rows.append(_timing.emit("latent_vs_pixel_arm", **row))
    floor = floors(args, vae)
    _timing.emit("latent_vs_pixel_floors", **floor)
    result = time_to_quality.analyse(root / "latent", root / "pixel", METRIC)
    result.pop("curves")
    _timing.emit("latent_vs_pixel", **result, wall_s=time.perf_counter() - start)
    text = markdown(args, machine, vae_row, rows, floor, result)
    print("\n" + text)
    if args.write:
        Path(args.write).write_text(text)
    return 0


def records_of_calibration(arms: Arms, arm: str, root: Path, steps: int) -> list[dict]:
    """Step 3: `steps` logged one at a time, no evaluation, in a throw-away run folder."""
    return arms.train(arm, root / f"calibrate-{arm}", steps, eval_every=0, log_every=1)


def markdown(args, machine, vae_row, rows, floor, result) -> str:
    lines = [
        f"{machine.get('cpu')}, torch {machine.get('torch')}, {args.threads} thread(s), load at start "
        f"{machine.get('load_average')}",
        "",
    ]
    if vae_row:
        lines += [
            f"Autoencoder: KL f{args.downsample}, {vae_row['steps']} steps at batch {args.vae_batch_size}, lr "
            f"{args.vae_lr:g} ({vae_row['train_s']:.0f} s training), "
            f"held-out PSNR {vae_row['psnr']:.2f} dB, SSIM {vae_row['ssim']:.3f}, scale {vae_row['scale']:.3f}.",
            "",
        ]
    table = _timing.markdown_table(
        rows,
        [
            ("arm", "arm", ""),
            ("model", "model", ""),
            ("input", "input", ""),
            ("tokens", "tokens", "d"),
            ("s/step", "s_per_step", ".3f"),
            ("steps", "steps", "d"),
            ("training s", "train_s", ".0f"),
            (f"final {METRIC}", "final_fd", ".2f"),
            ("best", "best_fd", ".2f"),
        ],
    )
    lines += [table, "", "FD over training time (step: FD at training seconds):", ""]
    for row in rows:
        points = ", ".join(f"{s}: {fd:.2f} @ {t:.0f} s" for s, fd, t in row["curve"])
        lines.append(f"- {row['arm']}: {points}")
    lines += [
        "",
        f"Floors ({floor['n']} images, same extractor): real training images {floor['real_fd']:.2f}, their "
        f"VAE reconstructions {floor['reconstruction_fd']:.2f}.",
        "",
    ]
    target = result["target_fd"]
    if result["ours_seconds"] is None:
        lines.append(
            f"The latent run never reached the pixel run's final FD {target:.2f} (its best: "
            f"{result['ours_best_fd']:.2f}): target (<= 0.5x the wall-clock) NOT met."
        )
    else:
        ok = "met" if result["ratio"] <= 0.5 else "NOT met"
        lines.append(
            f"The latent run reached the pixel run's final FD {target:.2f} at step {result['ours_step']} after "
            f"{result['ours_seconds']:.0f} s of training; the pixel run needed {result['baseline_seconds']:.0f} s: "
            f"ratio {result['ratio']:.2f} (target <= 0.5: {ok})."
        )
        # the pixel run's FD curve is noisy (it may touch its final value early), so also the plain reading:
        # the latent run's time to that FD against the whole pixel run
        whole = result["baseline_total_seconds"]
        lines.append(
            f"Against the pixel run's whole training time ({whole:.0f} s): ratio "
            f"{result['ours_seconds'] / whole:.2f}."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
