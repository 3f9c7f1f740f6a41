"""DyDiT benchmark: real wall-clock speed-up of the deployed dynamic model over the dense DiT, in the same run.

    python benchmarks/dydit.py --quick                    # DiT-S/2 at 32×32, random weights, masks at 0.5 FLOPs
    python benchmarks/dydit.py --base runs/fm/model.safetensors --data fashion-mnist --steps 3000 \\
        --target-flops 0.5 --out runs/dydit-fm --write benchmarks/dydit.md

--quick: a DiT-S/2 (32×32×4 latents, 1000 classes, random weights) and its DyDiT with routers pinned to a
given width (default 3/6 heads, 4/6 MLP groups) and token routers calibrated to keep a fraction of the tokens
(default 0.75): attention ×0.5 and MLP ×(4/6·0.75) = ×0.5, a 0.5 FLOPs ratio. It times one forward of each
(min over repeats, interleaved) and a short guided DDIM sampling run of each. Ends with one JSON line.

Full mode fine-tunes the trained DiT `--base` into a DyDiT (`ditlab.dydit.finetune`, the method of
`ditlab finetune --method dydit`), or takes an already fine-tuned one (`--dydit`), then samples the same
labels and noise with both models, timing them, records the FLOPs ratio of every sampling step (plot PNG),
scores both sample sets (FD, class accuracy against the test split), runs the --quick measurement too, and
writes a Markdown report. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from ditlab.dydit import DyDiT, dynamic_flop_breakdown
from ditlab.dydit.model import calibrate_token_routers
from ditlab.models import create_model
from ditlab.sampling import generate


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="speed only, DiT-S/2 at 32×32 with random weights")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    # quick mode
    p.add_argument("--batch", type=int, default=8, help="rows per timed forward (quick)")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions; the minimum is kept")
    p.add_argument("--heads", type=int, default=3, help="active heads per block (quick; of 6)")
    p.add_argument("--groups", type=int, default=4, help="active MLP groups per block (quick; of 6)")
    p.add_argument(
        "--token-keep", type=float, default=0.75, help="fraction of tokens through the MLP (quick)"
    )
    p.add_argument(
        "--quick-sample-steps", type=int, default=8, help="DDIM steps of the timed sampling (quick)"
    )
    p.add_argument(
        "--quick-images", type=int, default=4, help="images of the timed sampling, with CFG (quick)"
    )
    # full mode
    p.add_argument("--base", help="trained DiT checkpoint to fine-tune (full mode)")
    p.add_argument("--dydit", help="an already fine-tuned DyDiT (skips fine-tuning)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--out", default="runs/dydit-bench", help="fine-tuning run folder")
    p.add_argument("--steps", type=int, default=3000, help="fine-tuning steps")
    p.add_argument("--batch-size", type=int, default=128, help="fine-tuning batch")
    p.add_argument("--lr", type=float, default=None, help="default: the base's pre-training rate")
    p.add_argument("--target-flops", type=float, default=0.5)
    p.add_argument("--anneal-steps", type=int, default=1000)
    p.add_argument("--samples", type=int, default=1000, help="images per model for FD / accuracy")
    p.add_argument("--sampler", default=None, help="default: the objective's (ddim / euler)")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--sample-batch", type=int, default=100)
    p.add_argument("--ref", default=None, help="FD reference (default DATA:test)")
    p.add_argument("--features", default=None, help="comma-separated extractors (default: eval's default)")
    p.add_argument("--plot", default="benchmarks/dydit_flops_per_step.png")
    p.add_argument("--write", default=None, help="write the Markdown report here (e.g. benchmarks/dydit.md)")
    p.add_argument("--json", default=None, help="write every measured number (per step, per extractor) here")
    return p.parse_args(argv)


def interleaved_times(fns: dict, repeats: int) -> dict[str, float]:
    """Min-of-N seconds of each function, runs interleaved so that load changes hit all of them alike."""
    for fn in fns.values():
        fn()  # warm-up: caches, allocator, sliced weights
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


@torch.no_grad()
def pin_width(model: DyDiT, heads: int, groups: int) -> None:
    """Routers that keep the first `heads` heads and `groups` MLP groups of every block at every t."""
    H = model.num_heads
    if not (1 <= heads <= H and 1 <= groups <= H):
        raise ValueError(f"--heads and --groups must be in 1..{H}")
    for r in model.routers:
        r.heads.weight.zero_()
        r.groups.weight.zero_()
        r.heads.bias.copy_(torch.tensor([15.0 if i < heads - 1 else -15.0 for i in range(H - 1)]))
        r.groups.bias.copy_(torch.tensor([15.0 if i < groups - 1 else -15.0 for i in range(H - 1)]))


def mean_ratio(model, records) -> float:
    ratios = [dynamic_flop_breakdown(model, r["heads"], r["groups"], r["tokens"])["ratio"] for r in records]
    return sum(ratios) / len(ratios)


def quick(args) -> dict:
    """Speed on DiT-S/2 at 32×32 with random weights: dense vs deployed DyDiT at the same run."""
    torch.manual_seed(args.seed)
    dense = create_model("DiT-S/2", input_size=32, in_channels=4, num_classes=1000).to(args.device).eval()
    with (
        torch.no_grad()
    ):  # wake the zero-initialised modulation and output so the residual stream is realistic
        for name, p in dense.named_parameters():
            if "adaLN_modulation" in name or "final_layer.linear" in name:
                p.normal_(0, 0.02)
    model = DyDiT.from_dit(dense).eval()
    pin_width(model, args.heads, args.groups)
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 4, 32, 32, generator=g).to(args.device)
    t = torch.full((args.batch,), 500, device=args.device)
    y = torch.randint(0, 1000, (args.batch,), generator=g).to(args.device)
    if args.token_keep < 1:
        calibrate_token_routers(model, x, t, y, keep=args.token_keep)

    with torch.no_grad(), model.recording() as records:
        model(x, t, y)
    ratio = mean_ratio(model, records)
    with torch.no_grad():
        fwd = interleaved_times(
            {"dense": lambda: dense(x, t, y), "dydit": lambda: model(x, t, y)}, args.repeats
        )

    kw = dict(
        classes=list(range(args.quick_images)),
        per_class=1,
        sampler="ddim",
        steps=args.quick_sample_steps,
        guidance_scale=1.5,
        seed=args.seed,
        device=args.device,
    )
    with model.recording() as records:
        generate(model, **kw)
    sampling_ratio = mean_ratio(model, records)
    samp = interleaved_times(
        {"dense": lambda: generate(dense, **kw), "dydit": lambda: generate(model, **kw)},
        max(1, args.repeats // 2),
    )
    return {
        "model": "DiT-S/2@32x32 (random weights)",
        "batch": args.batch,
        "heads": args.heads,
        "groups": args.groups,
        "token_keep": args.token_keep,
        "flops_ratio": round(ratio, 4),
        "dense_forward_ms": round(1e3 * fwd["dense"], 2),
        "dydit_forward_ms": round(1e3 * fwd["dydit"], 2),
        "speedup": round(fwd["dense"] / fwd["dydit"], 3),
        "sampling_rows": 2 * args.quick_images,
        "sampling_steps": args.quick_sample_steps,
        "sampling_flops_ratio": round(sampling_ratio, 4),
        "dense_sampling_s": round(samp["dense"], 3),
        "dydit_sampling_s": round(samp["dydit"], 3),
        "sampling_speedup": round(samp["dense"] / samp["dydit"], 3),
        "sliced_cache_mb": round(model.planner.cached_bytes() / 2**20, 2),
    }


def plot_flops_per_step(model, records, path: Path) -> list[dict]:
    """Per sampling step: t, FLOPs ratio, mean active heads/groups and kept tokens; plotted to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for r in records:
        acc = dynamic_flop_breakdown(model, r["heads"], r["groups"], r["tokens"])
        H = model.num_heads
        rows.append(
            {
                "t": r["t"],
                "ratio": acc["ratio"],
                "heads": sum(r["heads"]) / (H * len(r["heads"])),
                "groups": sum(r["groups"]) / (H * len(r["groups"])),
                "tokens": sum(r["tokens"]) / len(r["tokens"]),
            }
        )
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ts = [r["t"] for r in rows]
    for key, label in (
        ("ratio", "FLOPs ratio"),
        ("heads", "active heads"),
        ("groups", "active MLP groups"),
        ("tokens", "tokens through MLP"),
    ):
        ax.plot(ts, [r[key] for r in rows], label=label, lw=2 if key == "ratio" else 1)
    ax.set_xlabel("timestep t (1000 = pure noise)")
    ax.set_ylabel("fraction of the dense model")
    ax.set_ylim(0, 1.05)
    ax.invert_xaxis()  # sampling runs from noise to data
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return rows


def run_settings(model_path: Path, default_target: float) -> tuple[int | None, float]:
    """(fine-tuning steps, λ) of the `ditlab finetune` run a DyDiT file came from, read from the config.json
    beside it; (None, default_target) when the file stands alone."""
    config = model_path.parent / "config.json"
    if not config.is_file():
        return None, default_target
    from ditlab.dydit.method import DyDiTMethod

    cfg = json.loads(config.read_text())  # FinetuneConfig folds --target-flops into method_args
    train_options, _ = DyDiTMethod().split_options(cfg.get("method_args") or {})
    return cfg.get("steps"), train_options.target_flops


def full(args) -> dict:
    """Fine-tune (or load) the DyDiT, then time, record and score dense vs DyDiT sampling of the same labels."""
    from ditlab.data.images import to_uint8
    from ditlab.dydit.checkpoint import load_dydit
    from ditlab.eval import evaluate
    from ditlab.finetune import FinetuneConfig, finetune
    from ditlab.models import load_model

    finetune_s = None
    if args.dydit is None:  # the same run as `ditlab finetune --method dydit --method-args target_flops=...`
        cfg = FinetuneConfig(
            base=args.base,
            method="dydit",
            method_args={"target_flops": args.target_flops, "anneal_steps": args.anneal_steps},
            data=args.data,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            out=args.out,
            threads=args.threads,
            device=args.device,
            ema_warmup=True,
            log_every=50,
            ckpt_every=max(args.steps // 2, 1),
            seed=args.seed,
        )
        t0 = time.perf_counter()
        dydit_path = finetune(cfg)["model"]
        finetune_s = time.perf_counter() - t0
        finetune_steps, target_flops = args.steps, args.target_flops
    else:
        dydit_path = args.dydit
        finetune_steps, target_flops = run_settings(Path(dydit_path), args.target_flops)
    dense = load_model(args.base, device=args.device)
    model = load_dydit(dydit_path, device=args.device)
    conditional = dense.num_classes > 0
    kw = dict(
        sampler=args.sampler,
        steps=args.sample_steps,
        guidance_scale=args.guidance,
        seed=args.seed,
        batch_size=args.sample_batch,
        device=args.device,
        return_tensors=True,
    )
    if conditional:  # every class, equally often
        kw.update(classes=list(range(dense.num_classes)), per_class=max(1, args.samples // dense.num_classes))
    else:
        kw.update(num_samples=args.samples)
    one_batch = {**kw, "num_samples": args.sample_batch}  # the timed unit: one sampling batch, classes cycled
    if conditional:
        one_batch["per_class"] = 1
    # One batch decides every step's widths and slices the weights (the deployment precomputation), recorded.
    with model.recording() as records:
        generate(model, **one_batch)
    rows = plot_flops_per_step(model, records, Path(args.plot))
    timing = interleaved_times(
        {"dense": lambda: generate(dense, **one_batch), "dydit": lambda: generate(model, **one_batch)},
        args.repeats,
    )
    features = args.features.split(",") if args.features else None
    scores = {}
    for name, net in (("dense", dense), ("dydit", model)):
        start = time.perf_counter()
        images, labels = generate(net, **kw)
        seconds = time.perf_counter() - start
        result = evaluate(
            to_uint8(images).numpy(),
            labels.numpy() if conditional else None,
            ref=args.ref or f"{args.data}:test",
            features=features,
        )
        scores[name] = {"seconds": seconds, "n": len(images), "metrics": result["metrics"]}
    return {
        "base": str(args.base),
        "dydit": str(dydit_path),
        "finetune_steps": finetune_steps,
        "finetune_s": finetune_s,
        "target_flops": target_flops,
        "flops_ratio": sum(r["ratio"] for r in rows) / len(rows),
        "batch": args.sample_batch,
        "sample_steps": len(rows),
        "sampling_batch_dense_s": timing["dense"],
        "sampling_batch_dydit_s": timing["dydit"],
        "speedup": timing["dense"] / timing["dydit"],
        "full_run_speedup": scores["dense"]["seconds"] / scores["dydit"]["seconds"],
        "samples": scores["dense"]["n"],
        "dense": scores["dense"],
        "dydit_model": scores["dydit"],
        "per_step": rows,
        "plot": args.plot,
    }


def headline(metrics: dict) -> tuple[str, float | None, float | None]:
    """(extractor, FD, class accuracy) of the in-domain classifier if present, else the first extractor."""
    name = next((k for k in metrics if k.startswith("classifier")), next(iter(metrics)))
    return name, metrics[name].get("fd"), metrics[name].get("class_accuracy")


def extractor_rows(dense: dict, dydit: dict) -> list[str]:
    """One Markdown table row per feature extractor scored for both models."""

    def num(value, fmt=".3f"):
        return "–" if value is None else format(value, fmt)

    rows = []
    for name, d in dense.items():
        y = dydit[name]
        ratio = y["fd"] / d["fd"] if d.get("fd") else None
        rows.append(
            f"| {name} | {num(d.get('fd'))} | {num(y.get('fd'))} | {num(ratio)} | {num((d.get('floor') or {}).get('fd'))} | "
            f"{num(d.get('precision'))} / {num(y.get('precision'))} | {num(d.get('recall'))} / {num(y.get('recall'))} |"
        )
    return rows


def write_markdown(path: Path, command: str, env: dict, quick_res: dict, full_res: dict | None) -> None:
    lines = [
        "# DyDiT: measured speed-up and quality",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {env['machine']}, torch {env['torch']}, {env['threads']} thread(s), device {env['device']}.",
        "",
    ]
    if full_res is not None:
        name, fd_d, acc_d = headline(full_res["dense"]["metrics"])
        _, fd_y, acc_y = headline(full_res["dydit_model"]["metrics"])
        lines += [
            "## Trained model (fine-tuned DyDiT vs its dense base, same labels and noise)",
            "",
            f"Base `{full_res['base']}`, DyDiT `{full_res['dydit']}` (target λ = {full_res['target_flops']}, "
            f"{full_res['finetune_steps'] or 'an unknown number of'} fine-tuning steps). "
            f"{full_res['samples']} samples per model.",
            "",
            f"| model | FLOPs ratio (mean over steps) | sampling {full_res['batch']} images (min) | speed-up | "
            f"FD ({name}) | class accuracy |",
            "|---|---|---|---|---|---|",
            f"| dense DiT | 1.000 | {full_res['sampling_batch_dense_s']:.2f} s | 1.00× | {fd_d:.3f} | "
            f"{acc_d if acc_d is None else f'{acc_d:.3f}'} |",
            f"| DyDiT | {full_res['flops_ratio']:.3f} | {full_res['sampling_batch_dydit_s']:.2f} s | "
            f"{full_res['speedup']:.2f}× | {fd_y:.3f} | {acc_y if acc_y is None else f'{acc_y:.3f}'} |",
            "",
            f"FD ratio DyDiT / dense: {fd_y / fd_d:.3f} (target ≤ 1.10). Speed-up target ≥ 1.5×. "
            f"Sampling all {full_res['samples']} images once each: {full_res['full_run_speedup']:.2f}× "
            f"({full_res['dense']['seconds']:.1f} s vs {full_res['dydit_model']['seconds']:.1f} s).",
            "",
            "Every extractor (FD against the test split; `floor`: held-out real images of the same count):",
            "",
            "| extractor | FD dense | FD DyDiT | ratio | floor | precision dense / DyDiT | recall dense / DyDiT |",
            "|---|---|---|---|---|---|---|",
            *extractor_rows(full_res["dense"]["metrics"], full_res["dydit_model"]["metrics"]),
            "",
            "FLOPs ratio per sampling step:",
            "",
            f"![FLOPs per step]({full_res['plot']})",
            "",
        ]
    q = quick_res
    lines += [
        "## Speed alone: DiT-S/2 at 32×32, random weights",
        "",
        f"Width pinned to {q['heads']}/6 heads and {q['groups']}/6 MLP groups, token routers keeping "
        f"{q['token_keep']:.2f} of the tokens; batch {q['batch']}.",
        "",
        "| | FLOPs ratio | dense | DyDiT (deployed) | speed-up |",
        "|---|---|---|---|---|",
        f"| one forward | {q['flops_ratio']:.3f} | {q['dense_forward_ms']:.1f} ms | {q['dydit_forward_ms']:.1f} ms | "
        f"{q['speedup']:.2f}× |",
        f"| DDIM sampling, {q['sampling_steps']} steps, {q['sampling_rows']} rows (CFG) | "
        f"{q['sampling_flops_ratio']:.3f} | {q['dense_sampling_s']:.2f} s | {q['dydit_sampling_s']:.2f} s | "
        f"{q['sampling_speedup']:.2f}× |",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    env = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": args.device,
    }
    command = "python benchmarks/dydit.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if not args.quick and args.base is None:
        raise SystemExit("give --quick, or --base CKPT (a trained DiT) for the full benchmark")
    quick_res = quick(args)
    print(json.dumps({"quick": quick_res}), file=sys.stderr)
    full_res = None if args.quick else full(args)
    if args.write:
        if full_res is not None:  # the report links the plot relative to itself
            full_res["plot"] = os.path.relpath(args.plot, Path(args.write).parent)
        write_markdown(Path(args.write), command, env, quick_res, full_res)
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "quick": quick_res, "full": full_res}, indent=1))
    summary = dict(env)
    if full_res is None:
        summary.update(quick_res)
    else:
        _, fd_d, acc_d = headline(full_res["dense"]["metrics"])
        _, fd_y, acc_y = headline(full_res["dydit_model"]["metrics"])
        summary.update(
            speedup=round(full_res["speedup"], 3),
            flops_ratio=round(full_res["flops_ratio"], 4),
            fd_dense=fd_d,
            fd_dydit=fd_y,
            fd_ratio=fd_y / fd_d,
            acc_dense=acc_d,
            acc_dydit=acc_y,
            quick_speedup=quick_res["speedup"],
            quick_flops_ratio=quick_res["flops_ratio"],
        )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
