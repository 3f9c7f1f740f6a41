"""Soak test of a training run (issue 19 item 6): memory and open files stay flat over an accelerated run,
and a run killed (SIGKILL) at random points and resumed each time repeats the uninterrupted run's losses.

    PYTHONPATH=src python benchmarks/soak.py --steps 300 --kills 5 --out /tmp/ditlab-soak

Accelerated: DiT-Nano/2 on the 8x8 digits, batch 16, a checkpoint every 5 steps (keep 2), a sample grid every
25 and an evaluation (FD and class accuracy, 64 samples) every 100: the write/sample/evaluate cycle of a
long run repeated many times in minutes. Part 1 runs it in this process and records the resident memory
(VmRSS) and the number of open file descriptors every 10 steps. Part 2 runs the same configuration as
`ditlab train` subprocesses, SIGKILLs one at each of `--kills` random steps (seeded), resumes with
`--resume auto` each time, and compares the final losses with part 1's, step by step, for equality.
Prints one JSON summary (the figures of benchmarks/soak.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ditlab.train import TrainConfig, Trainer
from ditlab.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
RUN = dict(
    data="digits",
    model="DiT-Nano/2",
    batch_size=16,
    lr=1e-3,
    log_every=1,
    ckpt_every=5,
    keep_last=2,
    sample_every=25,
    sample_steps=2,
    eval_every=100,
    eval_samples=64,
    eval_features="classifier:digits",
    threads=1,
    progress=False,
)


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r}


def part1(out: Path, steps: int) -> dict:
    """The run in this process, sampling memory and descriptors every 10 steps."""
    trainer = Trainer(TrainConfig(**RUN, steps=steps, out=str(out)))
    samples: list[tuple[int, int, int]] = []
    step_once = trainer.train_step

    def train_step():
        record = step_once()
        if trainer.step % 10 == 0:
            samples.append((trainer.step, rss_kib(), open_fds()))
        return record

    trainer.train_step = train_step
    trainer.run()
    # after warm-up: the first evaluation trains/loads its classifier and caches the reference statistics
    warm = [s for s in samples if s[0] > RUN["eval_every"]]
    first, last = warm[0], warm[-1]
    return {
        "samples": len(samples),
        "series_step_rss_mib_fds": [
            (s[0], round(s[1] / 1024, 1), s[2]) for s in samples[:: max(len(samples) // 12, 1)]
        ],
        "rss_mib_after_warmup": round(first[1] / 1024, 1),
        "rss_mib_end": round(last[1] / 1024, 1),
        "rss_mib_max": round(max(s[1] for s in warm) / 1024, 1),
        "rss_growth_mib_per_100_steps": round(
            (last[1] - first[1]) / 1024 / max(last[0] - first[0], 1) * 100, 2
        ),
        "open_fds": sorted({s[2] for s in warm}),
        "checkpoints_written": steps // RUN["ckpt_every"],
        "grids_written": steps // RUN["sample_every"],
        "evaluations": steps // RUN["eval_every"],
    }


def flags(steps: int, out: Path) -> list[str]:
    argv = ["--train-steps", str(steps), "--out", str(out)]
    for key, value in RUN.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv


def part2(out: Path, steps: int, kills: int, seed: int) -> dict:
    """Kill a `ditlab train` subprocess at `kills` random steps, resume after each, finish the run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "ditlab", "train", *flags(steps, out), "--resume", "auto"]
    points = sorted(random.Random(seed).sample(range(6, steps - 5), kills))
    removed, resumed_from = 0, []
    for point in points:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while proc.poll() is None and max(losses(out), default=0) < point:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        err = proc.communicate()[1]
        removed += err.count("unfinished write of an earlier process")
        resumed_from += [
            line.split("(step ")[1].rstrip(")") for line in err.splitlines() if "resuming from" in line
        ]
    final = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    removed += final.stderr.count("unfinished write of an earlier process")
    return {
        "kill_points": points,
        "resumed_from_steps": [int(s) for s in resumed_from],
        "orphan_temp_files_removed": removed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of the run")
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs at random steps in part 2")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    parser.add_argument("--out", default="/tmp/ditlab-soak", help="scratch folder (emptied first)")
    parser.add_argument("--memory-only", action="store_true", help="part 1 only (no kills)")
    args = parser.parse_args()
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    summary = {"steps": args.steps, "memory": part1(root / "straight", args.steps)}
    if args.memory_only:
        print(json.dumps(summary))
        return
    summary["kills"] = part2(root / "killed", args.steps, args.kills, args.seed)
    straight, killed = losses(root / "straight"), losses(root / "killed")
    summary["losses_compared"] = len(straight)
    summary["losses_identical"] = straight == killed
    print(json.dumps(summary, indent=2))
    if not summary["losses_identical"]:
        sys.exit("the killed-and-resumed run's losses differ from the uninterrupted run's")


if __name__ == "__main__":
    main()
