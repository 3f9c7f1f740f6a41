"""`ditlab convert`: rewrite a DiT checkpoint in another format.

Reads anything `ditlab.load_model` reads (native .safetensors, official DiT .pt, a ditlab run folder, a diffusers
folder or DiTPipeline root) and writes ditlab's native safetensors or a diffusers `DiTTransformer2DModel` folder.
A diffusers folder written by ditlab converts back to exactly the model it came from (its config.json keeps
ditlab's record of the model); one without that record (e.g. from the hub) is read as diffusers computes it,
which the command says in one line naming --official-numerics.

ditlab convert DiT-XL-2-256x256.pt dit-xl2.safetensors                  # official -> native
ditlab convert DiT-XL-2-256x256.pt out/transformer --format diffusers   # official -> diffusers (warns: numerics)
ditlab convert hub/DiT-XL-2-256 dit-xl2.safetensors --official-numerics # diffusers weights, official function
ditlab convert runs/digits digits-diffusers/                            # a run folder: its model.safetensors
ditlab convert sd3-medium/transformer mmdit.safetensors                 # SD3 / PixArt / Flux / Z-Image, both ways
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from ditlab.cli_args import non_negative_int
from ditlab.models.checkpoint import load_model, save_model
from ditlab.models.formats import find_format, probe
from ditlab.models.interop import OFFICIAL_NUMERICS, ditlab_record, save_diffusers
from ditlab.models.interop_text import save_text_diffusers, text_class_for
from ditlab.models.zoo import MODELS

FORMATS = ("native", "diffusers")


def add_arguments(parser) -> None:
    parser.add_argument(
        "src",
        help="checkpoint to read: .safetensors (ditlab), .pt (official DiT), a ditlab run folder or a diffusers folder",
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
    # Only a folder is cheap to probe (a .pt file would be read twice); a run folder is not a diffusers one.
    from_diffusers = src.is_dir() and find_format(probe(src)).name == "diffusers"
    overrides = {}
    if embedder_block is not None or official_numerics:
        if not from_diffusers:
            raise ValueError("--embedder-block and --official-numerics apply to diffusers folders only")
        if embedder_block is not None:
            overrides["embedder_block"] = embedder_block
        if official_numerics:
            overrides.update(OFFICIAL_NUMERICS)
    elif from_diffusers and ditlab_record(src) is None:
        warnings.warn(
            f"{src} holds no ditlab record, so it is read as diffusers computes it (its timestep sinusoid, "
            "timestep_freq_shift=1, and its norm_eps on the MLP norm); hub DiT checkpoints hold the official "
            "weights: pass --official-numerics to compute the official DiT instead",
            UserWarning,
            stacklevel=2,
        )
    net = load_model(src, model=model, **overrides)
    if fmt == "native":
        if dst.is_dir():
            raise ValueError(f"{dst} is a folder; native output is one .safetensors file")
        save_model(net, dst)
    elif text_class_for(net.config) is not None:  # SD3 / PixArt / Flux / Z-Image architectures
        save_text_diffusers(net, dst)
    else:
        save_diffusers(net, dst)
    return fmt


def run(args) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # bad input raises: `ditlab.cli` prints it as one error line, exit code 2
        fmt = convert(
            args.src, args.dst, args.model, args.format, args.embedder_block, args.official_numerics
        )
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"ditlab convert: warning: {w.message}", file=sys.stderr)
    print(f"wrote {args.dst} ({fmt})")
    return 0
