"""`ditlab sample`: images from any loadable checkpoint into a PNG grid and an ADM-style `.npz`.

    ditlab sample runs/digits/model.safetensors --per-class 16 --out samples/digits
    ditlab sample DiT-XL-2-256x256.pt --model DiT-XL/2 --vae sd-vae-ft-ema/ --classes 207 360 \\
        --sampler ddpm --steps 250 --guidance-scale 4.0 --out samples/xl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ditlab.diffusion.samplers import SAMPLERS


def sampling_steps(text: str) -> int | str:
    """argparse type of --steps: a positive step count (50), or a DDPM respacing string (ddim50, 25,25,50).

    Checked at parse time, so `--steps -3` is refused by name instead of failing inside the respacing code.
    """
    spec = str(text).strip()
    counts = spec[len("ddim") :] if spec.startswith("ddim") else spec
    try:
        values = [int(part) for part in counts.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1 or (counts != spec and len(values) != 1):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of sampling steps: use a positive integer (50), ddimN (ddim50) or "
            "steps per section of the chain (25,25,50), every count at least 1"
        )
    return values[0] if counts == spec and len(values) == 1 else spec


def add_arguments(parser) -> None:
    parser.add_argument(
        "checkpoint", help="native .safetensors, official DiT .pt, ditlab training .pt, or diffusers folder"
    )
    parser.add_argument("--model", help="zoo name for official checkpoints whose head count is not standard")
    parser.add_argument("--classes", type=int, nargs="+", help="class ids (default: every class)")
    parser.add_argument("--per-class", type=int, default=8, help="samples per class (default 8)")
    parser.add_argument(
        "--num-samples", type=int, help="total samples (unconditional models, or cycling classes)"
    )
    parser.add_argument(
        "--sampler", choices=list(SAMPLERS), help="default: ddim (DDPM models) or euler (flow)"
    )
    parser.add_argument(
        "--steps",
        type=sampling_steps,
        default=50,
        help="sampling steps, or a DDPM respacing such as 250 (default 50)",
    )
    parser.add_argument(
        "--guidance-scale", type=float, default=1.0, help="classifier-free guidance scale (1 = off)"
    )
    parser.add_argument(
        "--guidance-channels",
        type=int,
        help="guide only the first N latent channels (3 = official DiT quirk)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--vae",
        help="autoencoder for latent models: a local diffusers AutoencoderKL / VQModel folder or a ditlab "
        "autoencoder (default: the one a ditlab-trained model records)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--out", default="samples", help="output prefix: writes OUT.png and OUT.npz")
    parser.add_argument("--nrow", type=int, help="images per grid row (default: per-class)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args) -> int:
    try:
        return _run(args)
    except (FileNotFoundError, ValueError) as e:  # bad input: one line, no traceback (as `ditlab eval`)
        print(f"ditlab sample: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import ditlab
    from ditlab.data import save_grid, save_npz
    from ditlab.runtime import resolve_device
    from ditlab.sampling import sample

    device = resolve_device(args.device)
    model = ditlab.load_model(args.checkpoint, model=args.model, device=device)
    vae = None
    if args.vae:  # else a latent model trained by ditlab decodes through the autoencoder it records
        from ditlab.autoencoders import load_autoencoder

        vae = load_autoencoder(args.vae, device=device)
    images, labels = sample(
        model,
        classes=args.classes,
        per_class=args.per_class,
        num_samples=args.num_samples,
        sampler=args.sampler,
        steps=args.steps,
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
    print(
        json.dumps(
            {"samples": len(images), "grid": str(grid), "npz": str(npz), "checkpoint": args.checkpoint}
        )
    )
    return 0
