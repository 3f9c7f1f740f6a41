"""The study's report: one row per variant (mean ± std over seeds) beside the DiT paper's Table 4, the
per-run numbers, and the files `ablation.json`, `ablation.md` and `ablation.png` (via `ditlab.ablate.plot`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ditlab.ablate.plot import plot
from ditlab.ablate.variants import PAPER_TABLE4
from ditlab.atomic import atomic_write


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
        row["model"], row["model_args"] = rs[0].get("model"), rs[0].get("model_args")
        for key in ("fd", "fd_classifier", "accuracy", "seconds", "loss", *TEXT_SCORES):
            row[key] = _stats([r.get(key) for r in rs])
        rows.append(row)
    return rows


TEXT_SCORES = ("single_seen", "single_held_out", "two_seen", "two_held_out")  # the text study's accuracies


def text_markdown(study: dict) -> str:
    """The text study's report: one row per architecture (mean ± std over seeds), then one row per run."""
    runs, c, t = study["runs"], study["config"], study.get("train_config", {})
    lines = ["# Text-conditioning study: pooled, cross-attention, MMDiT and single-stream on shapes", ""]
    if study.get("command"):
        lines += ["Produced by:", "", f"    {study['command']}", ""]
    if t:
        lines += [
            f"Every run: {c['data']} with {t['text_encoder']} captions ({t['text_max_length']} tokens, "
            f"{t['caption_dropout']:g} caption dropout), {t['steps']} steps of batch {t['batch_size']}, "
            f"{t['objective']} objective, AdamW lr {t['lr']:g}; each architecture at the size of {c['model']} "
            "with its depth chosen for the closest Gflops; for a given seed every run sees the same images, "
            f"timesteps and noise. Final scores: {c['final_samples']} samples of the EMA model ({t['sampler']}, "
            f"{t['sample_steps']} steps, guidance {t['guidance_scale']:g} on the null caption), a quarter each "
            "of seen/held-out one/two-object prompts, read back by the shapes evaluator; FD-EffNetLite0 of the "
            f"same samples against `{c['eval_ref'] or c['data'] + ':test'}`. Wall time: the optimisation steps "
            f"alone, on {study.get('machine', '?')}.",
            "",
        ]
    lines += [
        "| architecture | model | seeds | params | Gflops | one object seen ↑ | one object held-out ↑ | "
        "two objects seen ↑ | two objects held-out ↑ | FD-EffNetLite0 ↓ | final loss | wall time (s) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summarize(runs):
        depth = (row.get("model_args") or {}).get("depth")
        model = f"{row.get('model')} depth {depth}" if depth else str(row.get("model"))
        lines.append(
            f"| {row['variant']} | {model} | {','.join(map(str, row['seeds']))} | {row['params']:,} | "
            f"{row['gflops']:.4f} | "
            + " | ".join(_pm(row[k], 3) for k in TEXT_SCORES)
            + f" | {_pm(row['fd'])} | {_pm(row['loss'], 4)} | {_pm(row['seconds'], 0)} |"
        )
    lines += [
        "",
        "Accuracy: the share of images whose objects (colour and shape) and, for two objects, relation the "
        "evaluator reads as the prompt says. Held-out prompts name a yellow triangle or a blue circle, never "
        "in the training images. ± is the standard deviation over seeds.",
        "",
        "Per run:",
        "",
        "| architecture | seed | " + " | ".join(TEXT_SCORES) + " | FD | loss | run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        scores = " | ".join(_num(r.get(k), 3) for k in TEXT_SCORES)
        lines.append(
            f"| {r['variant']} | {r['seed']} | {scores} | {_num(r['fd'])} | {_num(r.get('loss'), 4)} | "
            f"`{r['run']}` |"
        )
    return "\n".join(lines) + "\n"


def markdown(study: dict) -> str:
    """The report: settings, one row per variant (mean ± std over seeds), notes, then one row per run."""
    if study["config"].get("study") == "text":
        return text_markdown(study)
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


def write_report(study: dict, out: str | Path) -> dict[str, Path]:
    """ablation.json, ablation.md and ablation.png (when the runs have FD curves) in `out`."""
    out = Path(out)
    paths = {"json": out / "ablation.json", "md": out / "ablation.md", "png": out / "ablation.png"}
    atomic_write(paths["json"], lambda f: f.write((json.dumps(study, indent=2) + "\n").encode()))
    atomic_write(paths["md"], lambda f: f.write(markdown(study).encode()))
    if plot(study, paths["png"]) is None:
        paths.pop("png")
    return paths
