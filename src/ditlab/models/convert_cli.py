"""`ditlab convert`: rewrite a DiT checkpoint in another format.

Reads anything `ditlab.load_model` reads (native .safetensors, official DiT .pt, a diffusers folder or DiTPipeline
root) and writes ditlab's native safetensors or a diffusers `DiTTransformer2DModel` folder.

ditlab convert DiT-XL-2-256x256.pt dit-xl2.safetensors                  # official -> native
ditlab convert DiT-XL-2-256x256.pt out/transformer --format diffusers   # official -> diffusers (warns: numerics)
ditlab convert hub/DiT-XL-2-256 dit-xl2.safetensors --official-numerics # diffusers weights, official function
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from ditlab.cli_args import non_negative_int
from ditlab.models.checkpoint import load_model, save_model
from ditlab.models.interop import OFFICIAL_NUMERICS, save_diffusers
from ditlab.models.zoo import MODELS

FORMATS = ("native", "diffusers")


def add_arguments(parser) -> None:
    parser.add_argument(
        "src", help="checkpoint to read: .safetensors (ditlab), .pt (official DiT) or a diffusers folder"
    )
    parser.add_argument("dst", help="where to write: a .safetensors file (native) or a folder (diffusers)")
    parser.add_argument(
        "--model", choices=list(MODELS), metavar="NAME", help="zoo name for official .pt files, e.g. DiT-XL/2"
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        help="output format (default: native for a .safetensors DST, diffusers for a folder)",
    )
    parser.add_argument(
        "--embedder-block",
        type=non_negative_int,
        metavar="I",
        help="diffusers source trained in diffusers (per-block embedder copies differ): use block I's copy "
        "everywhere (lossy)",
    )
    parser.add_argument(
        "--official-numerics",
        action="store_true",
        help="diffusers source: compute with the official DiT's timestep sinusoid and norm eps 1e-6 in every "
        "norm instead of reproducing diffusers' model (hub DiT checkpoints hold the official weights)",
    )


def output_format(dst: Path, fmt: str | None) -> str:
    if fmt is not None:
        return fmt
    if dst.suffix == ".safetensors":
        return "native"
    if dst.is_dir() or dst.suffix == "":
        return "diffusers"
    raise ValueError(f"cannot tell the output format from {dst}: name it *.safetensors or pass --format")


def convert(src, dst, model=None, fmt=None, embedder_block=None, official_numerics=False) -> str:
    """Read `src`, write `dst`; returns the format written."""
    src, dst = Path(src), Path(dst)
    fmt = output_format(dst, fmt)
    if src.resolve() == dst.resolve():
        raise ValueError("SRC and DST are the same path; write the conversion somewhere else")
    overrides = {}
    if embedder_block is not None or official_numerics:
        if not src.is_dir():
            raise ValueError("--embedder-block and --official-numerics apply to diffusers folders only")
        if embedder_block is not None:
            overrides["embedder_block"] = embedder_block
        if official_numerics:
            overrides.update(OFFICIAL_NUMERICS)
    net = load_model(src, model=model, **overrides)
    if fmt == "native":
        if dst.is_dir():
            raise ValueError(f"{dst} is a folder; native output is one .safetensors file")
        save_model(net, dst)
    else:
        save_diffusers(net, dst)
    return fmt


def run(args) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fmt = convert(
                args.src, args.dst, args.model, args.format, args.embedder_block, args.official_numerics
            )
        except (ValueError, FileNotFoundError, ImportError) as e:
            raise SystemExit(f"ditlab convert: error: {e}") from None
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"ditlab convert: warning: {w.message}", file=sys.stderr)
    print(f"wrote {args.dst} ({fmt})")
    return 0
