"""`ditlab sample`: images from any loadable checkpoint into a PNG grid and an ADM-style `.npz`.

    ditlab sample runs/digits/model.safetensors --per-class 16 --out samples/digits
    ditlab sample --ckpt DiT-XL-2-256x256.pt --vae ema --classes 207 360 --sampler ddpm \\
        --num-sampling-steps 250 --cfg-scale 4.0 --out samples/xl      # the official sample.py's spellings
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ditlab.cli_args import (
    VAE_HELP,
    ListAction,
    UsageError,
    names,
    non_negative_float,
    non_negative_int,
    positive_int,
    sample_steps,
    vae_folder,
)
from ditlab.diffusion.samplers import SAMPLERS


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
    parser.add_argument(
        "--classes",
        action=ListAction,
        item=non_negative_int,
        metavar="ID",
        help="class ids to sample, e.g. --classes 207 360 or 207,360 (default: every class)",
    )
    parser.add_argument("--per-class", type=positive_int, default=8, metavar="N", help="samples per class")
    parser.add_argument(
        "--num-samples",
        type=positive_int,
        metavar="N",
        help="total samples (unconditional models, or cycling through the classes) (default: --per-class "
        "per class)",
    )
    parser.add_argument(
        "--sampler", choices=list(SAMPLERS), help="sampler (default: ddim for DDPM models, euler for flow)"
    )
    parser.add_argument(
        *names("--sample-steps", "--steps"),
        dest="sample_steps",
        type=sample_steps,
        default=50,
        metavar="N",
        help="sampler steps, or a DDPM respacing such as 250, ddim25 or 10,20,30",
    )
    parser.add_argument(
        *names("--guidance-scale"),
        dest="guidance_scale",
        type=non_negative_float,
        default=1.0,
        metavar="SCALE",
        help="classifier-free guidance scale (1 = off)",
    )
    parser.add_argument(
        "--guidance-channels",
        type=positive_int,
        metavar="N",
        help="guide only the first N latent channels (3 = the official DiT quirk) (default: all)",
    )
    parser.add_argument(*names("--seed"), dest="seed", type=int, default=0, help="seed of the initial noise")
    parser.add_argument(
        "--batch-size", type=positive_int, default=64, metavar="N", help="images per forward pass"
    )
    parser.add_argument("--vae", type=vae_folder, metavar="ema|mse|DIR", help=VAE_HELP)
    parser.add_argument(
        "--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda or cuda:N"
    )
    parser.add_argument(
        "--out", default="samples", metavar="PREFIX", help="output prefix: writes PREFIX.png and PREFIX.npz"
    )
    parser.add_argument(
        "--nrow", type=positive_int, metavar="N", help="images per grid row (default: --per-class)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def checkpoint_of(args: argparse.Namespace) -> str:
    """The checkpoint, given as CHECKPOINT or --ckpt (exactly one of them)."""
    if args.checkpoint and args.ckpt:
        raise UsageError("give the checkpoint once: as CHECKPOINT or as --ckpt, not both")
    if not (args.checkpoint or args.ckpt):
        raise UsageError("which checkpoint? pass CHECKPOINT (or --ckpt PATH)")
    return args.checkpoint or args.ckpt


def run(args) -> int:
    """Bad input raises (ValueError family): `ditlab.cli` prints it as one error line, exit code 2."""
    import ditlab
    from ditlab.data import save_grid, save_npz
    from ditlab.runtime import resolve_device
    from ditlab.sampling import generate

    checkpoint = checkpoint_of(args)
    device = resolve_device(args.device)
    model = ditlab.load_model(checkpoint, model=args.model, device=device)
    vae = None
    if args.vae:
        from ditlab.autoencoders import load_vae

        vae = load_vae(args.vae, device=device)
    images, labels = generate(
        model,
        classes=args.classes,
        per_class=args.per_class,
        num_samples=args.num_samples,
        sampler=args.sampler,
        steps=args.sample_steps,
        guidance_scale=args.guidance_scale,
        guidance_channels=args.guidance_channels,
        seed=args.seed,
        batch_size=args.batch_size,
        vae=vae,
        device=device,
        progress=not args.no_progress,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid = save_grid(images, f"{out}.png", nrow=args.nrow or (args.per_class if model.num_classes else 8))
    npz = save_npz(f"{out}.npz", images, labels)
    print(json.dumps({"samples": len(images), "grid": str(grid), "npz": str(npz), "checkpoint": checkpoint}))
    return 0
