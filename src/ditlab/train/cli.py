"""`ditlab train`: every TrainConfig field as a flag; `--config FILE` supplies a saved run's options and flags
given on the command line override them; `--resume auto` continues the run in `--out` from its last checkpoint.

    ditlab train --data digits --model DiT-Ti/2 --steps 2000 --batch-size 128 --out runs/digits
    ditlab train --out runs/digits --resume auto                     # after a crash: same run, same losses
    ditlab train --config runs/digits/config.json --steps 4000 --out runs/digits --resume auto
    torchrun --standalone --nproc_per_node 2 -m ditlab train --data digits --steps 2000 --out runs/ddp
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing

from ditlab.train.config import TrainConfig
from ditlab.train.state import resume_checkpoint

HELP = {
    "data": 'dataset: "digits", "fashion-mnist[:DIR]" or an ImageFolder path',
    "vae": "train on latents of this autoencoder: a `ditlab vae train` run or file, or a diffusers "
    "AutoencoderKL / VQModel folder",
    "latents": "with --vae: a `ditlab latents` cache folder, read instead of encoding when it matches",
    "bad_images": "unreadable files in an image folder: raise (stop, naming the file) or skip (leave out, warn)",
    "image_size": "resize images to this side (default: the data's own size)",
    "model": "zoo name, e.g. DiT-S/2, DiT-Ti/2, DiT-XL/2",
    "variant": "conditioning variant (in-context, cross-attention, adaln, adaln-zero, adaln-single, ...)",
    "model_args": "DiTConfig overrides as KEY=VALUE (repeatable), e.g. --model-args depth=4 --model-args hidden_size=128",
    "objective": "ddpm (DiT: linear schedule, learned variance, hybrid loss) or flow (rectified flow)",
    "timestep_sampling": "flow matching: uniform or logit_normal",
    "steps": "total optimizer steps (or use --epochs)",
    "batch_size": "global batch size (split across torchrun processes)",
    "ema_decay": "EMA decay (the DiT recipe: 0.9999)",
    "ema_warmup": "EMA decay min(decay, (1+s)/(10+s)): useful averages in short runs",
    "grad_clip": "clip the gradient norm to this value (0 = off)",
    "device": "auto, cpu or cuda",
    "precision": "auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16",
    "compile": "torch.compile the model (falls back to eager if it fails)",
    "fused_optimizer": "one-kernel AdamW where the device has it (--no-fused-optimizer: torch's per-tensor loop)",
    "gradient_checkpointing": "recompute each block in the backward pass instead of storing its activations",
    "checkpoint_policy": "with --gradient-checkpointing: full (least memory) or selective (keeps attention and "
    "fc2 outputs: less recompute time)",
    "out": "run directory: config.json, checkpoints/, metrics.jsonl, loss.png, samples.png, model.safetensors",
    "ckpt_every": "write a checkpoint every N steps",
    "keep_last": "keep only the newest K checkpoints (0 = all)",
    "eval_every": "Fréchet distance of EMA samples every N steps (0 = off)",
}


def _parse_kv(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _base_type(hint):
    """int | None -> int; bool -> bool (handled separately)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def add_arguments(
    parser: argparse.ArgumentParser,
    config_cls: type[TrainConfig] = TrainConfig,
    help_texts: dict | None = None,
) -> None:
    """One flag per field of `config_cls` (TrainConfig or a subclass, e.g. ditlab.finetune's), plus --config/--resume."""
    help_texts = {**HELP, **(help_texts or {})}
    parser.add_argument("--config", help="JSON file of options (a run's config.json); flags override it")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        help="continue from a checkpoint: a path, or 'auto' (the newest loadable one in --out; starts fresh "
        "if none)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an --out that holds another run: its files move to --out/previous-runs/<UTC "
        "time>/ (nothing is deleted); without it such a folder is refused",
    )
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        kind = _base_type(hints[f.name])
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        help_text = help_texts.get(f.name, f.name.replace("_", " ")) + f" (default: {default})"
        if kind is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        elif kind is dict:
            parser.add_argument(
                flag, type=_parse_kv, action="append", default=argparse.SUPPRESS, help=help_text
            )
        else:
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text)


def config_from_args(
    args: argparse.Namespace, config_cls: type[TrainConfig] = TrainConfig
) -> tuple[TrainConfig, str | None]:
    """Defaults ← checkpoint's saved options (when resuming) or --config file ← flags given."""
    hints = typing.get_type_hints(config_cls)
    given = {k: v for k, v in vars(args).items() if k in hints}
    dict_fields = [k for k in given if _base_type(hints[k]) is dict]
    for name in dict_fields:  # KEY=VALUE flags arrive as a list of pairs
        given[name] = dict(given[name])
    base: dict = {}
    if args.config:
        base = config_cls.load(args.config).to_dict()
    resume = args.resume
    if resume:
        out = given.get("out", base.get("out", config_cls.__dataclass_fields__["out"].default))
        found = resume_checkpoint(out, resume)  # the Trainer gets this exact file: one choice, made once
        if found is not None:
            path, state = found
            base = {**state["args"], **base}  # an explicit --config file refines the saved options
            resume = str(path)
        # else "auto" stays: nothing to resume yet, the Trainer starts the run
    merged = {**base, **given}
    for name in dict_fields:
        if name in base:
            merged[name] = {**base[name], **given[name]}
    return config_cls.from_dict(merged), resume


def run(args: argparse.Namespace) -> int:
    from ditlab.train.trainer import train

    cfg, resume = config_from_args(args)
    summary = train(cfg, resume=resume, overwrite=getattr(args, "overwrite", False))
    if summary.get("model"):
        print(json.dumps(summary))
    return 0
