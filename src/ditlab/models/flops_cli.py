"""`ditlab flops`: parameter counts and analytic Gflops (the paper's unit, MACs) of zoo models and variants.

ditlab flops                         # the whole zoo at 256 px (32×32 latents)
ditlab flops DiT-XL/2 --variants     # the four conditioning blocks of the DiT paper and later variants
ditlab flops DiT-S/2 --input-size 64 --json
ditlab flops MMDiT-S/2 PixArt-S/2 Flux-S/2 ZImage-S/2 Pooled-S/2   # text-to-image (32 text tokens)
"""

from __future__ import annotations

import json

import torch

from ditlab.models.dit import DiT
from ditlab.models.flops import flops
from ditlab.models.zoo import MODELS, SIZES, VARIANTS, model_config


def add_arguments(parser) -> None:
    parser.add_argument("models", nargs="*", help="zoo names (default: the 12 DiT models of the paper)")
    parser.add_argument(
        "--input-size", type=int, default=32, help="latent side (32 = 256 px images); default 32"
    )
    parser.add_argument("--variants", action="store_true", help="also list every conditioning variant")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")


def describe(name: str, input_size: int, variant: str | None = None) -> dict:
    cfg = model_config(name, variant=variant, input_size=input_size)
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


def run(args) -> int:
    names = args.models or [
        n for n in MODELS if n.startswith("DiT-") and n.split("-")[1].split("/")[0] in SIZES
    ]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; valid names: {', '.join(MODELS)}")
    rows = []
    for name in names:
        for variant in list(VARIANTS) if args.variants else [None]:
            rows.append(describe(name, args.input_size, variant))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{'model':<12} {'variant':<24} {'tokens':>6} {'params':>13} {'Gflops':>9}")
    for r in rows:
        print(f"{r['model']:<12} {r['variant']:<24} {r['tokens']:>6} {r['params']:>13,} {r['gflops']:>9.2f}")
    return 0
