"""Recipe search (issue 18 item 6): the DiT paper's Fashion-MNIST recipe against each later-DiT change alone
and all of them combined, at equal training wall-clock, on the same backbone.

    python benchmarks/recipe.py --minutes 30 --evals 4 --samples 2000 --threads 2 \\
        --write benchmarks/recipe.md --plot benchmarks/recipe.png --json runs/recipe/results.json
    python benchmarks/recipe.py --quick        # smoke test: DiT-Nano/2 on digits, seconds per arm

Arms (each one change to recipes/fashion-mnist-paper.json, or a sampling change to its trained model):
  paper              the recipe as it is (DDPM, ε + learned variance, AdamW β2 0.999, constant lr)
  repa               + REPA alignment loss (λ 0.5 at block 2, EfficientNet-Lite0 features)
  swiglu             + SwiGLU MLP at LightningDiT's 2/3 hidden width (the GELU MLP's parameter count)
  qk-norm            + per-head RMSNorm of queries and keys
  rope               + 2-D RoPE instead of the sin-cos table
  logit-normal       rectified flow with logit-normal t (velocity target), Heun at half the sampler steps
  beta2-0.95         AdamW β2 = 0.95
  cosine-lr          5% linear warm-up, then cosine decay to 0 over the arm's steps
  guidance           the paper arm's model sampled with classifier-free guidance (scale 1.5)
  interval-guidance  the same, guided only for model times in --interval (default 0..750 of 0..1000: not
                     in the noisiest quarter, where guidance costs diversity; Kynkäänniemi et al. 2024)
  combined           every training change above and interval guidance

Equal wall-clock: each arm first times a few steps (--probe) to set its step count to budget / seconds per step
(so a cosine schedule ends at the budget), then trains until that count or the budget, whichever comes first;
evaluations (--evals, evenly spaced in training time) are not counted. Each evaluation samples the EMA model
(the same noise at every evaluation) and scores it against the data's test split with both extractors
(`ditlab.eval.evaluate`: FD-EffNetLite0 and the in-domain classifier's FD, class accuracy, precision/recall),
recording the step, training seconds and the process's CPU seconds (all threads), so the report reads quality
per step and per CPU-minute. The last evaluation also reports the real-data floor. Needs a quiet machine:
a busy one times the arms differently.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402

from ditlab.eval.evaluate import evaluate
from ditlab.sampling import generate
from ditlab.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "recipes" / "fashion-mnist-paper.json"

# One change each: TrainConfig fields (model_args merge into the recipe's).
TRAIN_CHANGES = {
    "repa": {"repa_weight": 0.5, "repa_depth": 2},
    "swiglu": {"model_args": {"mlp": "swiglu", "mlp_two_thirds": True}},
    "qk-norm": {"model_args": {"qk_norm": True}},
    "rope": {"model_args": {"rope": True}},
    "logit-normal": {
        "objective": "flow",
        "timestep_sampling": "logit_normal",
        "learn_sigma": False,
        "sampler": "heun",  # two model calls per step: half the steps for the paper sampler's evaluations
        "sample_steps": "half",
    },
    "beta2-0.95": {"adam_beta2": 0.95},
    "cosine-lr": {"lr_schedule": "cosine", "warmup_steps": "5%"},
}
GUIDANCE_SCALE = 1.5
# Arms that only sample the paper arm's model differently: sampling settings.
SAMPLE_ARMS = {
    "guidance": {"guidance_scale": GUIDANCE_SCALE},
    "interval-guidance": {"guidance_scale": GUIDANCE_SCALE, "guidance_interval": "interval"},
}
ARMS = ("paper", *TRAIN_CHANGES, *SAMPLE_ARMS, "combined")

# --quick: a tiny digits run instead of the recipe's model and data
QUICK = {"data": "digits", "model": "DiT-Nano/2", "batch_size": 16, "sample_steps": 4, "ema_decay": 0.9}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=str(PAPER), help="the baseline TrainConfig JSON (the paper recipe)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="arms to run (default: all)")
    p.add_argument("--minutes", type=float, default=30.0, help="training wall-clock per arm, in minutes")
    p.add_argument("--evals", type=int, default=4, help="evaluations per arm, evenly spaced in training time")
    p.add_argument("--samples", type=int, default=2000, help="samples scored per evaluation, in images")
    p.add_argument("--probe", type=int, default=20, help="timed steps that set each arm's step count")
    p.add_argument(
        "--interval",
        nargs=2,
        type=float,
        default=[0.0, 750.0],
        metavar=("LO", "HI"),
        help="interval guidance: the model times guided, in 0..1000 units (default 0 750)",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    p.add_argument("--out", default="runs/recipe", help="folder of the arms' run folders")
    p.add_argument("--write", help="write the Markdown report here")
    p.add_argument("--plot", help="write FD against steps and CPU-minutes (PNG) here")
    p.add_argument("--json", help="write every evaluation as JSON here")
    p.add_argument("--quick", action="store_true", help="smoke test: DiT-Nano/2 on digits, seconds per arm")
    args = p.parse_args(argv)
    if args.evals < 1 or args.samples < 10 or args.minutes <= 0 or args.probe < 2:
        p.error("--evals must be >= 1, --samples >= 10, --minutes > 0 and --probe >= 2")
    if args.quick:
        args.minutes, args.samples, args.probe = 0.03, 60, 3
        args.evals = min(args.evals, 2)
        if args.out == "runs/recipe":
            args.out = "/tmp/ditlab-recipe-quick"
    return args


# ---------------------------------------------------------------------------------------------- the arms
def merge(fields: dict, change: dict) -> dict:
    out = copy.deepcopy(fields)
    for key, value in change.items():
        out[key] = {**out.get(key, {}), **value} if key == "model_args" else value
    return out


def arm_fields(arm: str, base: dict) -> dict:
    """The TrainConfig fields an arm trains with (a sampling-only arm trains the paper's)."""
    if arm == "combined":
        fields = base
        for change in TRAIN_CHANGES.values():
            fields = merge(fields, change)
        return fields
    return merge(base, TRAIN_CHANGES.get(arm, {}))


def sampling_of(arm: str, fields: dict, args) -> dict:
    """The sampler, steps and guidance an arm is scored with."""
    steps = fields.get("sample_steps", 50)
    out = {"sampler": fields.get("sampler"), "steps": steps, "guidance_scale": 1.0, "guidance_interval": None}
    extra = SAMPLE_ARMS.get(arm, SAMPLE_ARMS["interval-guidance"] if arm == "combined" else {})
    out.update(extra)
    if out["guidance_interval"] == "interval":
        out["guidance_interval"] = tuple(args.interval)
    return out


def resolve(fields: dict, base_steps: int, steps: int) -> dict:
    """Fix the fields that depend on the arm's step count ("5%" warm-up) or the baseline's ("half" steps)."""
    fields = dict(fields, steps=steps)
    if fields.get("warmup_steps") == "5%":
        fields["warmup_steps"] = max(1, steps // 20)
    if fields.get("sample_steps") == "half":
        fields["sample_steps"] = max(1, base_steps // 2)
    return fields


def config(fields: dict, folder: Path, args) -> TrainConfig:
    run = dict(fields, threads=args.threads, out=str(folder), progress=False)
    run.update(eval_every=0, sample_every=0, ckpt_every=10**9)
    return TrainConfig.from_dict(run)


# ---------------------------------------------------------------------------------------------- training
def seconds_per_step(fields: dict, folder: Path, args) -> float:
    """The arm's training-step time on this machine: the mean of --probe steps after one warm-up step."""
    trainer = Trainer(config(fields, folder, args), overwrite=True)
    trainer.train_step()
    start = time.perf_counter()
    for _ in range(args.probe):
        trainer.train_step()
    return (time.perf_counter() - start) / args.probe


def score(model, sampling: dict, data: str, args, floor: bool) -> dict:
    """Both extractors' FD, precision/recall and the classifier's class accuracy of fresh EMA samples."""
    images, labels = generate(
        model,
        num_samples=args.samples,
        sampler=sampling["sampler"],
        steps=sampling["steps"],
        guidance_scale=sampling["guidance_scale"],
        guidance_interval=sampling["guidance_interval"],
        seed=12345,  # the same noise at every evaluation and in every arm
        batch_size=250,
    )
    result = evaluate(images, labels if model.num_classes else None, ref=f"{data}:test", floor=floor)
    row = {}
    for name, m in result["metrics"].items():
        key = "effnet" if name.startswith("effnet") else "classifier"
        row[f"fd_{key}"] = m["fd"]
        row[f"precision_{key}"], row[f"recall_{key}"] = m.get("precision"), m.get("recall")
        if floor:
            row[f"floor_{key}"] = (m.get("floor") or {}).get("fd")
        if "class_accuracy" in m:
            row["class_accuracy"] = m["class_accuracy"]
    return row


def train_arm(fields: dict, folder: Path, budget: float, args, scorers: dict) -> list[dict]:
    """Train `fields` for `budget` seconds of training steps; at each of --evals points score the EMA model
    with every sampling of `scorers` ({arm: sampling}) -> one record per (evaluation, arm)."""
    trainer = Trainer(config(fields, folder, args), overwrite=True)
    marks = [budget * (i + 1) / args.evals for i in range(args.evals)]
    records, train_s, cpu_s = [], 0.0, 0.0
    while marks:
        wall, cpu = time.perf_counter(), time.process_time()
        trainer.train_step()
        train_s += time.perf_counter() - wall
        cpu_s += time.process_time() - cpu
        last = trainer.step >= trainer.total_steps
        if train_s >= marks[0] or last:
            final = last or len(marks) == 1
            for arm, sampling in scorers.items():
                row = score(trainer.ema.model, sampling, fields["data"], args, floor=final)
                records.append(
                    {"arm": arm, "step": trainer.step, "train_seconds": train_s, "cpu_seconds": cpu_s, **row}
                )
                _timing.emit("recipe", **records[-1])
            marks = [] if last else marks[1:]
    return records


def run_arms(args) -> tuple[list[dict], dict]:
    base = json.loads(Path(args.recipe).read_text())
    if args.quick:
        base.update(QUICK)
    budget = 60.0 * args.minutes
    base_steps = base.get("sample_steps", 50)
    records, plans = [], {}
    trained = [a for a in args.arms if a not in SAMPLE_ARMS]
    if any(a in SAMPLE_ARMS for a in args.arms) and "paper" not in trained:
        trained.insert(0, "paper")  # the sampling arms score the paper arm's model
    for arm in trained:
        folder = Path(args.out) / arm
        fields = resolve(arm_fields(arm, base), base_steps, base["steps"])
        per_step = seconds_per_step(fields, folder, args)
        steps = max(1, int(budget / per_step))
        fields = resolve(arm_fields(arm, base), base_steps, steps)
        scorers = {arm: sampling_of(arm, fields, args)}
        if arm == "paper":
            scorers.update({a: sampling_of(a, fields, args) for a in SAMPLE_ARMS if a in args.arms})
        plans[arm] = {"seconds_per_step": per_step, "steps": steps, "fields": fields}
        arm_records = train_arm(fields, folder, budget, args, scorers)
        records += [r for r in arm_records if r["arm"] in args.arms]
    return records, plans


# ---------------------------------------------------------------------------------------------- report
def fmt(value, digits=3) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def report(records: list[dict], plans: dict, args, argv: list[str]) -> str:
    finals = {}
    for r in records:
        finals[r["arm"]] = r  # the last evaluation of each arm
    base = finals.get("paper")
    lines = [
        "# Recipe search (benchmarks/recipe.py)",
        "",
        f"Command: `python benchmarks/recipe.py {' '.join(argv)}`",
        "",
        f"Recipe {args.recipe}, {args.minutes:g} min of training per arm, {args.samples} samples per "
        f"evaluation; machine: {json.dumps(_timing.machine(args.threads))}",
        "",
        "## Final evaluation of each arm",
        "",
        "| arm | steps | train min | CPU min | FD-EffNetLite0 | classifier FD | class acc | P / R (effnet) "
        "| FD-effnet / paper's |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, r in finals.items():
        ratio = r["fd_effnet"] / base["fd_effnet"] if base and r.get("fd_effnet") is not None else None
        lines.append(
            f"| {arm} | {r['step']} | {r['train_seconds'] / 60:.1f} | {r['cpu_seconds'] / 60:.1f} "
            f"| {fmt(r.get('fd_effnet'))} | {fmt(r.get('fd_classifier'))} | {fmt(r.get('class_accuracy'))} "
            f"| {fmt(r.get('precision_effnet'))} / {fmt(r.get('recall_effnet'))} | {fmt(ratio, 2)} |"
        )
    if base:
        lines += [
            "",
            f"Real-data floor: FD-EffNetLite0 {fmt(base.get('floor_effnet'))}, "
            f"classifier FD {fmt(base.get('floor_classifier'))} ({args.samples} training images).",
        ]
    lines += [
        "",
        "## Every evaluation (quality per step and per CPU-minute)",
        "",
        "| arm | step | CPU min | FD-EffNetLite0 | classifier FD | class acc | P / R (classifier) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['arm']} | {r['step']} | {r['cpu_seconds'] / 60:.2f} | {fmt(r.get('fd_effnet'))} "
            f"| {fmt(r.get('fd_classifier'))} | {fmt(r.get('class_accuracy'))} "
            f"| {fmt(r.get('precision_classifier'))} / {fmt(r.get('recall_classifier'))} |"
        )
    lines += ["", "Step time each arm was planned with (its --probe steps):", ""]
    lines += [
        f"- {arm}: {p['seconds_per_step']:.3f} s/step -> {p['steps']} steps" for arm, p in plans.items()
    ]
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    # the default cycle repeats after 10 arms; tab20's dark shades first, then its light ones: 20 distinct
    pairs = plt.get_cmap("tab20").colors
    colours = pairs[0::2] + pairs[1::2]
    for i, arm in enumerate(dict.fromkeys(r["arm"] for r in records)):
        rows = [r for r in records if r["arm"] == arm and r.get("fd_effnet") is not None]
        fd = [r["fd_effnet"] for r in rows]
        style = dict(color=colours[i % len(colours)], label=arm)
        axes[0].plot([r["step"] for r in rows], fd, "o-", **style)
        axes[1].plot([r["cpu_seconds"] / 60 for r in rows], fd, "o-", **style)
    axes[0].set_xlabel("optimizer steps")
    axes[1].set_xlabel("training CPU-minutes (all threads)")
    axes[0].set_ylabel("FD-EffNetLite0")
    for ax in axes:
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.threads = _timing.setup(args.threads)
    records, plans = run_arms(args)
    text = report(records, plans, args, argv)
    print(text)
    if args.write:
        Path(args.write).write_text(text)
    if args.plot:
        plot(records, args.plot)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"records": records, "plans": plans}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
