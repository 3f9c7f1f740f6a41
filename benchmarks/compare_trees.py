"""Speed of this checkout against another checkout of ditlab (e.g. the commit before a redesign), side by side.

    git worktree add /tmp/ditlab-before 87eb3b0
    python benchmarks/compare_trees.py --baseline /tmp/ditlab-before --rounds 5
    python benchmarks/compare_trees.py --baseline /tmp/ditlab-before --configs demo --phases train --quick

Two copies of one package cannot share a process, so each round runs `benchmarks/speed.py` once per tree
as a subprocess (its own `src/` first on PYTHONPATH, its own copy of speed.py), alternating which tree goes
first: A B, B A, A B, ... Each subprocess times the `ditlab` variant (fast paths, fused AdamW; the defaults
users get) with speed.py's interleaved minimum. The ratio baseline seconds / this tree's seconds is taken
round by round, so a drift in the machine's speed moves both sides of a pair alike; the median over rounds
is reported (> 1: this checkout is faster). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", required=True, help="the other checkout's root folder (holds src/ditlab)")
    p.add_argument("--configs", default="DiT-S/2,demo", help="speed.py configs, comma-separated")
    p.add_argument("--phases", default="forward,train", help="speed.py phases, comma-separated")
    p.add_argument("--rounds", type=int, default=5, help="pairs of subprocess runs (default 5)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats inside each speed.py run")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (default: all cores)")
    p.add_argument("--quick", action="store_true", help="speed.py --quick: depth-2 models (smoke test)")
    return p.parse_args(argv)


def run_tree(root: Path, args) -> dict[tuple[str, str], float]:
    """Seconds of the `ditlab` variant per (config, phase) from one speed.py run in `root`."""
    cmd = [
        sys.executable,
        str(root / "benchmarks" / "speed.py"),
        "--no-diffusers",
        "--configs",
        args.configs,
        "--phases",
        args.phases,
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
    ] + (["--quick"] if args.quick else [])
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"speed.py failed in {root}:\n{out.stderr[-2000:]}")
    seconds = {}
    for line in out.stdout.splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record.get("bench") == "speed" and record.get("variant") == "ditlab":
            seconds[(record["config"], record["phase"])] = record["seconds"]
    return seconds


def main(argv=None) -> int:
    args = parse_args(argv)
    trees = {"this": HERE, "baseline": Path(args.baseline).resolve()}
    if not (trees["baseline"] / "src" / "ditlab").is_dir():
        raise SystemExit(f"--baseline {trees['baseline']} holds no src/ditlab: pass a ditlab checkout")
    ratios: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        order = ["this", "baseline"] if r % 2 == 0 else ["baseline", "this"]
        got = {name: run_tree(trees[name], args) for name in order}
        for key, s in got["this"].items():
            ratio = got["baseline"][key] / s
            ratios.setdefault(key, []).append(ratio)
            print(json.dumps({"round": r, "config": key[0], "phase": key[1], "baseline_over_this": ratio}))
    print("\n| config | phase | baseline s / this s (median) | min | max | rounds |")
    print("|---|---|---|---|---|---|")
    for (config, phase), values in ratios.items():
        print(
            f"| {config} | {phase} | {statistics.median(values):.3f} | {min(values):.3f} | "
            f"{max(values):.3f} | {len(values)} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
