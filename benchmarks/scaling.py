"""Scaling: training-step time and memory versus token count (patch 8, 4, 2) and versus model size (S, B),
on 32×32×4 latents at batch 8, plotted against the analytic Gflops.

    python benchmarks/scaling.py                                  # S and B at /8, /4, /2 (≈ 10 min on 2 cores)
    python benchmarks/scaling.py --models DiT-S/8,DiT-S/2,DiT-L/2 --plot scaling.png
    python benchmarks/scaling.py --quick                          # smoke test: depth-2 models, batch 2

For each model: training step and no-grad forward seconds (min over --repeats; configs are timed one after
another, so compare them with the noise of the machine in mind), achieved GFLOP/s and MFU against the fp32
matmul peak, and the step's activation memory and peak RSS from a fresh child process (see _timing.py).
If time follows FLOPs, the points lie on one line of slope 1 in the log-log plot; small configs fall above it
(per-op overheads), large ones approach the matmul peak.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402
import _workloads as W  # noqa: E402

from ditlab.models.flops import flops  # noqa: E402

DEFAULT_MODELS = "DiT-S/8,DiT-S/4,DiT-S/2,DiT-B/8,DiT-B/4,DiT-B/2"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke test: depth-2 models, batch 2")
    p.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated zoo names")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions (default 3; --quick 2)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory child processes")
    p.add_argument("--plot", default=None, help="write the time/memory-vs-Gflops plot here (PNG)")
    p.add_argument("--write", default=None, help="also write the Markdown summary to this file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one memory measurement
    return p.parse_args(argv)


def workload_of(name: str, args) -> W.Workload:
    return W.latent_workload(name, 2, depth=2) if args.quick else W.latent_workload(name, args.batch)


def child(payload: dict) -> None:
    w = W.Workload(**{**payload, "overrides": tuple(map(tuple, payload["overrides"]))})
    model = W.build_model(w).train()
    print(json.dumps(_timing.peak_memory_of(W.train_step(W.Trainee.of(model), model, W.make_batch(w)))))


def _tag(ax, row: dict, key: str) -> None:
    """Label a plotted point with its model name."""
    ax.annotate(
        row["model"], (row["gflops"], row[key]), fontsize=7, xytext=(3, 3), textcoords="offset points"
    )


def plot(rows: list[dict], path: str, peak: float) -> None:
    """Time (left) and memory (right) against Gflops: one line per model size (S, B, ...) through its patch
    sizes, so a line shows the token-count scaling and the gap between lines the width scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families: dict[str, list[dict]] = {}
    for r in rows:
        families.setdefault(r["model"].split("/")[0], []).append(r)
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (family, members) in enumerate(families.items()):
        members = sorted(members, key=lambda r: r["gflops"])
        x = [r["gflops"] for r in members]
        color = f"C{i}"
        ax_t.loglog(
            x, [r["train_seconds"] for r in members], "o-", color=color, label=f"{family} training step"
        )
        ax_t.loglog(x, [r["forward_seconds"] for r in members], "s--", color=color, label=f"{family} forward")
        with_memory = [r for r in members if r.get("activation_mib") is not None]
        if with_memory:
            xm = [r["gflops"] for r in with_memory]
            ax_m.loglog(
                xm,
                [r["activation_mib"] for r in with_memory],
                "o-",
                color=color,
                label=f"{family} activation",
            )
            ax_m.loglog(
                xm, [r["peak_mib"] for r in with_memory], "s--", color=color, label=f"{family} peak RSS"
            )
        for r in members:
            _tag(ax_t, r, "train_seconds")
            if r.get("activation_mib") is not None:
                _tag(ax_m, r, "activation_mib")
    x = [r["gflops"] for r in rows]
    batch = rows[0]["batch"]
    ideal = [min(x), max(x)]
    ax_t.loglog(
        ideal, [3 * 2e9 * g * batch / (peak * 1e9) for g in ideal], "k:", lw=0.8, label="step at matmul peak"
    )
    ax_t.set_xlabel("Gflops per image (paper's count, multiply-adds)")
    ax_t.set_ylabel(f"seconds (batch {batch})")
    ax_t.legend(fontsize=7)
    ax_t.grid(True, which="both", alpha=0.3)
    ax_m.set_xlabel("Gflops per image")
    ax_m.set_ylabel("MiB (training step)")
    if ax_m.has_data():  # no memory rows with --no-memory
        ax_m.legend(fontsize=7)
    ax_m.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = _timing.setup(args.threads)
    if args.child:
        child(json.loads(args.child))
        return 0
    repeats = args.repeats or (2 if args.quick else 3)
    machine = _timing.machine(threads)
    peak = _timing.matmul_peak(args.quick)
    _timing.emit("machine", **machine, matmul_peak_gflops=peak)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        w = workload_of(name, args)
        memory = {}
        if not args.no_memory:
            memory = _timing.run_child(__file__, {**w.__dict__, "overrides": list(w.overrides)}, threads)
        model = W.build_model(w)
        batch = W.make_batch(w)
        counts = W.flop_counts(model, w)
        model.eval()
        fwd = _timing.interleaved({"forward": W.forward(model, batch)}, repeats=repeats)["forward"]
        model.train()
        step = W.train_step(W.Trainee.of(model), model, batch)
        train = _timing.interleaved({"train": step}, repeats=repeats)["train"]
        cfg = model.config
        rows.append(
            _timing.emit(
                "scaling",
                model=name,
                workload=w.describe(),
                batch=w.batch,
                tokens=cfg.num_tokens,
                params=sum(p.numel() for p in model.parameters()),
                gflops=flops(model),
                forward_seconds=fwd,
                train_seconds=train,
                forward_mfu=counts["forward"] / fwd / 1e9 / peak,
                train_mfu=counts["train"] / train / 1e9 / peak,
                train_gflop_per_s=counts["train"] / train / 1e9,
                activation_mib=memory.get("activation_mib"),
                peak_mib=memory.get("peak_mib"),
            )
        )
        del model, step
    title = "### Scaling (benchmarks/scaling.py" + (" --quick: depth-2 models)" if args.quick else ")")
    text = "\n".join(
        [
            title,
            "",
            f"32×32×4 latents, batch {rows[0]['batch']}; {machine['cpu']}, {threads} threads; fp32 matmul peak "
            f"{peak:.0f} GFLOP/s.",
            "",
            _timing.markdown_table(
                rows,
                [
                    ("model", "model", ""),
                    ("tokens", "tokens", "d"),
                    ("Gflops", "gflops", ".2f"),
                    ("params", "params", ",d"),
                    ("fwd s", "forward_seconds", ".3f"),
                    ("fwd MFU", "forward_mfu", ".2f"),
                    ("step s", "train_seconds", ".3f"),
                    ("step MFU", "train_mfu", ".2f"),
                    ("activation MiB", "activation_mib", ".0f"),
                    ("peak RSS MiB", "peak_mib", ".0f"),
                ],
            ),
        ]
    )
    print("\n" + text)
    if args.plot:
        plot(rows, args.plot, peak)
        print(f"\nplot: {args.plot}")
    if args.write:
        Path(args.write).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
