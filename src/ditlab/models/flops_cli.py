"""`ditlab flops`: parameter counts and analytic Gflops (the paper's unit, MACs) of zoo models and variants.

ditlab flops                              # the whole zoo at 256 px (32×32 latents)
ditlab flops DiT-XL/2 --variants          # every conditioning variant (= --variants all)
ditlab flops DiT-XL/2 --variants paper    # the DiT paper's four blocks; or name them: --variants adaln adaln-zero
ditlab flops DiT-S/2 --image-size 512 --json     # 64×64 latents
ditlab flops DiT-Ti/2 --image-size 8 --pixel-space   # a model on 8×8 pixels, as the digits demo
ditlab flops MMDiT-S/2 PixArt-S/2 Flux-S/2 ZImage-S/2 Pooled-S/2   # text-to-image (32 text tokens)
"""

from __future__ import annotations

import argparse
import json

import torch

from ditlab.cli_args import UsageError, add_list_argument, positive_int
from ditlab.models.dit import DiT
from ditlab.models.flops import flops
from ditlab.models.zoo import MODELS, SIZES, VARIANT_GROUPS, VARIANTS, expand_variants, model_config

# The SD VAE the zoo's ImageNet models use maps 8×8 pixels to one latent (official DiT: latent = image // 8).
VAE_FACTOR = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models", nargs="*", metavar="MODEL", help="zoo names (default: the 12 DiT models of the paper)"
    )
    parser.add_argument(
        "--image-size",
        type=positive_int,
        default=256,
        metavar="PX",
        help=f"image side in pixels; the zoo's models see it through the SD VAE as PX/{VAE_FACTOR} latents, "
        "as in the official scripts",
    )
    parser.add_argument(
        "--pixel-space",
        action="store_true",
        help="the model sees the pixels themselves (no VAE), as ditlab's digits and Fashion-MNIST runs",
    )
    # the flag's spelling before the shared vocabulary: the model's input side itself
    parser.add_argument("--input-size", type=positive_int, help=argparse.SUPPRESS)
    add_list_argument(
        parser,
        "--variants",
        bare=("all",),
        metavar="NAME",
        help=f"also count conditioning variants: names, or {' / '.join(VARIANT_GROUPS)}; bare --variants = "
        f"all ({', '.join(VARIANTS)})",
    )
    parser.add_argument(
        "--text-len",
        type=positive_int,
        metavar="N",
        help="caption tokens of the text models (default: each preset's own, 32); a recipe's encoder may use fewer",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")


def describe(name: str, input_size: int, variant: str | None = None, text_len: int | None = None) -> dict:
    cfg = model_config(name, variant=variant, input_size=input_size)
    if text_len is not None and cfg.text_len:  # only models that read caption tokens count them
        cfg = cfg.replace(text_len=text_len)
    with torch.device("meta"):  # shapes only: even DiT-XL/2 costs no memory
        model = DiT(cfg)
    return {
        "model": name,
        "variant": variant or (f"text:{cfg.text_mixing}" if cfg.has_text else cfg.conditioning),
        "input_size": input_size,
        "tokens": cfg.num_tokens,
        "params": model.num_parameters(),
        "trainable": model.num_parameters(trainable_only=True),
        "gflops": round(flops(cfg), 3),
    }


def input_side(image_size: int, pixel_space: bool = False) -> int:
    """The model's input side: the image's through the VAE (a factor of 8), or the image's with --pixel-space."""
    if pixel_space:
        return image_size
    if image_size % VAE_FACTOR:
        raise UsageError(
            f"--image-size {image_size} is not a multiple of the VAE's {VAE_FACTOR}; add --pixel-space for a "
            "model that sees pixels"
        )
    return image_size // VAE_FACTOR


def run(args: argparse.Namespace) -> int:
    names = args.models or [
        n for n in MODELS if n.startswith("DiT-") and n.split("-")[1].split("/")[0] in SIZES
    ]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise UsageError(f"unknown model(s) {unknown}; valid names: {', '.join(MODELS)}")
    try:
        variants = expand_variants(args.variants) if args.variants else [None]
    except ValueError as err:
        hint = "; model names go before --variants" if set(args.variants) & set(MODELS) else ""
        raise UsageError(f"--variants: {err}{hint}") from err
    side = args.input_size or input_side(args.image_size, args.pixel_space)
    rows = [describe(name, side, variant, args.text_len) for name in names for variant in variants]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{'model':<12} {'variant':<24} {'tokens':>6} {'params':>13} {'Gflops':>9}")
    for r in rows:
        print(f"{r['model']:<12} {r['variant']:<24} {r['tokens']:>6} {r['params']:>13,} {r['gflops']:>9.2f}")
    return 0
