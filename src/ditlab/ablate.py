"""`ditlab ablate`: the DiT paper's conditioning study (Table 4, Figure 5) in miniature, on real data.

Each chosen conditioning variant (`ditlab.models.VARIANTS`: the paper's in-context, cross-attention, adaLN and
adaLN-Zero blocks, adaLN-Zero without the zero init, with RMSNorm, the shift-free tanh-gated RMS block and
PixArt's adaLN-single) trains with the same data, steps, batch, learning-rate schedule and seed(s); a given
seed draws the same images, timesteps and noise at every step for every variant (the trainer derives them
from (seed, step) only). FD is logged during training (`eval_every`); at the end the EMA model of each run
is sampled and scored against the held-out split, and OUT receives:

    ablation.json   settings, command, and one object per (variant, seed): variant, seed, params, gflops,
                    train_gflops, fd (FD-EffNetLite0), fd_classifier, accuracy, seconds, curve, ...
    ablation.md     the table (mean ± std over seeds) and the per-run numbers
    ablation.png    FD against training steps and against training compute, mean over seeds, min-max band
    runs/VARIANT/seedS/   each run's own folder (checkpoints, metrics.jsonl, samples.png, model.safetensors)

Runs are resumable: a finished run (its `result.json` matches the settings) is skipped, a started one resumes
from its newest checkpoint, so a long study can be stopped and continued with the same command.

    ditlab ablate --quick                                   # digits, DiT-Nano/2, a few CPU minutes
    ditlab ablate --estimate                                # time a few steps: the study's projected time
    ditlab ablate --out runs/ablation                       # the Fashion-MNIST study (~2 h on 2 CPU cores)
    ditlab ablate --out runs/ablation --report-only         # the table of the runs finished so far
    ditlab ablate --variants adaln-zero,adaln-zero-normal-init --steps 3000 --seeds 0,1,2
    ditlab ablate --config my-ablation.json --out runs/mine # a JSON object of AblationConfig fields
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from ditlab.atomic import atomic_write
from ditlab.configs import DictConfig
from ditlab.eval import default_features, evaluate
from ditlab.models.checkpoint import load_model
from ditlab.models.flops import count_parameters, flops
from ditlab.models.zoo import MODELS, VARIANTS
from ditlab.runtime import configure_threads, resolve_device
from ditlab.sampling import sample
from ditlab.train.cli import _parse_kv  # KEY=VALUE flags, as `ditlab train --model-args`
from ditlab.train.config import TrainConfig
from ditlab.train.metrics import read_metrics
from ditlab.train.state import latest_checkpoint, load_training_state
from ditlab.train.trainer import Trainer

# The DiT paper's four blocks (Figure 3), compared in its Table 4.
PAPER_VARIANTS = ("in-context", "cross-attention", "adaln", "adaln-zero")
# DiT paper, Table 4: DiT-XL/2, 400K steps, no guidance -> (Gflops, parameters, FID-50K).
PAPER_TABLE4 = {
    "in-context": (119.37, "449M", 35.24),
    "cross-attention": (137.62, "598M", 26.14),
    "adaln": (118.56, "600M", 25.21),
    "adaln-zero": (118.64, "675M", 19.47),
}

# What every run shares unless the config's `train` says otherwise: the optimisation and sampler of ditlab's
# Fashion-MNIST recipe (rectified flow with logit-normal t, clipped AdamW, EMA with warm-up, 16 Heun steps),
# tuned to learn in CPU-sized budgets. Guidance stays off, as in the paper's ablation.
TRAIN_DEFAULTS = dict(
    objective="flow",
    timestep_sampling="logit_normal",
    grad_clip=1.0,
    ema_decay=0.9995,
    ema_warmup=True,
    sampler="heun",
    sample_steps=16,
    guidance_scale=1.0,
)
# Options a run may change between sessions without invalidating what it has done so far.
RESUMABLE_FIELDS = (
    "steps",
    "out",
    "progress",
    "threads",
    "device",
    "compile",
    "fused_optimizer",
    "log_every",
    "ckpt_every",
    "keep_last",
    "bad_images",  # runs that started were not stopped by a bad file; older config.json files lack it
)

# The study's model: DiT-Ti/4 cut to 4 blocks, so that each of its 12 runs trains ~1200 steps in ~10 CPU
# minutes (49 tokens of width 192 at 28×28; see `ditlab ablate --estimate`).
DEFAULT_MODEL = "DiT-Ti/4"


def default_model_args(model: str) -> dict:
    """DiTConfig overrides used when none are given: depth 4 for the default model, none for any other."""
    return {"depth": 4} if model == DEFAULT_MODEL else {}


# `--quick`: the whole pipeline on the bundled digits in a few CPU minutes (numbers are not meaningful).
QUICK = dict(
    data="digits",
    model="DiT-Nano/2",
    steps=300,
    batch_size=64,
    lr=2e-3,
    seeds=[0],
    extra_seeds=None,
    eval_every=100,
    eval_samples=100,
    final_samples=200,
    train={"sample_steps": 8},
    out="runs/ablation-quick",
)


@dataclass
class AblationConfig(DictConfig):
    _what = "ablation option"

    # Defaults: the Fashion-MNIST study (8 variants, the paper's four with 2 seeds; ~2 CPU hours on 2 cores).
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    data: str = "fashion-mnist"
    model: str = DEFAULT_MODEL
    model_args: dict | None = None  # DiTConfig overrides; None = default_model_args(model)
    steps: int = 1200
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int | None = None  # linear lr warm-up; None = steps // 10
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    extra_seeds: list[int] | None = field(default_factory=lambda: [0])  # variants beyond the paper's four
    eval_every: int | None = None  # FD during training every N steps; None = steps // 5, 0 = off
    eval_samples: int = 250  # samples per FD point of the curves
    final_samples: int = 1500  # samples for the final scores (> 1280 effnet features: a full-rank covariance)
    eval_ref: str | None = None  # reference for FD; None = the data's test split
    train: dict = field(default_factory=dict)  # any other TrainConfig field, over TRAIN_DEFAULTS
    threads: int = 0  # CPU threads; 0 = all cores
    device: str = "auto"
    out: str = "runs/ablation"

    def __post_init__(self):
        text = self.variants if isinstance(self.variants, str) else ",".join(map(str, self.variants))
        self.variants = parse_variants(text)
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise ValueError(
                f"unknown or no variant(s) {bad}; choose from: {', '.join(VARIANTS)} (or 'all', 'paper')"
            )
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; valid names: {', '.join(MODELS)}")
        if self.model_args is None:
            self.model_args = default_model_args(self.model)
        self.seeds = parse_seeds(self.seeds)
        if self.extra_seeds is not None:
            self.extra_seeds = parse_seeds(self.extra_seeds)
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("steps and batch_size must be >= 1 and lr > 0")
        for name in ("eval_samples", "final_samples"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2 (a Fréchet distance needs a covariance)")
        if self.eval_every is not None and self.eval_every < 0:
            raise ValueError("eval_every must be >= 0 (0 = no FD during training)")
        clash = sorted(set(self.train) & {f.name for f in fields(AblationConfig)})
        if clash:
            raise ValueError(f"set {clash} as top-level ablation options, not inside 'train'")
        per_run = sorted(set(self.train) & {"variant", "seed"})
        if per_run:
            raise ValueError(f"'train' may not set {per_run}: the study sets them per run")
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(self.train) - known)
        if unknown:
            raise ValueError(
                f"unknown training option(s) {unknown} in 'train'; valid: {', '.join(sorted(known))}"
            )

    def seeds_of(self, variant: str) -> list[int]:
        if variant in PAPER_VARIANTS or self.extra_seeds is None:
            return self.seeds
        return self.extra_seeds

    def runs(self) -> list[tuple[str, int]]:
        """(variant, seed) of every run, seed-major so a stopped study has every variant of the first seed."""
        seed_order = list(dict.fromkeys(self.seeds + (self.extra_seeds or [])))
        return [(v, s) for s in seed_order for v in self.variants if s in self.seeds_of(v)]

    def train_config(self, variant: str, seed: int) -> TrainConfig:
        """The TrainConfig of one run: identical for every variant except `variant` and the folder."""
        eval_every = self.steps // 5 if self.eval_every is None else self.eval_every
        options = dict(
            TRAIN_DEFAULTS,
            data=self.data,
            model=self.model,
            variant=variant,
            model_args=dict(self.model_args),
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            warmup_steps=self.steps // 10 if self.warmup_steps is None else self.warmup_steps,
            seed=seed,
            eval_every=eval_every,
            eval_samples=self.eval_samples,
            eval_ref=self.eval_ref,
            threads=self.threads,
            device=self.device,
            out=str(run_dir(self.out, variant, seed)),
            log_every=max(1, self.steps // 20),
            ckpt_every=max(1, self.steps // 10),
            keep_last=1,
            progress=False,
        )
        options.update(self.train)
        return TrainConfig.from_dict(options)

    @property
    def ref(self) -> str:
        return self.eval_ref or f"{self.data}:test"


def parse_variants(text: str) -> list[str]:
    """ "all", "paper" or a comma-separated list of VARIANTS names."""
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if part == "all":
            names += list(VARIANTS)
        elif part == "paper":
            names += list(PAPER_VARIANTS)
        elif part:
            names.append(part)
    return list(dict.fromkeys(names))


def parse_seeds(seeds) -> list[int]:
    """ "0,1" / [0, 1] / 3 -> [0, 1] / [0, 1] / [3]."""
    if isinstance(seeds, int):
        seeds = [seeds]
    elif isinstance(seeds, str):
        seeds = [s.strip() for s in seeds.split(",") if s.strip()]
    try:
        out = [int(s) for s in seeds]
    except (TypeError, ValueError):
        raise ValueError(f"seeds must be integers such as 0,1; got {seeds!r}") from None
    if not out or len(set(out)) != len(out) or min(out) < 0:
        raise ValueError(f"seeds must be distinct non-negative integers, at least one; got {seeds!r}")
    return out


def run_dir(out: str | Path, variant: str, seed: int) -> Path:
    return Path(out) / "runs" / variant / f"seed{seed}"


# ---------------------------------------------------------------------------------------------- one run
class _TimedTrainer(Trainer):
    """The Trainer, also summing the wall time of the optimisation steps alone (no evaluation, logging or
    checkpoint writes) into its checkpoints, so a run resumed across sessions reports its whole training time."""

    train_seconds = 0.0

    def train_step(self) -> dict:
        start = time.perf_counter()
        out = super().train_step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.train_seconds += time.perf_counter() - start
        return out

    def state(self) -> dict:
        return {**super().state(), "train_seconds": self.train_seconds}


@contextmanager
def _quiet_rank_warnings():
    """The study's FD points use fewer samples than EffNet-Lite0 has features on purpose (the same count for
    every variant, stated in the report): silence that warning, which would otherwise repeat at every one."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*give a singular covariance.*")
        yield


def _comparable(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in RESUMABLE_FIELDS}


def check_resumable(folder: Path, cfg: TrainConfig) -> None:
    """A run folder may be continued only by a run with the same settings (its step count may grow)."""
    saved_path = folder / "config.json"
    if not saved_path.is_file():
        return
    saved = _comparable(json.loads(saved_path.read_text()))
    wanted = _comparable(cfg.to_dict())
    diff = {
        k: (saved.get(k), wanted.get(k))
        for k in sorted(set(saved) | set(wanted))
        if saved.get(k) != wanted.get(k)
    }
    if diff:
        raise ValueError(
            f"{folder} holds a run with other settings {diff} (saved, now); use another --out, delete that "
            "folder, or repeat the settings it was started with"
        )
    ckpt = latest_checkpoint(folder)
    if ckpt is not None and int(ckpt.stem) > cfg.steps:
        raise ValueError(f"{folder} has trained {int(ckpt.stem)} steps, more than --steps {cfg.steps}")


def train_run(cfg: TrainConfig) -> dict:
    """Train (or resume, or find finished) one run; returns its step, training seconds and final loss."""
    folder = Path(cfg.out)
    check_resumable(folder, cfg)
    done_path = folder / "train.json"
    if done_path.is_file() and (folder / "model.safetensors").is_file():
        done = json.loads(done_path.read_text())
        if done.get("step") == cfg.steps:
            return done
    trainer = _TimedTrainer(cfg, resume="auto")  # check_resumable made sure the folder holds this run
    if trainer.resumed_from is not None:
        trainer.train_seconds = float(
            load_training_state(trainer.resumed_from).get("train_seconds", math.nan)
        )
    with _quiet_rank_warnings():
        summary = trainer.run()
    rows = read_metrics(folder / "metrics.jsonl")
    done = {
        "step": summary["step"],
        "seconds": trainer.train_seconds,
        "loss": next((r["loss"] for r in reversed(rows) if "loss" in r), None),
        "eval_seconds": sum(r.get("eval_seconds", 0.0) for r in rows),
    }
    atomic_write(done_path, lambda f: f.write((json.dumps(done, indent=2) + "\n").encode()))
    return done


def learning_curve(folder: Path) -> list[dict]:
    """The FD points the trainer logged during training (`eval_every`), one dict per evaluation."""
    curve = []
    for r in read_metrics(folder / "metrics.jsonl"):
        scores = {k: v for k, v in r.items() if k.startswith("fd_") or k == "class_accuracy"}
        if scores:
            curve.append({"step": r["step"], **scores})
    return curve


def final_scores(model, cfg: TrainConfig, abl: AblationConfig) -> dict:
    """FD-EffNetLite0, in-domain classifier FD and class accuracy of `final_samples` EMA samples."""
    images, labels = sample(
        model,
        num_samples=abl.final_samples,
        sampler=cfg.sampler,
        steps=cfg.sample_steps,
        guidance_scale=cfg.guidance_scale,
        seed=cfg.seed,  # the same noise for every variant of a seed
        batch_size=250,
    )
    features = default_features(abl.ref)
    with _quiet_rank_warnings():
        result = evaluate(images, labels if model.num_classes else None, ref=abl.ref, features=features)
    scores: dict = {"fd": None, "fd_classifier": None, "accuracy": None, "metrics": result["metrics"]}
    for name, entry in result["metrics"].items():
        if name.startswith("effnet-lite0"):
            scores["fd"], scores["floor_fd"] = entry["fd"], entry.get("floor", {}).get("fd")
        elif name.startswith("classifier:"):
            scores["fd_classifier"] = entry["fd"]
            scores["floor_fd_classifier"] = entry.get("floor", {}).get("fd")
            scores["accuracy"] = entry.get("class_accuracy")
    return scores


def _final_settings(cfg: TrainConfig, abl: AblationConfig) -> dict:
    return {
        "train": _comparable(cfg.to_dict()) | {"steps": cfg.steps},
        "final_samples": abl.final_samples,
        "ref": abl.ref,
        "features": list(default_features(abl.ref)),
    }


def run_one(abl: AblationConfig, variant: str, seed: int) -> dict:
    """Train and score one (variant, seed), or read its result when a finished run with these settings exists."""
    cfg = abl.train_config(variant, seed)
    folder = Path(cfg.out)
    result_path = folder / "result.json"
    settings = _final_settings(cfg, abl)
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        if result.get("settings") == settings:
            return result
    trained = train_run(cfg)
    device = resolve_device(abl.device)
    model = load_model(folder / "model.safetensors", device=device)
    start = time.perf_counter()
    scores = final_scores(model, cfg, abl)
    gflops = flops(model)
    result = {
        "variant": variant,
        "seed": seed,
        "params": count_parameters(model),
        "gflops": gflops,
        "steps": trained["step"],
        "batch_size": cfg.batch_size,
        # forward + backward ≈ 3 forwards, per image, over every image the run trained on
        "train_gflops": 3 * gflops * cfg.batch_size * trained["step"],
        "fd": scores.pop("fd"),
        "fd_classifier": scores.pop("fd_classifier"),
        "accuracy": scores.pop("accuracy"),
        "seconds": trained["seconds"],
        "loss": trained["loss"],
        "eval_seconds": trained["eval_seconds"],
        "final_eval_seconds": time.perf_counter() - start,
        **scores,
        "curve": learning_curve(folder),
        "run": str(folder),
        "settings": settings,
    }
    atomic_write(result_path, lambda f: f.write((json.dumps(result, indent=2) + "\n").encode()))
    return result


# ---------------------------------------------------------------------------------------------- the study
def run_ablation(abl: AblationConfig, command: str | None = None, report_only: bool = False) -> dict:
    """Run every (variant, seed) of `abl` (skipping finished ones), then write ablation.json/.md/.png to
    abl.out. With `report_only`, train nothing: report the runs already finished with these settings."""
    out = Path(abl.out)
    configure_threads(abl.threads)
    results = []
    for variant, seed in abl.runs():
        if report_only:
            path = run_dir(out, variant, seed) / "result.json"
            cfg = abl.train_config(variant, seed)
            saved = json.loads(path.read_text()) if path.is_file() else {}
            if saved.get("settings") == _final_settings(cfg, abl):
                results.append(saved)
            else:
                print(f"{variant} seed {seed}: not finished with these settings ({path.parent})", flush=True)
            continue
        r = run_one(abl, variant, seed)
        results.append(r)
        print(run_line(r), flush=True)
    study = {
        "command": command,
        "config": abl.to_dict(),
        "train_config": {
            k: v
            for k, v in abl.train_config(abl.variants[0], 0).to_dict().items()
            if k not in ("variant", "seed", "out")
        },
        "machine": f"{platform.machine()} {resolve_device(abl.device).type}, {torch.get_num_threads()} "
        f"thread(s), torch {torch.__version__}",
        "runs": results,
    }
    write_report(study, out)
    return study


def estimate(abl: AblationConfig, probe_steps: int = 3, probe_samples: int = 64) -> dict:
    """Projected wall time of the study from scratch, from a few timed training steps and one timed sampling
    batch per variant on this machine now: steps × s/step + every image sampled (FD curve, final scores,
    the trainer's sample grid) × s/image. Features and FD (about 1-2 s per evaluation) are left out."""
    configure_threads(abl.threads)
    rows = []
    for variant in abl.variants:
        seeds = abl.seeds_of(variant)
        cfg = abl.train_config(variant, seeds[0])
        trainer = Trainer(cfg)  # writes nothing until run()
        trainer.train_step()  # warm-up: allocations, lazy initialisation
        start = time.perf_counter()
        for _ in range(probe_steps):
            trainer.train_step()
        step_s = (time.perf_counter() - start) / probe_steps
        model = trainer.ema.model
        start = time.perf_counter()
        sample(model, num_samples=probe_samples, sampler=cfg.sampler, steps=cfg.sample_steps, batch_size=250)
        image_s = (time.perf_counter() - start) / probe_samples
        evals = cfg.steps // cfg.eval_every if cfg.eval_every else 0
        grid = 8 * min(model.num_classes, 10) if model.num_classes else 32
        images = evals * cfg.eval_samples + abl.final_samples + grid
        rows.append(
            dict(
                variant=variant,
                runs=len(seeds),
                step_seconds=step_s,
                image_seconds=image_s,
                train_seconds=cfg.steps * step_s,
                sample_seconds=images * image_s,
                run_seconds=cfg.steps * step_s + images * image_s,
            )
        )
    return {"rows": rows, "total_seconds": sum(r["run_seconds"] * r["runs"] for r in rows)}


def estimate_table(est: dict) -> str:
    lines = [
        "| variant | runs | s/step | ms/image sampled | training (s) | sampling (s) | per run (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in est["rows"]:
        lines.append(
            f"| {r['variant']} | {r['runs']} | {r['step_seconds']:.3f} | {1000 * r['image_seconds']:.1f} | "
            f"{r['train_seconds']:.0f} | {r['sample_seconds']:.0f} | {r['run_seconds']:.0f} |"
        )
    runs = sum(r["runs"] for r in est["rows"])
    lines += ["", f"projected total: {est['total_seconds'] / 60:.0f} min for {runs} runs"]
    return "\n".join(lines)


def run_line(r: dict) -> str:
    cls = "–" if r["fd_classifier"] is None else f"{r['fd_classifier']:.2f}"
    acc = "–" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
    return (
        f"{r['variant']} seed {r['seed']}: FD-EffNetLite0 {r['fd']:.2f}, classifier FD {cls}, accuracy {acc}, "
        f"{r['params']:,} params, {r['gflops']:.4f} Gflops, {r['seconds']:.0f} s training ({r['run']})"
    )


# ---------------------------------------------------------------------------------------------- report
def _stats(values: list) -> dict | None:
    """Mean, sample standard deviation (0 for one value) and count of the non-missing values, or None."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return {"mean": float(np.mean(vals)), "std": std, "n": len(vals)}


def _num(value, digits: int = 2) -> str:
    return "–" if value is None or not math.isfinite(float(value)) else f"{float(value):.{digits}f}"


def _pm(stats: dict | None, digits: int = 2) -> str:
    """ "mean ± std" (just the mean for one seed)."""
    if stats is None:
        return "–"
    mean = f"{stats['mean']:.{digits}f}"
    return f"{mean} ± {stats['std']:.{digits}f}" if stats["n"] > 1 else mean


def summarize(runs: list[dict]) -> list[dict]:
    """One row per variant (in first-seen order): its runs' seeds and mean/std of each score."""
    by_variant: dict[str, list[dict]] = {}
    for r in runs:
        by_variant.setdefault(r["variant"], []).append(r)
    rows = []
    for variant, rs in by_variant.items():
        row = {"variant": variant, "seeds": [r["seed"] for r in rs], "params": rs[0]["params"]}
        row["gflops"], row["train_gflops"] = rs[0]["gflops"], rs[0]["train_gflops"]
        for key in ("fd", "fd_classifier", "accuracy", "seconds", "loss"):
            row[key] = _stats([r.get(key) for r in rs])
        rows.append(row)
    return rows


def markdown(study: dict) -> str:
    """The report: settings, one row per variant (mean ± std over seeds), notes, then one row per run."""
    runs, c, t = study["runs"], study["config"], study.get("train_config", {})
    lines = ["# Conditioning study: in-context, cross-attention, adaLN, adaLN-Zero and later variants", ""]
    if study.get("command"):
        lines += ["Produced by:", "", f"    {study['command']}", ""]
    if t:
        model_args = f" {json.dumps(c['model_args'])}" if c["model_args"] else ""
        evals = f"every {t['eval_every']} steps on {t['eval_samples']} samples" if t["eval_every"] else "off"
        lines += [
            f"Every run: {c['model']}{model_args} on {c['data']}, {t['steps']} steps of batch "
            f"{t['batch_size']}, {t['objective']} objective, AdamW lr {t['lr']:g} (warm-up {t['warmup_steps']} "
            f"steps, grad clip {t['grad_clip']:g}), EMA {t['ema_decay']:g}"
            f"{' with warm-up' if t['ema_warmup'] else ''}; for a given seed every variant sees the same images, "
            f"timesteps and noise at every step. Final scores: {c['final_samples']} samples of the EMA model "
            f"({t['sampler']}, {t['sample_steps']} steps, guidance {t['guidance_scale']:g}) against "
            f"`{c['eval_ref'] or c['data'] + ':test'}`; FD during training (the plot): {evals}. "
            f"Wall time: the optimisation steps alone, on {study.get('machine', '?')}.",
            "",
        ]
    lines += [
        "| variant | seeds | params | Gflops | training Gflops | FD-EffNetLite0 ↓ | classifier FD ↓ | "
        "class accuracy ↑ | final loss | wall time (s) | paper XL/2 FID |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summarize(runs):
        paper = PAPER_TABLE4.get(row["variant"])
        lines.append(
            f"| {row['variant']} | {','.join(map(str, row['seeds']))} | {row['params']:,} | "
            f"{row['gflops']:.4f} | {row['train_gflops']:.3g} | {_pm(row['fd'])} | "
            f"{_pm(row['fd_classifier'])} | {_pm(row['accuracy'], 3)} | {_pm(row['loss'], 4)} | "
            f"{_pm(row['seconds'], 0)} | {f'{paper[2]:.2f}' if paper else '–'} |"
        )
    floors = [
        (name, _stats([r.get(key) for r in runs]))
        for name, key in (("FD-EffNetLite0", "floor_fd"), ("classifier FD", "floor_fd_classifier"))
    ]
    floor_text = ", ".join(f"{name} {s['mean']:.2f}" for name, s in floors if s is not None)
    lines += [
        "",
        "± is the standard deviation over seeds. Gflops: one forward pass of one image in the DiT paper's unit "
        "(10⁹ multiply-accumulates, `ditlab flops`); training Gflops = 3 × Gflops × batch × steps. "
        "Paper XL/2 FID: DiT-XL/2 at 400K steps on ImageNet 256², no guidance (the paper's Table 4). "
        "FD from fewer samples than features (1280 for EffNet-Lite0, 128 for the classifier) is biased upward; "
        "every variant is scored with the same counts, so the columns compare, but not with FDs of other counts."
        + (
            f" FD of real held-out images, as many as the samples (the floor): {floor_text}."
            if floor_text
            else ""
        ),
        "",
        "Per run:",
        "",
        "| variant | seed | FD-EffNetLite0 | classifier FD | accuracy | loss | wall time (s) | run |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['variant']} | {r['seed']} | {_num(r['fd'])} | {_num(r['fd_classifier'])} | "
            f"{_num(r['accuracy'], 3)} | {_num(r.get('loss'), 4)} | {_num(r['seconds'], 0)} | `{r['run']}` |"
        )
    return "\n".join(lines) + "\n"


def _curve_band(rs: list[dict], key: str):
    """Steps evaluated by every seed, with the mean, min and max of `key` over seeds there."""
    per_seed = [{p["step"]: p[key] for p in r.get("curve", []) if p.get(key) is not None} for r in rs]
    steps = sorted(set.intersection(*(set(s) for s in per_seed))) if per_seed else []
    if not steps:
        return None
    values = np.array([[s[step] for step in steps] for s in per_seed], dtype=float)  # (seeds, points)
    return np.array(steps, dtype=float), values.mean(0), values.min(0), values.max(0)


def plot(study: dict, path: str | Path) -> Path | None:
    """FD against steps and against training Gflops (columns) for each FD of the curves (rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = study["runs"]
    keys = [
        k
        for k in ("fd_effnet_lite0", "fd_classifier")
        if any(k in p for r in runs for p in r.get("curve", []))
    ]
    if not keys:
        return None
    labels = {"fd_effnet_lite0": "FD-EffNetLite0", "fd_classifier": "classifier FD"}
    fig, axes = plt.subplots(len(keys), 2, figsize=(11, 3.8 * len(keys)), squeeze=False)
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    colors = plt.get_cmap("tab10")
    for i, key in enumerate(keys):
        for j, x_name in enumerate(("training steps", "training Gflops")):
            ax = axes[i, j]
            for n, variant in enumerate(variants):
                rs = [r for r in runs if r["variant"] == variant]
                band = _curve_band(rs, key)
                if band is None:
                    continue
                steps, mean, lo, hi = band
                x = steps if j == 0 else steps * 3 * rs[0]["gflops"] * rs[0]["batch_size"]
                style = "-" if variant in PAPER_VARIANTS else "--"
                ax.plot(
                    x,
                    mean,
                    style,
                    marker="o",
                    ms=3,
                    lw=1.5,
                    color=colors(n % 10),
                    label=f"{variant} ({len(rs)} seed{'s' if len(rs) > 1 else ''})",
                )
                if len(rs) > 1:
                    ax.fill_between(x, lo, hi, color=colors(n % 10), alpha=0.15, lw=0)
            ax.set_xlabel(x_name)
            ax.set_ylabel(labels[key])
            ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=8)
    c = study["config"]
    fig.suptitle(f"Conditioning variants: {c['model']} on {c['data']} (mean over seeds, band = min–max)")
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def write_report(study: dict, out: str | Path) -> dict[str, Path]:
    """ablation.json, ablation.md and ablation.png (when the runs have FD curves) in `out`."""
    out = Path(out)
    paths = {"json": out / "ablation.json", "md": out / "ablation.md", "png": out / "ablation.png"}
    atomic_write(paths["json"], lambda f: f.write((json.dumps(study, indent=2) + "\n").encode()))
    atomic_write(paths["md"], lambda f: f.write(markdown(study).encode()))
    if plot(study, paths["png"]) is None:
        paths.pop("png")
    return paths


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--config", help="JSON object of ablation options (the field names below, with _); flags override it")
    a("--quick", action="store_true", help="a few CPU minutes on digits with DiT-Nano/2: checks the pipeline")
    a(
        "--report-only",
        action="store_true",
        help="train nothing: write the report of the runs already finished",
    )
    a(
        "--estimate",
        action="store_true",
        help="train nothing: time a few steps per variant, project the total",
    )
    a("--variants", help=f"comma-separated, 'all' or 'paper' (default: all = {', '.join(VARIANTS)})")
    a("--data", help="digits, fashion-mnist[:DIR] (class subsets like fashion-mnist[0-4]) or a folder")
    a("--model", help=f"zoo model (default {DEFAULT_MODEL}, with model_args depth=4 unless given)")
    a("--model-args", type=_parse_kv, action="append", help="DiTConfig override KEY=VALUE (repeatable)")
    a("--steps", type=int, help="optimizer steps of every run (default 1200)")
    a("--batch-size", type=int, help="batch of every run (default 64)")
    a("--lr", type=float, help="AdamW learning rate (default 1e-3)")
    a("--warmup-steps", type=int, help="linear lr warm-up (default: steps // 10)")
    a("--seeds", help="seeds of the paper's four variants (and of all with --extra-seeds same); default 0,1")
    a("--extra-seeds", help="seeds of the variants beyond the paper's four (default 0; 'same' = --seeds)")
    a("--eval-every", type=int, help="FD during training every N steps (default: steps // 5; 0 = off)")
    a("--eval-samples", type=int, help="samples per FD point during training (default 250)")
    a("--final-samples", type=int, help="samples for the final scores (default 1500)")
    a("--eval-ref", help="FD reference (default: the data's test split)")
    a(
        "--train-args",
        type=_parse_kv,
        action="append",
        help="any other TrainConfig field KEY=VALUE (repeatable), e.g. objective=ddpm, sample_steps=32",
    )
    a("--threads", type=int, help="CPU threads (default: all cores)")
    a("--device", help="auto, cpu or cuda")
    a("--out", help="output folder (default runs/ablation; runs/ablation-quick with --quick)")


def config_from_args(args: argparse.Namespace) -> AblationConfig:
    """Defaults ← --quick ← --config file ← flags."""
    options: dict = dict(QUICK) if args.quick else {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            loaded = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {path} is not valid JSON: {e}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a JSON object of ablation options")
        options.update(loaded)
    for f in fields(AblationConfig):
        value = getattr(args, f.name.replace("-", "_"), None)
        if value is None:
            continue
        if f.name == "model_args":
            model = options.get("model", getattr(args, "model", None) or DEFAULT_MODEL)
            base = options.get("model_args")
            value = {**(default_model_args(model) if base is None else base), **dict(value)}
        elif f.name == "extra_seeds" and value == "same":
            value = None
        options[f.name] = value
    if args.train_args:
        options["train"] = {**options.get("train", {}), **dict(args.train_args)}
    return AblationConfig.from_dict(options)


def run(args: argparse.Namespace) -> int:
    abl = config_from_args(args)
    if args.estimate:
        print(estimate_table(estimate(abl)))
        return 0
    command = (
        "ditlab ablate " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        if sys.argv[1:2] == ["ablate"]
        else None
    )
    study = run_ablation(abl, command=command, report_only=args.report_only)
    print(markdown(study))
    print(f"wrote {Path(abl.out) / 'ablation.md'}, ablation.json and ablation.png")
    return 0


__all__ = [
    "PAPER_TABLE4",
    "PAPER_VARIANTS",
    "QUICK",
    "TRAIN_DEFAULTS",
    "AblationConfig",
    "markdown",
    "plot",
    "run_ablation",
    "run_one",
    "summarize",
    "write_report",
]
