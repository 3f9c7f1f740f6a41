"""`ditlab finetune`: fine-tune a trained DiT with a parameter-efficient method (or fully), or count what would train.

    ditlab finetune --base runs/fm04 --data "fashion-mnist[5-9]" --labels keep --method difffit \\
        --train-steps 2000 --batch-size 128 --out runs/ft-difffit          # -> model.safetensors + adapter.safetensors
    ditlab finetune --method lora --method-args rank=4 --base runs/fm04 --data digits --train-steps 500 \\
        --out runs/lora
    ditlab finetune --out runs/ft-difffit --resume             # continue an interrupted run exactly
    ditlab finetune --method difffit --model DiT-XL/2 --trainable-only   # {"trainable", "total", "fraction"}

Every `ditlab train` flag works here too (batch size, EMA, checkpoints, precision, ...). Unset objective
fields, image size, channels and --lr are inherited from the base (lr: the method's multiple of the base's rate).
"""

from __future__ import annotations

import argparse
import json

import torch

from ditlab.finetune.config import FinetuneConfig
from ditlab.finetune.methods import LABEL_MODES, METHODS, prepare_model, trainable_summary
from ditlab.train.cli import add_arguments as add_train_arguments
from ditlab.train.cli import config_from_args, usage_checked

HELP = {
    "base": "checkpoint to fine-tune: native .safetensors, official/ditlab .pt, diffusers folder or run folder "
    "(required, except for --trainable-only --model NAME)",
    "method": "fine-tuning method: " + "; ".join(f"{k}: {m.help}" for k, m in METHODS.items()),
    "method_args": "method option KEY=VALUE (repeatable): difffit gamma_blocks=half|all|N; "
    "lora rank=8 alpha=8 targets=qkv,proj,fc1,fc2",
    "labels": "label table for the data's classes: reset (new rows, DiffFit) or keep (keep trained rows, "
    "append rows for new classes; use with class subsets such as fashion-mnist[5-9])",
    "target_flops": "dydit: the target FLOPs ratio λ of the dynamic model, a fraction of the dense model's "
    "(same as --method-args target_flops=λ) (default: the method's)",
    "lr": "AdamW learning rate (default: the method's multiple of the base's pre-training rate)",
    "model": "--trainable-only without --base: the zoo model to count (e.g. DiT-XL/2); else a label for logs "
    "(default: '<method> fine-tune')",
    "model_args": "--trainable-only without --base: DiTConfig override KEY=VALUE of the counted model "
    "(repeatable)",
    "objective": "ddpm or flow (default: the base's objective)",
    "schedule": "DDPM noise (beta) schedule (default: the base's)",
    "diffusion_steps": "length of the DDPM chain T, in steps (default: the base's)",
    "timestep_sampling": "flow matching: how training times t are drawn (default: the base's)",
    "prediction": "flow matching: what the network outputs, velocity or x0 (the clean image) (default: the base's)",
    "image_size": "resize images to this side, in pixels (default: the base's input size)",
    "channels": "image channels, 1 (grey) or 3 (RGB) (default: the base's)",
}

CHOICES = {"method": tuple(METHODS), "labels": LABEL_MODES}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser, FinetuneConfig, HELP, CHOICES, num_classes_flag=False)
    parser.add_argument(
        "--trainable-only",
        action="store_true",
        help="print {trainable, total, fraction} as one JSON line for --method on --model (or --base) and exit",
    )


def count_trainable(args: argparse.Namespace) -> dict:
    """The trainable-parameter summary of --method on a zoo model (built on the meta device) or on --base."""
    method = getattr(args, "method", "difffit")
    options = dict(getattr(args, "method_args", []) or [])
    base = getattr(args, "base", None)
    if base:
        from ditlab.finetune.config import resolve_base
        from ditlab.models.checkpoint import load_model

        model = load_model(resolve_base(base))
        name = str(base)
    else:
        from ditlab.models.zoo import create_model

        name = getattr(args, "model", None)
        if not name:
            raise ValueError("--trainable-only needs --model NAME (a zoo model) or --base CHECKPOINT")
        with torch.device("meta"):  # no memory and no init cost, even for DiT-XL/2
            overrides = dict(getattr(args, "model_args", None) or [])
            model = create_model(name, variant=getattr(args, "variant", None), **overrides)
    prepare_model(model, method, **options)
    return {"model": name, "method": method, **trainable_summary(model)}


def run(args: argparse.Namespace) -> int:
    if args.trainable_only:
        print(json.dumps(usage_checked(lambda: count_trainable(args))))
        return 0
    from ditlab.finetune.trainer import finetune

    cfg, resume = usage_checked(lambda: config_from_args(args, FinetuneConfig))
    summary = finetune(cfg, resume=resume, overwrite=args.overwrite, force=args.force)
    if summary.get("model"):
        print(json.dumps(summary))
    return 0
