"""Beyond one process (issue 20): per-rank memory of FSDP vs DDP, step-time overhead, communication volume
projected to 8 and 64 GPUs, resume equality across world sizes, and `ditlab eval` on 1 vs 2 processes.

    python benchmarks/distributed.py memory --model DiT-B/2     # 2 gloo processes per mode: states, RSS, step time
    python benchmarks/distributed.py count --model DiT-L/2      # per-rank state bytes counted from the shapes
    python benchmarks/distributed.py comm --model DiT-XL/2      # analytic bytes per step per rank, W = 8 and 64
    python benchmarks/distributed.py resume                     # 2 -> 1 and 1 -> 2 resumes vs uninterrupted runs
    python benchmarks/distributed.py eval                       # `ditlab eval` on 1 process vs torchrun on 2
    python benchmarks/distributed.py --quick                    # smoke test of all five with a tiny model
    # DiT-L/2, memory-lean (1 image per rank, DDP gradients in its buckets); DDP needs ~2 x 10 GiB of RAM:
    python benchmarks/distributed.py memory --model DiT-L/2 --batch-size 2 --steps 3 --ddp-bucket-view
    python benchmarks/distributed.py memory --model DiT-L/2 --batch-size 2 --steps 3 --modes fsdp  # ~2 x 5 GiB

memory: for each of ddp and fsdp, `torchrun --standalone --nproc_per_node 2` runs this file as a worker that
builds the real Trainer (digits data, 8×8 inputs: states do not depend on the image size but for the position
table), runs --steps optimizer steps and reports per rank: the bytes of parameters, gradients, AdamW states and
the EMA that the rank holds (a DTensor counts its local shard: `ditlab.train.parallel.state_bytes`), the
resident set after set-up (VmRSS), its high-water mark over the steps (VmHWM after resetting it through
/proc/self/clear_refs) and the mean step time after the first step. glibc returns freed blocks at once
(MALLOC_MMAP_THRESHOLD_ as benchmarks/_timing.py), so RSS follows the tensors. DDP's gradient buckets (another
copy of the gradients) are in its RSS, not in its counted states, unless --ddp-bucket-view (DDP's
gradient_as_bucket_view) makes the gradients views into the buckets. --modes runs one mode alone (the
FSDP / DDP ratios need both).

count: the same per-rank state bytes, without running anything: FSDP2 splits every parameter on dim 0 into W
chunks (torch.chunk; the last ranks may get fewer rows), and DDP holds everything on every rank.

comm: per rank and step, for P parameters: DDP all-reduces the gradients (ring: 2(W-1)/W·P·b_grad); FSDP
all-gathers the parameters in the forward and again in the backward (reshard after forward) and
reduce-scatters the gradients ((W-1)/W·P each); HSDP does FSDP inside a node of S GPUs and all-reduces the
1/S gradient shard across the R = W/S nodes (2(R-1)/R·P/S·b_grad, the only inter-node traffic). bf16 runs
gather 2-byte parameters and reduce fp32 gradients. A projection, not a measurement.

resume: DiT-Nano/2 on digits through the CLI: an uninterrupted run of 2·K steps on 1 process and on 2 (fsdp);
a 2-process fsdp run stopped at K, resumed on 1 process; a 1-process run stopped at K, resumed on 2 (fsdp).
Prints the largest loss difference of each resumed run against the uninterrupted ones.

eval: N digits training images scored against digits:test (classifier:digits and effnet-lite0, floor
included) by `ditlab eval` on one process and by `torchrun --nproc_per_node 2 -m ditlab eval`, each with a
fresh cache (the classifier copied, so it is not trained twice): the reference and floor statistics are
computed across the 2 ranks too. Prints every metric of both and their largest relative difference.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024), "MALLOC_TRIM_THRESHOLD_": str(64 * 1024)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="*", default=[], help="memory, count, comm, resume (default: all)")
    p.add_argument("--quick", action="store_true", help="smoke test: DiT-Nano/2, 2 steps")
    p.add_argument(
        "--model", default=None, help="default: DiT-B/2 (memory), DiT-L/2 (count), DiT-XL/2 (comm)"
    )
    p.add_argument("--steps", type=int, default=4, help="memory: optimizer steps per mode")
    p.add_argument("--batch-size", type=int, default=8, help="memory: global batch")
    p.add_argument(
        "--modes", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "fsdp"], help="memory: modes to run"
    )
    p.add_argument(
        "--ddp-bucket-view", action="store_true", help="memory: DDP gradients as views into its buckets"
    )
    p.add_argument("--eval-images", type=int, default=1000, help="eval: samples scored (digits train)")
    p.add_argument("--world", type=int, nargs="+", default=None, help="comm: world sizes (default 8 64)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="comm: HSDP shard group size")
    p.add_argument("--write", default=None, help="also write the Markdown summary to this file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one torchrun measurement
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- memory
def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def worker(payload: dict) -> None:
    """Under torchrun: one mode's per-rank figures, gathered and printed by rank 0 as one JSON line."""
    import torch.distributed as dist

    from ditlab.train import TrainConfig, Trainer
    from ditlab.train.parallel import state_bytes

    cfg = TrainConfig(
        data="digits",
        model=payload["model"],
        batch_size=payload["batch_size"],
        steps=payload["steps"],
        parallel=payload["mode"],
        ddp_bucket_view=payload.get("bucket_view", False),
        threads=1,
        progress=False,
        out=payload["out"],
    )
    trainer = Trainer(cfg)
    rss_setup = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts again here
    times = []
    for _ in range(cfg.steps):
        start = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - start)
    model, opt = trainer.model, trainer.opt
    opt_tensors = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    row = {
        "rank": trainer.dist.rank,
        "params": state_bytes(model.parameters()),
        "grads": state_bytes(p.grad for p in model.parameters() if p.grad is not None),
        "adam": state_bytes(opt_tensors),
        "ema": state_bytes(trainer.ema.model.parameters()),
        "rss_setup": rss_setup,
        "hwm_steps": _status("VmHWM"),
        "hwm_life": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "step_s": sum(times[1:]) / max(len(times) - 1, 1),
    }
    row["states"] = row["params"] + row["grads"] + row["adam"] + row["ema"]
    rows = [None] * trainer.dist.world_size
    dist.all_gather_object(rows, row)
    if trainer.dist.is_main:
        result = {"mode": payload["mode"], "model": payload["model"], "batch_size": payload["batch_size"]}
        result.update(bucket_view=cfg.ddp_bucket_view, ranks=rows)
        print("RESULT " + json.dumps(result))
    dist.destroy_process_group()


def measure_memory(
    model: str, steps: int, batch_size: int, modes=("ddp", "fsdp"), bucket_view: bool = False
) -> list[dict]:
    results = []
    env = {**os.environ, **MEMORY_ENV, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    for mode in modes:
        with tempfile.TemporaryDirectory() as tmp:
            payload = dict(
                model=model, steps=steps, batch_size=batch_size, mode=mode, out=str(Path(tmp) / "r")
            )
            payload["bucket_view"] = bucket_view
            cmd = [
                TORCHRUN,
                "--standalone",
                "--nproc_per_node",
                "2",
                __file__,
                "--worker",
                json.dumps(payload),
            ]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode:
                raise RuntimeError(f"{mode} worker failed:\n{done.stderr[-3000:]}")
            line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
            results.append(json.loads(line[len("RESULT ") :]))
            print(line[len("RESULT ") :], flush=True)
    return results


def memory_table(results: list[dict]) -> str:
    gib = 2**30
    out = [
        "| mode | rank | params | grads | AdamW | EMA | states | RSS after set-up | peak RSS in steps | step (s, under load) |"
    ]
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for x in r["ranks"]:
            out.append(
                f"| {r['mode']} | {x['rank']} | {x['params'] / gib:.3f} | {x['grads'] / gib:.3f} | "
                f"{x['adam'] / gib:.3f} | {x['ema'] / gib:.3f} | **{x['states'] / gib:.3f}** | "
                f"{x['rss_setup'] / gib:.2f} | {x['hwm_steps'] / gib:.2f} | {x['step_s']:.2f} |"
            )
    by = {r["mode"]: r["ranks"] for r in results}
    out.append("")
    settings = f"global batch {results[0]['batch_size']}, DDP bucket view {results[0]['bucket_view']}"
    if not {"ddp", "fsdp"} <= set(by):
        out.append(f"GiB per rank ({settings}); one mode only, no FSDP / DDP ratio.")
        return "\n".join(out)
    ratio = max(x["states"] for x in by["fsdp"]) / max(x["states"] for x in by["ddp"])
    peak = max(x["hwm_steps"] for x in by["fsdp"]) / max(x["hwm_steps"] for x in by["ddp"])
    step = max(x["step_s"] for x in by["fsdp"]) / max(x["step_s"] for x in by["ddp"])
    out.append(
        f"GiB per rank ({settings}). FSDP / DDP: states {ratio:.3f}x (largest rank), peak RSS in steps {peak:.3f}x, "
        f"step time {step:.2f}x (under load: other work shared the 2 cores)."
    )
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- count
def shapes_of(model: str) -> list[tuple[torch.Size, bool]]:
    """(shape, trainable) of every parameter of the model, built on the meta device (no memory)."""
    from ditlab.models.zoo import create_model

    with torch.device("meta"):
        net = create_model(model, input_size=8, in_channels=1, num_classes=10)  # the memory worker's data
    return [(p.shape, p.requires_grad) for p in net.parameters()]


def counted_state_bytes(model: str, world: int) -> dict:
    """Per-rank fp32 bytes of params + grads + 2 AdamW moments (+ step) + EMA, DDP and FSDP2 (dim-0 chunks)."""
    shapes = shapes_of(model)

    def local_numel(shape, rank):
        if world == 1:
            return shape.numel()
        rows = shape[0]
        size = -(-rows // world)  # torch.chunk: ceil(rows / world) rows per chunk, fewer at the end
        mine = max(0, min(size, rows - rank * size))
        return mine * (shape.numel() // rows if rows else 0)

    def per_rank(rank, shard):
        total = 0
        for shape, trainable in shapes:
            n = local_numel(shape, rank) if shard else shape.numel()
            total += 4 * n * (1 + 1 + (3 if trainable else 0))  # param, EMA; grad + exp_avg + exp_avg_sq
            total += 4 if trainable else 0  # AdamW's step counter (one fp32 scalar per parameter)
        return total

    ddp = per_rank(0, False)
    fsdp = [per_rank(r, True) for r in range(world)]
    params = sum(s.numel() for s, _ in shapes)
    return {
        "model": model,
        "world": world,
        "params": params,
        "ddp": ddp,
        "fsdp": fsdp,
        "ratio": max(fsdp) / ddp,
    }


def count_table(rows: list[dict]) -> str:
    gib = 2**30
    out = [
        "| model | parameters | W | DDP states / rank | FSDP states / rank (largest) | FSDP / DDP |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['params']:,} | {r['world']} | {r['ddp'] / gib:.3f} GiB | "
            f"{max(r['fsdp']) / gib:.3f} GiB | {r['ratio']:.3f} |"
        )
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- comm
def comm_volume(params: int, world: int, gpus_per_node: int, param_bytes: int, grad_bytes: int) -> dict:
    """Bytes each rank sends per optimizer step (ring collectives), and how many of them leave the node."""
    f = (world - 1) / world
    ddp = 2 * f * params * grad_bytes
    fsdp = 2 * f * params * param_bytes + f * params * grad_bytes
    S = min(gpus_per_node, world)
    R = world // S
    intra = 2 * (S - 1) / S * params * param_bytes + (S - 1) / S * params * grad_bytes
    inter = 2 * (R - 1) / R * params / S * grad_bytes if R > 1 else 0.0
    return {"ddp": ddp, "fsdp": fsdp, "hsdp": intra + inter, "hsdp_inter_node": inter, "nodes": R}


def comm_table(model: str, worlds: list[int], gpus_per_node: int) -> str:
    params = sum(s.numel() for s, _ in shapes_of(model))
    gb = 1e9
    out = [
        f"{model}: {params:,} parameters. GB sent per rank per optimizer step (projection, ring collectives).",
        "",
        "| W (nodes × GPUs) | precision | DDP | FSDP | HSDP (of which inter-node) | FSDP / DDP |",
        "|---|---|---|---|---|---|",
    ]
    for world in worlds:
        for name, pb, gbytes in (("fp32", 4, 4), ("bf16 params, fp32 reduce", 2, 4)):
            v = comm_volume(params, world, gpus_per_node, pb, gbytes)
            ddp_bytes = 2 * (world - 1) / world * params * 4  # DDP reduces fp32 gradients either way
            out.append(
                f"| {world} ({v['nodes']} × {min(gpus_per_node, world)}) | {name} | {ddp_bytes / gb:.2f} | "
                f"{v['fsdp'] / gb:.2f} | {v['hsdp'] / gb:.2f} ({v['hsdp_inter_node'] / gb:.2f}) | "
                f"{v['fsdp'] / ddp_bytes:.2f} |"
            )
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- resume
def _train(out: Path, steps: int, world: int, extra=()) -> None:
    flags = ["-m", "ditlab", "train", "--data", "digits", "--model", "DiT-Nano/2", "--batch-size", "8"]
    flags += ["--lr", "1e-3", "--train-steps", str(steps), "--log-every", "1", "--ckpt-every", str(steps)]
    flags += ["--sample-steps", "2", "--threads", "1", "--no-progress", "--out", str(out), *extra]
    launcher = [sys.executable] if world == 1 else [TORCHRUN, "--standalone", "--nproc_per_node", str(world)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([*launcher, *flags], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(flags)} failed:\n{done.stderr[-3000:]}")


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def resume_equality(k: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fsdp = ["--parallel", "fsdp"]
        _train(root / "ref1", 2 * k, 1)
        _train(root / "ref2", 2 * k, 2, fsdp)
        _train(root / "a", k, 2, fsdp)  # 2 -> 1
        _train(root / "a", 2 * k, 1, ["--resume", "auto"])
        _train(root / "b", k, 1)  # 1 -> 2
        _train(root / "b", 2 * k, 2, [*fsdp, "--resume", "auto"])
        runs = {name: _losses(root / name) for name in ("ref1", "ref2", "a", "b")}
    out = [
        f"DiT-Nano/2 on digits, global batch 8, {2 * k} steps, stopped and resumed at step {k}.",
        "",
        "| run | vs uninterrupted 1 process: max abs loss diff (bit-exact steps) | vs uninterrupted 2 (fsdp) |",
        "|---|---|---|",
    ]
    for name, label in (
        ("ref2", "uninterrupted, 2 processes fsdp"),
        ("a", "2 (fsdp) -> 1"),
        ("b", "1 -> 2 (fsdp)"),
    ):
        cells = []
        for ref in ("ref1", "ref2"):
            a, b = runs[name], runs[ref]
            diff = max(abs(x - y) for x, y in zip(a, b))
            same = sum(x == y for x, y in zip(a, b))
            cells.append(f"{diff:.2e} ({same}/{len(a)})")
        out.append(f"| {label} | {cells[0]} | {cells[1]} |")
    out.append("")
    out.append("losses: " + json.dumps({k2: [round(v, 8) for v in v2] for k2, v2 in runs.items()}))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- eval
EVAL_FEATURES = ("classifier:digits", "effnet-lite0")
EVAL_KEYS = ("fd", "floor_fd", "precision", "recall", "inception_score", "class_accuracy")


def _eval(samples: Path, cache: Path, out: Path, world: int) -> dict:
    flags = ["-m", "ditlab", "eval", "--samples", str(samples), "--ref", "digits:test"]
    flags += ["--features", *EVAL_FEATURES, "--cache-dir", str(cache), "--out", str(out)]
    launcher = [sys.executable] if world == 1 else [TORCHRUN, "--standalone", "--nproc_per_node", str(world)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([*launcher, *flags], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(flags)} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads(out.read_text())["metrics"]
    return {
        name: {k: (m["floor"]["fd"] if k == "floor_fd" else m.get(k)) for k in EVAL_KEYS}
        for name, m in metrics.items()
    }


def eval_equality(n: int) -> str:
    import shutil

    import numpy as np

    from ditlab.data import load_dataset, save_npz

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train = load_dataset("digits:train")
        save_npz(root / "s.npz", train.numpy_images()[:n], train.labels.numpy()[:n])
        one = _eval(root / "s.npz", root / "c1", root / "one.json", 1)
        (root / "c2").mkdir()
        shutil.copytree(root / "c1" / "classifiers", root / "c2" / "classifiers")
        two = _eval(root / "s.npz", root / "c2", root / "two.json", 2)
    out = [
        f"{n} digits training images against digits:test; `ditlab eval` on 1 process vs 2 (torchrun, gloo).",
        "",
        "| extractor | metric | 1 process | 2 processes | relative difference |",
        "|---|---|---|---|---|",
    ]
    worst = {}
    for name, a in one.items():
        for key in EVAL_KEYS:
            x, y = a[key], two[name][key]
            if x is None and y is None:
                continue
            rel = abs(x - y) / max(abs(x), np.finfo(float).tiny)
            worst[key] = max(worst.get(key, 0.0), rel)
            out.append(f"| {name} | {key} | {x!r} | {y!r} | {rel:.1e} |")
    out.append("")
    out.append("largest relative difference: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
    return "\n".join(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    what = args.what or ["memory", "count", "comm", "resume", "eval"]
    parts = []
    if "memory" in what:
        model = "DiT-Nano/2" if args.quick else args.model or "DiT-B/2"
        steps = 2 if args.quick else args.steps
        results = measure_memory(model, steps, args.batch_size, args.modes, args.ddp_bucket_view)
        parts.append(f"### Memory per rank, {model}, 2 processes (gloo, CPU)\n\n" + memory_table(results))
    if "count" in what:
        models = (
            ["DiT-Nano/2"]
            if args.quick
            else ([args.model] if args.model else ["DiT-B/2", "DiT-L/2", "DiT-XL/2"])
        )
        rows = [counted_state_bytes(m, w) for m in models for w in (2, 8)]
        parts.append("### State bytes per rank, counted from the shapes\n\n" + count_table(rows))
    if "comm" in what:
        model = "DiT-Nano/2" if args.quick else args.model or "DiT-XL/2"
        parts.append(
            "### Communication volume (projection)\n\n"
            + comm_table(model, args.world or [8, 64], args.gpus_per_node)
        )
    if "resume" in what:
        parts.append("### Resume across world sizes\n\n" + resume_equality(1 if args.quick else 4))
    if "eval" in what:
        n = 600 if args.quick else args.eval_images
        parts.append("### Evaluation on 1 vs 2 processes\n\n" + eval_equality(n))
    text = "\n\n".join(parts)
    print(text)
    if args.write:
        Path(args.write).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
