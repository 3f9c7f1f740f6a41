"""Peak memory and step time of training DiT-B/2 (32×32×4 latents, batch 32) with and without gradient
checkpointing: none, "full" (each block recomputed in the backward pass) and "selective" (attention and fc2
outputs kept, the rest recomputed).

    python benchmarks/memory.py               # the real run: DiT-B/2, batch 32 (≈ 15 min on 2 cores, ~10 GB RAM)
    python benchmarks/memory.py --quick       # smoke test: depth-2 DiT-S/2, batch 2 (seconds)
    python benchmarks/memory.py --model DiT-S/2 --batch 16

Memory: each mode in a fresh child process (see _timing.py): "activation" is the resident-memory high-water
mark during one training step minus the resident size before it (weights, gradients, AdamW state and EMA
already allocated), i.e. what the step itself needs. Time: the three modes share one model and are timed
round-robin in this process (min over --repeats). Targets (issue 6): activation memory ≥ 2× smaller at
≤ 35% extra step time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402
import _workloads as W  # noqa: E402

MODES = {"none": (False, "full"), "full": (True, "full"), "selective": (True, "selective")}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke test: depth-2 DiT-S/2, batch 2")
    p.add_argument("--model", default="DiT-B/2")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3; --quick 2)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    p.add_argument("--write", default=None, help="also write the Markdown summary to this file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one memory measurement
    return p.parse_args(argv)


def workload(args) -> W.Workload:
    if args.quick:
        return W.latent_workload("DiT-S/2", 2, depth=2)
    return W.latent_workload(args.model, args.batch)


def set_mode(model, mode: str) -> None:
    model.gradient_checkpointing, model.checkpoint_policy = MODES[mode]


def child(payload: dict) -> None:
    w = W.Workload(
        **{**payload["workload"], "overrides": tuple(map(tuple, payload["workload"]["overrides"]))}
    )
    model = W.build_model(w).train()
    set_mode(model, payload["mode"])
    step = W.train_step(W.Trainee.of(model), model, W.make_batch(w))
    print(json.dumps(_timing.peak_memory_of(step)))


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = _timing.setup(args.threads)
    if args.child:
        child(json.loads(args.child))
        return 0
    repeats = args.repeats or (2 if args.quick else 3)
    w = workload(args)
    machine = _timing.machine(threads)
    _timing.emit("machine", **machine)

    memory = {}
    for mode in MODES:
        payload = {"workload": {**w.__dict__, "overrides": list(w.overrides)}, "mode": mode}
        memory[mode] = _timing.run_child(__file__, payload, threads)

    model = W.build_model(w).train()
    trainee = W.Trainee.of(model)
    batch = W.make_batch(w)
    step = W.train_step(trainee, model, batch)
    seconds = _timing.interleaved(
        {mode: step for mode in MODES}, repeats=repeats, warmup=1, before=lambda mode: set_mode(model, mode)
    )
    rows = []
    for mode in MODES:
        m = memory[mode]
        rows.append(
            _timing.emit(
                "memory",
                workload=w.describe(),
                mode=mode,
                seconds=seconds[mode],
                extra_time=seconds[mode] / seconds["none"] - 1,
                activation_mib=m["activation_mib"],
                peak_mib=m["peak_mib"],
                before_mib=m["before_mib"],
                exact=m["exact"],
                activation_cut=memory["none"]["activation_mib"] / max(m["activation_mib"], 1e-9),
            )
        )
    title = "### Memory (benchmarks/memory.py" + (" --quick: NOT the issue's config)" if args.quick else ")")
    lines = [
        title,
        "",
        f"{w.describe()}; {machine['cpu']}, {threads} threads. Activation = peak RSS during a step − RSS "
        "before it, fresh process per mode.",
        "",
        _timing.markdown_table(
            rows,
            [
                ("checkpointing", "mode", ""),
                ("s/step", "seconds", ".2f"),
                ("extra time", "extra_time", "+.0%"),
                ("activation MiB", "activation_mib", ".0f"),
                ("peak RSS MiB", "peak_mib", ".0f"),
                ("activation cut", "activation_cut", ".1f"),
            ],
        ),
        "",
        "Target (issue 6): activation memory cut ≥ 2× at ≤ 35% extra step time:",
    ]
    for r in rows[1:]:
        ok = r["activation_cut"] >= 2 and r["extra_time"] <= 0.35
        lines.append(
            f"- {r['mode']}: {r['activation_cut']:.1f}× less at {r['extra_time']:+.0%} time: "
            + ("met" if ok else "NOT met")
        )
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.write:
        Path(args.write).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
