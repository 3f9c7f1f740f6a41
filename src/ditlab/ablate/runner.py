"""Resumable runs of the conditioning study: train (or resume, or find finished) each (variant, seed), score
its EMA model, and collect the results into the study that `ditlab.ablate.report` writes out.

A finished run (its `result.json` holds the same settings) is skipped, a started one resumes from its newest
checkpoint, and a folder holding a run with other settings is refused, so a long study can be stopped and
continued with the same command.
"""

from __future__ import annotations

import json
import math
import platform
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from ditlab.ablate.report import write_report
from ditlab.ablate.variants import AblationConfig, run_dir
from ditlab.atomic import atomic_write
from ditlab.data.shapes import split_captions
from ditlab.eval import default_features, evaluate, evaluate_model, evaluate_shapes
from ditlab.models.checkpoint import load_model
from ditlab.models.flops import count_parameters, flops
from ditlab.runtime import configure_threads, resolve_device
from ditlab.sampling import generate
from ditlab.text import load_text_encoder
from ditlab.train.config import TrainConfig
from ditlab.train.metrics import read_metrics
from ditlab.train.state import latest_checkpoint, load_training_state
from ditlab.train.trainer import Trainer

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
        raise ValueError(f"{folder} has trained {int(ckpt.stem)} steps, more than --train-steps {cfg.steps}")


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
    with _quiet_rank_warnings():
        result = evaluate_model(
            model,
            abl.final_samples,
            ref=abl.ref,
            features=default_features(abl.ref),
            sampler=cfg.sampler,
            steps=cfg.sample_steps,
            guidance_scale=cfg.guidance_scale,
            seed=cfg.seed,  # the same noise for every variant of a seed
        )
    scores: dict = {"fd": None, "fd_classifier": None, "accuracy": None, "metrics": result["metrics"]}
    for name, entry in result["metrics"].items():
        if name.startswith("effnet-lite0"):
            scores["fd"], scores["floor_fd"] = entry["fd"], entry.get("floor", {}).get("fd")
        elif name.startswith("classifier:"):
            scores["fd_classifier"] = entry["fd"]
            scores["floor_fd_classifier"] = entry.get("floor", {}).get("fd")
            scores["accuracy"] = entry.get("class_accuracy")
    return scores


def final_prompts(n: int) -> list[str]:
    """The text study's `n` final prompts: a quarter each from seen one-object, seen two-object, held-out
    one-object and held-out two-object captions of the shapes grammar, each group cycled in sorted order."""
    if n < 4:
        raise ValueError(f"final_samples must be >= 4 in the text study (one per prompt group), got {n}")
    groups = [
        [c for c in split_captions(split) if (" of " in c or " above " in c or " below " in c) == two]
        for split in ("train", "test")
        for two in (False, True)
    ]
    prompts = []
    for i, group in enumerate(groups):
        count = n // 4 + (1 if i < n % 4 else 0)
        stride = max(1, len(group) // count)  # spread over the group, not its first few prompts
        prompts += [group[(j * stride) % len(group)] for j in range(count)]
    return prompts


def text_scores(model, cfg: TrainConfig, abl: AblationConfig) -> dict:
    """The text study's final scores: the shapes evaluator's accuracies on `final_prompts`, and the
    FD-EffNetLite0 of the same samples against the reference."""
    prompts = final_prompts(abl.final_samples)
    images, _ = generate(
        model,
        prompts=prompts,
        text_encoder=load_text_encoder(**model.text_spec),
        sampler=cfg.sampler,
        steps=cfg.sample_steps,
        guidance_scale=cfg.guidance_scale,
        seed=cfg.seed,  # the same noise for every variant of a seed
        batch_size=250,
    )
    report = evaluate_shapes(images, prompts)
    with _quiet_rank_warnings():
        result = evaluate(
            images, ref=abl.ref, features=default_features(abl.ref), floor=False, resize_ref=True
        )
    fd = next((e["fd"] for name, e in result["metrics"].items() if name.startswith("effnet-lite0")), None)
    return {
        "fd": fd,
        "fd_classifier": None,
        "accuracy": report["accuracy"],
        "single_seen": report["single"]["seen"]["accuracy"],
        "single_held_out": report["single"]["held_out"]["accuracy"],
        "two_seen": report["two"]["seen"]["accuracy"],
        "two_held_out": report["two"]["held_out"]["accuracy"],
        "metrics": result["metrics"],
    }


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
    scores = text_scores(model, cfg, abl) if abl.study == "text" else final_scores(model, cfg, abl)
    gflops = flops(model)
    result = {
        "variant": variant,
        "seed": seed,
        "model": cfg.model,
        "model_args": cfg.model_args,
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


def run_line(r: dict) -> str:
    cls = "–" if r["fd_classifier"] is None else f"{r['fd_classifier']:.2f}"
    acc = "–" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
    return (
        f"{r['variant']} seed {r['seed']}: FD-EffNetLite0 {r['fd']:.2f}, classifier FD {cls}, accuracy {acc}, "
        f"{r['params']:,} params, {r['gflops']:.4f} Gflops, {r['seconds']:.0f} s training ({r['run']})"
    )
