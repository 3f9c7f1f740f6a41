"""Speed of ditlab against diffusers and against its own eager baseline: forward, guided sampling step and
training step, for DiT-S/2 and DiT-B/2 on 32×32×4 latents (batch 8) and for the demo's model, all in one run.

    python benchmarks/speed.py --compile --bf16        # the real run (≈ 20-30 min on 2 cores)
    python benchmarks/speed.py --quick                 # smoke test: depth-2 models, tiny batches (seconds)
    python benchmarks/speed.py --configs demo --phases train --compile

Variants, timed round-robin in one process (min over --repeats, see _timing.py):
  ditlab     the defaults: fast paths on (contiguous tokens, in-place modulate/residual), fused AdamW
  eager      the plain model and torch's per-tensor AdamW loop (`model.fast_paths = False`,
             `--no-fused-optimizer`): the straightforward eager baseline
  compiled   ditlab under torch.compile (--compile; compile time reported separately)
  bf16       ditlab under CPU bf16 autocast (--bf16; NOT the same numerics: informational)
  diffusers  diffusers' DiTTransformer2DModel with the same weights (checked: same outputs) and the same
             AdamW/EMA as ditlab, so the model is the only difference

FLOPs are the analytic count (2 per multiply-add; training = 3 forwards); MFU = achieved GFLOP/s over the
fp32 matmul peak measured at the start of the run. Prints one JSON line per measurement, then a Markdown
summary with issue 6's targets (--write FILE saves it).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402
import _workloads as W  # noqa: E402

from ditlab.train.trainer import compile_or_eager  # noqa: E402

PHASES = ("forward", "guided", "train")
TARGETS = {"diffusers": 1.0, "mfu_forward": 0.85, "demo_train_vs_eager": 1.5}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke test: depth-2 models, small batches, 2 rounds")
    p.add_argument(
        "--configs", default="DiT-S/2,DiT-B/2,demo", help="comma-separated: DiT-S/2, DiT-B/2, demo"
    )
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {PHASES}")
    p.add_argument("--batch", type=int, default=8, help="latent configs' batch (images)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; --quick 2)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    p.add_argument("--compile", action="store_true", help="add the torch.compile variant")
    p.add_argument("--bf16", action="store_true", help="add the bf16-autocast variant (different numerics)")
    p.add_argument("--no-diffusers", action="store_true", help="skip the diffusers comparison")
    p.add_argument("--write", default=None, help="also write the Markdown summary to this file")
    return p.parse_args(argv)


def workloads(args) -> list[W.Workload]:
    out = []
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        if name == "demo":
            out.append(W.demo_workload(batch=16, depth=2) if args.quick else W.demo_workload())
        elif name in ("DiT-S/2", "DiT-B/2"):
            out.append(
                W.latent_workload(name, 2, depth=2) if args.quick else W.latent_workload(name, args.batch)
            )
        else:
            raise ValueError(f"unknown config {name!r}; valid: DiT-S/2, DiT-B/2, demo")
    return out


class Contestants:
    """The variants of one workload and how to switch between them (they share one ditlab model)."""

    def __init__(self, w: W.Workload, args):
        self.w = w
        self.model = W.build_model(w)
        self.trainee = W.Trainee.of(self.model)
        self.names = ["ditlab", "eager"]
        self.twin = None
        self.notes: dict[str, str] = {}
        if not args.no_diffusers:
            self.twin = W.diffusers_twin(self.model)
            self.twin_trainee = W.Trainee.of(self.twin)
            self.names.append("diffusers")
        self.compiled = None
        if args.compile:
            self.names.append("compiled")
        if args.bf16:
            self.names.append("bf16")

    def before(self, name: str) -> None:
        base = name == "eager"
        self.model.fast_paths = not base
        self.trainee.use_fused_optimizer(not base)

    def compile(self, batch: W.Batch) -> float:
        """Compile once (training graphs checked by `compile_or_eager`); returns the seconds it took."""
        start = time.perf_counter()
        self.model.train()
        example = (batch.noise, batch.t, {"y": batch.y, "force_drop_ids": batch.drop})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.compiled = compile_or_eager(self.model, example, train=True)
        if self.compiled is self.model:
            self.notes["compiled"] = "torch.compile failed, eager fallback: " + "; ".join(
                str(c.message) for c in caught
            )
        return time.perf_counter() - start

    def functions(self, phase: str, batch: W.Batch) -> dict:
        fns = {}
        for name in self.names:
            if name == "diffusers":
                net, trainee = self.twin, self.twin_trainee
            else:
                net, trainee = (self.compiled if name == "compiled" else self.model), self.trainee
            bf16 = name == "bf16"
            if phase == "forward":
                fns[name] = W.forward(net, batch, bf16)
            elif phase == "guided":
                fns[name] = W.guided_step(net, batch, self.model.null_class, bf16=bf16)
            else:
                fns[name] = W.train_step(trainee, net, batch, bf16)
        return fns

    def set_mode(self, phase: str) -> None:
        training = phase == "train"
        self.model.train(training)
        if self.twin is not None:
            self.twin.train(training)


def parity(c: Contestants, batch: W.Batch) -> float | None:
    """ditlab vs diffusers outputs on the same inputs (eval mode): the comparison is void if they differ."""
    if c.twin is None:
        return None
    c.model.eval(), c.twin.eval()
    c.before("ditlab")
    with torch.no_grad():
        diff = W.max_relative_difference(
            c.twin(batch.noise, batch.t, batch.y), c.model(batch.noise, batch.t, batch.y)
        )
    if diff > 1e-4:
        raise RuntimeError(f"ditlab and diffusers disagree ({diff:.2e} relative): not the same function")
    return diff


def run_workload(w: W.Workload, args, peak: float, repeats: int) -> list[dict]:
    c = Contestants(w, args)
    batch = W.make_batch(w)
    diff = parity(c, batch)
    counts = W.flop_counts(c.model, w)
    records = []
    compile_seconds = c.compile(batch) if args.compile else None
    first_call = {}  # seconds of the compiled model's first call per phase (compiles that mode's graphs)
    for phase in [p.strip() for p in args.phases.split(",") if p.strip()]:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; valid: {', '.join(PHASES)}")
        c.set_mode(phase)
        if c.compiled is not None and c.compiled is not c.model:  # the first call per mode compiles
            start = time.perf_counter()
            c.before("compiled")
            c.functions(phase, batch)["compiled"]()
            first_call[phase] = time.perf_counter() - start
        seconds = _timing.interleaved(c.functions(phase, batch), repeats=repeats, warmup=1, before=c.before)
        for name, s in seconds.items():
            achieved = counts[phase] / s / 1e9
            records.append(
                _timing.emit(
                    "speed",
                    config=w.name,
                    workload=w.describe(),
                    phase=phase,
                    variant=name,
                    seconds=s,
                    gflop_per_s=achieved,
                    mfu=achieved / peak,
                    vs_diffusers=seconds["diffusers"] / s if "diffusers" in seconds else None,
                    vs_eager=seconds["eager"] / s,
                    parity_vs_diffusers=diff,
                    compile_seconds=compile_seconds if name == "compiled" else None,
                    first_call_seconds=first_call.get(phase) if name == "compiled" else None,
                    note=c.notes.get(name),
                )
            )
    if c.compiled is not None:  # dynamo's caches hold the model: release it before the next workload
        torch._dynamo.reset()
    return records


def summary(records: list[dict], peak: float, machine: dict, quick: bool = False) -> str:
    lines = [
        "### Speed (benchmarks/speed.py"
        + (" --quick: depth-2 models, NOT the issue's configs)" if quick else ")"),
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} threads, torch "
        f"{machine['torch']}, diffusers {machine['diffusers']}; fp32 matmul peak {peak:.0f} GFLOP/s "
        f"(load average at start {machine.get('load_average')}).",
        "",
    ]
    rows = []
    for r in records:
        rows.append({**r, "key": f"{r['config']} {r['phase']}"})
    lines.append(
        _timing.markdown_table(
            rows,
            [
                ("config / phase", "key", ""),
                ("variant", "variant", ""),
                ("seconds", "seconds", ".4f"),
                ("GFLOP/s", "gflop_per_s", ".1f"),
                ("MFU", "mfu", ".2f"),
                ("× diffusers", "vs_diffusers", ".2f"),
                ("× eager", "vs_eager", ".2f"),
            ],
        )
    )
    compiled = [r for r in records if r.get("compile_seconds") is not None]
    for config in dict.fromkeys(r["config"] for r in compiled):
        rows_c = [r for r in compiled if r["config"] == config]
        firsts = ", ".join(f"{r['phase']} {r['first_call_seconds']:.0f} s" for r in rows_c)
        lines += [
            "",
            f"{config}: torch.compile check (training graphs) {rows_c[0]['compile_seconds']:.0f} s; "
            f"first compiled call per phase: {firsts}.",
        ]
    notes = {(r["config"], r["note"]) for r in records if r.get("note")}
    lines += [f"- {config}: {note}" for config, note in sorted(notes)]
    lines += ["", "Targets (issue 6), exact-numerics variants only (ditlab, compiled):", ""]
    best = {}
    for r in records:
        if r["variant"] in ("ditlab", "compiled"):
            key = (r["config"], r["phase"])
            if key not in best or r["seconds"] < best[key]["seconds"]:
                best[key] = r
    for (config, phase), r in sorted(best.items()):
        checks = []
        if config != "demo" and r["vs_diffusers"] is not None:
            ok = r["vs_diffusers"] >= TARGETS["diffusers"]
            checks.append(f"{r['vs_diffusers']:.2f}× diffusers (≥ 1.0: {'met' if ok else 'NOT met'})")
        if config != "demo" and phase == "forward":
            ok = r["mfu"] >= TARGETS["mfu_forward"]
            checks.append(f"forward MFU {r['mfu']:.2f} (≥ 0.85: {'met' if ok else 'NOT met'})")
        if config == "demo" and phase == "train":
            ok = r["vs_eager"] >= TARGETS["demo_train_vs_eager"]
            checks.append(f"{r['vs_eager']:.2f}× eager (≥ 1.5: {'met' if ok else 'NOT met'})")
        if checks:
            lines.append(f"- {config} {phase} ({r['variant']}): " + "; ".join(checks))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = _timing.setup(args.threads)
    repeats = args.repeats or (2 if args.quick else 5)
    machine = _timing.machine(threads)
    peak = _timing.matmul_peak(args.quick)
    _timing.emit("machine", **machine, matmul_peak_gflops=peak)
    records = []
    for w in workloads(args):
        records += run_workload(w, args, peak, repeats)
    text = summary(records, peak, machine, args.quick)
    print("\n" + text)
    if args.write:
        Path(args.write).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
