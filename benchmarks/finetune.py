"""Fine-tuning a trained DiT to new classes: DiffFit vs adaLN-only vs LoRA vs full, at one step budget.

A base model is pretrained on some classes of a dataset (or given with --base); each method fine-tunes it to
the held-out classes with the same data, steps and batch (and its own default learning rate: 10× the base's
for the parameter-efficient methods, 1× for full fine-tuning). Every model is then scored with the in-domain
classifier (`classifier:DATASET`, trained once on all classes and cached):

- new classes: Fréchet distance to the held-out test images of those classes, and class accuracy;
- old classes: the same, compared with the base: forgetting = accuracy lost, ΔFD = FD gained;
- cost: trainable parameters and fraction, adapter file size, wall time of the training loop.

Class subsets keep their ids (`fashion-mnist[5-9]` has labels 5..9 in a 10-class table), so the base has a
10-class label table of which only the old rows were trained, and fine-tuning uses `labels="keep"`: the old
rows stay, the new rows learn, and the fine-tuned model can still be asked for the old classes.

    python benchmarks/finetune.py --quick              # digits, a tiny DiT, about a CPU minute: the pipeline works
    python benchmarks/finetune.py --data fashion-mnist --base runs/fm04/model.safetensors \\
        --steps 2000 --batch-size 128 --samples-per-class 500 --write benchmarks/finetune.md

Results go to OUT/results.json and a Markdown table (printed, and written to --write if given).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from ditlab import load_model
from ditlab.data import format_classes, parse_classes
from ditlab.eval import evaluate
from ditlab.finetune import METHODS, FinetuneConfig, finetune
from ditlab.sampling import generate
from ditlab.train import TrainConfig, train

QUICK = dict(  # about 1.5 CPU minutes on one thread, most of it pretraining (skip it with --base)
    data="digits",
    model="DiT-Nano/2",
    pretrain_steps=1500,
    pretrain_lr=2e-3,
    steps=300,
    batch_size=64,
    samples_per_class=30,  # 150 samples per score: more than the classifier's 128 feature dimensions
    sample_steps=20,
    out="runs/finetune-bench-quick",
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="toy scale on digits (overrides the size flags)")
    p.add_argument("--data", default="fashion-mnist", help="digits or fashion-mnist[:DIR]")
    p.add_argument("--old", default="0-4", help="classes the base is pretrained on")
    p.add_argument("--new", default="5-9", help="held-out classes to fine-tune to")
    p.add_argument("--base", help="a base already pretrained on --old (skips pretraining)")
    p.add_argument("--model", default="DiT-Ti/2", help="pretraining: zoo model")
    p.add_argument("--pretrain-steps", type=int, default=6000)
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument("--methods", default="difffit,adaln,lora,full", help="comma-separated fine-tuning methods")
    p.add_argument("--method-args", default="{}", help='JSON per method, e.g. {"lora": {"rank": 4}}')
    p.add_argument("--lr", default="{}", help='JSON per method overriding its default, e.g. {"lora": 1e-3}')
    p.add_argument("--steps", type=int, default=2000, help="fine-tuning steps, the same for every method")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--samples-per-class", type=int, default=500)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--guidance-scale", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = the trainer's default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/finetune-bench")
    p.add_argument("--write", help="also write the Markdown table here (e.g. benchmarks/finetune.md)")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.old_ids, args.new_ids = parse_classes(args.old), parse_classes(args.new)
    if set(args.old_ids) & set(args.new_ids):
        p.error(f"--old {args.old} and --new {args.new} overlap")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        p.error(f"unknown method(s) {bad}; choose from: {', '.join(METHODS)}")
    args.method_args, args.lr = json.loads(args.method_args), json.loads(args.lr)
    return args


def subset(args, ids, split=None) -> str:
    return f"{args.data}[{format_classes(ids)}]" + (f":{split}" if split else "")


def common(args) -> dict:
    """Trainer options every run shares."""
    return dict(
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        ema_warmup=True,  # short runs: an EMA that follows the weights from the start
        progress=False,
        log_every=max(1, args.steps // 10),
        ckpt_every=10**9,  # only the final checkpoint
        sample_steps=args.sample_steps,
    )


def pretrain(args, out: Path) -> tuple[Path, dict]:
    cfg = TrainConfig(
        data=subset(args, args.old_ids),
        model=args.model,
        steps=args.pretrain_steps,
        lr=args.pretrain_lr,
        warmup_steps=min(200, args.pretrain_steps // 10),
        out=str(out / "base"),
        **{**common(args), "log_every": max(1, args.pretrain_steps // 10)},
    )
    print(f"pretraining {args.model} on {cfg.data} for {cfg.steps} steps -> {cfg.out}", flush=True)
    summary = train(cfg)
    return Path(summary["model"]), summary


def score(args, model, ids) -> dict:
    """FD and class accuracy of samples of classes `ids`, against those classes' held-out test images."""
    images, labels = generate(
        model,
        classes=list(ids),
        per_class=args.samples_per_class,
        steps=args.sample_steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
    )
    feature = f"classifier:{args.data}"
    m = evaluate(images, labels, ref=subset(args, ids, "test"), features=[feature])["metrics"][feature]
    return {
        "fd": m["fd"],
        "accuracy": m["class_accuracy"],
        "floor_fd": m["floor"].get("fd"),
        "n": len(labels),
    }


def run(args) -> dict:
    out = Path(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.base:
        base, pre = Path(args.base), None
    else:
        base, pre = pretrain(args, out)
    base_model = load_model(base)
    results = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "settings": {k: v for k, v in vars(args).items() if k not in ("old_ids", "new_ids")},
        "base": {
            "path": str(base),
            "pretrain_seconds": pre["seconds"] if pre else None,
            "params": sum(p.numel() for p in base_model.parameters()),
            "old": score(args, base_model, args.old_ids),
            "new": score(args, base_model, args.new_ids),
        },
        "methods": {},
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    for method in args.methods:
        cfg = FinetuneConfig(
            base=str(base),
            method=method,
            method_args=args.method_args.get(method, {}),
            lr=args.lr.get(method),
            labels="keep",
            data=subset(args, args.new_ids),
            steps=args.steps,
            out=str(out / method),
            **common(args),
        )
        print(f"fine-tuning with {method} (lr {cfg.lr:g}) on {cfg.data} for {cfg.steps} steps", flush=True)
        summary = finetune(cfg)
        model = load_model(summary["model"])
        results["methods"][method] = {
            "trainable": summary["trainable"],
            "total": summary["total"],
            "fraction": summary["fraction"],
            "adapter_bytes": summary["adapter_bytes"],
            "model_bytes": Path(summary["model"]).stat().st_size,
            "lr": cfg.lr,
            "seconds": summary["seconds"],
            "loss": summary.get("loss"),
            "new": score(args, model, args.new_ids),
            "old": score(args, model, args.old_ids),
        }
    results["total_seconds"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def markdown(results: dict) -> str:
    s, b = results["settings"], results["base"]
    old, new = format_classes(parse_classes(s["old"])), format_classes(parse_classes(s["new"]))
    steps = s["steps"]
    if b["pretrain_seconds"] is not None:
        made = f"{s['model']} pretrained here for {s['pretrain_steps']} steps at lr {s['pretrain_lr']:g}"
    else:
        made = f"`{b['path']}`"
    lines = [
        "# Fine-tuning a DiT to new classes: DiffFit, adaLN-only, LoRA, full",
        "",
        "Produced by:",
        "",
        f"    {results['command']}",
        "",
        f"Base: {made}, on {s['data']} classes {old} ({b['params']:,} parameters). "
        f"Fine-tuning: classes {new}, {steps} steps of batch {s['batch_size']} for every method, each at its "
        "default learning rate (10× the base's for difffit/adaln/lora, 1× for full), EMA with warm-up, "
        "`labels=keep` (the old label rows stay, so the old classes can still be sampled).",
        "",
        f"Scoring: {s['samples_per_class']} samples per class ({s['sample_steps']} sampler steps, guidance "
        f"{s['guidance_scale']:g}) against the held-out test images of the same classes, with the in-domain "
        f"classifier `classifier:{s['data']}` (trained on all classes): FD ↓ and class accuracy ↑. "
        "Forgetting = the old classes' accuracy lost relative to the base (ΔFD: FD gained). "
        f"Wall time: the training loop only, on {results['machine']}.",
        "",
        f"| method | trainable | fraction | adapter | lr | wall time | ms/step | FD new [{new}] | acc new | "
        f"FD old [{old}] (Δ) | acc old (forgetting) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| base (no fine-tuning) | – | – | – | – | – | – | {b['new']['fd']:.2f} | {b['new']['accuracy']:.3f} | "
        f"{b['old']['fd']:.2f} | {b['old']['accuracy']:.3f} |",
    ]
    for name, r in results["methods"].items():
        d_fd = r["old"]["fd"] - b["old"]["fd"]
        forget = b["old"]["accuracy"] - r["old"]["accuracy"]
        lines.append(
            f"| {name} | {r['trainable']:,} | {100 * r['fraction']:.2f}% | {_size(r['adapter_bytes'])} | "
            f"{r['lr']:g} | {r['seconds']:.1f} s | {1000 * r['seconds'] / steps:.0f} | {r['new']['fd']:.2f} | "
            f"{r['new']['accuracy']:.3f} | {r['old']['fd']:.2f} ({d_fd:+.2f}) | "
            f"{r['old']['accuracy']:.3f} ({forget:+.3f}) |"
        )
    notes = []
    if b["new"]["floor_fd"] is not None and b["old"]["floor_fd"] is not None:
        notes.append(
            f"FD floor (real train images against the same reference, as many images): new "
            f"{b['new']['floor_fd']:.2f}, old {b['old']['floor_fd']:.2f}."
        )
    if results["methods"]:
        notes.append(f"A full model file is {_size(next(iter(results['methods'].values()))['model_bytes'])}.")
    if notes:
        lines += ["", " ".join(notes)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    results = run(args)
    table = markdown(results)
    print(table)
    if args.write:
        Path(args.write).write_text(table)
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
