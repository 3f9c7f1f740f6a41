"""`ditlab ablate`'s flags (`add_arguments`) and command (`run`): options from defaults, `--quick`, a
`--config` file and flags, in that order, then the study, its time estimate or its report.

The flags follow ditlab's CLI vocabulary: `--train-steps` (alias `--steps`), `--sample-steps`,
`--image-size`, `--resume [auto|PATH]`, and list flags (`--variants`, `--seeds`, `--extra-seeds`) that take
space-separated values, repeat to extend and accept commas: `--seeds 0 1` == `--seeds 0,1` ==
`--seeds 0 --seeds 1`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from ditlab.ablate.estimate import estimate, estimate_table
from ditlab.ablate.report import markdown
from ditlab.ablate.runner import run_ablation
from ditlab.ablate.variants import DEFAULT_MODEL, STUDIES, AblationConfig, default_model_args, study_defaults
from ditlab.cli_args import add_list_argument, parse_kv  # KEY=VALUE flags, as `ditlab train --model-args`
from ditlab.models.zoo import VARIANTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--config", help="JSON object of ablation options (the field names below, with _); flags override it")
    a(
        "--study",
        choices=STUDIES,
        help="conditioning: the DiT paper's blocks on Fashion-MNIST; text: pooled, cross-attention, MMDiT and "
        "single-stream text conditioning at equal Gflops on shapes (default: conditioning)",
    )
    a(
        "--quick",
        action="store_true",
        help="a few CPU minutes on digits with DiT-Nano/2 (--study text: seconds on shapes with Nano/4 "
        "models): checks the pipeline",
    )
    a(
        "--report-only",
        action="store_true",
        help="train nothing: write the report of the runs finished so far",
    )
    a(
        "--estimate",
        action="store_true",
        help="train nothing: time a few steps per variant, project the total",
    )
    add_list_argument(
        parser,
        "--variants",
        metavar="NAME",
        help=f"variants to train, 'all' or 'paper' (default: all = {' '.join(VARIANTS)})",
    )
    a("--data", help="digits, fashion-mnist[:DIR] (class subsets like fashion-mnist[0-4]) or a folder")
    a("--image-size", type=int, help="resize the data to this side in pixels (default: the data's own)")
    a("--model", help=f"zoo model (default {DEFAULT_MODEL}, with model_args depth=4 unless given)")
    a("--model-args", type=parse_kv, action="append", help="DiTConfig override KEY=VALUE (repeatable)")
    a("--train-steps", "--steps", dest="steps", type=int, help="optimizer steps of every run (default 1200)")
    a("--sample-steps", type=int, help="sampler steps of the FD samples (default 16; 8 with --quick)")
    a("--batch-size", type=int, help="images per optimizer step of every run (default 64)")
    a("--lr", type=float, help="AdamW learning rate (default 1e-3)")
    a("--warmup-steps", type=int, help="optimizer steps of linear lr warm-up (default: train steps // 10)")
    add_list_argument(
        parser,
        "--seeds",
        metavar="SEED",
        help="seeds of the paper's four variants (and of all with --extra-seeds same) (default 0 1)",
    )
    add_list_argument(
        parser,
        "--extra-seeds",
        metavar="SEED",
        help="seeds of the variants beyond the paper's four, or 'same' as --seeds (default 0)",
    )
    a("--eval-every", type=int, help="FD during training every N steps (default: train steps // 5; 0 = off)")
    a("--eval-samples", type=int, help="images sampled per FD point during training (default 250)")
    a("--final-samples", type=int, help="images sampled for the final scores (default 1500)")
    a("--eval-ref", help="FD reference (default: the data's test split)")
    a(
        "--train-args",
        type=parse_kv,
        action="append",
        help="any other TrainConfig field KEY=VALUE (repeatable), e.g. objective=ddpm",
    )
    a("--threads", type=int, help="CPU threads (default: all cores)")
    a("--device", choices=("auto", "cpu", "cuda"), help="where to train (default auto)")
    a("--out", help="study folder (default runs/ablation; runs/ablation-quick with --quick)")
    a(
        "--resume",
        nargs="?",
        const="auto",
        metavar="auto|PATH",
        help="continue the study in PATH (auto, or bare: the one in --out); a study always continues the "
        "finished and started runs its folder holds, so this only names the folder",
    )


def _study_folder(args: argparse.Namespace) -> str | None:
    """--out, or the folder `--resume PATH` names (the same one when both are given)."""
    resume = getattr(args, "resume", None)
    if resume in (None, "auto"):
        return args.out
    if args.out is not None and Path(args.out) != Path(resume):
        raise ValueError(f"--resume {resume} and --out {args.out} name different folders; give one of them")
    return resume


def _load_config_file(name: str) -> dict:
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        loaded = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"config file {path} is not valid JSON: {e}") from e
    if not isinstance(loaded, dict):
        raise ValueError(f"config file {path} must hold a JSON object of ablation options")
    return loaded


def config_from_args(args: argparse.Namespace) -> AblationConfig:
    """Defaults ← --quick ← --config file ← flags."""
    loaded = _load_config_file(args.config) if args.config else {}
    study = args.study or loaded.get("study", "conditioning")
    options: dict = study_defaults(study, args.quick)
    options.update(loaded)
    flags = {**vars(args), "out": _study_folder(args)}
    for f in fields(AblationConfig):
        value = flags.get(f.name)
        if value is None:
            continue
        if f.name == "model_args":
            model = options.get("model", flags.get("model") or DEFAULT_MODEL)
            base = options.get("model_args")
            value = {**(default_model_args(model) if base is None else base), **dict(value)}
        elif f.name == "extra_seeds" and value == ["same"]:
            value = None
        options[f.name] = value
    train = dict(args.train_args or [])
    for name in ("sample_steps", "image_size"):  # TrainConfig fields with a flag of their own
        if flags.get(name) is not None:
            train[name] = flags[name]
    if train:
        options["train"] = {**options.get("train", {}), **train}
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
