"""`ditlab sample`: images from any loadable checkpoint into a PNG grid and an ADM-style `.npz`.

    ditlab sample runs/digits/model.safetensors --per-class 16 --out samples/digits
    ditlab sample runs/digits --per-class 16 --guide runs/digits-small --cfg-scale 2  # autoguidance
    ditlab sample runs/shapes-t2i --prompt "a red circle left of a blue square" "a green square" --per-prompt 8
    ditlab sample runs/shapes-t2i --prompts-file prompts.txt --per-prompt 4 --cfg-scale 3   # one prompt a line
    ditlab sample runs/layout --layout mask.png --per-class 8 --guidance-scale 2    # layout-to-image
    ditlab sample runs/reference --reference a.png b.png --per-class 8 --guidance-scale 2    # reference style

Text-to-image runs take prompts (encoded by the encoder the run recorded; guidance's unconditional branch is
its null caption); the .npz then holds `prompts`, the prompt of each image in arr_0's order.

A run's model records the sampler, sampler steps and guidance scale its training used; --sampler,
--sample-steps and --guidance-scale left out take those (else: the objective's sampler, 50 steps, no guidance).
    ditlab sample --ckpt DiT-XL-2-256x256.pt --vae ema --classes 207 360 --sampler ddpm \\
        --num-sampling-steps 250 --cfg-scale 4.0 --out samples/xl      # the official sample.py's spellings
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ditlab.cli_args import (
    VAE_HELP,
    UsageError,
    add_device_argument,
    add_list_argument,
    add_sampling_arguments,
    names,
    non_negative_float,
    non_negative_int,
    positive_int,
    vae_folder,
)
from ditlab.diffusion.samplers import SAMPLERS

DEFAULT_STEPS = 50  # sampler steps of a model that records none


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        nargs="?",
        help="native .safetensors, official DiT .pt, ditlab training .pt, or diffusers folder (or --ckpt)",
    )
    parser.add_argument(
        "--ckpt", metavar="CHECKPOINT", help="the checkpoint, as the official sample.py spells it"
    )
    parser.add_argument(
        "--model", metavar="NAME", help="zoo name for official checkpoints whose head count is not standard"
    )
    add_list_argument(
        parser,
        "--classes",
        item=non_negative_int,
        metavar="ID",
        help="class ids to sample, e.g. --classes 207 360 or 207,360 (default: every class)",
    )
    parser.add_argument(
        "--prompt",
        dest="prompts",
        action="extend",
        nargs="+",
        metavar="TEXT",
        help='text models: prompts to sample, e.g. --prompt "a red circle" "a blue square"; repeatable to '
        "extend (commas stay inside a prompt)",
    )
    parser.add_argument(
        "--prompts-file",
        metavar="FILE",
        help="text models: a text file of prompts, one a line (blank lines skipped); after any --prompt",
    )
    parser.add_argument(
        "--per-class",
        "--per-prompt",
        dest="per_class",
        type=positive_int,
        default=8,
        metavar="N",
        help="samples per class, or per prompt for text models",
    )
    parser.add_argument(
        "--num-samples",
        type=positive_int,
        metavar="N",
        help="total samples (unconditional models, or cycling through the classes) (default: --per-class "
        "per class)",
    )
    add_sampling_arguments(
        parser,
        SAMPLERS,
        (
            "sampler (default: the run's recorded one, else ddim for DDPM models, euler for flow)",
            "sampler steps, or a DDPM respacing such as 250, ddim25 or 10,20,30 (default: the run's "
            f"recorded steps, else {DEFAULT_STEPS})",
            "guidance scale, classifier-free or with --guide (1 = off) (default: the run's recorded scale, "
            "else 1)",
        ),
        steps_aliases=("--steps",),
    )
    parser.add_argument(
        "--guidance-rescale",
        type=non_negative_float,
        default=0.0,
        metavar="PHI",
        help="CFG rescale of Lin et al. 2024: match the guided output's std to the conditional one's, mixed "
        "by PHI in [0, 1] (0 = off; they use 0.7)",
    )
    parser.add_argument(
        "--guidance-interval",
        type=non_negative_float,
        nargs=2,
        metavar=("T_LO", "T_HI"),
        help="guide only at model times in [T_LO, T_HI] (0..1000 for both objectives) (default: every step)",
    )
    parser.add_argument(
        "--guide",
        metavar="CHECKPOINT",
        help="autoguidance: a weaker model (smaller, or an earlier checkpoint of the run) as the guide in "
        "place of the unconditional branch (default: classifier-free guidance)",
    )
    parser.add_argument(
        "--guidance-channels",
        type=positive_int,
        metavar="N",
        help="guide only the first N latent channels (3 = the official DiT quirk) (default: all)",
    )
    parser.add_argument(
        "--layout",
        metavar="MASK",
        help="layout models: a mask PNG in the palette of ditlab.data.layouts (background grey 128,128,128 and "
        "the 12 shapes classes) or an .npz of labels; --per-class images per layout, guided on the empty layout",
    )
    parser.add_argument(
        "--reference",
        nargs="+",
        metavar="IMG",
        help="reference models (--condition reference): image files of the model's size and channels whose "
        "AdaIN statistics condition the samples; --per-class images per reference, guided on the null "
        "reference",
    )
    parser.add_argument(*names("--seed"), dest="seed", type=int, default=0, help="seed of the initial noise")
    parser.add_argument(
        "--batch-size", type=positive_int, default=64, metavar="N", help="images per forward pass"
    )
    parser.add_argument("--vae", type=vae_folder, metavar="ema|mse|DIR", help=VAE_HELP)
    add_device_argument(parser)
    parser.add_argument(
        "--out", default="samples", metavar="PREFIX", help="output prefix: writes PREFIX.png and PREFIX.npz"
    )
    parser.add_argument(
        "--nrow", type=positive_int, metavar="N", help="images per grid row (default: --per-class)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def sampling_settings(args: argparse.Namespace, model) -> dict:
    """sampler, steps and guidance_scale for generate(): each flag given, else the model's recorded value
    (`preferred_sampling`), else the library default."""
    from ditlab.sampling import preferred_sampling

    recorded = preferred_sampling(model)

    def pick(flag, key, default):
        value = getattr(args, flag)
        return value if value is not None else recorded.get(key) if recorded.get(key) is not None else default

    return {
        "sampler": pick("sampler", "sampler", None),
        "steps": pick("sample_steps", "sample_steps", DEFAULT_STEPS),
        "guidance_scale": pick("guidance_scale", "guidance_scale", 1.0),
    }


def prompts_of(args: argparse.Namespace) -> list[str] | None:
    """The prompts of --prompt and --prompts-file (in that order), or None when neither is given."""
    prompts = list(args.prompts or [])
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompts file not found: {path}")
        prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"{path} holds no prompts: write one prompt a line")
    return prompts or None


def text_encoder_of(model, prompts):
    """The encoder a text model's run recorded (`text_spec`), loaded for its prompts; None for no prompts."""
    from ditlab.models.text_inputs import takes_text
    from ditlab.text import load_text_encoder

    if prompts is None:
        if takes_text(model.config):
            raise UsageError("this model is text-conditioned: give --prompt TEXT ... or --prompts-file FILE")
        return None
    spec = getattr(model, "text_spec", None)
    if takes_text(model.config) and not spec:
        raise ValueError(
            "this text model records no text encoder (it was not trained by ditlab train --text-encoder); "
            "sample it from Python with ditlab.generate(model, prompts=..., text_encoder=...)"
        )
    return load_text_encoder(**spec) if spec else None


def checkpoint_of(args: argparse.Namespace) -> str:
    """The checkpoint, given as CHECKPOINT or --ckpt (exactly one of them)."""
    if args.checkpoint and args.ckpt:
        raise UsageError("give the checkpoint once: as CHECKPOINT or as --ckpt, not both")
    if not (args.checkpoint or args.ckpt):
        raise UsageError("which checkpoint? pass CHECKPOINT (or --ckpt PATH)")
    return args.checkpoint or args.ckpt


def run(args) -> int:
    """Bad input raises (ValueError family): `ditlab.cli` prints it as one error line, exit code 2."""
    import torch

    import ditlab
    from ditlab import distributed as D
    from ditlab.data import save_grid, save_npz
    from ditlab.data.layouts import read_layout
    from ditlab.data.references import read_references
    from ditlab.runtime import resolve_device
    from ditlab.sample_shards import generate_across_ranks
    from ditlab.sampling import check_takes_references, sample_prompts

    checkpoint = checkpoint_of(args)
    device = resolve_device(args.device)
    info = D.init_distributed(device)  # under torchrun: each process samples its share of the batches
    device = D.local_device(device, info)
    model = ditlab.load_model(checkpoint, model=args.model, device=device)
    vae = None
    if args.vae:  # else a latent model trained by ditlab decodes through the autoencoder it records
        from ditlab.autoencoders import load_autoencoder

        vae = load_autoencoder(args.vae, device=device)
    guide = ditlab.load_model(args.guide, device=device) if args.guide else None
    settings = sampling_settings(args, model)
    layouts, num_samples = None, args.num_samples
    if args.layout:  # each layout --per-class times, in consecutive samples (one grid row each)
        layouts = torch.from_numpy(read_layout(args.layout, model.config.image_hw))
        layouts = layouts.repeat_interleave(args.per_class, dim=0)
        num_samples = num_samples or len(layouts)
    references = None
    if args.reference:  # the same: each reference --per-class times, one grid row each
        check_takes_references(model)
        references = read_references(args.reference, model.in_channels, model.config.image_hw)
        references = references.repeat_interleave(args.per_class, dim=0)
        num_samples = num_samples or len(references)
    prompts = prompts_of(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    samples = generate_across_ranks(
        model,
        info,
        out,
        prompts=prompts,
        text_encoder=text_encoder_of(model, prompts),
        classes=args.classes,
        per_class=args.per_class,
        num_samples=num_samples,
        layouts=layouts,
        references=references,
        **settings,
        guidance_channels=args.guidance_channels,
        guidance_rescale=args.guidance_rescale,
        guidance_interval=tuple(args.guidance_interval) if args.guidance_interval else None,
        guide_model=guide,
        seed=args.seed,
        batch_size=args.batch_size,
        vae=vae,
        device=device,
        progress=not args.no_progress and info.is_main,
    )
    D.shutdown(info)
    if samples is None:  # not rank 0: its shard is written and merged there
        return 0
    images, labels = samples
    grid = save_grid(
        images,
        f"{out}.png",
        nrow=args.nrow
        or (
            args.per_class
            if model.num_classes or layouts is not None or references is not None or prompts
            else 8
        ),
    )
    # the prompt of every image, in order (also when torchrun ranks sampled them: shards hold no prompts)
    image_prompts = sample_prompts(prompts, args.per_class, num_samples) if prompts else None
    npz = save_npz(f"{out}.npz", images, None if prompts else labels, prompts=image_prompts)
    record = {
        "samples": len(images),
        "grid": str(grid),
        "npz": str(npz),
        "checkpoint": checkpoint,
        **settings,
    }
    print(json.dumps(record))
    return 0
